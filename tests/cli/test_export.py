"""``rsf export`` (robustness/io/export.py) and the environment every dataset records.

Null hypothesis of the export tests: the long table is the dataset, only
reshaped, so pivoting its rows back onto the variable's coordinates (with
pandas and xarray, not the export's own code) gives the variable exactly,
NaNs in place, text as text; the attributes travel with it (parquet
metadata, or the CSV's ``.attrs.json``). Assumption: pandas' CSV and
pyarrow's parquet round-trip float64 exactly (both write 17 significant
digits or raw bytes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import xarray as xr
from rsf_commands import run_cli

from robustness.io.datasets import open_dataset
from robustness.io.export import attrs_path
from rsf.main import main


@pytest.fixture(scope="module")
def datasets(boot_results, tmp_path_factory):
    """results.nc of the shared bootstrap sweep, its stats.nc and claims.nc."""
    _, args = boot_results
    results = Path(args[args.index("--out") + 1])
    root = tmp_path_factory.mktemp("export")
    stats, claims = root / "stats.nc", root / "claims.nc"
    run_cli(["stats", str(results), "--resamples", "99", "--out", str(stats)])
    run_cli(["claims", str(results), "--stats", str(stats), "--resamples", "99", "--out",
             str(claims)])  # fmt: skip
    return {"results": results, "stats": stats, "claims": claims, "root": root}


def _label(value, integer: bool) -> str:
    return str(int(value)) if integer else str(value)


def _pivot(table: pd.DataFrame, variable: xr.DataArray, column: str) -> xr.DataArray:
    """The rows of `variable`, pivoted back onto its coordinates (labels compared as text; read_csv
    turns an integer column with empty cells into floats)."""
    rows = table[table["variable"] == variable.name].copy()
    for dim in variable.dims:
        integer = variable[dim].dtype.kind in "iu"
        rows[dim] = [_label(v, integer) for v in rows[dim]]
        wanted = [_label(v, integer) for v in variable[dim].values]
        assert sorted(set(rows[dim])) == sorted(wanted)
    back = rows.set_index(list(variable.dims))[column].to_xarray()
    return back.reindex(
        {d: [_label(v, variable[d].dtype.kind in "iu") for v in variable[d].values]
         for d in variable.dims}
    ).transpose(*variable.dims)  # fmt: skip


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_long_table_pivots_back_to_every_variable(datasets, fmt):
    out = datasets["root"] / f"results.{fmt}"
    printed = run_cli(["export", str(datasets["results"]), "--format", fmt, "--out", str(out)])
    assert f"as {fmt}" in printed
    table = pd.read_csv(out, low_memory=False) if fmt == "csv" else pd.read_parquet(out)
    ds = open_dataset(datasets["results"])
    assert set(table["variable"]) == set(ds.data_vars)
    for name in ("rsf", "k", "rsf_boot", "delta_fro"):
        variable = ds[name]
        assert (table["variable"] == name).sum() == variable.size
        back = _pivot(table, variable, "value")
        np.testing.assert_array_equal(back.values, variable.values.astype(np.float64))
    phases = table[table["variable"] == "rsf"].groupby("pair")["phase"].first()
    assert phases.to_dict() == {
        str(p): str(v) for p, v in zip(ds.pair.values, ds.phase.values, strict=True)
    }
    attrs = (
        json.loads(attrs_path(out).read_text())
        if fmt == "csv"
        else json.loads(pq.read_schema(out).metadata[b"rsf_attrs"])
    )
    assert attrs["kind"] == "results" and attrs["corpus_hash"] == ds.attrs["corpus_hash"]


def test_claims_export_keeps_verdicts_as_text(datasets):
    out = datasets["root"] / "claims.csv"
    run_cli(["export", str(datasets["claims"]), "--out", str(out)])
    table = pd.read_csv(out, low_memory=False)
    claims = open_dataset(datasets["claims"])
    back = _pivot(table, claims["verdict"], "text")
    assert (back.values == claims["verdict"].values.astype(str)).all()
    p = _pivot(table, claims["p_value"], "value")
    np.testing.assert_array_equal(p.values, claims["p_value"].values)


def test_export_over_its_input_is_refused(datasets, capsys):
    before = datasets["stats"].read_bytes()
    assert main(["export", str(datasets["stats"]), "--out", str(datasets["stats"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "it is an input of this command" in err and "\n" not in err
    assert datasets["stats"].read_bytes() == before


def test_every_dataset_records_where_and_how_it_was_made(datasets):
    """Null: the environment attributes are what the process ran with: the checkout's own
    ``git describe``, torch's version and thread count, and the command that wrote the file."""
    root = Path(__file__).resolve().parents[2]
    # The commit part of `git describe` (whether the tree is dirty may change while tests run).
    if not (root / ".git").exists():
        expected = "not a checkout"
    elif shutil.which("git") is None:
        expected = "unknown"
    else:
        expected = subprocess.run(["git", "-C", str(root), "describe", "--always"],
                                  capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    for kind in ("results", "stats", "claims"):
        attrs = open_dataset(datasets[kind]).attrs
        assert attrs["rsf_commit"].removesuffix("-dirty") == expected
        assert f"torch {torch.__version__}" in attrs["torch_build"]
        assert int(attrs["threads"]) == torch.get_num_threads()
        assert attrs["command_line"].startswith(f"rsf {'sweep' if kind == 'results' else kind} ")
