"""The asymmetry tests (robustness.stats.asymmetry): against scipy on small cases, exact against Monte
Carlo, null calibration, and brute-force references for Westfall–Young and the joint tests."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from robustness.stats.asymmetry import (
    label_permutation_null,
    layer_differences,
    sign_flip_null,
    spec_tests,
)

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
    import robustness.stats.asymmetry as asym

    limit, asym.EXACT_LIMIT = asym.EXACT_LIMIT, 2**8
    try:
        mc = sign_flip_null(d, n_resamples=20000, rng=rng)
    finally:
        asym.EXACT_LIMIT = limit
    assert not mc.exact
    p_mc = mc.p_value(d.mean(axis=0))
    assert np.all(np.abs(p_mc - exact) < 4 * np.sqrt(exact * (1 - exact) / 20000) + 1e-4)
    assert np.all(p_mc >= 1 / 20001)  # (1 + b)/(1 + B) is never zero


def test_the_verdicts_test_is_the_ewc_test_of_the_layer_differences():
    """spec_tests' p_value, interval and d_z are robustness.stats.layers' EWC test of D_l − A_0."""
    from robustness.stats.layers import hedges_correction, layer_test

    rng = np.random.default_rng(2)
    s = planted(rng, n_layers=12, shift=0.5)
    reference = np.array([0.0, 0.1, -0.2])
    out = spec_tests(
        s, READ, WRITE, reference=reference, n_resamples=500, rng=np.random.default_rng(9)
    )
    d = layer_differences(s, READ, WRITE)
    test = layer_test(d - reference)
    np.testing.assert_allclose(out.p_value, test.p_value)
    np.testing.assert_allclose(out.ci_low, test.ci_low + reference)
    np.testing.assert_allclose(out.ci_high, test.ci_high + reference)
    np.testing.assert_allclose(out.asymmetry, d.mean(axis=0))
    np.testing.assert_allclose(out.reference, reference)
    centred = d - reference
    np.testing.assert_allclose(
        out.effect_size, hedges_correction(12) * centred.mean(axis=0) / centred.std(axis=0, ddof=1)
    )


def test_studentized_interval_equals_a_plain_loop():
    from robustness.stats.asymmetry import studentized_interval

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
    from robustness.stats.asymmetry import studentized_interval

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
    a = spec_tests(s, READ, WRITE, n_resamples=300, rng=np.random.default_rng(5))
    b = spec_tests(s, READ, WRITE, n_resamples=300, rng=np.random.default_rng(5))
    for name in ("ci_low", "ci_high", "p_value", "p_signflip", "p_perm", "p_wy", "null_draws"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.joint == b.joint


def test_adjusted_p_values_are_ordered_sensibly():
    s = planted(np.random.default_rng(6), n_layers=10, n_specs=6, shift=0.3)
    out = spec_tests(s, READ, WRITE, n_resamples=2000, rng=np.random.default_rng(7))
    assert np.all(out.p_adj >= out.p_value - 1e-12)
    # Westfall–Young estimates each hypothesis' own null probability by Monte Carlo: at least
    # p_value up to that error (B = 2000 draws).
    error = 4 * np.sqrt(out.p_value * (1 - out.p_value) / 2000)
    assert np.all(out.p_wy >= out.p_value - error - 1e-12)
    assert np.all((0 < out.p_wy) & (out.p_wy <= 1))
    # Step-down is monotone in the observed order.
    order = np.argsort(out.p_value)
    assert np.all(np.diff(out.p_wy[order]) >= -1e-15)


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


# ---------------------------------------------------------------------------- brute-force references
#
# Written from the definitions with plain loops, sharing no code with robustness.stats.asymmetry or
# robustness.stats.layers: the layer differences, the cosine projections, the rotated series, the
# t-tests and the statistics are all recomputed here. Only the random rotations are drawn
# the same way (the same generator, seed and order), so that the Monte Carlo counts can be
# compared exactly.


def correlated(seed, n_layers, n_specs, shift, common=0.7):
    """``s [L, 4, J]``: specifications that share a layer effect (so they are dependent), read
    matrices shifted by ``shift``."""
    rng = np.random.default_rng(seed)
    s = common * rng.standard_normal((n_layers, 4, 1)) + rng.standard_normal((n_layers, 4, n_specs))
    s[:, READ] += shift
    return s


def brute_differences(s):
    """``D[l][j]``: mean of the two read matrices minus mean of the two write matrices."""
    n_layers, _, n_specs = s.shape
    return np.array([
        [(s[l, 0, j] + s[l, 1, j]) / 2 - (s[l, 2, j] + s[l, 3, j]) / 2 for j in range(n_specs)]
        for l in range(n_layers)
    ])  # fmt: skip


def brute_basis(n_layers, k):
    """The constant and k cosines, orthonormal rows, from their definition."""
    rows = [[1 / math.sqrt(n_layers)] * n_layers]
    for j in range(1, k + 1):
        rows.append(
            [
                math.sqrt(2 / n_layers) * math.cos(math.pi * j * (l + 0.5) / n_layers)
                for l in range(n_layers)
            ]
        )
    return np.array(rows)


def brute_ewc(series, k):
    """(t, two-sided p, one-sided p) of the EWC test of one series, from the definition."""
    basis = brute_basis(len(series), k)
    z = [sum(b * x for b, x in zip(row, series, strict=True)) for row in basis]
    omega = math.sqrt(sum(v * v for v in z[1:]) / k)
    t = z[0] / omega
    return t, 2 * stats.t.sf(abs(t), k), stats.t.sf(t, k)


def rotation_first_rows(seed, k, n):
    """The rotations' first rows as spec_tests draws them: after the sign flips and permutations."""
    return np.random.default_rng(seed)


