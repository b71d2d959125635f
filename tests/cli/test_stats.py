"""`rsf stats` (rsf/stats.py) end to end: the statistics dataset contract, the summary, sequence
intervals from a bootstrapped sweep, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robustness.dataset import open_dataset
from rsf.main import main

CONTRACT = ("asymmetry", "ci_low", "ci_high", "p_signflip", "p_perm", "p_adj", "effect_size")


@pytest.fixture(scope="module")
def results(saved_pair, tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    first = saved_pair("llama", num_hidden_layers=6)
    second = saved_pair("llama", seed=3, num_hidden_layers=6)
    config = root / "sweep.toml"
    config.write_text(
        f'[[pair]]\nlabel = "a"\nbase = "{first[0]}"\naligned = "{first[1]}"\n'
        f'[[pair]]\nlabel = "b"\nbase = "{second[0]}"\naligned = "{second[1]}"\n'
        "[corpus]\ntokens = 256\nseq_len = 16\n"
        '[probe]\nconstructions = ["act_cov", "unembed", "random"]\ncutoffs = ["k=8", "var=0.9", "pr"]\n'
        'normalisations = ["fraction", "log_isotropic", "isotropic"]\n'
    )
    out = root / "results.nc"
    assert main(["sweep", "--config", str(config), "--out", str(out), "--quiet", "--no-cache"]) == 0
    return out


def test_stats_writes_the_contract_and_a_verdict(results, tmp_path, capsys):
    out = tmp_path / "stats.nc"
    args = [
        "stats",
        str(results),
        "--out",
        str(out),
        "--resamples",
        "500",
        "--permutations",
        "500",
        "--preferred",
        "act_cov,k=8,log_isotropic",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "pair a" in printed and "pair b" in printed
    stats = open_dataset(out)
    for name in CONTRACT:
        assert stats[name].dims == ("pair", "construction", "cutoff", "normalisation"), name
    assert stats.attrs["read_set"] == "q,k" and stats.attrs["write_set"] == "o,down"
    assert stats.attrs["confidence_level"] == 0.95 and stats.attrs["n_resamples"] == 500
    joint = json.loads(stats.attrs["per_pair"])["a"]["joint"]
    assert {
        "median_effect",
        "p_median_effect",
        "share_significant",
        "p_share_significant",
        "stouffer_z",
        "p_stouffer_z",
    } <= set(joint)
    # Random bases cannot define var or pr: those specifications are NaN, not errors.
    assert np.isnan(stats.asymmetry.sel(construction="random", cutoff="pr")).all()
    defined = stats.asymmetry.sel(construction="act_cov")
    assert np.isfinite(defined).all()
    assert (stats.ci_low <= stats.asymmetry).sel(construction="act_cov").all()
    mixed = json.loads(stats.attrs["mixed_model"])
    assert mixed["formula"] == "s ~ pathway * pair + (1 | layer)" and mixed["coefficients"]
    # Same seed, same numbers.
    again = tmp_path / "again.nc"
    assert main([*args[:3], str(again), *args[4:]]) == 0
    other = open_dataset(again)
    for name in CONTRACT:
        assert np.array_equal(stats[name].values, other[name].values, equal_nan=True)


def test_asymmetry_is_the_mean_layer_difference(results, tmp_path):
    out = tmp_path / "stats.nc"
    assert (
        main(
            [
                "stats",
                str(results),
                "--out",
                str(out),
                "--resamples",
                "200",
                "--permutations",
                "200",
                "--read",
                "q,k,v",
                "--write",
                "o",
                "--quiet",
            ]
        )
        == 0
    )
    stats, res = open_dataset(out), open_dataset(results)
    cell = res.rsf.sel(pair="a", construction="unembed", cutoff="k=8", normalisation="isotropic")
    s = np.log2(cell.values)
    expected = np.mean(s[:, :3].mean(axis=1) - s[:, 3])
    got = float(
        stats.asymmetry.sel(
            pair="a", construction="unembed", cutoff="k=8", normalisation="isotropic"
        )
    )
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--read", "q,ffn"], "--read names ['ffn'], absent from the results"),
        (["--read", "q", "--write", "q,o"], "cannot be both read and write"),
        (["--confidence", "1.5"], "`confidence_level` must lie in (0, 1)"),
    ],
)
def test_bad_sets_and_levels_are_one_line_errors(results, tmp_path, capsys, extra, message):
    assert main(["stats", str(results), "--out", str(tmp_path / "s.nc"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_or_foreign_results_file(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope.nc"), "--out", str(tmp_path / "s.nc")]) == 2
    assert "dataset not found" in capsys.readouterr().err
    (tmp_path / "junk.nc").write_text("not netcdf")
    assert main(["stats", str(tmp_path / "junk.nc"), "--out", str(tmp_path / "s.nc")]) == 2
    assert "not a readable netCDF dataset" in capsys.readouterr().err


def test_bootstrap_is_reproducible_and_feeds_sequence_intervals(boot_results, tmp_path):
    ds, args = boot_results
    again = tmp_path / "again.nc"
    assert main([*args[:6], str(again), *args[7:]]) == 0
    assert np.array_equal(ds.rsf_boot.values, open_dataset(again).rsf_boot.values, equal_nan=True)
    stats_path = tmp_path / "stats.nc"
    assert (
        main(
            [
                "stats",
                str(again),
                "--out",
                str(stats_path),
                "--resamples",
                "200",
                "--permutations",
                "200",
                "--quiet",
            ]
        )
        == 0
    )
    stats = open_dataset(stats_path)
    cell = stats.sel(construction="act_cov", cutoff="k=4")
    assert np.isfinite(cell.seq_ci_low).all() and (cell.seq_ci_low <= cell.seq_ci_high).all()
    assert (cell.seq_ci_high_percentile > cell.seq_ci_low_percentile).all()
    # The unembedding does not depend on the corpus: its sequence interval is a point.
    fixed = stats.sel(construction="unembed", cutoff="k=4")
    np.testing.assert_allclose(fixed.seq_ci_low_percentile, fixed.asymmetry)
    np.testing.assert_allclose(fixed.seq_ci_high_percentile, fixed.asymmetry)
    assert stats.attrs["sequence_replicates"] == 30
