"""`rsf gradients` (rsf/gradients.py) end to end: one model, checkpoints, a config, the demo's
checkpoints of both phases; and its errors as one line."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import xarray as xr

import probes
from robustness.demo import pair as demo
from robustness.demo.pair import DemoSettings
from rsf.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--tokens", "192", "--seq-len", "16", "--bootstrap", "4", "--batch-size", "8", "--quiet"]


def test_cli_gradients_one_model(tmp_path, saved_pair, capsys):
    base, _ = saved_pair("llama")
    out = tmp_path / "gradients.nc"
    code = main([
        "gradients", "--model", base, "--objective", "ce,dpo", "--tokens", "384",
        "--seq-len", "24", "--bootstrap", "8", "--batch-size", "8", "--quiet", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert (
        "entropy effective rank, layer means" in printed
        and "dpo − ce at the write sites" in printed
    )
    ds = xr.open_dataset(out)
    assert ds.attrs["kind"] == "gradients"
    assert ds.sizes["checkpoint"] == 1
    assert list(ds.objective.values) == ["ce", "dpo"]
    assert ds.attrs["model_id"] == base
    assert ds.attrs["model_hash"].startswith("sha256:")
    assert ds.reference_hash.values[0] == ds.checkpoint_hash.values[0]  # its own DPO reference
    assert ds.participation_ratio_boot.sizes["replicate"] == 8
    assert np.isfinite(ds.mean_participation_ratio_ci_low.values).all()


def test_cli_gradients_along_checkpoints(tmp_path, checkpoints, capsys):
    dirs, ids = checkpoints
    out = tmp_path / "along.nc"
    code = main(["gradients", "--checkpoints", ",".join(dirs), "--corpus", ids, *SMALL[4:],
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "trend of the entropy rank along each phase" in printed
    ds = xr.open_dataset(out)
    assert ds.sizes["checkpoint"] == 3
    assert [str(c).split("/")[-1] for c in ds.checkpoint.values] == [
        "step-00000",
        "step-00001",
        "step-00002",
    ]
    assert list(ds.step.values) == [0, 1, 2]
    first = probes.weights_hash(dirs[0])
    assert list(ds.reference_hash.values) == [first] * 3  # alignment: the first checkpoint
    assert np.isfinite(ds.trend_slope.sel(segment="align").values).all()


def test_cli_gradients_from_a_config_with_labels_and_the_pretraining_rule(tmp_path, checkpoints):
    dirs, ids = checkpoints
    listed = ", ".join(f'"{d}"' for d in dirs)
    config = tmp_path / "run.toml"
    config.write_text(f'[trajectory]\ncheckpoints = [{listed}]\nlabels = ["init", "mid", "end"]\n')
    out = tmp_path / "config.nc"
    code = main(["gradients", "--config", str(config), "--phase", "pretrain", "--corpus", ids,
                 *SMALL[4:], "--out", str(out)])  # fmt: skip
    assert code == 0
    ds = xr.open_dataset(out)
    assert list(ds.checkpoint.values) == ["init", "mid", "end"]
    assert list(ds.reference_hash.values) == list(ds.checkpoint_hash.values)
    assert list(ds.phase.values) == ["pretrain"] * 3


def test_cli_gradients_demo_both_phases(tmp_path, tiny_demo, monkeypatch):
    """The demo's pretraining checkpoints (each its own reference), then its alignment checkpoints
    (against the base); the base appears once."""
    cache, pair = tiny_demo
    monkeypatch.setattr(demo, "demo_pair", functools.partial(demo.demo_pair, DemoSettings.tiny()))
    out = tmp_path / "demo.nc"
    code = main(["gradients", "--demo", "--phase", "both", "--cache-dir", str(cache),
                 "--tokens", "256", "--bootstrap", "0", "--quiet", "--out", str(out)])  # fmt: skip
    assert code == 0
    ds = xr.open_dataset(out)
    pretrain = sorted((pair.root / "checkpoints" / "pretrain").glob("step-*"))
    align = sorted((pair.root / "checkpoints" / "align").glob("step-*"))
    assert ds.sizes["checkpoint"] == len(pretrain) + len(align) - 1
    phases = list(ds.phase.values)
    assert phases == ["pretrain"] * len(pretrain) + ["align"] * (len(align) - 1)
    is_pretrain = ds.phase == "pretrain"
    assert (ds.reference_hash == ds.checkpoint_hash).where(is_pretrain, True).all()
    base_hash = probes.weights_hash(pair.base)
    assert set(ds.reference_hash.values[~is_pretrain.values]) == {base_hash}
    assert list(ds.segment.values) == ["pretrain", "align"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--objective", "sft"], "unknown objective 'sft'"),
        ([], "needs one of --model, --checkpoints, --config or --demo"),
        (["--checkpoints", "{0}"], "two or more checkpoints: for one model use --model"),
        (["--checkpoints", "{0},{1}", "--phase", "both"], "--phase both needs --demo"),
        (["--checkpoints", "{0},{1}", "--phase", "pretrain", "--reference", "{0}"], "own DPO reference"),
        (["--checkpoints", "{0},{missing}"], "model directory not found: "),
        (["--checkpoints", "{0},{wide}"], "does not match"),
    ],
)  # fmt: skip
def test_cli_gradients_errors_are_one_line(
    tmp_path, checkpoints, saved_models, capsys, arguments, message
):
    dirs, _ = checkpoints
    wide = saved_models("llama", hidden_size=48, num_hidden_layers=4)
    filled = [a.format(*dirs, wide=wide, missing=tmp_path / "missing") for a in arguments]
    if (
        not any(a in filled for a in ("--checkpoints",))
        and arguments
        and arguments[0] == "--objective"
    ):
        filled = ["--model", dirs[0], *filled]
    code = main(["gradients", *filled, "--quiet", "--out", str(tmp_path / "g.nc")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsf: error:") and message in err and "\n" not in err
    assert not (tmp_path / "g.nc").exists()
