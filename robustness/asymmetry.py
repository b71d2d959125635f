"""The read/write asymmetry and its tests, per specification and across specifications.

For one pair and one specification (construction × cutoff × normalisation)
let ``s[l, m]`` be the probe, on the log scale for the ratio normalisations
(``isotropic``, ``base_relative``: ``log2``). The per-layer difference and the
asymmetry are

    D_l = mean_{m ∈ read} s[l, m] − mean_{m ∈ write} s[l, m],     A = mean_l D_l.

Tests (``docs/design.md`` §2):

- **cluster bootstrap over layers**: layers are the resampled units; the
  interval is the studentized (bootstrap-t) one, because with a dozen layers
  percentile and BCa intervals (``scipy.stats.bootstrap``) under-cover, as
  ``rsf calibrate`` shows;
- **sign-flip test over layers**: under "no asymmetry" each ``D_l`` is
  symmetric about zero; exact over all ``2^L`` sign vectors when
  ``2^L ≤ 65536``, Monte Carlo otherwise;
- **within-layer label permutation**: the read/write labels are shuffled among
  each layer's matrices; exact when the number of labellings is small;
- **across specifications** (Simonsohn, Simmons & Nelson 2020): the same
  permutations are applied to every specification, so their dependence is
  kept; the joint tests are the median effect size, the share of
  specifications significant in the predicted direction (read > write) and
  Stouffer's Z; Benjamini–Hochberg (statsmodels) and Westfall–Young min-p
  adjusted p-values.

Monte Carlo p-values count the observed statistic, ``(1 + b)/(1 + B)``; exact
ones are the share of all arrangements (the observed one among them) at least
as extreme. scipy does the one-specification sign flip and bootstrap; the
joint, stratified and step-down pieces are written here because no library
applies one permutation to many dependent statistics.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from .specification import EXACT_LIMIT

__all__ = [
    "JointNull",
    "SpecTests",
    "label_permutation_null",
    "layer_differences",
    "sign_flip_null",
    "spec_tests",
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
    """Every per-specification and joint result for one pair (arrays over specifications)."""

    asymmetry: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    bca_low: np.ndarray
    bca_high: np.ndarray
    effect_size: np.ndarray
    effect_ci_low: np.ndarray
    effect_ci_high: np.ndarray
    p_signflip: np.ndarray
    p_perm: np.ndarray
    p_greater: np.ndarray
    p_adj: np.ndarray
    p_wy: np.ndarray
    n_layers: int
    signflip_exact: bool
    perm_exact: bool
    joint: dict
    null_draws: np.ndarray  # [draw, J]: sign-flip null of the asymmetry, for the report


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


def _bca_ci(d: np.ndarray, confidence_level: float, replicates: int, rng) -> tuple[float, float]:
    """scipy's BCa interval for the mean over layers (kept for comparison in calibration)."""
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0])
    with np.errstate(all="ignore"):
        res = stats.bootstrap((d,), np.mean, n_resamples=replicates, confidence_level=confidence_level,
                              method="BCa", rng=rng, vectorized=True)  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _effect_size_ci(dz: float, n: int, confidence_level: float) -> tuple[float, float]:
    import pingouin

    if not np.isfinite(dz):
        return math.nan, math.nan
    low, high = pingouin.compute_esci(stat=dz, nx=n, eftype="cohen", paired=True,
                                      confidence=confidence_level, decimals=15)  # fmt: skip
    return float(low), float(high)