def test_westfall_young_step_down_equals_a_plain_loop():
    """``step_down_min_p`` against Westfall & Young's (1993) algorithm 2.8 written with loops.

    Null hypothesis, for every hypothesis at once: the null draws' p-values (rows) have the
    law of the observed ones (columns dependent, the same draws for all). Reference: order the
    hypotheses by observed p; for each draw walk from the largest observed p down, keeping the
    running minimum of the draw's p-values over the hypotheses not yet passed; count the draws
    whose running minimum at hypothesis j is at most p_(j); p̃_(j) = (1 + count)/(1 + B), made
    monotone by a running maximum in the observed order.
    """
    from robustness.stats.layers import step_down_min_p

    rng = np.random.default_rng(11)
    for n_hyp, n_draws in ((1, 50), (4, 200), (7, 999)):
        cov = 0.6 + 0.4 * np.eye(n_hyp)
        null = (
            stats.norm.sf(np.abs(rng.multivariate_normal(np.zeros(n_hyp), cov, size=n_draws))) * 2
        )
        observed = stats.norm.sf(np.abs(rng.standard_normal(n_hyp) + 1.5)) * 2
        order = sorted(range(n_hyp), key=lambda j: observed[j])
        counts = [0] * n_hyp
        for row in null:
            running = math.inf
            for position in reversed(range(n_hyp)):
                running = min(running, row[order[position]])
                if running <= observed[order[position]]:
                    counts[position] += 1
        adjusted, best = [0.0] * n_hyp, 0.0
        for position, j in enumerate(order):
            best = max(best, (1 + counts[position]) / (1 + n_draws))
            adjusted[j] = min(best, 1.0)
        np.testing.assert_allclose(step_down_min_p(observed, null), adjusted, rtol=0, atol=1e-15)
        single = [(1 + sum(min(row) <= p for row in null)) / (1 + n_draws) for p in observed]
        assert np.all(step_down_min_p(observed, null) <= np.array(single) + 1e-15)


