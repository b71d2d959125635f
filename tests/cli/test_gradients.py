"""`rsf gradients` (rsf/gradients.py) end to end, and its errors as one line."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from rsf.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_gradients_end_to_end(tmp_path, saved_pair, capsys):
    base, _ = saved_pair("llama")
    out = tmp_path / "gradients.nc"
    code = main([
        "gradients", "--model", base, "--objective", "ce,dpo", "--tokens", "384",
        "--seq-len", "24", "--bootstrap", "8", "--batch-size", "8", "--quiet", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "participation ratio" in printed
    ds = xr.open_dataset(out)
    assert ds.attrs["kind"] == "gradients"
    assert list(ds.objective.values) == ["ce", "dpo"]
    assert ds.attrs["model_id"] == base
    assert ds.attrs["model_hash"].startswith("sha256:")
    assert ds.participation_ratio_boot.sizes["replicate"] == 8
    assert np.isfinite(ds.mean_participation_ratio_ci_low.values).all()


def test_cli_gradients_errors_are_one_line(tmp_path, saved_pair, capsys):
    base, _ = saved_pair("llama")
    code = main(
        ["gradients", "--model", base, "--objective", "sft", "--out", str(tmp_path / "g.nc")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsf: error: unknown objective 'sft'") and "\n" not in err
