"""The decision rules of the claims: three-way verdicts with one margin, parts, and family-wise error.

Every claim is decided from **parts**: each a quantity with its EWC test over
layers (a matrix's level, a difference of levels, one checkpoint's
asymmetry), its ``1 − 2α`` interval and its one-sided p-values against
``±margin`` (:func:`part`). Two rules, symmetric, with one margin ``m``:

- **concentration** ("the level exceeds the margin"): a part is *supported*
  when its interval lies wholly above ``+m`` (one-sided test of
  ``μ ≤ m``), *contradicted* when it lies wholly inside ``±m`` (two one-sided
  tests) or wholly below ``−m``; a claim of several parts is supported when
  every part is (intersection–union: no adjustment, Berger 1982) and
  contradicted when any part is, Holm-adjusted across the parts;
- **isotropy** ("the level stays within the margin"): a part is *supported*
  when its interval lies inside ``±m`` (two one-sided tests), *contradicted*
  when it lies wholly outside; supported when every part is, contradicted
  when any is (Holm across the parts).

One level can then never be both concentrated and near-isotropic: above
``+m`` and inside ``±m`` exclude each other. Each rule returns the claim's
p-value for support and for contradiction; :func:`family` adjusts them by Holm
across the claims tested on one pair (statsmodels' ``multipletests``), and the
verdict is taken there: *supported* when the adjusted support p is below α,
*contradicted* when the adjusted contradiction p is, else *inconclusive*.
``margin_needed`` does not depend on the grid: for a concentration claim the
largest margin it would still be supported at (its weakest part's lower
bound), for an isotropy claim the smallest (its widest part's largest
absolute bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robustness.stats.layers import layer_test

__all__ = [
    "Decision",
    "Part",
    "concentration",
    "family",
    "holm",
    "isotropy",
    "part",
    "union_p",
    "verdict_of",
]


@dataclass(frozen=True)
class Part:
    """One tested quantity: estimate, ``1 − 2α`` interval and one-sided p-values against ``±margin``."""

    name: str
    estimate: float
    ci_low: float
    ci_high: float
    p_above: float  # H0: μ ≤ +m
    p_below: float  # H0: μ ≥ −m
    p_inside: float  # H0: |μ| ≥ m (the larger of the two one-sided p-values)
    p_not_above: float  # H0: μ ≥ +m (evidence the level is short of the margin)

    @property
    def defined(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)


@dataclass(frozen=True)
class Decision:
    """A claim's unadjusted verdict, its two p-values, the margin it needs and any cap on support."""

    verdict: str
    p_support: float
    p_contradict: float
    margin_needed: float
    cap: str = ""  # why support is impossible whatever the p-value (named in the reason)


def part(name: str, values, *, margin: float, alpha: float, k: int | None = None) -> Part:
    """The EWC test of the layer mean of `values` ``[L]`` against ``±margin``, at ``1 − 2α``
    (`k` overrides the number of cosine projections)."""
    values = np.asarray(values, dtype=np.float64)
    centre = layer_test(values, confidence_level=1 - 2 * alpha, k=k)
    upper = layer_test(values, null_mean=margin, k=k)
    lower = layer_test(values, null_mean=-margin, k=k)
    p_above = float(upper.p_greater[0])
    p_not_above = float(upper.p_less[0])
    p_below = float(lower.p_less[0])
    return Part(
        name,
        float(centre.estimate[0]),
        float(centre.ci_low[0]),
        float(centre.ci_high[0]),
        p_above,
        p_below,
        max(float(lower.p_greater[0]), p_not_above),
        p_not_above,
    )


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment, NaN entries left out of the family and kept NaN.

    ``p_(i) ↦ max_{j≤i} min(1, (m − j + 1) p_(j))`` over the sorted p-values.
    Written here because statsmodels' ``multipletests`` (the reference the
    tests compare with) runs a full garbage collection on every call, 0.2 s
    each, and the claims call it for every specification.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size:
        order = finite[np.argsort(p[finite], kind="stable")]
        m = order.size
        scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
        out[order] = np.maximum.accumulate(scaled)
    return out


def union_p(p_values) -> float:
    """The p-value of "at least one holds", Holm across them: the smallest adjusted p (NaN if none)."""
    adjusted = holm(p_values)
    return float(np.nanmin(adjusted)) if np.isfinite(adjusted).any() else math.nan


def verdict_of(p_support: float, p_contradict: float, alpha: float, cap: str = "") -> str:
    if not cap and p_support < alpha:
        return "supported"
    if p_contradict < alpha:
        return "contradicted"
    return "inconclusive"


def concentration(parts: list[Part], *, alpha: float) -> Decision:
    """Every part above ``+m`` supports (intersection–union); any part inside ``±m`` or below ``−m``
    contradicts (Holm across the parts)."""
    if not parts or not all(p.defined for p in parts):
        return Decision("inconclusive", math.nan, math.nan, math.nan)
    p_support = max(p.p_above for p in parts)
    p_contradict = union_p([min(p.p_inside, p.p_below) for p in parts])
    margin_needed = min(p.ci_low for p in parts)
    return Decision(
        verdict_of(p_support, p_contradict, alpha), p_support, p_contradict, margin_needed
    )


def isotropy(
    parts: list[Part], *, alpha: float, departures: str = "", worst_point: float = 0.0
) -> Decision:
    """Every part inside ``±m`` supports (intersection–union), unless `departures` names layers whose
    own value lies outside it; any part wholly outside contradicts (Holm across the parts)."""
    if not parts or not all(p.defined for p in parts):
        return Decision("inconclusive", math.nan, math.nan, math.nan, departures)
    p_support = max(p.p_inside for p in parts)
    p_contradict = union_p([min(p.p_above, p.p_below) for p in parts])
    margin_needed = max(max(abs(p.ci_low), abs(p.ci_high)) for p in parts)
    margin_needed = max(margin_needed, worst_point)
    return Decision(
        verdict_of(p_support, p_contradict, alpha, departures),
        p_support,
        p_contradict,
        margin_needed,
        departures,
    )


def family(decisions: dict[str, Decision], *, alpha: float) -> dict[str, tuple[str, float, float]]:
    """Holm across the claims of one pair: ``{claim: (verdict, p_support_adjusted, p_contradict_adjusted)}``.

    Support and contradiction are two families, each adjusted over the claims
    that have that p-value; a claim's verdict is taken from its adjusted
    p-values (and its cap, if any).
    """
    names = list(decisions)
    support = holm([decisions[n].p_support for n in names])
    contradict = holm([decisions[n].p_contradict for n in names])
    out = {}
    for name, ps, pc in zip(names, support, contradict, strict=True):
        out[name] = (verdict_of(ps, pc, alpha, decisions[name].cap), float(ps), float(pc))
    return out
