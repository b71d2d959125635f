"""Inference over layers that holds when neighbouring layers are correlated.

The per-layer values ``d_1 … d_L`` of one specification (a read − write
difference, or a level against its reference) are not independent: adjacent
layers of real models are correlated. The test and interval the verdict uses
are the **equal-weighted cosine (EWC) t-test** (Müller 2004; Sun 2013;
Lazarus, Lewis, Stock & Watson 2018, "HAR inference: recommendations for
practice"), an orthonormal-series estimate of the long-run variance:

    z_0 = Σ_l d_l / √L,        z_k = √(2/L) Σ_l d_l cos(π k (l − ½) / L),   k = 1 … K,
    ω̂² = (1/K) Σ_k z_k²,       t = (z_0 − √L μ_0) / ω̂  ~  t_K   under H0: E[d] = μ_0.

The cosines are orthogonal to the constant, so ``ω̂`` does not depend on the
mean. **Assumptions**: the spectrum of ``d`` is flat over the ``K`` lowest
frequencies (its autocorrelation is negligible beyond about ``L/(2K)``
layers) and the projections are close to normal (each averages over layers).
Under them ``t`` is exactly ``t_K`` for Gaussian series and p-values are
continuous, so a few layers can still reach a small α (block sign flips over
8 layers, by contrast, allow at most 16 arrangements). ``K = max(2,
round(0.4 · L^(2/3)))`` (:func:`projections_for`; Lazarus, Lewis, Stock &
Watson 2018's rule for the EWC test, with at least 2 degrees of freedom):
K grows with depth, so the long-run variance's bandwidth ``L/K`` grows like
``L^(1/3)`` and the test keeps its level under dependence at any depth
(``python -m benchmarks.layer_tests``: at ρ = 0.5 the type-I error is 0.054
at 64 layers and 0.051 at 128, where ``max(2, ⌊L/8⌋)`` stays at 0.06 at any
depth and 0.13 at ρ = 0.8). Below 20 layers both rules give K = 2 or 3. The
whole probe is calibrated with it (``rsf calibrate``; README): at ρ = 0.5
the AR(1) type-I error stays near α from 12 layers on, where the
exchangeable sign-flip test rejects a quarter of true nulls; stronger
dependence (ρ = 0.8) over so few layers leaves about one effective layer and
no test holds its level there (shown, not hidden).

**Many specifications at once** (the joint tests, Westfall–Young): under H0
with the same assumptions the ``(K+1) × J`` matrix of projections ``Z`` of ``J``
specifications has i.i.d. ``N(0, Σ)`` rows, so its law is invariant under
rotations ``O Z`` (Langsrud 2005, "Rotation tests"). A random rotation acts on
every specification at once, which keeps their dependence, and only its
first row ``u`` (uniform on the sphere) matters: ``z_0* = uᵀZ_j``, and since
rotations keep ``‖Z_j‖`` and the series' norm, ``t*``, ``A* = z_0*/√L`` and
``d_z*`` follow from ``z_0*`` alone (:class:`RotationNull`). This is the
continuous analogue of applying one sign flip to every specification.
Monte Carlo p-values count the observed arrangement, ``(1 + b)/(1 + B)``.

Diagnostics (reported, never used to choose a test; both are biased at small
L): the lag-1 autocorrelation of ``d`` and the effective number of layers
``L (1 − r_1)/(1 + r_1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

__all__ = [
    "MIN_LAYERS",
    "LayerTest",
    "RotationNull",
    "cosine_projections",
    "effective_layers",
    "hedges_correction",
    "lag1_autocorrelation",
    "layer_interval",
    "layer_test",
    "noncentral_interval",
    "projections_for",
    "step_down_min_p",
]

MIN_LAYERS = (
    4  # the fewest layers the EWC test is computed for (K = 2 cosines, half-period ≥ 1 layer)
)


def projections_for(n_layers: int) -> int:
    """``K = max(2, round(0.4 · L^(2/3)))``: the number of cosine projections (the test's degrees
    of freedom); Lazarus, Lewis, Stock & Watson (2018), "HAR inference: recommendations for
    practice", at least 2."""
    return max(2, round(0.4 * int(n_layers) ** (2.0 / 3.0)))


