"""Rounding for display: the one place numbers become text.

Every number the report shows goes through one of these functions, so a
reader (and the golden test) knows how each kind of value is rounded:

| kind | rule | example |
|---|---|---|
| asymmetry, reference, interval bounds, probe values | 3 decimals, signed | ``+0.023`` |
| effect size d_z, Stouffer's Z | 2 decimals, signed | ``-0.13`` |
| p-value | 3 decimals; below 0.001 as ``< 0.001`` | ``0.031`` |
| share (of specifications, of variance) | whole percent | ``7%`` |
| expected share (under the null, under the median effect) | percent, 1 decimal | ``2.5%`` |
| rate (type-I error, power, coverage) | 3 decimals | ``0.055`` |
| agreement (Kendall's W, ICC) | 2 decimals | ``0.11`` |
| lag-1 autocorrelation | 2 decimals, signed | ``+0.59`` |
| effective number of layers | 1 decimal | ``1.5`` |
| test statistic (F) | 2 decimals | ``0.25`` |
| count | whole number | ``12`` |

A missing value (NaN, or a statistic that was not computed) shows as an em
dash. Each cell keeps the unrounded value for sorting.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

__all__ = [
    "MISSING",
    "Cell",
    "agreement",
    "autocorrelation",
    "element_id",
    "effect",
    "expected_share",
    "integer",
    "layers",
    "level_percent",
    "p_value",
    "per_step",
    "plural",
    "rank",
    "rate",
    "share",
    "signed",
    "small",
    "statistic",
    "text",
    "value",
]

MISSING = "—"
_SAFE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``"1 control"``, ``"2 controls"`` (`many` for irregular plurals)."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


def element_id(*parts) -> str:
    """An HTML/SVG id from `parts` (a prefix and labels): the parts themselves when every one is
    plain (letters, digits, ``-``, ``_``), else a slug with a hash of the exact text.

    Labels come from datasets, that is from users (a pair's default label is a folder's name):
    an id never carries one raw, so no quote or angle bracket can leave the attribute.
    """
    text = "-".join(str(part) for part in parts)
    if _SAFE_ID.fullmatch(text):
        return text
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40]
    if not slug[:1].isalpha():
        slug = f"id-{slug}".rstrip("-")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{slug}-{digest}"


@dataclass(frozen=True)
class Cell:
    """A table cell: the rounded text and the unrounded value (``None`` for text cells)."""

    text: str
    value: float | None = None
    # (label, text) pairs shown under the cell in a closed <details> element (a row's long prose).
    details: tuple[tuple[str, str], ...] = ()

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
    """The effect size d_z (Hedges-corrected) and Stouffer's Z: ``-0.13``."""
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


def expected_share(x) -> Cell:
    """A share expected under a model (under the null, under the median effect): ``2.5%``."""
    return _cell(x, ".1%")


def rate(x) -> Cell:
    """Type-I error, power, coverage: ``0.055``."""
    return _cell(x, ".3f")


def agreement(x) -> Cell:
    """Kendall's W, ICC: ``0.11``."""
    return _cell(x, ".2f")


def autocorrelation(x) -> Cell:
    """The lag-1 autocorrelation of the per-layer differences: ``+0.59``."""
    return _cell(x, "+.2f")


def layers(x) -> Cell:
    """An effective number of layers: ``1.5``."""
    return _cell(x, ".1f")


def statistic(x) -> Cell:
    """A test statistic (the pair model's F): ``0.25``."""
    return _cell(x, ".2f")


def rank(x) -> Cell:
    """Effective ranks and ratios to isotropy: ``12.38``."""
    return _cell(x, ".2f")


def small(x) -> Cell:
    """KL divergences and margin changes near zero: 4 significant digits."""
    return _cell(x, ".4g")


def per_step(x) -> Cell:
    """A slope per 100 training steps: ``-17.6``."""
    x = _finite(x)
    return Cell(MISSING if x is None else format(100 * x, "+.3g"), x)


def level_percent(ds) -> int:
    """A dataset's confidence level (attr ``confidence_level``, default 0.95) in whole percent."""
    return int(round(100 * float(ds.attrs.get("confidence_level", 0.95))))


def median_rank(x) -> Cell:
    """A rank or the median of ranks: ``8``, ``12.5``."""
    return _cell(x, "g")


def integer(x) -> Cell:
    x = _finite(x)
    return Cell(MISSING if x is None else str(int(x)), x)


def text(x, details=()) -> Cell:
    return Cell(str(x), None, tuple((str(k), str(v)) for k, v in details if str(v)))
