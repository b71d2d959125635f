"""`rsf experiment trajectory|contrastive|rank1` (rsf/experiment.py) end to end, from checkpoints,
configs and the demo's defaults, and its errors as one line."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from rsf_commands import run_cli

from robustness.demo import pair as demo
from robustness.demo.pair import DemoSettings, demo_checkpoints
from rsf.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- trajectory


def test_cli_trajectory_from_checkpoints_and_config(checkpoints, tmp_path, capsys):
    dirs, ids_path = checkpoints
    out = tmp_path / "trajectory.nc"
    common = [
        "--corpus",
        ids_path,
        "--cutoffs",
        "k=4",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    code = main(
        [
            "experiment",
            "trajectory",
            "--checkpoints",
            ",".join(dirs),
            "--bootstrap",
            "4",
            "--out",
            str(out),
            *common,
        ]
    )
    assert code == 0
    assert "relative to the previous checkpoint" in capsys.readouterr().out
    ds = xr.open_dataset(out)
    assert ds.sizes["replicate"] == 4 and "asymmetry_seq_ci_low" in ds
    config = tmp_path / "trajectory.toml"
    listed = ", ".join(f'"{d}"' for d in dirs)
    config.write_text(
        f'[trajectory]\ncheckpoints = [{listed}]\nlabels = ["init", "mid", "end"]\n'
        f'[corpus]\nids = "{ids_path}"\n[probe]\nconstructions = ["act_cov", "unembed"]\n'
        'cutoffs = ["k=4"]\nnormalisations = ["isotropic"]\n'
    )
    out2 = tmp_path / "trajectory2.nc"
    assert (
        main(
            [
                "experiment",
                "trajectory",
                "--config",
                str(config),
                "--out",
                str(out2),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--quiet",
            ]
        )
        == 0
    )
    ds2 = xr.open_dataset(out2)
    assert list(ds2.checkpoint.values) == ["mid", "end"]
    # Same pairs and corpus; only the statistics' accumulation order differs (the first
    # run keeps bootstrap chunks), so float32 products agree to round-off.
    np.testing.assert_allclose(
        ds2.rsf.sel(construction="act_cov").values,
        ds.rsf.sel(construction="act_cov").values,
        rtol=1e-5,
    )


def test_cli_trajectory_errors_are_one_line(tmp_path, capsys):
    code = main(
        ["experiment", "trajectory", "--checkpoints", "only-one", "--out", str(tmp_path / "t.nc")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "rsf: error: a trajectory needs at least 2 checkpoints, got 1"


# ---------------------------------------------------------------------------- contrastive and rank1


def test_cli_contrastive_end_to_end(contrastive_run):
    _, _, out, printed = contrastive_run
    assert "trend against λ" in printed
    ds = xr.open_dataset(out)
    assert ds.attrs["kind"] == "contrastive"
    np.testing.assert_array_equal(ds.lam.values, [0, 0.5, 1])
    assert len(set(ds.variant_hash.values)) == 3  # the objective changes the weights
    assert "delta_entropy_rank" in ds.trend.values
    assert np.isfinite(ds.trend_p_value.values).all()
    assert np.all(ds.delta_mean_entropy_rank_ci_low <= ds.delta_mean_entropy_rank_ci_high)
    # (That the same settings find the saved variants: tests/robustness/experiments/test_contrastive.py.)
    names = [Path(p).name for p in ds.variant_id.values]
    assert [n.split("-")[1] for n in names] == ["0", "0.5", "1"]


def test_cli_rank1_end_to_end(rank1_run):
    out, printed = rank1_run
    assert "principal Δmargin" in printed
    ds = xr.open_dataset(out)
    assert list(ds.matrix.values) == ["up", "down"]
    assert ds.attrs["layer"] == 1
    np.testing.assert_allclose(ds.update_norm.values, 0.25 * ds.weight_fro.values)


def test_cli_rank1_rejects_a_write_matrix_as_read(saved_pair, tmp_path, capsys):
    base, _ = saved_pair("gpt2")
    code = main(
        [
            "experiment",
            "rank1",
            "--model",
            base,
            "--read-matrix",
            "o",
            "--out",
            str(tmp_path / "r.nc"),
        ]
    )
    assert code == 2
    assert (
        "argument --read-matrix: unknown read matrix 'o': valid are q, k, v, up, gate"
        in capsys.readouterr().err
    )


# ---------------------------------------------------------------------------- the demo's defaults


def test_demo_defaults_use_the_demo_pair_and_its_held_out_text(tiny_demo, tmp_path, monkeypatch):
    """Without checkpoints or a model, trajectory and rank1 use the demo pair (the checkpoints
    and held-out windows themselves: tests/robustness/test_demo.py)."""
    cache, _ = tiny_demo
    settings = DemoSettings.tiny()
    monkeypatch.setattr(demo, "demo_pair", functools.partial(demo.demo_pair, settings))
    found = demo_checkpoints(cache_root=cache, progress=False)
    out = tmp_path / "trajectory.nc"
    common = ["--cache-dir", str(cache), "--tokens", "512", "--seq-len", "16", "--quiet"]
    run_cli(["experiment", "trajectory", "--demo", "--cutoffs", "k=4", "--out", str(out), *common])
    ds = xr.open_dataset(out)
    assert list(ds.checkpoint_id.values) == list(found.align[1:])
    assert ds.attrs["start_id"] == found.align[0]
    out = tmp_path / "rank1.nc"
    run_cli(["experiment", "rank1", "--controls", "2", "--out", str(out), *common])
    ds = xr.open_dataset(out)
    assert ds.attrs["model_id"] == found.base
    assert ds.attrs["corpus_source"] == "demo:held-out documents"
    assert ds.attrs["prompt_len"] == settings.prompt_len
