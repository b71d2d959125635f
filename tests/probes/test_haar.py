"""The Haar reference (probes/haar.py): ``E[log2 F/(k/d)]`` under a Haar-random k-subspace, from a
delta's spectrum, against closed forms and against simulation.

Null hypothesis of each simulation check: the computed reference equals the mean of
``log2 F/(k/d)`` over Haar frames; it is rejected when the two differ by more than the
0.01 log2 the claims need plus three standard errors of the 20 000-draw simulation (whose own
error is large where ``log F`` is heavy-tailed: rank-1 at k = 1). Assumption: ``qr`` of a
Gaussian ``[d, k]`` is a Haar frame (Mezzadri 2007).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

import probes
from probes.haar import _log_weighted_chi2

D = 96
SPECTRA = {
    "rank-1": np.r_[1.0, np.zeros(D - 1)],
    "rank-4": np.r_[np.full(4, 0.25), np.zeros(D - 4)],
    "power-law": (lambda x: x / x.sum())(np.arange(1, D + 1) ** -1.5),
    "spike-plus-floor": np.r_[0.9, np.full(D - 1, 0.1 / (D - 1))],
}


def simulated(g, k, n=20000, seed=0):
    """``(mean, standard error)`` of ``log2 F/(k/d)`` over `n` Haar frames (qr of a Gaussian)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n // 1000):
        q, _ = np.linalg.qr(rng.standard_normal((1000, D, k)))
        values.append(np.log2(np.einsum("ndk,ndk->nd", q, q) @ g / (k / D)))
    values = np.concatenate(values)
    return float(values.mean()), float(values.std() / math.sqrt(values.size))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPECTRA))
@pytest.mark.parametrize("k", [1, 2, 4, 8, 64])
def test_the_reference_matches_a_20000_draw_simulation(name, k):
    g = SPECTRA[name]
    got = float(probes.haar_log2_ratio_mean(k, D, spectrum=g))
    mean, error = simulated(g, k, seed=k)
    assert abs(got - mean) <= 0.01 + 3 * error, (got, mean, error)


def test_rank_one_is_the_beta_law_exactly_at_every_k():
    """A rank-1 delta's F is Beta(k/2, (d − k)/2): E[log F] = ψ(k/2) − ψ(d/2), in closed form."""
    g = SPECTRA["rank-1"]
    for k in (1, 2, 3, 8, 31, 64, D):
        expected = (special.digamma(k / 2) - special.digamma(D / 2) - math.log(k / D)) / math.log(2)
        got = float(probes.haar_log2_ratio_mean(k, D, spectrum=g))
        assert got == pytest.approx(expected if k < D else 0.0, abs=1e-10)


def test_frullani_integral_against_its_closed_form_and_quadrature():
    """E[log Σ g X] with X ~ χ²_k: ψ(k/2) + log 2 for one unit weight; an adaptive quadrature of the
    same integral for a spread spectrum agrees to 1e-9."""
    from scipy import integrate

    for k in (1, 2, 5):
        assert _log_weighted_chi2(np.array([[1.0, 0.0]]), k)[0] == pytest.approx(
            special.digamma(k / 2) + math.log(2), abs=1e-10
        )
    g = SPECTRA["power-law"]

    def integrand(s):
        return (math.exp(-s) - math.exp(-1.5 * float(np.sum(np.log1p(2 * s * g))))) / s

    by_quad = sum(
        integrate.quad(integrand, a, b, limit=500, epsabs=1e-13)[0]
        for a, b in ((0, 1e-6), (1e-6, 1), (1, 1e4), (1e4, np.inf))
    )
    assert _log_weighted_chi2(g[None, :], 3)[0] == pytest.approx(by_quad, abs=1e-9)


def test_spike_plus_floor_at_small_k_is_where_the_moment_law_failed():
    """The moment-matched Beta law (all a Gram purity allows) is 0.5 log2 too low at k = 1 for one
    dominant direction over a full-rank floor; from the spectrum the reference is exact there."""
    g = SPECTRA["spike-plus-floor"]
    purity = float(np.sum(g**2))
    from_purity = float(probes.haar_log2_ratio_mean(1, D, purity))
    exact = float(probes.haar_log2_ratio_mean(1, D, spectrum=g))
    mean, error = simulated(g, 1)
    assert abs(exact - mean) < 3 * error + 0.01
    assert from_purity < exact - 0.4  # the old approximation leaned to "supported"


def test_equal_spectra_share_one_value_whatever_else_is_computed_beside_them():
    """Seeded frames per (d, k), each cell's estimate frozen at its own precision: a cell's value does
    not depend on its companions, and undefined k or a zero delta give NaN."""
    g = SPECTRA["power-law"]
    alone = probes.haar_log2_ratio_mean(4, D, spectrum=g)
    together = probes.haar_log2_ratio_mean(
        np.array([4, 4, 4, -1]),
        D,
        spectrum=np.stack([g, SPECTRA["rank-4"], g, g]),
    )
    assert together[0] == together[2] == float(alone)
    assert np.isnan(together[3])
    assert np.isnan(probes.haar_log2_ratio_mean(4, D, spectrum=np.full(D, np.nan)))
    isotropic = probes.haar_log2_ratio_mean(
        np.array([1, 8, 40]), D, spectrum=np.full((3, D), 1 / D)
    )
    np.testing.assert_allclose(isotropic, 0.0, atol=1e-9)  # F = k/d for every subspace
