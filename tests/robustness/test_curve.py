"""The specification curve's bookkeeping (robustness.stats.curve) and the Haar reference (probes.fraction).

References: the exact law of F for a rank-1 delta (Beta(k/2, (d−k)/2), E[log F] by digamma);
Monte Carlo over Haar bases for a rank-2 delta; a complete crossed grid, where the shares of
the sum of squares are the balanced ANOVA's and sum to one.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special

import probes
from robustness.stats import curve


def test_haar_reference_is_exact_for_a_rank_one_delta():
    d = 128
    for k, paper in ((8, -0.18), (4, -0.38), (2, -0.82)):
        exact = (special.digamma(k / 2) - special.digamma(d / 2) - math.log(k / d)) / math.log(2)
        assert float(probes.haar_log2_ratio_mean(k, d, 1.0)) == pytest.approx(exact, rel=1e-10)
        assert exact == pytest.approx(paper, abs=0.005)
    assert float(probes.haar_log2_ratio_mean(d, d, 1.0)) == 0.0
    assert float(probes.haar_log2_ratio_mean(8, d, 1 / d)) == 0.0  # isotropic delta: F = k/d
    assert np.isnan(probes.haar_log2_ratio_mean(-1, d, 0.5))


def test_haar_reference_against_simulation_for_a_rank_two_delta():
    """Monte Carlo over Haar bases; the Beta law with the exact first two moments is close."""
    rng = np.random.default_rng(0)
    d = 64
    delta = rng.standard_normal((d, 2)) @ rng.standard_normal((2, d))
    purity = probes.gram_purity(delta)
    draws = {2: [], 4: [], 8: []}
    for _ in range(4000):
        profile = probes.fraction_profile(
            delta, probes.random_subspace(d, rng=rng, k=8).basis, pathway="read"
        )
        for k in draws:
            draws[k].append(math.log2(profile[k - 1] / (k / d)))
    for k, values in draws.items():
        values = np.array(values)
        error = 4 * values.std() / math.sqrt(values.size)
        assert float(probes.haar_log2_ratio_mean(k, d, purity)) == pytest.approx(
            values.mean(), abs=error + 0.02
        )
    assert float(probes.haar_reference("fraction", 4, d, purity)) == 4 / d
    assert float(probes.haar_reference("null_z", 4, d, purity)) == 0.0
    assert np.isnan(probes.haar_reference("base_relative", 4, d, purity))


def test_duplicates_and_counted_specifications():
    specs = [("act_cov", "k=4", "isotropic"), ("act_cov", "k=4", "log_isotropic"),
             ("act_cov", "k=8", "log_isotropic"), ("random", "k=4", "log_isotropic"),
             ("weight_svd", "k=4", "fraction")]  # fmt: skip
    s = np.random.default_rng(1).standard_normal((6, 4, 5))
    s[..., 1] = s[..., 0]  # log2 of the isotropic ratio is log_isotropic itself
    s[..., 2] = s[..., 0]  # equal values at another cutoff: another question, not a duplicate
    dup = curve.duplicates(s, specs)
    # log_isotropic (the statistics' scale) is the one kept.
    assert dup == ["act_cov/k=4/log_isotropic", "", "", "", ""]
    np.testing.assert_array_equal(curve.counted_mask(specs, dup), [False, True, True, False, False])
    # The preferred specification is kept whatever its name.
    assert curve.duplicates(s, specs, ("act_cov", "k=4", "isotropic"))[:2] == [
        "",
        "act_cov/k=4/isotropic",
    ]
    # Undefined specifications (NaN everywhere) are not duplicates of each other.
    s[..., 3] = np.nan
    s[..., 4] = np.nan
    specs[4] = ("random", "k=4", "fraction")
    assert curve.duplicates(s, specs)[3:] == ["", ""]


def test_references_are_the_haar_difference_for_random_only():
    specs = [("act_cov", "k=4", "log_isotropic"), ("random", "k=4", "log_isotropic")]
    k = np.full((3, 4, 2), 4)
    purity = np.array([[1.0, 0.5, 0.2, 1 / 24]] * 3)
    ref = curve.references(k, purity, specs, [0, 1], [2, 3], 24)
    expected = probes.haar_log2_ratio_mean(4, 24, purity[0])
    assert (ref[:, 0] == 0).all()
    np.testing.assert_allclose(ref[:, 1], expected[:2].mean() - expected[2:].mean())


def test_variance_shares_on_a_complete_grid_are_the_balanced_anova_and_sum_to_one():
    rng = np.random.default_rng(2)
    rows = [dict(construction=c, cutoff=k, normalisation=n, effect_size=rng.standard_normal() + 2 * (c == "a"))
            for c in "abc" for k in ("k=4", "k=8") for n in ("x", "y", "z")]  # fmt: skip
    frame = pd.DataFrame(rows)
    shares = curve.variance_shares(frame)
    assert sum(shares.values()) == pytest.approx(1.0)
    y = frame.effect_size.to_numpy()
    total = np.sum((y - y.mean()) ** 2)
    main = frame.groupby("construction").effect_size.transform("mean").to_numpy() - y.mean()
    assert shares["construction"] == pytest.approx(np.sum(main**2) / total)
    assert {"construction×cutoff", "construction×normalisation", "cutoff×normalisation"} <= set(
        shares
    )
    assert shares["residual"] > 0


def test_specifications_with_unmatched_read_and_write_ranks_are_not_counted():
    """A cutoff choosing k = 1 on the write side (a massive activation direction) and k = 40 on the
    read side at one layer compares a direction with a subspace: not counted, with the reason; a
    4-fold difference is still matched, undefined ranks (−1) are ignored."""
    k = np.full((3, 4, 3), 8)  # [layer, matrix (q, k, o, down), specification]
    k[1, 2:, 1] = 1  # spec 1: write k = 1 at layer 1
    k[1, :2, 1] = 40
    k[0, 2:, 2] = 2  # spec 2: read 8, write 2: exactly 4-fold
    k[2, 3, 2] = -1
    mask, reasons = curve.matched_k(k, [0, 1], [2, 3])
    assert mask.tolist() == [True, False, True]
    assert reasons[1] == (
        "read and write ranks differ 40-fold at layer 1 (read k = 40–40, write k = 1–1): more than "
        "4-fold, unlike subspaces"
    )
    specs = [("act_cov", "k=8", "log_isotropic"), ("act_cov", "var=0.9", "log_isotropic"),
             ("random", "k=8", "log_isotropic")]  # fmt: skip
    assert curve.counted_mask(specs, ["", "", ""], mask).tolist() == [True, False, False]
