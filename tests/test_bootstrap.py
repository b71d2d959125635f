"""The sequence bootstrap: replicates reweight chunk statistics, no forward pass each."""

from __future__ import annotations

import numpy as np
import pytest

from robustness.config import PairSpec, SweepConfig
from robustness.corpus import Corpus
from robustness.dataset import open_dataset
from robustness.engine import run_sweep
from rsf.main import main


@pytest.fixture(scope="module")
def boot_results(saved_pair, tmp_path_factory):
    base, aligned = saved_pair("llama", num_hidden_layers=4)
    out = tmp_path_factory.mktemp("boot") / "results.nc"
    args = [
        "sweep",
        "--base",
        base,
        "--aligned",
        aligned,
        "--out",
        str(out),
        "--tokens",
        "512",
        "--seq-len",
        "16",
        "--bootstrap",
        "30",
        "--constructions",
        "act_cov,act_cov_aligned,unembed,random",
        "--cutoffs",
        "k=4,var=0.9",
        "--quiet",
        "--no-cache",
    ]
    assert main(args) == 0
    return open_dataset(out), args


def test_replicates_and_jackknife_are_stored(boot_results):
    ds, _ = boot_results
    assert ds.rsf_boot.dims == (
        "replicate",
        "pair",
        "layer",
        "matrix",
        "construction",
        "cutoff",
        "normalisation",
    )
    assert ds.sizes["replicate"] == 30 and ds.sizes["jackknife"] == 32  # 32 sequences → 32 chunks
    assert ds.attrs["bootstrap_replicates"] == 30
    # Subspaces that do not depend on the corpus do not move across replicates.
    for construction in ("unembed", "random"):
        point = ds.rsf.sel(construction=construction).values
        replicates = ds.rsf_boot.sel(construction=construction).values
        assert np.array_equal(replicates, np.broadcast_to(point, replicates.shape), equal_nan=True)
    moving = ds.rsf_boot.sel(construction="act_cov", cutoff="k=4", normalisation="fraction")
    assert float(moving.std("replicate").mean()) > 0
    # Replicates scatter around the full-sample value.
    point = ds.rsf.sel(construction="act_cov", cutoff="k=4", normalisation="fraction")
    assert float(np.abs(moving.mean("replicate") - point).max()) < 5 * float(
        moving.std("replicate").max()
    )


def test_a_replicate_with_every_chunk_once_is_the_point_estimate(saved_pair):
    base, aligned = saved_pair("gpt2")
    config = SweepConfig(
        pairs=(PairSpec("p", base, aligned),),
        constructions=("act_cov",),
        cutoffs=("k=4", "pr"),
        replicates=2,
    )
    corpus = Corpus(np.random.default_rng(0).integers(0, 61, size=(8, 8)), "test")
    (result,) = run_sweep(config, corpus, progress=False)
    weights = result.bootstrap["weights"]
    assert weights.shape == (2 + 8, 8)  # replicates, then one leave-one-out row per chunk
    assert np.all(weights[:2].sum(axis=1) == 8)  # multinomial counts over the 8 chunks
    # The jackknife rows leave exactly one chunk out each.
    assert np.array_equal(weights[2:], 1 - np.eye(8))


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


def test_a_replicate_equals_a_sweep_of_its_resampled_corpus(saved_pair):
    """Reweighting chunk c by w_c is the corpus with chunk c's sequences repeated w_c times.

    With one sequence per chunk, each bootstrap (and jackknife) row is checked
    against an ordinary sweep, with its own forward passes and eigendecompositions,
    of the corpus that row describes. This covers the block-wise reweighting and
    the shared eigendecomposition pool.
    """
    base, aligned = saved_pair("gpt2")
    ids = np.random.default_rng(1).integers(0, 61, size=(8, 8))
    config = SweepConfig(
        pairs=(PairSpec("p", base, aligned),),
        constructions=("act_cov", "act_moment", "unembed"),
        cutoffs=("k=2", "k=5", "var=0.9", "pr"),
        normalisations=("fraction", "null_z", "base_relative"),
        replicates=11,  # more than one block of replicates
    )
    (result,) = run_sweep(config, Corpus(ids, "test"), progress=False)
    rows = np.vstack([result.bootstrap["replicates"], result.bootstrap["jackknife"]])
    weights = result.bootstrap["weights"]
    assert len(rows) == len(weights) == 11 + 8
    plain = config.with_options(replicates=0)
    for b in (0, 10, 18):  # replicates from both blocks, and a jackknife row
        resampled = np.repeat(ids, weights[b].astype(int), axis=0)
        (direct,) = run_sweep(plain, Corpus(resampled, f"row {b}"), progress=False)
        # Chunk sums are stored in float32, and eigenvectors amplify that round-off
        # by 1/gap: agreement to 1e-4 (a wrongly weighted replicate is off by ~1e-2).
        np.testing.assert_allclose(rows[b], direct.rsf, rtol=1e-4, atol=1e-5)
