"""Rounding for display: the one place numbers become text.

Every number the report shows goes through one of these functions, so a
reader (and the golden test) knows how each kind of value is rounded:

| kind | rule | example |
|---|---|---|
| asymmetry, interval bounds, probe values | 3 decimals, signed | ``+0.023`` |
| effect size d_z, Stouffer's Z | 2 decimals, signed | ``-0.13`` |
| p-value | 3 decimals; below 0.001 as ``< 0.001`` | ``0.031`` |
| share (of specifications, of variance) | whole percent | ``7%`` |
| rate (type-I error, power, coverage) | 3 decimals | ``0.055`` |
| agreement (Kendall's W, ICC) | 2 decimals | ``0.11`` |

A missing value (NaN, or a statistic that was not computed) shows as an em
dash. Each cell keeps the unrounded value for sorting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "MISSING",
    "Cell",
    "agreement",
    "effect",
    "integer",
    "p_value",
    "rate",
    "share",
    "signed",
    "text",
    "value",
]

MISSING = "—"


@dataclass(frozen=True)
class Cell:
    """A table cell: the rounded text and the unrounded value (``None`` for text cells)."""

    text: str
    value: float | None = None

    @property
    def sort_key(self) -> str:
        """What the inline sorter reads: the full-precision number, empty when missing."""
        if self.value is None or not math.isfinite(self.value):
            return ""
        return repr(float(self.value))

    def __str__(self) -> str:
        return self.text


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _cell(x, rule: str) -> Cell:
    x = _finite(x)
    return Cell(MISSING if x is None else format(x, rule), x)


def signed(x) -> Cell:
    """Asymmetries, interval bounds, probe values: ``+0.023``."""
    return _cell(x, "+.3f")


def value(x) -> Cell:
    """An unsigned quantity on the probe's scale: ``0.023``."""
    return _cell(x, ".3f")


def effect(x) -> Cell:
    """Cohen's d_z and Stouffer's Z: ``-0.13``."""
    return _cell(x, "+.2f")


def p_value(x) -> Cell:
    """``0.031``; below 0.001 as ``< 0.001`` (Monte Carlo p-values are never 0)."""
    x = _finite(x)
    if x is None:
        return Cell(MISSING, None)
    return Cell("< 0.001" if x < 0.001 else format(x, ".3f"), x)


def share(x) -> Cell:
    """A share in [0, 1] as a whole percent: ``7%``."""
    return _cell(x, ".0%")


def rate(x) -> Cell:
    """Type-I error, power, coverage: ``0.055``."""
    return _cell(x, ".3f")


def agreement(x) -> Cell:
    """Kendall's W, ICC: ``0.11``."""
    return _cell(x, ".2f")


def integer(x) -> Cell:
    x = _finite(x)
    return Cell(MISSING if x is None else str(int(x)), x)


def text(x) -> Cell:
    return Cell(str(x), None)