@pytest.mark.parametrize(
    ("seed", "n_layers", "n_specs", "shift", "alpha"),
    [(0, 8, 3, 0.5, 0.05), (1, 12, 3, 0.6, 0.2), (2, 16, 4, 0.5, 0.1), (3, 24, 5, 0.4, 0.05)],
)
def test_joint_tests_and_westfall_young_equal_a_brute_force_over_the_rotations(
    seed, n_layers, n_specs, shift, alpha
):
    """The joint tests and ``p_wy`` against a brute force over full rotated series.

    Null hypothesis: no read/write asymmetry in any specification, under the EWC test's
    assumptions: the (K+1) × J projections of the layer differences on the constant and K
    cosines have i.i.d. N(0, Σ) rows, so their law is invariant under any rotation O of
    the rows, the same O for every specification (which keeps their dependence). Monte
    Carlo over B random rotations, p = (1 + count)/(1 + B).

    For every draw the rotated series D* = Φᵀ O Φ D + (I − ΦᵀΦ) D (Φ the orthonormal
    projections, O a full orthogonal matrix whose first row is the drawn unit vector) is
    built explicitly and taken as if observed: from scratch, its mean, Hedges' d_z, the
    EWC t-test's two-sided and one-sided p-values; then the median d_z, the share with
    A > 0 and p < α (ties broken by Stouffer's Z), Stouffer's Z of the one-sided p-values,
    and each hypothesis' step-down running minimum. The code's shortcut (everything follows
    from the first row) must give the same numbers.
    """
    s = correlated(seed, n_layers, n_specs, shift)
    n_resamples = 199
    out = spec_tests(
        s, READ, WRITE, n_resamples=n_resamples, alpha=alpha, rng=np.random.default_rng(0)
    )
    d = brute_differences(s)
    k = max(2, round(0.4 * n_layers ** (2 / 3)))
    # Replay the generator: sign flips and label permutations draw first, then the rotations.
    rng = np.random.default_rng(0)
    if 2**n_layers > 65536:
        rng.choice(np.array([1.0, -1.0]), size=(n_resamples, n_layers))
    if 6**n_layers > 65536:
        rng.integers(0, 6, size=(n_resamples, n_layers))
    u = rng.standard_normal((n_resamples, k + 1))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    phi = brute_basis(n_layers, k)
    residual = d - phi.T @ (phi @ d)
    hedges = math.exp(
        math.lgamma((n_layers - 1) / 2) - math.lgamma((n_layers - 2) / 2)
    ) / math.sqrt((n_layers - 1) / 2)
    phi_inverse = statistics.NormalDist().inv_cdf

    def statistics_of(series):
        means, effects, two, greater = [], [], [], []
        for j in range(n_specs):
            column = series[:, j]
            mean = column.sum() / n_layers
            sd = math.sqrt(sum((x - mean) ** 2 for x in column) / (n_layers - 1))
            _, p_two, p_greater = brute_ewc(column, k)
            means.append(mean), effects.append(hedges * mean / sd)
            two.append(p_two), greater.append(p_greater)
        share = sum(m > 0 and p < alpha for m, p in zip(means, two, strict=True)) / n_specs
        z = sum(phi_inverse(1 - min(max(p, 1e-300), 1 - 1e-16)) for p in greater) / math.sqrt(
            n_specs
        )
        return statistics.median(effects), share, z, two

    observed = statistics_of(d)
    null = []
    for row in u:
        # A full orthogonal matrix with first row `row` (Householder reflection of e_1).
        e1 = np.zeros(k + 1)
        e1[0] = 1.0
        v = e1 - row
        householder = (
            np.eye(k + 1)
            if np.linalg.norm(v) < 1e-15
            else np.eye(k + 1) - 2 * np.outer(v, v) / (v @ v)
        )
        rotated = phi.T @ (householder @ (phi @ d)) + residual
        null.append(statistics_of(rotated))
    tie = 1e-9
    p_median = (1 + sum(m >= observed[0] - tie for m, _, _, _ in null)) / (1 + n_resamples)
    p_share = (1 + sum(
        sh > observed[1] + tie or (abs(sh - observed[1]) <= tie and z >= observed[2] - tie)
        for _, sh, z, _ in null
    )) / (1 + n_resamples)  # fmt: skip
    p_stouffer = (1 + sum(z >= observed[2] - tie for _, _, z, _ in null)) / (1 + n_resamples)
    joint = out.joint
    assert joint["n_null"] == n_resamples and joint["n_specifications"] == n_specs
    assert joint["median_effect"] == pytest.approx(observed[0], rel=1e-9)
    assert joint["share_significant"] == pytest.approx(observed[1], abs=1e-15)
    assert joint["stouffer_z"] == pytest.approx(observed[2], rel=1e-9)
    assert joint["p_median_effect"] == pytest.approx(p_median, abs=1e-15)
    assert joint["p_share_significant"] == pytest.approx(p_share, abs=1e-15)
    assert joint["p_stouffer_z"] == pytest.approx(p_stouffer, abs=1e-15)
    np.testing.assert_allclose(out.p_value, observed[3], rtol=1e-9)
    # Westfall–Young step-down over the same rotations, with loops.
    order = sorted(range(n_specs), key=lambda j: observed[3][j])
    counts = [0] * n_specs
    for _, _, _, two in null:
        running = math.inf
        for position in reversed(range(n_specs)):
            running = min(running, two[order[position]])
            counts[position] += running <= observed[3][order[position]] * (1 + 1e-12)
    expected, best = [0.0] * n_specs, 0.0
    for position, j in enumerate(order):
        best = max(best, (1 + counts[position]) / (1 + n_resamples))
        expected[j] = min(best, 1.0)
    np.testing.assert_allclose(out.p_wy, expected, rtol=0, atol=1e-12)
