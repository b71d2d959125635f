"""The Python API (robustness.api): what a notebook does in a dozen lines, and the same numbers as
the command line, which is a thin shell over it.

Null hypothesis: the API and the ``rsf`` commands run the same code on the same inputs, so their
datasets hold identical values. Assumption: both run on one process with the same seed (the
statistics' Monte Carlo draws are seeded).
"""

from __future__ import annotations

import numpy as np
from rsf_commands import run_cli

import robustness
from reports import write_report
from robustness.io.datasets import open_dataset, write_dataset
from robustness.settings.config import CorpusSpec


def test_a_notebook_runs_the_pipeline_in_a_dozen_lines(saved_pair, tmp_path):
    base, aligned = saved_pair("llama", num_hidden_layers=4)
    # --- the notebook ---
    results = robustness.sweep(
        base, aligned, corpus=CorpusSpec(tokens=512, seq_len=16), cutoffs=("k=4", "k=8"),
        replicates=10,
    )  # fmt: skip
    stats = robustness.statistics(results, n_resamples=99)
    claims = robustness.paper_claims(results, stats=stats, n_resamples=99)
    for name, dataset in (("r", results), ("s", stats), ("c", claims)):
        write_dataset(dataset, tmp_path / f"{name}.nc")
    report = write_report(tmp_path / "r.nc", tmp_path / "report.html",
                          stats_path=tmp_path / "s.nc", claims_path=tmp_path / "c.nc")  # fmt: skip
    # --- what it must give ---
    assert report.is_file() and "<html" in report.read_text()[:200].lower()
    assert set(claims.verdict.values.ravel()) <= {"supported", "contradicted", "inconclusive",
                                                  "not_tested"}  # fmt: skip
    run_cli(["sweep", "--base", base, "--aligned", aligned, "--tokens", "512", "--seq-len", "16",
             "--cutoffs", "k=4,k=8", "--bootstrap", "10", "--no-cache", "-q",
             "--out", str(tmp_path / "results.nc")])  # fmt: skip
    run_cli(["stats", str(tmp_path / "results.nc"), "--resamples", "99", "-q",
             "--out", str(tmp_path / "stats.nc")])  # fmt: skip
    cli_results, cli_stats = (
        open_dataset(tmp_path / "results.nc"),
        open_dataset(tmp_path / "stats.nc"),
    )
    np.testing.assert_array_equal(results.rsf.values, cli_results.rsf.values)
    np.testing.assert_array_equal(results.rsf_boot.values, cli_results.rsf_boot.values)
    np.testing.assert_array_equal(stats.p_value.values, cli_stats.p_value.values)


def test_bad_options_are_the_command_lines_errors(saved_pair):
    import pytest

    base, aligned = saved_pair("llama")
    with pytest.raises(ValueError, match="replicates"):
        robustness.sweep(base, aligned, replicates=-1)
    with pytest.raises(ValueError, match="the aligned model is missing"):
        robustness.sweep(base)


def test_trajectory_and_rank1_are_the_commands_numbers(saved_pair, tmp_path):
    from robustness.settings.options import Rank1Settings

    base, aligned = saved_pair("llama")
    small = ["--tokens", "256", "--seq-len", "16", "--cutoffs", "k=4", "--no-cache", "-q"]
    run_cli(["experiment", "trajectory", "--checkpoints", f"{base},{aligned}",
             "--out", str(tmp_path / "t.nc"), *small])  # fmt: skip
    from robustness.measure.corpus import load_corpus
    from robustness.mechanism.summaries import EXPERIMENT_GRID
    from robustness.settings.config import PairSpec, SweepConfig

    config = SweepConfig(  # the experiments' grid with the command's flags; pairs are replaced
        pairs=(PairSpec("any", base, aligned),), corpus=CorpusSpec(tokens=256, seq_len=16),
        **{**EXPERIMENT_GRID, "cutoffs": ("k=4",)},
    )  # fmt: skip
    found = robustness.trajectory([base, aligned], config=config)
    np.testing.assert_array_equal(found.rsf.values, open_dataset(tmp_path / "t.nc").rsf.values)
    run_cli(["experiment", "rank1", "--model", base, "--controls", "2", "--tokens", "256",
             "--seq-len", "16", "--out", str(tmp_path / "r.nc"), "-q"])  # fmt: skip
    corpus = load_corpus(CorpusSpec(tokens=256, seq_len=16), tokenizer_source=base)
    mine = robustness.rank1(base, corpus, Rank1Settings(controls=2))
    theirs = open_dataset(tmp_path / "r.nc")
    np.testing.assert_array_equal(mine.kl.values, theirs.kl.values)
