"""The asymmetry tests (robustness.asymmetry): against scipy on small cases, exact against Monte
Carlo, null calibration, and brute-force references for Westfall–Young and the joint tests."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from robustness.asymmetry import (
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
# Written from the definitions with plain loops over every sign vector, sharing no code with
# robustness.asymmetry: the layer differences, the enumerated null, the per-arrangement p-values
# and the statistics are all recomputed here.

TIE = 1e-9  # "at least as extreme": the data are continuous, so only ε and −ε tie in |A|


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
    return [
        [(s[l, 0, j] + s[l, 1, j]) / 2 - (s[l, 2, j] + s[l, 3, j]) / 2 for j in range(n_specs)]
        for l in range(n_layers)
    ]


def brute_asymmetry(signs, d, j):
    """``A_j(ε) = mean_l ε_l D_lj``."""
    return sum(e * row[j] for e, row in zip(signs, d, strict=True)) / len(d)


def brute_p_values(d, all_signs):
    """For differences ``d``: per specification, its two-sided and one-sided (greater) p-values
    within the enumerated null ``{A_j(η d) : η}``."""
    n_specs = len(d[0])
    two, greater = [], []
    for j in range(n_specs):
        observed = brute_asymmetry([1.0] * len(d), d, j)
        null = [brute_asymmetry(eta, d, j) for eta in all_signs]
        two.append(sum(abs(a) >= abs(observed) - TIE for a in null) / len(null))
        greater.append(sum(a >= observed - TIE for a in null) / len(null))
    return two, greater


def test_westfall_young_equals_a_brute_force_single_step_min_p():
    """Westfall–Young adjusted p-values (``p_wy``) against a brute-force single-step min-p.

    Null hypothesis, for every specification at once: no read/write asymmetry, i.e. each
    layer's vector of differences (D_l1, …, D_lJ) is symmetric about zero, so under the null
    all 2^L sign vectors ε (whole layers flipped, the same ε for every specification, which
    keeps the specifications' dependence) are equally likely. Assumptions: L = 5 layers, so
    all 32 vectors are enumerated (exact: p = count / 32, the observed arrangement among
    them); continuous data, so only ε and −ε give the same |A| (checked below).

    Reference, single-step min-p (what spec_tests does today; a step-down version will
    replace it, and this reference with it): for every ε, p_j(ε) is the two-sided p-value of
    A_j(ε) = mean_l ε_l D_lj within column j of the enumerated null, m(ε) = min_j p_j(ε), and
    p_wy_j = #{ε : m(ε) ≤ p_j} / 32, with p_j the observed two-sided sign-flip p.
    """
    n_layers, n_specs = 5, 3
    s = correlated(1, n_layers, n_specs, shift=0.6)
    out = spec_tests(
        s, READ, WRITE, layer_replicates=100, n_resamples=10, rng=np.random.default_rng(0)
    )
    assert out.signflip_exact
    d = brute_differences(s)
    all_signs = list(itertools.product((1.0, -1.0), repeat=n_layers))
    assert len(all_signs) == 32
    # Continuous data: distinct |A| values in a column are far apart (ε and −ε aside).
    for j in range(n_specs):
        values = sorted({round(abs(brute_asymmetry(e, d, j)), 12) for e in all_signs})
        assert len(values) == 16 and min(np.diff(values)) > 1e-6
    observed_p, _ = brute_p_values(d, all_signs)
    min_p = []
    for eps in all_signs:
        flipped = [[e * x for x in row] for e, row in zip(eps, d, strict=True)]
        two, _ = brute_p_values(flipped, all_signs)
        min_p.append(min(two))
    reference = [sum(m <= p + 1e-12 for m in min_p) / 32 for p in observed_p]
    np.testing.assert_allclose(out.p_signflip, observed_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.p_wy, reference, rtol=0, atol=1e-12)
    # Not a trivial case: the adjustment moves every p-value, and not all to 1.
    assert np.all(out.p_wy > out.p_signflip) and np.all(out.p_wy < 1)


@pytest.mark.parametrize(
    ("seed", "n_layers", "n_specs", "shift", "alpha"),
    [(0, 5, 3, 0.5, 0.05), (1, 5, 3, 0.6, 0.2), (2, 6, 4, 0.5, 0.1), (3, 7, 5, 0.4, 0.05)],
)
def test_joint_tests_equal_a_brute_force_over_every_sign_vector(
    seed, n_layers, n_specs, shift, alpha
):
    """The joint tests (``spec_tests(...).joint``) against a brute force over every sign vector.

    Null hypothesis: no read/write asymmetry in any specification; each layer's vector of
    differences (D_l1, …, D_lJ) is symmetric about zero, so all 2^L sign vectors ε, the same
    for every specification, are equally likely. Assumptions: L ≤ 7, so spec_tests enumerates
    every vector (exact: p = count / 2^L, the observed arrangement among them); L ≥ 2 so
    that d_z is defined; continuous data, so that only ε and −ε tie in |A|.

    For every ε the flipped differences ε_l D_lj are taken as if observed, and from scratch:
    A_j = mean over layers; Cohen's d_z = A_j / sd_j (ddof 1); the two-sided and one-sided
    (greater) p-values of A_j among all η applied to the flipped differences; then

    - median effect: the median over specifications of d_z;
    - share significant: the share of specifications with A_j > 0 (read > write) and
      two-sided p_j < alpha; as it ties often, ties are broken by Stouffer's Z, so the
      statistic is (share, Z) in lexicographic order;
    - Stouffer's Z: Σ_j Φ⁻¹(1 − p⁺_j) / √J with p⁺_j the one-sided p clipped to
      [1/(2^L + 1), 1 − 1/(2^L + 1)].

    Each p-value is the share of the 2^L arrangements whose statistic is at least the
    observed one (ε = all ones).
    """
    s = correlated(seed, n_layers, n_specs, shift)
    out = spec_tests(
        s,
        READ,
        WRITE,
        layer_replicates=100,
        n_resamples=10,
        alpha=alpha,
        rng=np.random.default_rng(0),
    )
    d = brute_differences(s)
    all_signs = list(itertools.product((1.0, -1.0), repeat=n_layers))
    n = len(all_signs)
    floor = 1 / (n + 1)
    phi_inverse = statistics.NormalDist().inv_cdf

    def joint_statistics(eps):
        flipped = [[e * x for x in row] for e, row in zip(eps, d, strict=True)]
        effects = []
        for j in range(n_specs):
            column = [row[j] for row in flipped]
            mean = sum(column) / n_layers
            sd = math.sqrt(sum((x - mean) ** 2 for x in column) / (n_layers - 1))
            effects.append((mean, mean / sd))
        two, greater = brute_p_values(flipped, all_signs)
        median = statistics.median(dz for _, dz in effects)
        share = sum(a > 0 and p < alpha for (a, _), p in zip(effects, two, strict=True)) / n_specs
        z = sum(phi_inverse(1 - min(max(p, floor), 1 - floor)) for p in greater)
        return median, share, z / math.sqrt(n_specs)

    observed = joint_statistics((1.0,) * n_layers)
    null = [joint_statistics(eps) for eps in all_signs]
    p_median = sum(m >= observed[0] - TIE for m, _, _ in null) / n
    p_share = (
        sum(
            share > observed[1] + TIE
            or (abs(share - observed[1]) <= TIE and z >= observed[2] - TIE)
            for _, share, z in null
        )
        / n
    )
    p_stouffer = sum(z >= observed[2] - TIE for _, _, z in null) / n

    joint = out.joint
    assert joint["exact"] and joint["n_null"] == n and joint["n_specifications"] == n_specs
    assert joint["median_effect"] == pytest.approx(observed[0], rel=1e-12)
    assert joint["share_significant"] == pytest.approx(observed[1], abs=1e-15)
    assert joint["stouffer_z"] == pytest.approx(observed[2], rel=1e-12)
    assert joint["p_median_effect"] == pytest.approx(p_median, abs=1e-15)
    assert joint["p_share_significant"] == pytest.approx(p_share, abs=1e-15)
    assert joint["p_stouffer_z"] == pytest.approx(p_stouffer, abs=1e-15)
