"""Rank cutoffs: which k a label such as ``k=8`` or ``var=0.9`` means for one subspace.

Label syntax (a contract, ``docs/design.md`` §1):

=============  ===============================================================
``k=8``        fixed k
``frac=0.05``  ``max(1, round(0.05·d))``
``var=0.9``    smallest k whose cumulative spectrum reaches 90 %
``pr``         participation ratio ``(Σλ)²/Σλ²``, ``max(1, round(·))``
``mp``         eigenvalues above the Marchenko–Pastur edge for ``n`` samples
=============  ===============================================================

A cutoff that a construction cannot define (``var`` on ``random``, ``mp`` on
anything but an activation covariance) resolves to ``-1``, which every
normalisation turns into NaN: a sweep never stops on it. ``k > d`` is a
configuration error, raised by :func:`validate_cutoffs` before any model loads.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "CUTOFF_RULES",
    "UNDEFINED",
    "Cutoff",
    "marchenko_pastur_count",
    "parse_cutoff",
    "participation_ratio",
    "resolve_cutoff",
    "validate_cutoffs",
]

UNDEFINED = -1
CUTOFF_RULES = ("k", "frac", "var", "pr", "mp")
_VALUED = re.compile(r"^\s*(k|frac|var)\s*=\s*([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Cutoff:
    """A parsed rank-cutoff rule; ``label`` is its canonical contract spelling."""

    rule: str
    value: float | None = None

    @property
    def label(self) -> str:
        if self.value is None:
            return self.rule
        if self.rule == "k":
            return f"k={int(self.value)}"
        return f"{self.rule}={self.value:g}"

    def __str__(self) -> str:
        return self.label


def parse_cutoff(label: str | Cutoff) -> Cutoff:
    """Parse ``k=8``, ``frac=0.05``, ``var=0.9``, ``pr`` or ``mp``."""
    if isinstance(label, Cutoff):
        return label
    text = str(label).strip()
    if text in ("pr", "mp"):
        return Cutoff(text)
    match = _VALUED.match(text)
    if match is None:
        raise ValueError(
            f"unknown cutoff {label!r}: use k=<int>, frac=<(0,1]>, var=<(0,1]>, pr or mp"
        )
    rule, raw = match.groups()
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"cutoff {label!r}: {raw!r} is not a number") from None
    if rule == "k":
        if value != int(value) or value < 1:
            raise ValueError(f"cutoff {label!r}: k must be a positive integer")
        return Cutoff("k", float(int(value)))
    if not 0.0 < value <= 1.0:
        raise ValueError(f"cutoff {label!r}: {rule} must lie in (0, 1]")
    return Cutoff(rule, value)


def validate_cutoffs(labels, d: int) -> list[Cutoff]:
    """Parse every label and reject a fixed ``k`` larger than the residual width `d`."""
    cutoffs = [parse_cutoff(label) for label in labels]
    for cutoff in cutoffs:
        if cutoff.rule == "k" and cutoff.value > d:
            raise ValueError(
                f"cutoff `{cutoff.label}` exceeds the residual width d={d}: use k<={d}"
            )
    return cutoffs


def participation_ratio(spectrum) -> float:
    """``(Σλ)² / Σλ²`` of a non-negative spectrum."""
    lam = np.clip(np.asarray(spectrum, dtype=np.float64), 0.0, None)
    denominator = float(np.sum(lam**2))
    return float(np.sum(lam) ** 2 / denominator) if denominator > 0 else math.nan


def _mp_density(x: float, ratio: float) -> float:
    lo, hi = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2
    if x <= lo or x >= hi:
        return 0.0
    return math.sqrt((hi - x) * (x - lo)) / (2 * math.pi * ratio * x)


@lru_cache(maxsize=256)
def _mp_median(ratio: float) -> float:
    """Median of the Marchenko–Pastur law with unit variance and aspect ``d/n``.

    No scipy distribution provides it; for ``ratio > 1`` the law has an atom of
    mass ``1 − 1/ratio`` at zero, which the median accounts for.
    """
    from scipy import integrate, optimize  # here: parsing a label needs no scipy

    lo, hi = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2
    atom = max(0.0, 1.0 - 1.0 / ratio)
    if atom >= 0.5:
        return 0.0

    def cdf_minus_half(x: float) -> float:
        return atom + integrate.quad(_mp_density, lo, x, args=(ratio,), limit=200)[0] - 0.5

    return optimize.brentq(cdf_minus_half, lo, hi, xtol=1e-12)


def marchenko_pastur_count(spectrum, n_samples: int) -> int:
    """Number of eigenvalues above the Marchenko–Pastur edge ``σ²(1 + √(d/n))²``.

    The noise level is estimated robustly from the bulk, as in Gavish & Donoho
    (2014): ``σ² = median(λ) / μ_MP(d/n)``, with ``μ_MP`` the median of the
    unit-variance law; a few large spikes then do not inflate the edge.
    """
    lam = np.sort(np.clip(np.asarray(spectrum, dtype=np.float64), 0.0, None))[::-1]
    d = lam.size
    if n_samples is None or n_samples < 1 or d == 0:
        return UNDEFINED
    ratio = d / n_samples
    mu = _mp_median(ratio)
    median = float(np.median(lam))
    if mu == 0.0 or median == 0.0:
        return UNDEFINED
    edge = median / mu * (1 + math.sqrt(ratio)) ** 2
    return int(np.sum(lam > edge))


def resolve_cutoff(
    cutoff: str | Cutoff,
    *,
    d: int,
    spectrum=None,
    n_samples: int | None = None,
) -> int:
    """The k a cutoff selects, or ``-1`` where the construction cannot define it.

    Parameters
    ----------
    cutoff : str or Cutoff
    d : int
        Residual width.
    spectrum : array, optional
        The construction's spectrum, descending (eigenvalues or squared singular
        values); ``None`` for constructions without one (``random``).
    n_samples : int, optional
        Tokens behind an activation covariance; only ``mp`` uses it, and only
        activation constructions have it.
    """
    cutoff = parse_cutoff(cutoff)
    if cutoff.rule == "k":
        k = int(cutoff.value)
        if k > d:
            raise ValueError(f"cutoff `{cutoff.label}` exceeds the residual width d={d}")
        return k
    if cutoff.rule == "frac":
        return min(d, max(1, round(cutoff.value * d)))
    if spectrum is None:
        return UNDEFINED
    lam = np.clip(np.asarray(spectrum, dtype=np.float64), 0.0, None)
    if lam.size == 0 or not np.isfinite(lam).all() or lam.sum() == 0:
        return UNDEFINED
    if cutoff.rule == "var":
        cumulative = np.cumsum(lam) / lam.sum()
        # Tolerance: a spectrum built to reach exactly 0.9 must not miss by one ulp.
        return min(d, int(np.searchsorted(cumulative, cutoff.value - 1e-12)) + 1)
    if cutoff.rule == "pr":
        return min(d, max(1, round(participation_ratio(lam))))
    if cutoff.rule == "mp":
        if n_samples is None:
            return UNDEFINED
        count = marchenko_pastur_count(lam, n_samples)
        return count if count >= 1 else UNDEFINED
    raise AssertionError(cutoff.rule)  # parse_cutoff admits nothing else
