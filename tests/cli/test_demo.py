"""`rsf demo` (rsf/demo.py): the whole pipeline on the tiny demo pair, a second run from the
caches, the command itself, and its errors as one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from robustness.demo import DemoGrid, DemoSettings
from rsf import demo as demo_cli
from rsf.demo import run_demo
from rsf.main import main

TINY = DemoSettings.tiny()


def test_the_whole_pipeline_end_to_end(tiny_demo, tmp_path, monkeypatch):
    cache, pair = tiny_demo
    reports = []
    real_report = demo_cli.write_report

    def report(results_path, report_path, *, stats_path):
        reports.append((results_path, report_path, stats_path))
        return real_report(results_path, report_path, stats_path=stats_path)

    monkeypatch.setattr(demo_cli, "write_report", report)
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
    assert reports == [(out / "results.nc", out / "report.html", out / "stats.nc")]
    assert outcome.report == out / "report.html" and outcome.report.is_file()
    per_pair = json.loads(stats.attrs["per_pair"])["demo"]
    assert f"{per_pair['joint']['n_specifications']} counted specifications" in outcome.verdict
    assert "held-out documents" in outcome.verdict and "EWC test" in outcome.verdict
    assert "expected under the null" in outcome.verdict
    assert "Verdict:" in outcome.verdict and "\n" not in outcome.verdict
    # Measured on the held-out documents only (never seen in training).
    assert results.attrs["corpus_source"] == "demo:held-out documents"


def test_the_second_run_does_no_forward_pass_and_reproduces_the_results(
    tiny_demo, tmp_path, monkeypatch
):
    import probes

    cache, _ = tiny_demo
    grid = DemoGrid.tiny(constructions=("act_cov", "unembed"), replicates=3)
    first = run_demo(tmp_path / "a", settings=TINY, grid=grid, cache_root=cache, progress=False)
    monkeypatch.setattr(probes, "collect_statistics", pytest.fail)
    second = run_demo(tmp_path / "b", settings=TINY, grid=grid, cache_root=cache, progress=False)
    a, b = xr.open_dataset(first.results), xr.open_dataset(second.results)
    np.testing.assert_array_equal(a.rsf.values, b.rsf.values)
    np.testing.assert_array_equal(a.rsf_boot.values, b.rsf_boot.values)


def test_rsf_demo_cli(tiny_demo, tmp_path, monkeypatch, capsys):
    cache, pair = tiny_demo
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
