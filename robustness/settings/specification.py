"""The paper's names, defined once: what a specification is and the defaults every module shares.

A **specification** is one analytic choice of (construction, cutoff,
normalisation) (``docs/design.md`` §1): a :class:`Specification`, written
``construction/cutoff/normalisation`` wherever it is shown. The statistics put the probe on the
log2 scale for ratio normalisations (:func:`probe_scale`). The default read
and write sets are the paper's: ``{q, k}`` and ``{o, down}``; its preferred
specification is ``act_cov, k=8, log_isotropic``. Cutoff labels are made
canonical (``k=8``, ``var=0.9``) once, when settings are read
(:func:`canonical_cutoffs`), so every dataset spells a cutoff the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

import probes

__all__ = [
    "CONTROLS",
    "DEFAULT_CONSTRUCTIONS",
    "DEFAULT_CUTOFFS",
    "DEFAULT_NORMALISATIONS",
    "DEFAULT_PREFERRED",
    "DEFAULT_READ",
    "DEFAULT_WRITE",
    "EXACT_LIMIT",
    "RATIO_NORMALISATIONS",
    "SPEC_DIMS",
    "Specification",
    "canonical_cutoffs",
    "probe_scale",
    "scale_name",
]


class Specification(NamedTuple):
    """One analytic choice; ``str(spec)`` is ``construction/cutoff/normalisation``.

    A tuple, so it indexes and compares as the ``(construction, cutoff,
    normalisation)`` triples the datasets' coordinates give.
    """

    construction: str
    cutoff: str
    normalisation: str

    def __str__(self) -> str:
        return "/".join(self)

    @classmethod
    def parse(cls, text: str) -> Specification:
        """``"c/k/n"`` (the shown form) or ``"c,k,n"`` (the form of the datasets' attributes)."""
        parts = [part.strip() for part in str(text).split("/" if "/" in str(text) else ",")]
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"not a specification (construction/cutoff/normalisation): {text!r}")
        return cls(*parts)

    def attribute(self) -> str:
        """The datasets' attribute form, ``c,k,n`` (``preferred_specification``)."""
        return ",".join(self)


SPEC_DIMS = ("construction", "cutoff", "normalisation")
RATIO_NORMALISATIONS = probes.RATIO_NORMALISATIONS
DEFAULT_CONSTRUCTIONS = probes.CONSTRUCTIONS
DEFAULT_CUTOFFS = ("k=8", "frac=0.05", "var=0.9", "pr", "mp")
DEFAULT_NORMALISATIONS = probes.NORMALISATIONS
DEFAULT_READ = ("q", "k")
DEFAULT_WRITE = ("o", "down")
DEFAULT_PREFERRED = Specification("act_cov", "k=8", "log_isotropic")
# Constructions shown but kept out of the joint tests: the Haar null and "does ΔW follow W?".
CONTROLS = ("random", "weight_svd")
# Exact enumeration of a permutation or sign-flip null when it has at most this many arrangements.
EXACT_LIMIT = 65536


def canonical_cutoffs(labels) -> tuple[str, ...]:
    """Every label parsed and written in its contract spelling (``"k = 8"`` → ``"k=8"``)."""
    return tuple(probes.parse_cutoff(label).label for label in labels)


def probe_scale(values, normalisation: str) -> np.ndarray:
    """The probe on the scale the statistics use: ``log2`` for ratio normalisations; NaN for ±inf."""
    values = np.asarray(values, dtype=np.float64)
    if normalisation in RATIO_NORMALISATIONS:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.log2(values)
    return np.where(np.isfinite(values), values, np.nan)


def scale_name(normalisation: str) -> str:
    """``"log2 isotropic"`` for a ratio normalisation, the name itself otherwise."""
    return f"log2 {normalisation}" if normalisation in RATIO_NORMALISATIONS else normalisation