def cosine_projections(n_layers: int, k: int) -> np.ndarray:
    """``[K+1, L]``: the constant ``1/√L`` and the cosines ``√(2/L) cos(π j (l − ½)/L)``, orthonormal."""
    if not 1 <= k < n_layers:
        raise ValueError(f"`k` must lie in [1, {n_layers - 1}] for {n_layers} layers, got {k}")
    position = (np.arange(n_layers) + 0.5) / n_layers
    rows = [np.full(n_layers, 1.0 / math.sqrt(n_layers))]
    rows += [math.sqrt(2.0 / n_layers) * np.cos(math.pi * j * position) for j in range(1, k + 1)]
    return np.stack(rows)


@dataclass(frozen=True)
class LayerTest:
    """The EWC test of the mean of each column of ``d [L, J]`` (arrays over columns).

    ``estimate`` is the layer mean; ``omega`` the long-run standard deviation
    ``ω̂``; ``t`` tests ``H0: mean = null_mean`` with ``df = K``;
    ``p_value`` is two-sided, ``p_greater`` and ``p_less`` one-sided;
    ``ci_low``/``ci_high`` the matching interval (NaN with fewer than
    :data:`MIN_LAYERS` layers or a NaN in the column).
    """

    estimate: np.ndarray
    omega: np.ndarray
    t: np.ndarray
    df: int
    p_value: np.ndarray
    p_greater: np.ndarray
    p_less: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    projections: np.ndarray  # [K+1, J]: z_0 and z_1 … z_K of each column


def _as_columns(d) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    if d.ndim != 2:
        raise ValueError(f"`d` must be [layer] or [layer, column], got shape {d.shape}")
    return d


