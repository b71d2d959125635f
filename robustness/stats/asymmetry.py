"""The read/write asymmetry and its tests, per specification and across specifications.

For one pair and one specification (construction × cutoff × normalisation)
let ``s[l, m]`` be the probe on the statistics' scale (``log2`` for the ratio
normalisations). The per-layer difference and the asymmetry are

    D_l = mean_{m ∈ read} s[l, m] − mean_{m ∈ write} s[l, m],     A = mean_l D_l,

tested against a reference ``A_0``: zero, except for the ``random`` control,
whose reference is the Haar expectation of ``D_l`` for its deltas
(:func:`probes.haar_reference`; a Haar-random basis does not give log2 ratios
of mean zero for low-rank deltas). Tests (``docs/design.md`` §2), each with
its null hypothesis:

- **the verdict's test** (``p_value``, ``ci_low``/``ci_high``): the EWC t-test
  of :mod:`robustness.stats.layers`; H0: ``E[D_l] = A_0``, the layers' differences
  forming a weakly dependent series (autocorrelation negligible beyond about
  ``L/(2K)`` layers) of roughly normal projections;
- **sign flips of whole layers** (``p_signflip``): H0: the ``D_l − A_0`` are
  independent across layers and each symmetric about zero (exchangeable
  layers); exact over all ``2^L`` sign vectors when ``2^L ≤ 65536``;
- **within-layer label permutation** (``p_perm``): H0: the read and write
  matrices of a layer are exchangeable (q, k, o, down interchangeable), a
  stronger null than "no asymmetry" (q and k share their input site, o and
  down their output site); reported for what it is, never in the verdict;
- **across specifications** (Simonsohn, Simmons & Nelson 2020), over the
  *counted* specifications only (substantive constructions, duplicates on the
  statistics' scale merged; the controls ``random`` and ``weight_svd`` are
  shown but not counted): the median effect size, the share significant with
  read > write (ties broken by Stouffer's Z) and Stouffer's Z, under one set of
  random rotations of the EWC projections for every specification (the
  dependence-robust joint analogue of one sign flip for all);
  Benjamini–Hochberg (statsmodels) and Westfall–Young step-down min-p
  adjusted p-values under the same rotations.

Monte Carlo p-values count the observed statistic, ``(1 + b)/(1 + B)``; exact
ones are the share of all arrangements (the observed one among them) at least
as extreme. The joint, stratified and step-down pieces are written here
because no library applies one permutation to many dependent statistics.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from robustness.settings.specification import EXACT_LIMIT
from robustness.stats.layers import (
    RotationNull,
    effective_layers,
    hedges_correction,
    lag1_autocorrelation,
    layer_test,
    monte_carlo_p,
    noncentral_interval,
    step_down_min_p,
)

__all__ = [
    "JointNull",
    "bca_ci",
    "SpecTests",
    "label_permutation_null",
    "layer_differences",
    "sign_flip_null",
    "spec_tests",
    "stouffer",
    "studentized_interval",
]


def layer_differences(s: np.ndarray, read: list[int], write: list[int]) -> np.ndarray:
    """``D[l, j] = mean(s[l, read, j]) − mean(s[l, write, j])`` for ``s [L, M, J]``."""
    return s[:, read].mean(axis=1) - s[:, write].mean(axis=1)


@dataclass(frozen=True)
class JointNull:
    """Statistics under the null, one row per arrangement, shared by all specifications.

    ``statistics [B, J]``: the asymmetry under each arrangement; ``exact``:
    whether the rows are every arrangement (the observed one included) or a
    Monte Carlo sample (the observed one not among them).
    """

    statistics: np.ndarray
    exact: bool

    @property
    def n(self) -> int:
        return self.statistics.shape[0]

    def p_value(self, observed: np.ndarray, alternative: str = "two-sided") -> np.ndarray:
        """p per specification, ``(1 + b)/(1 + B)`` for Monte Carlo, ``b/B`` when exact."""
        null, observed = self.statistics, np.asarray(observed)
        # Ties within round-off count as "at least as extreme".
        tol = 1e-12 * np.maximum(1.0, np.abs(observed))
        if alternative == "two-sided":
            count = np.sum(np.abs(null) >= np.abs(observed) - tol, axis=0)
        elif alternative == "greater":
            count = np.sum(null >= observed - tol, axis=0)
        elif alternative == "less":
            count = np.sum(null <= observed + tol, axis=0)
        else:
            raise ValueError(
                f"`alternative` must be two-sided, greater or less, got {alternative!r}"
            )
        if self.exact:
            return count / self.n
        return (1.0 + count) / (1.0 + self.n)

    def null_p_values(self, alternative: str = "two-sided") -> np.ndarray:
        """``[B, J]``: each arrangement's own p-value within its specification's null.

        Used for the joint tests: treating every arrangement in turn as if
        observed gives the null distribution of any function of the p-values.
        """
        null = self.statistics
        key = (
            np.abs(null)
            if alternative == "two-sided"
            else (null if alternative == "greater" else -null)
        )
        ranked = np.sort(key, axis=0)
        # Number of arrangements at least as extreme as each one, per column.
        at_least = np.empty_like(key)
        for j in range(key.shape[1]):
            at_least[:, j] = self.n - np.searchsorted(
                ranked[:, j], key[:, j] - 1e-12 * np.maximum(1.0, np.abs(key[:, j])), side="left"
            )
        # Exact: the share of arrangements at least as extreme. Monte Carlo: the
        # other B − 1 draws plus the "observed" one, (1 + (at_least − 1))/(1 + (B − 1)).
        return at_least / self.n


def _sign_vectors(
    n_layers: int, n_resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    if 2**n_layers <= EXACT_LIMIT:
        grid = np.array(list(itertools.product((1.0, -1.0), repeat=n_layers)))
        return grid, True
    return rng.choice(np.array([1.0, -1.0]), size=(n_resamples, n_layers)), False


def sign_flip_null(
    differences: np.ndarray, *, n_resamples: int, rng: np.random.Generator
) -> JointNull:
    """Asymmetry under random sign flips of whole layers, the same flips for every column."""
    signs, exact = _sign_vectors(differences.shape[0], n_resamples, rng)
    return JointNull(signs @ differences / differences.shape[0], exact)


def label_permutation_null(
    s: np.ndarray, read: list[int], write: list[int], *, n_resamples: int, rng: np.random.Generator
) -> JointNull:
    """Asymmetry with read/write labels shuffled among each layer's matrices (``s [L, M, J]``).

    Every layer draws its own relabelling; all specifications share it.
    """
    used = list(read) + list(write)
    n_read, n_layers = len(read), s.shape[0]
    combos = list(itertools.combinations(range(len(used)), n_read))
    # per_layer[l, c, j]: the layer's difference under labelling c.
    per_layer = np.stack([
        s[:, [used[i] for i in combo]].mean(axis=1)
        - s[:, [used[i] for i in range(len(used)) if i not in combo]].mean(axis=1)
        for combo in combos
    ], axis=1)  # fmt: skip
    layers = np.arange(n_layers)
    if len(combos) ** n_layers <= EXACT_LIMIT:
        choices = np.array(list(itertools.product(range(len(combos)), repeat=n_layers)))
        exact = True
    else:
        choices = rng.integers(0, len(combos), size=(n_resamples, n_layers))
        exact = False
    # Accumulate layer by layer: never hold the [B, L, J] gather at once.
    statistics = sum(per_layer[layer, choices[:, layer]] for layer in layers) / n_layers  # [B, J]
    return JointNull(statistics, exact)


@dataclass(frozen=True)
class SpecTests:
    """Every per-specification and joint result for one pair (arrays over specifications ``J``)."""

    asymmetry: np.ndarray
    reference: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_value: np.ndarray
    p_greater: np.ndarray
    p_signflip: np.ndarray
    p_perm: np.ndarray
    p_adj: np.ndarray
    p_wy: np.ndarray
    effect_size: np.ndarray
    effect_ci_low: np.ndarray
    effect_ci_high: np.ndarray
    lag1_autocorrelation: np.ndarray
    effective_layers: np.ndarray
    standardised_effect: np.ndarray  # (A − A_0)/ω̂: the effect on the EWC test's own scale
    counted: np.ndarray
    n_layers: int
    projections: int
    signflip_exact: bool
    perm_exact: bool
    joint: dict
    null_draws: np.ndarray  # [draw, J]: rotation null of the asymmetry, for the report


def studentized_interval(
    d: np.ndarray, *, confidence_level: float, replicates: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster bootstrap-t interval for the mean of each column of ``d [L, J]``.

    Layers are resampled with replacement (the same resample for every column)
    and the studentized mean ``t* = (mean* − mean)/(sd*/√L)`` is bootstrapped;
    the interval is ``mean − t*_{1−α/2}·se … mean − t*_{α/2}·se``. With a dozen
    layers the percentile and BCa intervals under-cover (see ``rsf calibrate``);
    the studentized one holds its level. scipy's ``bootstrap`` has no
    bootstrap-t, hence this function.
    """
    n_layers = d.shape[0]
    mean = d.mean(axis=0)
    se = d.std(axis=0, ddof=1) / math.sqrt(n_layers)
    rows = rng.integers(0, n_layers, size=(replicates, n_layers))
    resampled = d[rows]  # [B, L, J]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (resampled.mean(axis=1) - mean) / (resampled.std(axis=1, ddof=1) / math.sqrt(n_layers))
    # A resample of one layer repeated has no spread: its t is undefined, and
    # round-off in its sd (≈1e-17 instead of 0) would otherwise give |t| ≈ 1e14.
    # With few layers such resamples are common (1 in 9 for three layers).
    t[~(rows != rows[:, :1]).any(axis=1)] = np.nan
    tail = (1 - confidence_level) / 2
    low, high = np.full(mean.shape, np.nan), np.full(mean.shape, np.nan)
    for j in range(mean.size):
        finite = t[np.isfinite(t[:, j]), j]
        if se[j] == 0:
            low[j] = high[j] = mean[j]
        elif finite.size >= 10:
            upper_t, lower_t = np.quantile(finite, [1 - tail, tail])
            low[j], high[j] = mean[j] - upper_t * se[j], mean[j] - lower_t * se[j]
    return low, high


