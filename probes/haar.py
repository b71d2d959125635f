"""The Haar reference: what F(k) and its log ratio do under a uniformly random k-dim subspace.

For a fixed delta with normalised Gram spectrum ``g = eig(G)/tr G`` (``Σ g = 1``)
and a Haar-random k-dimensional subspace of ``R^d`` with orthonormal frame
``Q [d, k]``, ``F = Σ_i g_i h_i`` where ``h_i = ‖Qᵀe_i‖²`` are the frame's
leverages (in the eigenbasis of G). Its first two moments are closed forms
(the second moment of the trace of a uniformly rotated projection; Collins &
Śniady 2006, Weingarten calculus for O(d)):

    E[F] = k/d,     Var[F] = 2k(d−k) / (d(d−1)(d+2)) · (Σ g_i² − 1/d).

The **Haar reference** of a log ratio is ``E[log2 (F/(k/d))]``. It is not
zero (the log is concave): a low-rank delta, whose F varies a lot from
subspace to subspace, has a negative reference, so a level is measured against
it, never against 0. :func:`haar_log2_ratio_mean` computes it from the
spectrum:

- ``k = 1``: exactly. The frame is a uniform unit vector ``z/‖z‖``, so
  ``F = Σ g_i z_i² / Σ z_i²`` is a ratio of quadratic forms in independent
  Gaussians, and ``E[log F] = E[log Σ g_i X_i] − E[log Σ X_i]`` with
  ``X_i ~ χ²_1``: the second term is ``ψ(d/2) + log 2``, the first Frullani's
  integral ``E[log Y] = ∫_0^∞ (e^{−s} − E[e^{−sY}]) ds/s`` with the Laplace
  transform ``E[e^{−sY}] = Π_i (1 + 2 s g_i)^{−1/2}`` (one numerical quadrature).
- ``2 ≤ k < 32``: the same integral gives, exactly, ``E[log F']`` for the
  Gaussian-frame ratio ``F' = k Σ g_i X_i / Σ X_i`` with ``X_i = ‖Zᵀe_i‖² ~ χ²_k``
  (``Z [d, k]`` Gaussian, not orthonormalised); a seeded Monte Carlo over Haar
  frames ``Q = qr(Z)`` adds ``E[log F − log F']``. The difference is a control
  variate: ``F/F' = tr(A⁻¹B) tr(A)/(k tr B)`` with ``A = ZᵀZ``, ``B = ZᵀGZ``
  lies between ``tr A/(k λ_max(A))`` and ``tr A/(k λ_min(A))`` whatever the
  spectrum, so its spread is small (0.06–0.18 log2 at d = 128) where ``log F``
  itself is heavy-tailed. Draws continue in batches until the standard error
  is below :data:`HAAR_STANDARD_ERROR` (at most :data:`HAAR_MAX_DRAWS`); the
  frames are common to every spectrum of one ``(d, k)`` and seeded by them.
- ``k ≥ 32``, and a rank-1 delta at any k: a Beta law with the mean and
  variance above, ``E[log F] = ψ(a) − ψ(a + b)`` (exact for a rank-1 delta,
  where ``F ~ Beta(k/2, (d−k)/2)``; within 0.005 log2 of 20 000-draw
  simulations at k = 32 and 64 for rank-4, power-law and spike-plus-floor
  spectra).

Without a spectrum (results written before it was stored) only the Beta law
from the Gram purity ``Σ g²`` is possible; it is off by up to −0.5 log2 at
k = 1 for one dominant direction over a full-rank floor (always too
negative), so callers say when they fall back to it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "HAAR_EXACT_BELOW",
    "HAAR_MAX_DRAWS",
    "HAAR_STANDARD_ERROR",
    "haar_log2_ratio_mean",
    "haar_mean",
    "haar_reference",
    "haar_variance",
]

HAAR_EXACT_BELOW = 32  # k from here on: the moment-matched Beta law
HAAR_STANDARD_ERROR = 0.002  # log2: the Monte Carlo part's target standard error
HAAR_MAX_DRAWS = 16000
_BATCH = 500


def haar_mean(k, d):
    """``E[F(k)] = k/d`` for a Haar-random k-dimensional subspace of ``R^d``."""
    return np.asarray(k, dtype=np.float64) / d


def haar_variance(k, d, g=None, *, purity: float | None = None):
    """Variance of F(k) over Haar-random k-dimensional subspaces of ``R^d``.

    ``Var[F] = 2k(d−k)/(d(d−1)(d+2)) · (Σ g_i² − 1/d)`` with `g` the normalised
    Gram spectrum (zeros may be omitted), or its ``purity = Σ g_i²`` given
    directly. Vectorised over `k`.
    """
    if d < 2:
        raise ValueError(f"`d` must be at least 2, got {d}")
    if (g is None) == (purity is None):
        raise ValueError("give exactly one of `g` (the Gram spectrum) and `purity`")
    k = np.asarray(k, dtype=np.float64)
    if purity is None:
        purity = float(np.sum(np.square(np.asarray(g, dtype=np.float64))))
    return 2.0 * k * (d - k) / (d * (d - 1.0) * (d + 2.0)) * (purity - 1.0 / d)


def _beta_log2_ratio(k, d: int, purity):
    """The moment-matched Beta law's ``E[log2 F/(k/d)]``: ``a + b = m(1−m)/v − 1``, ``a = m(a + b)``."""
    from scipy import special

    k = np.asarray(k, dtype=np.float64)
    purity = np.asarray(purity, dtype=np.float64)
    m = k / d
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(k >= 1, haar_variance(np.clip(k, 1, d), d, purity=purity), np.nan)
        total = m * (1.0 - m) / v - 1.0
        value = (special.digamma(m * total) - special.digamma(total) - np.log(m)) / math.log(2.0)
    value = np.where((v <= 0) | (k >= d), 0.0, value)  # isotropic delta or the whole space
    return np.where((k >= 1) & np.isfinite(purity), value, np.nan)


