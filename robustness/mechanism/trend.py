"""A test for a monotone trend across ordered levels, with blocks (layers) as replicates.

Used by the graded-objective experiment (:mod:`.contrastive`: one quantity
at each level λ) and by ``gradients.nc`` (each measure at each checkpoint's
step), one block per layer, blocks in layer order.
The fixed-effects slope is the mean over layers of each layer's own
least-squares slope, so its test and interval are those of a layer mean:
the dependence-robust EWC test of :mod:`robustness.stats.layers` (neighbouring
layers are correlated). The within-layer permutation test is kept beside it,
labelled: it assumes the layers' noise is independent.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from robustness.settings.specification import EXACT_LIMIT
from robustness.stats.layers import layer_test

__all__ = ["TrendTest", "trend_test"]

ENUMERATED_LEVELS = 7  # up to 7! = 5040 orderings are listed; beyond, each draw permutes directly


@dataclass(frozen=True)
class TrendTest:
    """A monotone trend of ``values [level, block]`` in the ordered `levels`.

    ``slope``: least-squares slope with a fixed effect per block,
    ``Σ_i (x_i − x̄) Σ_b (y_ib − ȳ_b) / (B Σ_i (x_i − x̄)²)``, the mean of the
    blocks' own slopes; ``p_value`` and ``slope_ci_*``: the EWC test (H0: the
    mean slope is 0) and interval over the blocks' slopes in layer order,
    dependence-robust; ``p_permutation``: the levels permuted independently
    within each block (exact when every arrangement can be enumerated, else
    Monte Carlo ``(1 + b)/(1 + N)``), two-sided on ``|slope|``, whose null also
    needs independent blocks; ``spearman``/``spearman_p``: Spearman's ρ of the
    block means against the levels (scipy); ``page_p``: Page's L test for
    ordered alternatives (scipy.stats.page_trend_test, independent blocks),
    two-sided by doubling the smaller one-sided p.
    """

    slope: float
    slope_ci_low: float
    slope_ci_high: float
    p_value: float
    p_permutation: float
    exact: bool
    spearman: float
    spearman_p: float
    page_p: float
    n_blocks: int


def _slopes(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Fixed-effects slope for ``values [..., level, block]``."""
    xc = x - x.mean()
    centred = values - values.mean(axis=-2, keepdims=True)
    return np.einsum("i,...ib->...", xc, centred) / (values.shape[-1] * np.sum(xc**2))


def trend_test(
    values,
    levels,
    *,
    n_resamples: int = 9999,
    confidence_level: float = 0.95,
    rng: np.random.Generator,
) -> TrendTest:
    """Test for a monotone trend of ``values [level, block]`` across ordered `levels`.

    Blocks with a NaN are dropped. See :class:`TrendTest` for the statistics.
    """
    values = np.asarray(values, dtype=np.float64)
    x = np.asarray(levels, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != x.size:
        raise ValueError(
            f"`values` must be [level, block] with {x.size} levels, got {values.shape}"
        )
    if x.size < 3 or np.ptp(x) == 0:
        raise ValueError("a trend test needs at least 3 distinct levels")
    values = values[:, np.isfinite(values).all(axis=0)]
    n_levels, n_blocks = values.shape
    nan = TrendTest(
        math.nan,
        math.nan,
        math.nan,
        math.nan,
        math.nan,
        False,
        math.nan,
        math.nan,
        math.nan,
        n_blocks,
    )
    if n_blocks == 0:
        return nan
    slope = float(_slopes(values, x))
    # Within-block permutations; the statistic is linear, so each block contributes separately.
    xc = x - x.mean()
    centred = values - values.mean(axis=0)
    scale = n_blocks * np.sum(xc**2)
    tolerance = 1e-12 * max(1.0, abs(slope))
    exact = n_levels <= ENUMERATED_LEVELS and math.factorial(n_levels) ** n_blocks <= EXACT_LIMIT
    if n_levels <= ENUMERATED_LEVELS:
        perms = np.array(list(itertools.permutations(range(n_levels))))
        per_block = np.einsum("pi,ib->pb", xc[perms], centred) / scale  # [P, B]
        if exact:
            grid = np.array(list(itertools.product(range(len(perms)), repeat=n_blocks)))
            null = per_block[grid, np.arange(n_blocks)].sum(axis=1)
        else:
            choice = rng.integers(0, len(perms), size=(n_resamples, n_blocks))
            null = per_block[choice, np.arange(n_blocks)].sum(axis=1)
    else:  # too many orderings to list: draw each block's permutation directly
        order = rng.permuted(np.tile(np.arange(n_levels), (n_resamples, n_blocks, 1)), axis=-1)
        null = np.einsum("rbi,ib->r", xc[order], centred) / scale
    if exact:
        p_permutation = float(np.mean(np.abs(null) >= abs(slope) - tolerance))
    else:
        p_permutation = float(
            (1 + np.sum(np.abs(null) >= abs(slope) - tolerance)) / (1 + n_resamples)
        )
    block_slopes = np.einsum("i,ib->b", xc, centred) / np.sum(xc**2)  # each block's own slope
    layered = layer_test(block_slopes, confidence_level=confidence_level)
    p_value, low, high = (float(v[0]) for v in (layered.p_value, layered.ci_low, layered.ci_high))
    means = values.mean(axis=1)
    if np.ptp(means) == 0:
        rho, rho_p = math.nan, math.nan
    else:
        result = scipy_stats.spearmanr(x, means)
        rho, rho_p = float(result.statistic), float(result.pvalue)
    page_p = math.nan
    if n_blocks >= 2:
        order = np.argsort(x)
        data = values[order].T  # [block, level], levels ascending
        increasing = scipy_stats.page_trend_test(data, method="auto").pvalue
        decreasing = scipy_stats.page_trend_test(data[:, ::-1], method="auto").pvalue
        page_p = float(min(1.0, 2 * min(increasing, decreasing)))
    return TrendTest(slope, low, high, p_value, p_permutation, exact, rho, rho_p, page_p, n_blocks)
