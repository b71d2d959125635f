"""The trend test (robustness.mechanism.trend): the within-layer permutation test's exact
enumeration on a constructed case, the EWC slope test over layers, no trend, and its input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robustness.mechanism.trend import trend_test


def test_trend_test_exact_on_a_monotone_single_block():
    lams = np.array([0, 0.25, 0.5, 0.75, 1.0])
    result = trend_test(lams * 2 + 1, lams, rng=np.random.default_rng(0))
    assert result.exact
    assert result.slope == pytest.approx(2.0)
    # Only the observed order and its reversal reach |slope| = 2: p = 2/5!.
    assert result.p_permutation == pytest.approx(2 / 120)
    assert result.spearman == pytest.approx(1.0)
    # One block is too few layers for the EWC test over layers.
    assert math.isnan(result.p_value)


def test_trend_test_detects_a_monotone_trend_over_blocks():
    rng = np.random.default_rng(1)
    lams = np.array([0, 0.25, 0.5, 0.75, 1.0])
    offsets = rng.standard_normal(8) * 5  # blocks differ a lot; the fixed effects absorb it
    values = -0.5 * lams[:, None] + offsets[None, :] + 0.05 * rng.standard_normal((5, 8))
    result = trend_test(values, lams, n_resamples=999, rng=np.random.default_rng(2))
    assert not result.exact
    assert result.slope == pytest.approx(-0.5, abs=0.05)
    assert result.p_permutation == pytest.approx(1 / 1000)
    assert result.slope_ci_low < -0.5 < result.slope_ci_high
    assert result.p_value < 0.001
    assert result.page_p < 0.001


def test_the_slope_test_is_the_ewc_test_of_the_layers_own_slopes():
    """H0: the mean over layers of each layer's least-squares slope is 0 (layers in order)."""
    from robustness.stats.layers import layer_test

    rng = np.random.default_rng(7)
    lams = np.array([0, 0.25, 0.5, 0.75, 1.0])
    values = 0.2 * lams[:, None] + rng.standard_normal((5, 12))
    result = trend_test(values, lams, rng=np.random.default_rng(0))
    own = [np.polyfit(lams, values[:, b], 1)[0] for b in range(12)]
    assert result.slope == pytest.approx(np.mean(own))
    test = layer_test(np.array(own))
    assert result.p_value == pytest.approx(float(test.p_value[0]))
    assert result.slope_ci_low == pytest.approx(float(test.ci_low[0]))


def test_trend_test_without_trend_is_not_significant():
    rng = np.random.default_rng(3)
    lams = np.array([0, 0.25, 0.5, 0.75, 1.0])
    values = rng.standard_normal((5, 8))
    result = trend_test(values, lams, n_resamples=999, rng=np.random.default_rng(4))
    assert result.p_value > 0.05
    assert result.slope_ci_low < 0 < result.slope_ci_high


def test_trend_test_validates_its_input():
    with pytest.raises(ValueError, match="3 distinct levels"):
        trend_test(np.zeros((2, 3)), [0, 1], rng=np.random.default_rng(0))
    result = trend_test(np.full((3, 2), np.nan), [0, 0.5, 1], rng=np.random.default_rng(0))
    assert result.n_blocks == 0 and math.isnan(result.p_value)


def test_permutation_p_beyond_listed_orderings_matches_full_enumeration():
    """H0: the levels are exchangeable within the block. With 8 levels (8! = 40320 orderings,
    more than are listed) each draw permutes directly; its Monte Carlo p must agree with the
    exact p from enumerating every ordering of the one block (within 4 binomial SEs)."""
    import itertools

    rng = np.random.default_rng(11)
    levels = np.arange(8.0)
    values = (0.15 * levels + rng.normal(size=8))[:, None]
    result = trend_test(values, levels, rng=np.random.default_rng(0), n_resamples=20000)
    assert not result.exact
    xc = levels - levels.mean()
    slope = result.slope
    orderings = np.array(list(itertools.permutations(range(8))))
    null = (xc[orderings] @ (values[:, 0] - values.mean())) / np.sum(xc**2)
    exact = np.mean(np.abs(null) >= abs(slope) - 1e-12)
    se = np.sqrt(exact * (1 - exact) / 20000)
    assert abs(result.p_permutation - exact) < 4 * se + 1 / 20001