_NODES = np.arange(-40.0, 120.0 + 1e-9, 0.2)  # t = log s: Frullani's integral on the line


def _log_weighted_chi2(spectra: np.ndarray, k: int) -> np.ndarray:
    """``E[log Σ g_i X_i]`` with ``X_i ~ χ²_k`` independent, for each row `g` of `spectra` ``[C, r]``.

    Frullani's integral in ``t = log s``: ``∫ (e^{−s} − Π_i (1 + 2 s g_i)^{−k/2}) dt``.
    Both terms tend to 1 as ``s → 0`` (their difference vanishes like ``s``:
    below ``e^{−40}`` at the lower end) and to 0 as ``s → ∞`` (like
    ``s^{−k·rank/2}``, so below ``e^{−60}`` at the upper end). The integrand is
    analytic in the strip ``|Im t| < π`` (the logarithms' branch points sit on
    its edge), so the trapezoidal rule converges geometrically: with step 0.2
    its error is of order ``e^{−2π²/0.2}``, far below rounding (checked against
    the closed form of a rank-1 spectrum, ``ψ(k/2) + log 2``).
    """
    s = np.exp(_NODES)
    out = np.empty(spectra.shape[0])
    for row, g in enumerate(spectra):
        g = g[g > 0]
        log_laplace = -0.5 * k * np.log1p(2.0 * s[:, None] * g[None, :]).sum(axis=1)
        integrand = np.exp(-s) - np.exp(log_laplace)
        out[row] = 0.2 * (integrand.sum() - 0.5 * (integrand[0] + integrand[-1]))
    return out


def _gaussian_frame_log(spectra: np.ndarray, k: int, d: int) -> np.ndarray:
    """``E[log F']`` (natural log) for ``F' = k Σ g_i X_i / Σ X_i``, ``X_i ~ χ²_k``, ``Σ X ~ χ²_{dk}``."""
    from scipy import special

    return (
        math.log(k)
        + _log_weighted_chi2(spectra, k)
        - (special.digamma(0.5 * d * k) + math.log(2.0))
    )


