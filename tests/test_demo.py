"""The demo: a tiny-config version of the whole pipeline, the pair's cache, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import xarray as xr
from transformers import AutoModelForCausalLM, AutoTokenizer

from robustness import demo
from robustness.demo import DemoGrid, DemoSettings, demo_pair
from rsf import demo as demo_cli
from rsf.demo import run_demo
from rsf.main import main

TINY = DemoSettings.tiny()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny demo pair, trained once for the module, in its own cache."""
    cache = tmp_path_factory.mktemp("demo-cache")
    return cache, demo_pair(TINY, cache_root=cache, progress=False)


def weights(path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_the_pair_is_saved_like_any_model_with_checkpoints_and_a_manifest(built):
    cache, pair = built
    assert pair.trained and pair.root == cache / "demo" / TINY.key
    base, aligned = AutoModelForCausalLM.from_pretrained(pair.base), weights(pair.aligned)
    assert base.config.model_type == "llama" and base.config.num_hidden_layers == TINY.n_layers
    assert not base.config.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(pair.aligned)
    assert tokenizer.decode(tokenizer("def f(x): return x")["input_ids"]) == "def f(x): return x"
    assert any(not torch.equal(v, aligned[k]) for k, v in base.state_dict().items())
    pretrain = sorted(p.name for p in (pair.root / "checkpoints" / "pretrain").iterdir())
    align = sorted(p.name for p in (pair.root / "checkpoints" / "align").iterdir())
    assert pretrain == ["step-00000", "step-00003", "step-00006"]
    assert align == ["step-00000", "step-00002", "step-00004"]
    # The trajectories end where the pair is.
    last_pretrain = weights(pair.root / "checkpoints" / "pretrain" / "step-00006")
    last_align = weights(pair.root / "checkpoints" / "align" / "step-00004")
    assert all(torch.equal(v, last_pretrain[k]) for k, v in base.state_dict().items())
    assert all(torch.equal(v, last_align[k]) for k, v in aligned.items())
    manifest = json.loads((pair.root / "demo.json").read_text())
    assert manifest == pair.manifest
    assert manifest["seed"] == 0 and manifest["settings"]["n_layers"] == TINY.n_layers
    assert len(manifest["pretrain"]["losses"]) == TINY.pretrain_steps
    assert len(manifest["align"]["losses"]) == TINY.align_steps
    assert manifest["held_out"]["base"]["dpo_margin_mean"] == pytest.approx(0.0, abs=1e-9)
    assert "torch" in manifest["versions"]
    assert not [p for p in (cache / "demo").iterdir() if p.name.startswith(".")]  # no leftovers


def test_the_pair_is_deterministic_from_the_seed(built, tmp_path):
    _, first = built
    again = demo_pair(TINY, cache_root=tmp_path, progress=False)
    assert again.trained and again.root != first.root
    for role in ("base", "aligned"):
        a, b = weights(getattr(first, role)), weights(getattr(again, role))
        assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert again.manifest["tokenizer"] == first.manifest["tokenizer"]
    other = DemoSettings.tiny(seed=1)
    assert other.key != TINY.key


def test_the_cache_is_reused_and_retrain_rebuilds(tmp_path, monkeypatch):
    calls = []

    def counting(settings, out, *, progress=True):
        calls.append(out)
        return _fake(out, marker=len(calls))

    monkeypatch.setattr(demo, "train_demo_pair", counting)
    first = demo_pair(TINY, cache_root=tmp_path, progress=False)
    assert first.trained and first.manifest == {"marker": 1}
    second = demo_pair(TINY, cache_root=tmp_path, progress=False)
    assert len(calls) == 1 and not second.trained and second.root == first.root
    assert second.manifest == {"marker": 1}  # read back from the cached folder
    third = demo_pair(TINY, cache_root=tmp_path, retrain=True, progress=False)
    assert len(calls) == 2 and third.trained and third.root == first.root
    assert json.loads((third.root / "demo.json").read_text()) == {"marker": 2}
    # A half-built folder (no manifest) is not mistaken for a cached pair.
    (third.root / "demo.json").unlink()
    assert demo_pair(TINY, cache_root=tmp_path, progress=False).trained and len(calls) == 3
    # Training happens beside the final folder; nothing temporary is left behind.
    assert all(path.parent == tmp_path / "demo" and path.name.startswith(".") for path in calls)
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [TINY.key]


def test_a_failed_training_leaves_no_pair_behind(tmp_path, monkeypatch):
    def failing(settings, out, *, progress=True):
        _fake(out)
        raise FloatingPointError("the loss became nan")

    monkeypatch.setattr(demo, "train_demo_pair", failing)
    with pytest.raises(FloatingPointError):
        demo_pair(TINY, cache_root=tmp_path, progress=False)
    assert list((tmp_path / "demo").iterdir()) == []


def test_the_whole_pipeline_end_to_end(built, tmp_path, monkeypatch):
    cache, pair = built
    reports = []
    real_report = demo_cli.write_report

    def report(results_path, report_path, *, stats_path):
        reports.append((results_path, report_path, stats_path))
        return real_report(results_path, report_path, stats_path=stats_path)

    monkeypatch.setattr(demo_cli, "write_report", report)
    out = tmp_path / "out"
    grid = DemoGrid.tiny()
    outcome = run_demo(out, settings=TINY, grid=grid, cache_root=cache, progress=False)
    assert not outcome.pair.trained  # the module's pair, from the cache
    results = xr.open_dataset(outcome.results)
    assert list(results.construction.values) == list(grid.constructions)
    assert list(results.normalisation.values) == list(grid.normalisations)
    assert results.sizes["replicate"] == grid.replicates
    assert results.attrs["n_tokens"] == grid.tokens
    assert str(results.base_id.values[0]) == str(pair.base)
    assert json.loads(results.attrs["demo_manifest"])["key"] == TINY.key
    assert np.isfinite(results.rsf.sel(construction="act_cov", cutoff="k=2")).all()
    stats = xr.open_dataset(outcome.stats)
    assert np.isfinite(stats.asymmetry.sel(construction="act_cov")).all()
    assert reports == [(out / "results.nc", out / "report.html", out / "stats.nc")]
    assert outcome.report == out / "report.html" and outcome.report.is_file()
    per_pair = json.loads(stats.attrs["per_pair"])["demo"]
    assert f"{per_pair['joint']['n_specifications']} specifications" in outcome.verdict
    assert "Verdict:" in outcome.verdict and "\n" not in outcome.verdict


def test_the_second_run_does_no_forward_pass_and_reproduces_the_results(
    built, tmp_path, monkeypatch
):
    import probes

    cache, _ = built
    grid = DemoGrid.tiny(constructions=("act_cov", "unembed"), replicates=3)
    first = run_demo(tmp_path / "a", settings=TINY, grid=grid, cache_root=cache, progress=False)
    monkeypatch.setattr(probes, "collect_statistics", pytest.fail)
    second = run_demo(tmp_path / "b", settings=TINY, grid=grid, cache_root=cache, progress=False)
    a, b = xr.open_dataset(first.results), xr.open_dataset(second.results)
    np.testing.assert_array_equal(a.rsf.values, b.rsf.values)
    np.testing.assert_array_equal(a.rsf_boot.values, b.rsf_boot.values)


def test_rsf_demo_cli(built, tmp_path, monkeypatch, capsys):
    cache, pair = built
    monkeypatch.setattr(demo_cli, "DemoSettings", lambda seed=0: DemoSettings.tiny(seed=seed))
    monkeypatch.setattr(demo_cli, "DemoGrid", lambda: DemoGrid.tiny(replicates=2))
    out = tmp_path / "cli-out"
    assert main(["demo", "--out", str(out), "--cache-dir", str(cache), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    assert "Verdict:" in printed
    assert {p.name for p in out.iterdir()} >= {"results.nc", "stats.nc", "report.html"}
    stamp = (pair.aligned / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--cache-dir", str(cache), "--quiet"]) == 0
    assert (pair.aligned / "model.safetensors").stat().st_mtime_ns == stamp  # reused


def test_rsf_demo_errors_are_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert (
        main(["demo", "--out", str(blocker / "sub"), "--cache-dir", str(tmp_path), "--quiet"]) == 2
    )
    error = capsys.readouterr().err
    assert (
        error.startswith("rsf: error: cannot create the output folder") and error.count("\n") == 1
    )


def test_settings_are_validated():
    with pytest.raises(ValueError, match="n_heads"):
        DemoSettings.tiny(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="align_steps"):
        DemoSettings.tiny(align_steps=0)
    with pytest.raises(ValueError, match="vocab_size"):
        DemoSettings.tiny(vocab_size=100)


def test_the_cache_folder_follows_rsf_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RSF_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setattr(demo, "train_demo_pair", lambda settings, out, progress=True: _fake(out))
    pair = demo_pair(TINY, progress=False)
    assert pair.root == tmp_path / "env-cache" / "demo" / TINY.key
    assert os.path.isdir(pair.root)


def _fake(out, marker=0):
    """A stand-in training run that writes only what the cache check looks for."""
    for role in ("base", "aligned"):
        (out / role).mkdir(parents=True)
        (out / role / "config.json").write_text("{}")
    manifest = {"marker": marker}
    (out / "demo.json").write_text(json.dumps(manifest))
    return manifest
