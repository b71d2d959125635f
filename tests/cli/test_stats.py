"""`rsf stats` (rsf/stats.py) end to end: the statistics dataset contract, the summary, sequence
intervals from a bootstrapped sweep, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robustness.io.datasets import open_dataset
from robustness.stats.summaries import read_pair_model, read_per_pair
from rsf.main import main

CONTRACT = (
    "asymmetry",
    "reference",
    "ci_low",
    "ci_high",
    "p_value",
    "p_signflip",
    "p_perm",
    "p_adj",
    "p_wy",
    "effect_size",
    "lag1_autocorrelation",
    "effective_layers",
    "counted",
    "duplicate_of",
)


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
    joint = read_per_pair(stats)["a"]["joint"]
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
    assert stats.attrs["p_value_method"].startswith("EWC t-test over layers")
    nulls = json.loads(stats.attrs["null_hypotheses"])
    assert {"p_value", "p_signflip", "p_perm", "joint", "p_wy"} <= set(nulls)
    assert "exchangeable" in stats.p_signflip.attrs["null_hypothesis"]
    # Both pairs are alignment pairs of the same depth: the pair model tests them together.
    model = read_pair_model(stats)["align"]
    assert model["pairs"] == ["a", "b"] and model["projections"] == 2
    assert 0 <= model["overall"]["p_value"] <= 1 and model["difference"]["df"] == [1, 2]
    # Controls shown but not counted; isotropic is log_isotropic on the log2 scale: one counted.
    assert not stats.counted.sel(construction="random").any()
    iso = stats.sel(construction="act_cov", cutoff="k=8")
    assert (
        str(iso.duplicate_of.sel(pair="a", normalisation="isotropic").values)
        == "act_cov/k=8/log_isotropic"
    )
    assert int(iso.counted.sel(pair="a", normalisation="log_isotropic")) == 1
    assert int(iso.counted.sel(pair="a", normalisation="isotropic")) == 0
    assert np.isnan(stats.p_adj.sel(construction="random")).all()
    # The random control is tested against its Haar reference, not 0.
    ref = stats.reference.sel(construction="random", cutoff="k=8", normalisation="log_isotropic")
    assert np.isfinite(ref).all() and (ref != 0).all()
    assert (stats.reference.sel(construction="act_cov") == 0).all()
    # Same seed, same numbers.
    again = tmp_path / "again.nc"
    assert main([*args[:3], str(again), *args[4:]]) == 0
    other = open_dataset(again)
    for name in CONTRACT:
        equal_nan = stats[name].dtype.kind == "f"
        assert np.array_equal(stats[name].values, other[name].values, equal_nan=equal_nan), name


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
        (
            ["--read", "q,ffn"],
            "argument --read: unknown matrix 'ffn': valid are q, k, v, o, up, gate, down",
        ),
        (["--read", "q", "--write", "q,o"], "cannot be both read and write"),
        (["--confidence", "1.5"], "argument --confidence: must lie in (0, 1), got 1.5"),
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
    # The unembedding does not depend on the corpus: no sampling variation, NaN, not a point.
    fixed = stats.sel(construction="unembed", cutoff="k=4")
    assert np.isnan(fixed.seq_ci_low).all() and np.isnan(fixed.seq_ci_high_bca).all()
    assert stats.attrs["sequence_replicates"] == 30
    # Fewer than 1000 replicates: the reported interval is the percentile one, and says so.
    np.testing.assert_array_equal(cell.seq_ci_low.values, cell.seq_ci_low_percentile.values)
    assert stats.attrs["seq_ci_method"].startswith(
        "sequence bootstrap from the sweep's rsf_boot: percentile"
    )


def test_too_few_layers_give_nan_p_values_a_note_and_one_line(saved_pair, tmp_path, capsys):
    """Two layers: the EWC test needs four; NaN p-values, a note in the dataset, one stderr line."""
    base, aligned = saved_pair("llama")
    results = tmp_path / "results.nc"
    assert main(["sweep", "--base", base, "--aligned", aligned, "--out", str(results), "--tokens", "256",
                 "--seq-len", "16", "--constructions", "act_cov", "--quiet", "--no-cache"]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "stats.nc"
    assert main(["stats", str(results), "--out", str(out), "--resamples", "99", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "needs at least 4" in captured.err
    stats = open_dataset(out)
    assert np.isnan(stats.p_value).all() and np.isfinite(stats.asymmetry).any()
    assert "needs at least 4" in read_per_pair(stats)[str(stats.pair.values[0])]["note"]
    assert "cannot be computed" in captured.out


def test_the_older_permutations_flag_is_the_same_count(results, tmp_path, capsys):
    args = ["stats", str(results), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a.nc"), "--permutations", "99"]) == 0
    assert open_dataset(tmp_path / "a.nc").attrs["n_resamples"] == 99
    assert (
        main([*args, "--out", str(tmp_path / "b.nc"), "--permutations", "99", "--resamples", "98"])
        == 2
    )
    assert "--resamples and --permutations spell one option" in capsys.readouterr().err