def _frame_correction(spectra: np.ndarray, k: int, d: int, seed: int) -> np.ndarray:
    """``E[log F − log F']`` (natural log) for each row of `spectra` ``[C, d]``, by Haar frames.

    The frames are one seeded stream per ``(seed, d, k)``, drawn in batches; each
    spectrum's estimate is frozen at the first batch where its standard error is
    below the target, so it depends on its own spectrum and the stream only,
    never on which other spectra are computed beside it.
    """
    rng = np.random.default_rng([int(seed), int(d), int(k), 0x4A1A])
    batch = int(np.clip((1 << 24) // (d * k), 16, _BATCH))  # ≤ 128 MiB of frames at a time
    total = np.zeros(spectra.shape[0])
    square = np.zeros(spectra.shape[0])
    frozen = np.full(spectra.shape[0], np.nan)
    n = 0
    while n < HAAR_MAX_DRAWS and np.isnan(frozen).any():
        z = rng.standard_normal((batch, d, k))
        q, _ = np.linalg.qr(z)
        leverage = np.einsum("ndk,ndk->nd", q, q)
        rows = np.einsum("ndk,ndk->nd", z, z)
        f = leverage @ spectra.T
        f_gauss = k * (rows @ spectra.T) / rows.sum(axis=1, keepdims=True)
        difference = np.log(f) - np.log(f_gauss)
        total += difference.sum(axis=0)
        square += np.square(difference).sum(axis=0)
        n += batch
        mean = total / n
        error = np.sqrt(np.maximum(square / n - mean**2, 0.0) / n) / math.log(2.0)
        newly = np.isnan(frozen) & (error <= HAAR_STANDARD_ERROR)
        frozen[newly] = mean[newly]
    return np.where(np.isnan(frozen), total / n, frozen)


def haar_log2_ratio_mean(k, d: int, purity=None, *, spectrum=None, seed: int = 0):
    """``E[log2 (F(k)/(k/d))]`` over Haar-random k-dimensional subspaces (see the module docstring).

    Parameters
    ----------
    k : int or array
        The rank of each cell (``k < 1``: undefined, NaN; ``k ≥ d``: 0).
    d : int
        The residual width.
    purity : float or array, optional
        ``Σ g²`` per cell: the Beta law alone (no spectrum at hand).
    spectrum : array ``[..., r]``, optional
        Each cell's normalised Gram spectrum (``r ≤ d`` values; zeros may be
        omitted), ``k`` broadcast to ``spectrum.shape[:-1]``: exact at k = 1,
        within :data:`HAAR_STANDARD_ERROR` (Monte Carlo, seeded by `seed`, d
        and k) below :data:`HAAR_EXACT_BELOW`, the Beta law above.
    """
    if (purity is None) == (spectrum is None):
        raise ValueError("give exactly one of `purity` and `spectrum`")
    if spectrum is None:
        return _beta_log2_ratio(k, d, purity)
    spectrum = np.asarray(spectrum, dtype=np.float64)
    if spectrum.shape[-1] > d:
        raise ValueError(f"a spectrum has at most d = {d} values, got {spectrum.shape[-1]}")
    k = np.broadcast_to(np.asarray(k), spectrum.shape[:-1])
    cells = spectrum.reshape(-1, spectrum.shape[-1])
    ks = k.reshape(-1)
    padded = np.zeros((cells.shape[0], d))
    padded[:, : cells.shape[1]] = cells
    finite = np.isfinite(padded).all(axis=1) & (padded.sum(axis=1) > 0)
    out = np.full(ks.shape, np.nan)
    purity = np.where(finite, np.sum(np.square(np.nan_to_num(padded)), axis=1), np.nan)
    # A rank-1 delta's F is exactly Beta(k/2, (d−k)/2), and from 32 on the moment-matched law
    # is within 0.005 log2: the Beta law there.
    rank1 = np.count_nonzero(np.nan_to_num(padded) > 0, axis=1) == 1
    large = finite & ((ks >= HAAR_EXACT_BELOW) | rank1)
    out[large] = _beta_log2_ratio(ks[large], d, purity[large])
    for value in np.unique(ks[finite & ~large & (ks >= 1)]):
        value = int(value)
        rows = np.flatnonzero(finite & ~large & (ks == value))
        if value >= d:
            out[rows] = 0.0
            continue
        # Equal spectra (every layer's random control, repeated cells) are computed once.
        unique, inverse = np.unique(padded[rows], axis=0, return_inverse=True)
        exact = _gaussian_frame_log(unique, value, d)
        if value > 1:  # at k = 1 the Gaussian frame is the Haar frame: nothing to correct
            exact = exact + _frame_correction(unique, value, d, seed)
        out[rows] = (exact[inverse.reshape(-1)] - math.log(value / d)) / math.log(2.0)
    return out.reshape(k.shape)


def haar_reference(normalisation: str, k, d: int, purity=None, *, spectrum=None):
    """The expected probe under a Haar-random basis, on the statistics' scale.

    ``fraction``: ``k/d``; ``isotropic`` and ``log_isotropic`` (log2 ratios):
    :func:`haar_log2_ratio_mean`, from each cell's `spectrum` when given (else
    the Beta law from its `purity`); ``null_z``: 0; ``base_relative``: NaN (it
    depends on ``W_from``'s own spectrum, which the results do not keep).
    """
    k = np.asarray(k, dtype=np.float64)
    if spectrum is not None:
        shape = np.broadcast_shapes(k.shape, np.shape(spectrum)[:-1])
    else:
        shape = np.broadcast_shapes(k.shape, np.shape(purity))
    if normalisation == "fraction":
        return np.broadcast_to(np.where(k >= 1, k / d, np.nan), shape)
    if normalisation in ("isotropic", "log_isotropic"):
        if spectrum is not None:
            return haar_log2_ratio_mean(np.broadcast_to(k, shape), d, spectrum=spectrum)
        return haar_log2_ratio_mean(k, d, purity)
    if normalisation == "null_z":
        return np.broadcast_to(np.where(k >= 1, 0.0, np.nan), shape)
    if normalisation == "base_relative":
        return np.full(shape, np.nan)
    raise ValueError(f"unknown normalisation {normalisation!r}")