def layer_test(
    d, *, confidence_level: float = 0.95, null_mean=0.0, k: int | None = None
) -> LayerTest:
    """The EWC t-test and interval for the layer mean of each column of ``d [L, J]``.

    `null_mean` (scalar or one per column) is the mean under H0, a reference
    other than zero where one applies. `k` overrides :func:`projections_for`.
    """
    if not 0 < confidence_level < 1:
        raise ValueError(f"`confidence_level` must lie in (0, 1), got {confidence_level}")
    d = _as_columns(d)
    n_layers, n_columns = d.shape
    k = projections_for(n_layers) if k is None else int(k)
    nan = np.full(n_columns, np.nan)
    null_mean = np.broadcast_to(np.asarray(null_mean, dtype=np.float64), (n_columns,))
    estimate = d.mean(axis=0) if n_layers else nan
    if n_layers < max(MIN_LAYERS, k + 1):
        return LayerTest(
            estimate, nan, nan, k, nan, nan, nan, nan, nan, np.full((k + 1, n_columns), np.nan)
        )
    z = cosine_projections(n_layers, k) @ d  # [K+1, J]
    omega = np.sqrt(np.mean(z[1:] ** 2, axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (z[0] - math.sqrt(n_layers) * null_mean) / omega
    p_greater = stats.t.sf(t, k)
    p_less = stats.t.cdf(t, k)
    p_value = np.minimum(1.0, 2.0 * np.minimum(p_greater, p_less))
    half = stats.t.ppf(0.5 + confidence_level / 2, k) * omega / math.sqrt(n_layers)
    finite = np.isfinite(d).all(axis=0)
    for array in (omega, t, p_value, p_greater, p_less):
        array[~finite] = np.nan
    return LayerTest(
        estimate=estimate,
        omega=omega,
        t=t,
        df=k,
        p_value=p_value,
        p_greater=p_greater,
        p_less=p_less,
        ci_low=np.where(finite, estimate - half, np.nan),
        ci_high=np.where(finite, estimate + half, np.nan),
        projections=z,
    )


@dataclass(frozen=True)
class RotationNull:
    """Null draws of the EWC statistics under random rotations of the projections.

    ``first_row [B, K+1]`` are the rotations' first rows (uniform unit vectors),
    shared by every column. For columns with projections ``Z [K+1, J]`` and
    series norms ``‖d_j‖²``, :meth:`z0` gives ``z_0* [B, J]`` and the
    statistics derive from it.
    """

    first_row: np.ndarray
    n_layers: int

    @classmethod
    def draw(
        cls, k: int, n_layers: int, *, n_resamples: int, rng: np.random.Generator
    ) -> RotationNull:
        if n_resamples < 1:
            raise ValueError(f"`n_resamples` must be at least 1, got {n_resamples}")
        u = rng.standard_normal((n_resamples, k + 1))
        return cls(u / np.linalg.norm(u, axis=1, keepdims=True), int(n_layers))

    @property
    def n(self) -> int:
        return self.first_row.shape[0]

    @property
    def df(self) -> int:
        return self.first_row.shape[1] - 1

    def z0(self, projections: np.ndarray) -> np.ndarray:
        return self.first_row @ projections

    def t(self, projections: np.ndarray) -> np.ndarray:
        """``t* = z_0* / √((‖Z_j‖² − z_0*²)/K)``: the EWC statistic of each rotated column."""
        z0 = self.z0(projections)
        rest = np.sum(projections**2, axis=0) - z0**2
        with np.errstate(divide="ignore", invalid="ignore"):
            return z0 / np.sqrt(np.clip(rest, 0.0, None) / self.df)

    def asymmetry(self, projections: np.ndarray) -> np.ndarray:
        """``A* = z_0*/√L``: the layer mean of each rotated column."""
        return self.z0(projections) / math.sqrt(self.n_layers)

    def effect_size(self, projections: np.ndarray, sum_squares: np.ndarray) -> np.ndarray:
        """Hedges-corrected ``d_z*``: the rotation keeps ``‖d‖²``, so ``sd*² = (‖d‖² − z_0*²)/(L − 1)``."""
        z0 = self.z0(projections)
        with np.errstate(divide="ignore", invalid="ignore"):
            sd = np.sqrt(np.clip(sum_squares - z0**2, 0.0, None) / (self.n_layers - 1))
            return hedges_correction(self.n_layers) * (z0 / math.sqrt(self.n_layers)) / sd

    def p_values(self, projections: np.ndarray, alternative: str = "two-sided") -> np.ndarray:
        """Each draw's own p-values ``[B, J]`` from the ``t_K`` law (the exact marginal under H0)."""
        t = self.t(projections)
        if alternative == "two-sided":
            return np.minimum(1.0, 2.0 * stats.t.sf(np.abs(t), self.df))
        if alternative == "greater":
            return stats.t.sf(t, self.df)
        if alternative == "less":
            return stats.t.cdf(t, self.df)
        raise ValueError(f"`alternative` must be two-sided, greater or less, got {alternative!r}")


def monte_carlo_p(count, n: int) -> np.ndarray:
    """``(1 + b)/(1 + B)``: a Monte Carlo p-value counting the observed arrangement."""
    return (1.0 + np.asarray(count, dtype=np.float64)) / (1.0 + n)


def step_down_min_p(p_observed: np.ndarray, null_p: np.ndarray) -> np.ndarray:
    """Westfall–Young step-down min-p adjusted p-values (Westfall & Young 1993, Algorithm 2.8).

    ``p_observed [J]``; ``null_p [B, J]``: every null draw's p-values, the same
    draws for every hypothesis so their dependence is kept. With the
    hypotheses ordered ``p_(1) ≤ … ≤ p_(J)``, draw ``b``'s successive minima
    ``q_b,(j) = min_{i ≥ j} p*_b,(i)``; then ``p̃_(j) = (1 + #{b: q_b,(j) ≤ p_(j)})/(1 + B)``,
    made monotone by ``p̃_(j) = max(p̃_(j−1), p̃_(j))``.
    """
    p_observed = np.asarray(p_observed, dtype=np.float64)
    null_p = np.asarray(null_p, dtype=np.float64)
    order = np.argsort(p_observed, kind="stable")
    ordered = null_p[:, order]
    # Successive minima from the largest observed p down: q[:, j] = min over i ≥ j.
    q = np.minimum.accumulate(ordered[:, ::-1], axis=1)[:, ::-1]
    tolerance = 1e-12 * np.maximum(1.0, p_observed[order])
    counts = np.sum(q <= p_observed[order] + tolerance, axis=0)
    adjusted = np.maximum.accumulate(monte_carlo_p(counts, null_p.shape[0]))
    out = np.empty_like(adjusted)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def lag1_autocorrelation(d) -> np.ndarray:
    """``r_1 = Σ (d_l − d̄)(d_{l+1} − d̄) / Σ (d_l − d̄)²`` per column (biased towards −1/L at small L)."""
    d = _as_columns(d)
    centred = d - d.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(centred[1:] * centred[:-1], axis=0) / np.sum(centred**2, axis=0)


def effective_layers(d) -> np.ndarray:
    """``L (1 − r_1)/(1 + r_1)``, clipped to ``[1, L]``: layers' worth of independent information."""
    d = _as_columns(d)
    r = lag1_autocorrelation(d)
    with np.errstate(divide="ignore", invalid="ignore"):
        n = d.shape[0] * (1.0 - r) / (1.0 + r)
    return np.clip(n, 1.0, d.shape[0])


def hedges_correction(n_layers: int) -> float:
    """``J(ν) = Γ(ν/2) / (√(ν/2) Γ((ν−1)/2))`` with ``ν = L − 1``: d_z's small-sample bias factor (Hedges 1981)."""
    nu = n_layers - 1
    if nu < 2:
        return math.nan
    return math.exp(special.gammaln(nu / 2) - special.gammaln((nu - 1) / 2)) / math.sqrt(nu / 2)


def noncentral_interval(t: float, df: int, confidence_level: float) -> tuple[float, float]:
    """The interval for the noncentrality ``λ`` of a noncentral ``t_df`` observed at `t`.

    ``λ_low`` solves ``P(T ≥ t; λ) = α/2`` and ``λ_high`` solves ``P(T ≤ t; λ) = α/2``
    (scipy's ``nct``, by root finding; the classical interval for d_z, Cumming &
    Finch 2001).
    """
    if not np.isfinite(t):
        return math.nan, math.nan
    tail = (1 - confidence_level) / 2

    def upper(lam):  # P(T ≥ t; λ), increasing in λ; scipy gives NaN far in the tails
        value = stats.nct.sf(t, df, lam)
        return value if np.isfinite(value) else (1.0 if lam > t else 0.0)

    def lower(lam):  # P(T ≤ t; λ), decreasing in λ
        value = stats.nct.cdf(t, df, lam)
        return value if np.isfinite(value) else (0.0 if lam > t else 1.0)

    def solve(f, target, increasing):
        width = 4.0 + abs(t)
        lo, hi = t - width, t + width
        for _ in range(60):  # widen until the target is bracketed
            f_lo, f_hi = f(lo) - target, f(hi) - target
            if f_lo * f_hi <= 0:
                return optimize.brentq(lambda x: f(x) - target, lo, hi, xtol=1e-10)
            if (f_lo > 0) == increasing:
                lo -= width
            else:
                hi += width
            width *= 2
        return math.nan

    return solve(upper, tail, True), solve(lower, tail, False)


def layer_interval(per_layer, *, confidence_level: float = 0.95, dim: str = "layer") -> dict:
    """The EWC interval and p-value (H0: mean 0) for the layer mean of every cell of a DataArray.

    `per_layer` has a ``layer`` dimension (`dim`) and any others; returns
    ``{"ci_low", "ci_high", "p_value"}`` as DataArrays without it. A cell with
    a NaN layer, or fewer than :data:`MIN_LAYERS` layers, is NaN.
    """
    moved = per_layer.transpose(dim, ...)
    flat = moved.values.reshape(moved.shape[0], -1)
    test = layer_test(flat, confidence_level=confidence_level)
    template = moved.isel({dim: 0}, drop=True)
    return {
        name: template.copy(data=np.asarray(getattr(test, name)).reshape(template.shape))
        for name in ("ci_low", "ci_high", "p_value")
    }
