"""`rsf demo` (rsf/demo.py): the whole pipeline on the tiny demo pair, a second run from the
caches, the command itself, and its errors as one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from robustness.demo import pair as demo_library
from robustness.demo import pipeline
from robustness.demo.pair import DemoGrid, DemoSettings
from robustness.stats.summaries import read_per_pair
from rsf.demo import run_demo
from rsf.main import main

TINY = DemoSettings.tiny()


def test_the_whole_pipeline_end_to_end(tiny_demo, tmp_path, monkeypatch):
    import reports as report_package

    cache, pair = tiny_demo
    reports = []
    real_report = report_package.write_report

    def report(results_path, report_path, **inputs):
        reports.append((results_path, report_path, inputs))
        return real_report(results_path, report_path, **inputs)

    monkeypatch.setattr(report_package, "write_report", report)
    out = tmp_path / "out"
    grid = DemoGrid.tiny()
    outcome = run_demo(out, settings=TINY, grid=grid, cache_root=cache, progress=False)
    assert not outcome.pair.trained  # the session's tiny pair, from the cache
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
    inputs = {"stats_path": out / "stats.nc", "claims_path": out / "claims.nc",
              "extra_paths": (out / "gradients.nc",)}  # fmt: skip
    assert reports == [(out / "results.nc", out / "report.html", inputs)]
    assert outcome.report == out / "report.html" and outcome.report.is_file()
    per_pair = read_per_pair(stats)["demo"]
    assert f"{per_pair['joint']['n_specifications']} counted specifications" in outcome.verdict
    assert "held-out documents" in outcome.verdict and "EWC test" in outcome.verdict
    assert "expected under the null" in outcome.verdict
    assert "Verdict:" in outcome.verdict and "\n" not in outcome.verdict
    # Measured on the held-out documents only (never seen in training).
    assert results.attrs["corpus_source"] == "demo:held-out documents"
    # δ_t at a few checkpoints of both phases: the first and last of pretraining, then alignment's
    # last (its first is the base, already there as pretraining's last).
    gradients = xr.open_dataset(outcome.extras["gradients"])
    assert gradients.attrs["corpus_source"] == "demo:held-out documents"
    assert list(gradients.phase.values) == ["pretrain", "pretrain", "align"]
    assert [str(c).split("/")[0] for c in gradients.checkpoint.values] == list(
        gradients.phase.values
    )
    assert gradients.attrs["prompt_len"] == TINY.prompt_len
    claims = xr.open_dataset(outcome.claims)
    tested = claims.verdict.sel(pair="demo", claim="gradient_anisotropy").item()
    assert tested != "not_tested"
    assert f"gradient_anisotropy: {tested.replace('_', ' ')}" in outcome.verdict


def test_the_second_run_does_no_forward_pass_and_reproduces_the_results(
    tiny_demo, tmp_path, monkeypatch
):
    import probes

    cache, _ = tiny_demo
    grid = DemoGrid.tiny(constructions=("act_cov", "unembed"), replicates=3)
    first = run_demo(tmp_path / "a", settings=TINY, grid=grid, cache_root=cache, progress=False)
    monkeypatch.setattr(probes, "collect_statistics", pytest.fail)
    monkeypatch.setattr(probes, "collect_gradient_statistics", pytest.fail)
    second = run_demo(tmp_path / "b", settings=TINY, grid=grid, cache_root=cache, progress=False)
    a, b = xr.open_dataset(first.results), xr.open_dataset(second.results)
    np.testing.assert_array_equal(a.rsf.values, b.rsf.values)
    np.testing.assert_array_equal(a.rsf_boot.values, b.rsf_boot.values)
    g, h = (xr.open_dataset(o.extras["gradients"]) for o in (first, second))
    xr.testing.assert_identical(g.drop_attrs(), h.drop_attrs())


def test_rsf_demo_cli(tiny_demo, tmp_path, monkeypatch, capsys):
    cache, pair = tiny_demo
    monkeypatch.setattr(demo_library, "DemoSettings", lambda seed=0: DemoSettings.tiny(seed=seed))
    monkeypatch.setattr(demo_library, "DemoGrid", lambda: DemoGrid.tiny(replicates=2))
    out = tmp_path / "cli-out"
    assert main(["demo", "--out", str(out), "--cache-dir", str(cache), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    assert "Verdict:" in printed
    assert {p.name for p in out.iterdir()} >= {
        "results.nc", "stats.nc", "gradients.nc", "claims.nc", "report.html",
    }  # fmt: skip
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
    assert error.startswith(
        f"rsf: error: cannot create {blocker / 'sub'}: {blocker} is not a folder"
    )
    assert error.count("\n") == 1


def test_rsf_demo_full_runs_every_experiment_and_tests_every_claim(
    tiny_demo, tmp_path, monkeypatch
):
    """--full: gradients at every checkpoint with a bootstrap, then the trajectory, contrastive and
    rank-1 experiments through the API their commands call; every claim on an experiment is
    tested."""
    from robustness.demo import pair as demo

    cache, pair = tiny_demo
    real_pair = demo.demo_pair
    monkeypatch.setattr(demo, "demo_pair", lambda settings=None, **kw: real_pair(TINY, **kw))
    monkeypatch.setattr(demo_library, "DemoSettings", lambda seed=0: DemoSettings.tiny(seed=seed))
    monkeypatch.setattr(demo_library, "DemoGrid", lambda: DemoGrid.tiny(replicates=2))
    monkeypatch.setattr(pipeline, "FULL_GRADIENT_REPLICATES", 3)
    out = tmp_path / "full"
    assert main(["demo", "--full", "--out", str(out), "--cache-dir", str(cache), "--quiet"]) == 0
    for kind in ("gradients", "trajectory", "contrastive", "rank1"):
        assert xr.open_dataset(out / f"{kind}.nc").attrs["kind"] == kind
    gradients = xr.open_dataset(out / "gradients.nc")
    pretrain = len(list((pair.root / "checkpoints" / "pretrain").glob("step-*")))
    align = len(list((pair.root / "checkpoints" / "align").glob("step-*")))
    assert gradients.sizes["checkpoint"] == pretrain + align - 1
    assert gradients.sizes["replicate"] == 3
    claims = xr.open_dataset(out / "claims.nc").sel(pair="demo")
    experiments = ("gradient_anisotropy", "trajectory_consistent", "graded_control", "rank1_causal")
    assert all(claims.verdict.sel(claim=c).item() != "not_tested" for c in experiments)
    html = (out / "report.html").read_text()
    for kind in ("gradients", "trajectory", "contrastive", "rank1"):
        assert f'-{kind}"' in html, kind


def test_rsf_demo_full_takes_the_default_pair_only(tmp_path, capsys):
    assert main(["demo", "--full", "--seed", "3", "--out", str(tmp_path), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "--full runs the experiments on the default toy pair" in error and error.count("\n") == 1