def _dz(d: np.ndarray) -> np.ndarray:
    """Cohen's d_z of the per-layer differences, column-wise (``d [..., L, J]``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return d.mean(axis=-2) / d.std(axis=-2, ddof=1)


def spec_tests(
    s: np.ndarray,
    read: list[int],
    write: list[int],
    *,
    confidence_level: float = 0.95,
    layer_replicates: int = 9999,
    n_resamples: int = 9999,
    alpha: float = 0.05,
    rng: np.random.Generator,
    n_null_draws: int = 1000,
    with_bca: bool = False,
) -> SpecTests:
    """All tests for one pair: ``s [L, M, J]`` on the probe scale, specifications complete.

    Every specification must have finite values at every layer (callers drop
    incomplete ones first), so one set of permutations serves them all.
    """
    from statsmodels.stats.multitest import multipletests

    d = layer_differences(s, read, write)  # [L, J]
    n_layers, n_specs = d.shape
    asymmetry = d.mean(axis=0)
    ci_low, ci_high = studentized_interval(
        d, confidence_level=confidence_level, replicates=layer_replicates, rng=rng
    )
    bca = (
        [_bca_ci(d[:, j], confidence_level, layer_replicates, rng) for j in range(n_specs)]
        if with_bca
        else []
    )
    dz = _dz(d)
    effect_ci = [_effect_size_ci(float(v), n_layers, confidence_level) for v in dz]

    flips = sign_flip_null(d, n_resamples=n_resamples, rng=rng)
    perms = label_permutation_null(s, read, write, n_resamples=n_resamples, rng=rng)
    p_signflip = flips.p_value(asymmetry)
    p_greater = flips.p_value(asymmetry, "greater")
    p_perm = perms.p_value(asymmetry)
    p_adj = multipletests(p_signflip, method="fdr_bh")[1]

    # Westfall–Young single-step min-p over the joint sign-flip null.
    null_p = flips.null_p_values()
    min_p = null_p.min(axis=1)
    count = np.sum(min_p[:, None] <= p_signflip[None, :] + 1e-15, axis=0)
    p_wy = count / flips.n if flips.exact else (1 + count) / (1 + flips.n)

    joint = _joint_tests(d, flips, asymmetry, dz, p_signflip, p_greater, alpha)
    keep = min(n_null_draws, flips.n)
    draws = (
        flips.statistics[np.linspace(0, flips.n - 1, keep).astype(int)]
        if flips.exact
        else flips.statistics[:keep]
    )
    return SpecTests(
        asymmetry=asymmetry,
        ci_low=ci_low,
        ci_high=ci_high,
        bca_low=np.array([b[0] for b in bca]) if with_bca else np.full(n_specs, np.nan),
        bca_high=np.array([b[1] for b in bca]) if with_bca else np.full(n_specs, np.nan),
        effect_size=dz,
        effect_ci_low=np.array([e[0] for e in effect_ci]),
        effect_ci_high=np.array([e[1] for e in effect_ci]),
        p_signflip=p_signflip,
        p_perm=p_perm,
        p_greater=p_greater,
        p_adj=p_adj,
        p_wy=np.minimum(p_wy, 1.0),
        n_layers=n_layers,
        signflip_exact=flips.exact,
        perm_exact=perms.exact,
        joint=joint,
        null_draws=draws,
    )


def _stouffer(p_greater: np.ndarray, floor: float) -> np.ndarray:
    p = np.clip(p_greater, floor, 1 - floor)
    return special.ndtri(1 - p).sum(axis=-1) / math.sqrt(p.shape[-1])


def _joint_tests(d, flips: JointNull, asymmetry, dz, p_two, p_greater, alpha) -> dict:
    """Simonsohn et al.'s three joint tests, under the same sign flips for every spec."""
    n_layers = d.shape[0]
    floor = 1.0 / (flips.n + 1)
    observed = {
        "median_effect": float(np.median(dz)),
        "share_significant": float(np.mean((asymmetry > 0) & (p_two < alpha))),
        "stouffer_z": float(_stouffer(p_greater, floor)),
    }
    # The share takes few values, so "at least as large" ties often and the test is
    # conservative (type-I 0.018 at α = 0.05 in calibration). Ties are broken by
    # Stouffer's Z: the statistic becomes (share, Z) in lexicographic order.
    tie_break = {"share_significant": "stouffer_z"}
    # Each arrangement in turn as the "observed" data: its specs' effects and p-values.
    null_stats = flips.statistics  # [B, J]
    # d_z under a sign flip: the mean flips, and the sd of the flipped differences is
    # sqrt((Σ D² − L·mean²)/(L−1)) since Σ (ε D)² = Σ D².
    sum_sq = np.sum(d**2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        null_dz = null_stats / np.sqrt((sum_sq - n_layers * null_stats**2) / (n_layers - 1))
    null_two = flips.null_p_values("two-sided")
    null_greater = flips.null_p_values("greater")
    null = {
        "median_effect": np.median(null_dz, axis=1),
        "share_significant": np.mean((null_stats > 0) & (null_two < alpha), axis=1),
        "stouffer_z": _stouffer(null_greater, floor),
    }
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
        out[f"p_{name}"] = count / flips.n if flips.exact else (1 + count) / (1 + flips.n)
    out["n_specifications"] = int(d.shape[1])
    out["n_null"] = flips.n
    out["exact"] = flips.exact
    return out
