"""The sequence bootstrap's pieces (robustness.measure.resampling): chunks of sequences, and BCa intervals
from precomputed replicates against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from robustness.measure.resampling import sequence_chunks


def test_sequence_chunks_cover_every_sequence_once():
    chunks = sequence_chunks(70)
    assert len(chunks) <= 32
    covered = np.concatenate([np.arange(lo, hi) for lo, hi in chunks])
    np.testing.assert_array_equal(covered, np.arange(70))


def test_bca_from_precomputed_replicates_matches_scipy():
    from robustness.measure.resampling import bca_interval

    x = np.random.default_rng(8).gamma(2.0, size=30)  # skewed, so the correction matters
    res = stats.bootstrap(
        (x,), np.mean, n_resamples=5000, method="BCa", rng=np.random.default_rng(1)
    )
    jackknife = np.array([np.delete(x, i).mean() for i in range(x.size)])
    low, high = bca_interval(
        res.bootstrap_distribution[:, None], jackknife[:, None], np.array([x.mean()])
    )
    assert low[0] == pytest.approx(res.confidence_interval.low, rel=1e-10)
    assert high[0] == pytest.approx(res.confidence_interval.high, rel=1e-10)