def bca_ci(d: np.ndarray, confidence_level: float, replicates: int, rng) -> tuple[float, float]:
    """scipy's BCa interval for the mean over layers (kept for comparison in calibration)."""
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    with np.errstate(all="ignore"):
        res = stats.bootstrap((d,), np.mean, n_resamples=replicates, confidence_level=confidence_level,
                              method="BCa", rng=rng, vectorized=True)  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def effect_size_interval(
    test, d: np.ndarray, confidence_level: float
) -> tuple[np.ndarray, np.ndarray]:
    """d_z's interval from the EWC statistic: the noncentral-t interval for ``√L μ/ω``, on the d_z scale.

    ``t = √L (D̄ − A_0)/ω̂ ~ t_K(λ = √L μ/ω)`` with ``ω`` the long-run sd;
    inverting it gives an interval for ``μ/ω``, put on the d_z scale
    (``μ/σ``) by the ratio ``ω̂/σ̂`` of the long-run to the marginal sd. With
    independent layers ``ω = σ`` and this is the classical interval for d_z
    with ``K`` degrees of freedom.
    """
    n_layers = d.shape[0]
    sd = d.std(axis=0, ddof=1)
    low, high = np.full(d.shape[1], np.nan), np.full(d.shape[1], np.nan)
    for j in range(d.shape[1]):
        if np.isfinite(test.t[j]) and sd[j] > 0:
            lam_low, lam_high = noncentral_interval(float(test.t[j]), test.df, confidence_level)
            scale = test.omega[j] / sd[j] / math.sqrt(n_layers)
            low[j], high[j] = lam_low * scale, lam_high * scale
    return low, high


