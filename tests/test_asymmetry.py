"""The asymmetry tests against scipy on small cases, exact against Monte Carlo, and null calibration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from robustness.asymmetry import (
    label_permutation_null,
    layer_differences,
    sign_flip_null,
    spec_tests,
)
from robustness.specification import probe_scale

READ, WRITE = [0, 1], [2, 3]


def planted(rng, n_layers=8, n_specs=3, shift=0.0):
    s = rng.standard_normal((n_layers, 4, n_specs))
    s[:, READ] += shift
    return s


def test_exact_sign_flip_matches_scipy_permutation_test():
    rng = np.random.default_rng(0)
    s = planted(rng, shift=0.6)
    d = layer_differences(s, READ, WRITE)
    null = sign_flip_null(d, n_resamples=999, rng=rng)
    assert null.exact and null.n == 2**8
    for alternative in ("two-sided", "greater", "less"):
        ours = null.p_value(d.mean(axis=0), alternative)
        for j in range(d.shape[1]):
            ref = stats.permutation_test(
                (d[:, j],),
                np.mean,
                permutation_type="samples",
                n_resamples=np.inf,
                alternative=alternative,
            )
            assert ours[j] == pytest.approx(ref.pvalue, abs=1e-12), (alternative, j)


def test_monte_carlo_sign_flip_agrees_with_exact_and_counts_the_observed():
    rng = np.random.default_rng(1)
    d = layer_differences(planted(rng, n_layers=10, shift=0.4), READ, WRITE)
    exact = sign_flip_null(d, n_resamples=0, rng=rng).p_value(d.mean(axis=0))
    # Force Monte Carlo on the same data by enumerating over 17 layers' worth of limit.
    import robustness.asymmetry as asym

    limit, asym.EXACT_LIMIT = asym.EXACT_LIMIT, 2**8
    try:
        mc = sign_flip_null(d, n_resamples=20000, rng=rng)
    finally:
        asym.EXACT_LIMIT = limit
    assert not mc.exact
    p_mc = mc.p_value(d.mean(axis=0))
    assert np.all(np.abs(p_mc - exact) < 4 * np.sqrt(exact * (1 - exact) / 20000) + 1e-4)
    assert np.all(p_mc >= 1 / 20001)  # (1 + b)/(1 + B) is never zero


def test_bca_comparison_interval_is_scipys_on_the_layer_differences():
    rng = np.random.default_rng(2)
    s = planted(rng, n_layers=12, shift=0.5)
    out = spec_tests(
        s,
        READ,
        WRITE,
        layer_replicates=4000,
        n_resamples=500,
        rng=np.random.default_rng(9),
        with_bca=True,
    )
    d = layer_differences(s, READ, WRITE)
    ref = stats.bootstrap(
        (d[:, 0],),
        np.mean,
        n_resamples=4000,
        method="BCa",
        rng=np.random.default_rng(9),
        vectorized=True,
    )
    # Same data, same method; the resampling streams differ, so agree to Monte Carlo error.
    assert out.bca_low[0] == pytest.approx(ref.confidence_interval.low, abs=0.05)
    assert out.bca_high[0] == pytest.approx(ref.confidence_interval.high, abs=0.05)
    np.testing.assert_allclose(out.asymmetry, d.mean(axis=0))
    np.testing.assert_allclose(out.effect_size, d.mean(axis=0) / d.std(axis=0, ddof=1))


def test_studentized_interval_equals_a_plain_loop():
    from robustness.asymmetry import studentized_interval

    d = np.random.default_rng(3).standard_normal((10, 2)) + [0.3, -0.1]
    low, high = studentized_interval(
        d, confidence_level=0.9, replicates=2000, rng=np.random.default_rng(4)
    )
    rows = np.random.default_rng(4).integers(0, 10, size=(2000, 10))
    for j in range(2):
        t = []
        for r in rows:
            sample = d[r, j]
            t.append((sample.mean() - d[:, j].mean()) / (sample.std(ddof=1) / np.sqrt(10)))
        se = d[:, j].std(ddof=1) / np.sqrt(10)
        hi_t, lo_t = np.quantile(t, [0.95, 0.05])
        assert low[j] == pytest.approx(d[:, j].mean() - hi_t * se)
        assert high[j] == pytest.approx(d[:, j].mean() - lo_t * se)
    # Wider than the normal-theory interval's half-width is not required, but it must contain the mean.
    assert np.all((low < d.mean(0)) & (d.mean(0) < high))


def test_studentized_interval_with_three_layers_stays_finite():
    """A resample repeating one layer has no spread; it must not enter the t distribution."""
    from robustness.asymmetry import studentized_interval

    d = np.array([[0.1, 1.0], [0.4, 1.3], [0.25, 0.9]])  # values whose mean has round-off
    low, high = studentized_interval(
        d, confidence_level=0.95, replicates=4000, rng=np.random.default_rng(0)
    )
    spread = np.ptp(d, axis=0)
    assert np.all(np.isfinite(low) & np.isfinite(high))
    assert np.all((low < d.mean(0)) & (d.mean(0) < high))
    assert np.all(high - low < 100 * spread)  # bounds of order 1e14 were seen before


def test_label_permutation_exact_enumeration_matches_brute_force():
    rng = np.random.default_rng(3)
    s = planted(rng, n_layers=3, n_specs=2, shift=1.0)
    null = label_permutation_null(s, READ, WRITE, n_resamples=100, rng=rng)
    assert null.exact and null.n == 6**3
    # Brute force: every way to choose which two of four matrices are "read", per layer.
    import itertools

    combos = list(itertools.combinations(range(4), 2))
    values = []
    for choice in itertools.product(combos, repeat=3):
        per_layer = [
            s[l, list(c)].mean(0) - s[l, [i for i in range(4) if i not in c]].mean(0)
            for l, c in enumerate(choice)
        ]
        values.append(np.mean(per_layer, axis=0))
    observed = layer_differences(s, READ, WRITE).mean(axis=0)
    brute = np.mean(np.abs(np.array(values)) >= np.abs(observed) - 1e-12, axis=0)
    np.testing.assert_allclose(null.p_value(observed), brute)


def test_every_statistic_is_reproducible_from_its_seed():
    s = planted(np.random.default_rng(4), n_layers=20, shift=0.2)
    a = spec_tests(
        s, READ, WRITE, layer_replicates=300, n_resamples=300, rng=np.random.default_rng(5)
    )
    b = spec_tests(
        s, READ, WRITE, layer_replicates=300, n_resamples=300, rng=np.random.default_rng(5)
    )
    for name in ("ci_low", "ci_high", "p_signflip", "p_perm", "p_wy", "null_draws"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.joint == b.joint


def test_adjusted_p_values_are_ordered_sensibly():
    s = planted(np.random.default_rng(6), n_layers=10, n_specs=6, shift=0.3)
    out = spec_tests(
        s, READ, WRITE, layer_replicates=200, n_resamples=2000, rng=np.random.default_rng(7)
    )
    assert np.all(out.p_adj >= out.p_signflip - 1e-12)
    assert np.all(out.p_wy >= out.p_signflip - 1e-12)
    assert np.all((0 < out.p_wy) & (out.p_wy <= 1))


def test_ratio_normalisations_go_to_the_log_scale():
    np.testing.assert_allclose(
        probe_scale(np.array([1.0, 4.0, 0.0]), "isotropic"), [0.0, 2.0, np.nan]
    )
    np.testing.assert_allclose(probe_scale(np.array([0.5, -1.0]), "null_z"), [0.5, -1.0])


@pytest.mark.slow
def test_null_p_values_are_uniform():
    """Under no asymmetry, sign-flip and permutation p-values are uniform (KS over many seeds)."""
    p_flip, p_perm = [], []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        s = rng.standard_normal((20, 4, 1))
        d = layer_differences(s, READ, WRITE)
        p_flip.append(sign_flip_null(d, n_resamples=999, rng=rng).p_value(d.mean(0))[0])
        p_perm.append(
            label_permutation_null(s, READ, WRITE, n_resamples=999, rng=rng).p_value(d.mean(0))[0]
        )
    # Monte Carlo p-values live on a 1/1000 grid: compare with the discrete-uniform law.
    for p in (p_flip, p_perm):
        assert stats.kstest(p, "uniform").pvalue > 0.01
        assert 0.02 < np.mean(np.array(p) < 0.05) < 0.09


def test_bca_from_precomputed_replicates_matches_scipy():
    from robustness.resampling import bca_interval

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
