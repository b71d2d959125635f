"""Normalisations of F(k) (names are a contract, ``docs/design.md`` §1).

=================  ==========================================================
``fraction``       ``F(k)`` in [0, 1]
``isotropic``      ``F(k) / (k/d)``: 1 = no preferred alignment, max ``d/k``
``log_isotropic``  ``log2`` of ``isotropic``
``base_relative``  ``F_ΔW(k) / F_{W_from}(k)``: more concentrated than W itself?
``null_z``         ``(F(k) − k/d) / sd_Haar(k)``, sd from :func:`probes.haar_variance`
=================  ==========================================================

``isotropic``, ``log_isotropic`` and ``base_relative`` are ratios: the
statistics work with them on the log scale (:data:`RATIO_NORMALISATIONS`).
"""

from __future__ import annotations

import numpy as np

from .haar import haar_mean, haar_variance
from .names import NORMALISATIONS, RATIO_NORMALISATIONS

__all__ = ["NORMALISATIONS", "RATIO_NORMALISATIONS", "normalise"]


def normalise(
    name: str,
    fraction,
    k,
    d: int,
    *,
    base_fraction=None,
    gram_spectrum=None,
    purity: float | None = None,
):
    """Apply normalisation `name` to ``F(k)``; vectorised over `fraction` and `k`.

    Parameters
    ----------
    name : str
        One of :data:`NORMALISATIONS`.
    fraction : float or array
        ``F(k)``; NaN propagates.
    k : int or array
        The cutoff; ``k < 1`` (an undefined cutoff, ``-1``) gives NaN.
    d : int
        Residual width.
    base_fraction : float or array, optional
        ``F_{W_from}(k)`` on the same basis; required by ``base_relative``.
    gram_spectrum, purity : optional
        The delta's normalised Gram spectrum, or its ``Σ g²``; ``null_z`` needs one.
    """
    if name not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {name!r}: choose from {', '.join(NORMALISATIONS)}")
    fraction = np.asarray(fraction, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    defined = k >= 1
    k_safe = np.where(defined, k, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "fraction":
            value = fraction
        elif name in ("isotropic", "log_isotropic"):
            value = fraction / haar_mean(k_safe, d)
            if name == "log_isotropic":
                value = np.log2(value)
        elif name == "base_relative":
            if base_fraction is None:
                raise ValueError(
                    "`base_fraction` is required for the `base_relative` normalisation"
                )
            value = fraction / np.asarray(base_fraction, dtype=np.float64)
        else:  # null_z
            if gram_spectrum is None and purity is None:
                raise ValueError(
                    "`gram_spectrum` or `purity` is required for the `null_z` normalisation"
                )
            sd = np.sqrt(haar_variance(k_safe, d, gram_spectrum, purity=purity))
            value = (fraction - haar_mean(k_safe, d)) / sd
    value = np.where(defined, value, np.nan)
    return value if value.ndim else float(value)