def effect_sizes(d: np.ndarray) -> np.ndarray:
    """Hedges-corrected d_z of each column of ``d [L, J]``: ``J(L−1) · mean/sd``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return hedges_correction(d.shape[0]) * d.mean(axis=0) / d.std(axis=0, ddof=1)


def spec_tests(
    s: np.ndarray,
    read: list[int],
    write: list[int],
    *,
    reference=0.0,
    counted=None,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    alpha: float = 0.05,
    rng: np.random.Generator,
    n_null_draws: int = 1000,
) -> SpecTests:
    """All tests for one pair: ``s [L, M, J]`` on the probe scale, specifications complete.

    `reference` is ``A_0`` per specification (scalar, ``[J]`` or per layer
    ``[L, J]``); `counted` marks the specifications of the joint tests and the
    adjusted p-values (default all). Every specification must have finite
    values at every layer (callers drop incomplete ones first), so one set of
    null draws serves them all.
    """
    from statsmodels.stats.multitest import multipletests

    raw = layer_differences(s, read, write)  # [L, J]
    n_layers, n_specs = raw.shape
    reference = np.broadcast_to(np.asarray(reference, dtype=np.float64), raw.shape)
    d = raw - reference
    counted = np.ones(n_specs, dtype=bool) if counted is None else np.asarray(counted, dtype=bool)
    asymmetry = raw.mean(axis=0)
    offset = reference.mean(axis=0)
    test = layer_test(d, confidence_level=confidence_level)
    dz = effect_sizes(d)
    effect_low, effect_high = effect_size_interval(test, d, confidence_level)

    flips = sign_flip_null(d, n_resamples=n_resamples, rng=rng)
    perms = label_permutation_null(s, read, write, n_resamples=n_resamples, rng=rng)
    p_signflip = flips.p_value(d.mean(axis=0))
    p_perm = perms.p_value(asymmetry)

    nan = np.full(n_specs, np.nan)
    p_adj, p_wy = nan.copy(), nan.copy()
    rotations = RotationNull.draw(test.df, n_layers, n_resamples=n_resamples, rng=rng)
    z = test.projections  # [K+1, J]
    joint: dict = {"n_specifications": int(counted.sum())}
    if counted.any() and np.isfinite(test.p_value[counted]).all():
        p_adj[counted] = multipletests(test.p_value[counted], method="fdr_bh")[1]
        null_two = rotations.p_values(z[:, counted])
        p_wy[counted] = step_down_min_p(test.p_value[counted], null_two)
        joint = _joint_tests(d[:, counted], test, counted, dz, rotations, null_two, alpha)
    keep = min(n_null_draws, rotations.n)
    draws = rotations.asymmetry(z)[:keep] + offset
    return SpecTests(
        asymmetry=asymmetry,
        reference=offset,
        ci_low=test.ci_low + offset,
        ci_high=test.ci_high + offset,
        p_value=test.p_value,
        p_greater=test.p_greater,
        p_signflip=p_signflip,
        p_perm=p_perm,
        p_adj=p_adj,
        p_wy=p_wy,
        effect_size=dz,
        effect_ci_low=effect_low,
        effect_ci_high=effect_high,
        lag1_autocorrelation=lag1_autocorrelation(d) if n_layers > 1 else nan,
        effective_layers=effective_layers(d) if n_layers > 1 else nan,
        standardised_effect=test.estimate / test.omega,
        counted=counted,
        n_layers=n_layers,
        projections=test.df,
        signflip_exact=flips.exact,
        perm_exact=perms.exact,
        joint=joint,
        null_draws=draws,
    )


def stouffer(p_greater: np.ndarray) -> np.ndarray:
    # p-values from the t law can underflow to 0 or reach 1: keep Φ⁻¹ finite.
    p = np.clip(p_greater, 1e-300, 1 - 1e-16)
    return special.ndtri(1 - p).sum(axis=-1) / math.sqrt(p.shape[-1])


def _joint_tests(d, test, counted, dz, rotations: RotationNull, null_two, alpha) -> dict:
    """Simonsohn et al.'s three joint tests over the counted specifications, under one set of rotations.

    Every rotation is treated in turn as the observed data: its specifications'
    effect sizes, p-values and signs come from the rotated projections
    (:class:`robustness.stats.layers.RotationNull`).
    """
    z = test.projections[:, counted]
    observed_p = test.p_value[counted]
    observed = {
        "median_effect": float(np.median(dz[counted])),
        "share_significant": float(np.mean((d.mean(axis=0) > 0) & (observed_p < alpha))),
        "stouffer_z": float(stouffer(test.p_greater[counted])),
    }
    null_z0 = rotations.z0(z)
    null = {
        "median_effect": np.median(rotations.effect_size(z, np.sum(d**2, axis=0)), axis=1),
        "share_significant": np.mean((null_z0 > 0) & (null_two < alpha), axis=1),
        "stouffer_z": stouffer(rotations.p_values(z, "greater")),
    }
    # The share takes few values, so "at least as large" ties often and the test is
    # conservative; ties are broken by Stouffer's Z: the statistic is (share, Z)
    # in lexicographic order.
    tie_break = {"share_significant": "stouffer_z"}
    out = {}
    for name, value in observed.items():
        if name in tie_break:
            other = tie_break[name]
            above = null[name] > value + 1e-12
            tied = np.abs(null[name] - value) <= 1e-12
            count = int(np.sum(above | (tied & (null[other] >= observed[other] - 1e-12))))
        else:
            count = int(np.sum(null[name] >= value - 1e-12))
        out[name] = value
        out[f"p_{name}"] = float(monte_carlo_p(count, rotations.n))
    out["n_specifications"] = int(counted.sum())
    out["n_null"] = rotations.n
    out["exact"] = False
    out["method"] = "random rotations of the EWC projections, the same for every specification"
    return out
