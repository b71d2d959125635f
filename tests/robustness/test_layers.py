"""Inference over layers (robustness.stats.layers) and the pair model (robustness.stats.pairs).

References: the EWC statistic from its definition with plain loops; scipy's t, noncentral t
and F laws; the Hedges factor's closed form; and, under the tests' own assumptions (i.i.d.
Gaussian layers), the exact null laws by simulation (Kolmogorov–Smirnov).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from robustness.stats.layers import (
    MIN_LAYERS,
    RotationNull,
    cosine_projections,
    effective_layers,
    hedges_correction,
    lag1_autocorrelation,
    layer_interval,
    layer_test,
    noncentral_interval,
    projections_for,
)
from robustness.stats.pairs import pair_model


def test_the_number_of_projections_and_their_orthonormality():
    # K = max(2, round(0.4 L^(2/3))) (Lazarus, Lewis, Stock & Watson 2018), at least 2.
    assert [projections_for(n) for n in (4, 8, 12, 15, 16, 24, 30, 64, 80, 128)] == [
        2, 2, 2, 2, 3, 3, 4, 6, 7, 10,
    ]  # fmt: skip
    for n_layers, k in ((4, 2), (12, 2), (24, 3)):
        basis = cosine_projections(n_layers, k)
        np.testing.assert_allclose(basis @ basis.T, np.eye(k + 1), atol=1e-12)
    with pytest.raises(ValueError, match="`k` must lie in"):
        cosine_projections(3, 3)


def test_the_ewc_statistic_equals_its_definition():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((12, 3)) + [0.0, 0.5, -1.0]
    test = layer_test(d, confidence_level=0.9, null_mean=[0.0, 0.2, 0.0])
    k = 2
    for j, mu0 in enumerate((0.0, 0.2, 0.0)):
        z = [
            sum(d[l, j] * (1 / math.sqrt(12) if i == 0 else math.sqrt(2 / 12) * math.cos(math.pi * i * (l + 0.5) / 12))
                for l in range(12))
            for i in range(k + 1)
        ]  # fmt: skip
        omega = math.sqrt((z[1] ** 2 + z[2] ** 2) / k)
        t = (z[0] - math.sqrt(12) * mu0) / omega
        assert test.t[j] == pytest.approx(t)
        assert test.p_value[j] == pytest.approx(2 * stats.t.sf(abs(t), k))
        half = stats.t.ppf(0.95, k) * omega / math.sqrt(12)
        assert test.ci_low[j] == pytest.approx(d[:, j].mean() - half)
        assert test.ci_high[j] == pytest.approx(d[:, j].mean() + half)
    # The interval is the test's dual: μ0 outside the 90% interval exactly when p < 0.1.
    for mu0 in np.linspace(-2, 2, 41):
        dual = layer_test(d, confidence_level=0.9, null_mean=mu0)
        outside = (mu0 < dual.ci_low) | (mu0 > dual.ci_high)
        np.testing.assert_array_equal(outside, dual.p_value < 0.1)


def test_too_few_layers_or_a_nan_give_nan_not_an_error():
    assert MIN_LAYERS == 4
    short = layer_test(np.ones((3, 2)))
    assert np.isnan(short.p_value).all() and np.isnan(short.ci_low).all()
    d = np.random.default_rng(1).standard_normal((8, 2))
    d[3, 1] = np.nan
    out = layer_test(d)
    assert np.isfinite(out.p_value[0]) and np.isnan(out.p_value[1]) and np.isnan(out.ci_low[1])


@pytest.mark.slow
def test_under_its_assumptions_the_null_p_values_are_uniform():
    """H0: i.i.d. Gaussian layers with mean 0; the EWC t is then exactly t_K: p ~ U(0, 1)."""
    rng = np.random.default_rng(2)
    p = layer_test(rng.standard_normal((12, 4000))).p_value
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert 0.04 < np.mean(p < 0.05) < 0.06


@pytest.mark.slow
def test_the_rotation_null_has_the_t_law_for_every_column():
    """Rotated projections of Gaussian i.i.d. layers: each rotated t is t_K (the exact marginal)."""
    rng = np.random.default_rng(3)
    d = rng.standard_normal((16, 3))
    z = layer_test(d).projections
    k = projections_for(16)
    null = RotationNull.draw(k, 16, n_resamples=20000, rng=rng)
    # For a fixed Z the rotated z_0* is ‖Z_j‖ u_1-like: its t has the t_K law whatever Z is.
    for j in range(3):
        assert stats.kstest(null.t(z)[:, j], stats.t(k).cdf).pvalue > 0.001
    # The series' mean and norm: A* = z_0*/√L; ‖d‖² keeps the rotated d_z finite.
    np.testing.assert_allclose(null.asymmetry(z), null.z0(z) / 4)
    assert np.isfinite(null.effect_size(z, np.sum(d**2, axis=0))).all()


def test_the_hedges_factor_and_the_noncentral_interval():
    for n_layers in (4, 8, 24):
        nu = n_layers - 1
        exact = math.gamma(nu / 2) / (math.sqrt(nu / 2) * math.gamma((nu - 1) / 2))
        assert hedges_correction(n_layers) == pytest.approx(exact, rel=1e-12)
        if nu >= 7:  # Hedges' approximation 1 − 3/(4ν − 1)
            assert hedges_correction(n_layers) == pytest.approx(1 - 3 / (4 * nu - 1), abs=1e-3)
    assert math.isnan(hedges_correction(2))
    for t, df in ((3.0, 2), (30.0, 2), (-5.0, 3), (0.1, 10)):
        low, high = noncentral_interval(t, df, 0.95)
        assert stats.nct.sf(t, df, low) == pytest.approx(0.025, abs=1e-9)
        assert stats.nct.cdf(t, df, high) == pytest.approx(0.025, abs=1e-9)
        assert low < t < high or (t < 0 and low < t)
    assert noncentral_interval(math.nan, 2, 0.95) == (math.nan, math.nan) or all(
        math.isnan(x) for x in noncentral_interval(math.nan, 2, 0.95)
    )


def test_autocorrelation_and_effective_layers():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    centred = x - x.mean()
    r = np.sum(centred[1:] * centred[:-1]) / np.sum(centred**2)
    assert float(lag1_autocorrelation(x)[0]) == pytest.approx(r)
    assert float(effective_layers(x)[0]) == pytest.approx(6 * (1 - r) / (1 + r))
    alternating = np.array([1.0, -1.0] * 4)
    assert float(effective_layers(alternating)[0]) == 8.0  # clipped to L


def test_layer_interval_keeps_the_other_dimensions():
    rng = np.random.default_rng(4)
    per_layer = xr.DataArray(rng.standard_normal((10, 2, 3)), dims=("layer", "a", "b"))
    bounds = layer_interval(per_layer, confidence_level=0.95)
    assert bounds["ci_low"].dims == ("a", "b")
    test = layer_test(per_layer.values.reshape(10, -1))
    np.testing.assert_allclose(bounds["p_value"].values.ravel(), test.p_value)


def test_the_pair_model_f_test_is_the_squared_t_for_two_pairs_and_holds_its_level():
    """H0 (difference): every pair has the same mean D; with two pairs F(1, K) = t_K² of the contrast."""
    rng = np.random.default_rng(5)
    d = rng.standard_normal((16, 2)) + [0.3, 0.3]
    model = pair_model(d, ["a", "b"], confidence_level=0.95)
    contrast = layer_test(d[:, 1] - d[:, 0])
    assert model["difference"]["F"] == pytest.approx(float(contrast.t[0]) ** 2)
    assert model["difference"]["p_value"] == pytest.approx(float(contrast.p_value[0]))
    assert model["overall"]["estimate"] == pytest.approx(d.mean())
    # Three pairs, K = 2 projections (12 layers): F(2, 1).
    three = pair_model(rng.standard_normal((12, 3)), ["a", "b", "c"], confidence_level=0.95)
    assert three["difference"]["df"] == [2, 1] and np.isfinite(three["difference"]["F"])
    # Four pairs need three projections; 12 layers give two: NaN and a note.
    four = pair_model(rng.standard_normal((12, 4)), list("abcd"), confidence_level=0.95)
    assert (
        math.isnan(four["difference"]["p_value"])
        and "need at least 3" in four["difference"]["note"]
    )
    # Null level of the three-pair F test (i.i.d. Gaussian layers), by simulation.
    p = [pair_model(rng.standard_normal((24, 3)), list("abc"), confidence_level=0.95)["difference"]["p_value"]
         for _ in range(1500)]  # fmt: skip
    assert 0.03 < np.mean(np.array(p) < 0.05) < 0.07
