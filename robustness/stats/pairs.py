"""Several pairs at once: the overall asymmetry and the differences between pairs.

The unit is the per-layer difference ``D_{l,p}`` of pair ``p`` on one
specification (the preferred one). Pairs of one phase share their layers (a
trajectory: base → SFT, base → DPO, …), so their differences at a layer are
correlated and layers are serially dependent; pairs of different phases
(``align``, ``pretrain``) are never pooled. Within a phase, for pairs with the
same number of layers, both tests use the EWC projections over layers of
:mod:`robustness.stats.layers` (``K`` cosines):

- **overall asymmetry**, H0: ``E[mean_p D_{l,p}] = 0``: the EWC t-test of the
  pairs' mean at each layer;
- **difference between pairs**, H0: every pair has the same mean ``D``: the
  ``m = P − 1`` contrasts ``C_{l,j} = D_{l,j+1} − D_{l,1}`` projected on the
  constant and the cosines, ``z_0 = Φ_0 C``, ``Ω̂ = Σ_k z_k z_kᵀ / K``; the
  Wald statistic ``W = z_0ᵀ Ω̂⁻¹ z_0`` scaled as ``F = (K − m + 1) W / (K m)``
  is ``F(m, K − m + 1)`` under H0 (Sun 2013, the orthonormal-series F test),
  so it needs ``K ≥ m``.

:func:`phase_models` fits one such model per phase of a results dataset (the
pair model of ``stats.nc``).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from robustness.measure.results import pair_phases
from robustness.stats.layers import cosine_projections, layer_test, projections_for

__all__ = ["DIFFERENCE_NULL", "OVERALL_NULL", "pair_model", "phase_models"]

OVERALL_NULL = "the mean over pairs and layers of D_{l,p} is 0"
DIFFERENCE_NULL = "every pair has the same mean D"


def pair_model(differences: np.ndarray, labels: list[str], *, confidence_level: float) -> dict:
    """Overall and between-pair tests for ``differences [L, P]`` (one column per pair of one phase)."""
    n_layers, n_pairs = differences.shape
    k = projections_for(n_layers)
    out: dict = {"pairs": list(labels), "n_layers": int(n_layers), "projections": int(k)}
    overall = layer_test(differences.mean(axis=1), confidence_level=confidence_level)
    out["overall"] = {
        "estimate": float(overall.estimate[0]),
        "ci_low": float(overall.ci_low[0]),
        "ci_high": float(overall.ci_high[0]),
        "p_value": float(overall.p_value[0]),
        "null": OVERALL_NULL,
    }
    per_pair = layer_test(differences, confidence_level=confidence_level)
    out["per_pair"] = {
        label: {
            "estimate": float(per_pair.estimate[i]),
            "ci_low": float(per_pair.ci_low[i]),
            "ci_high": float(per_pair.ci_high[i]),
            "p_value": float(per_pair.p_value[i]),
        }
        for i, label in enumerate(labels)
    }
    m = n_pairs - 1
    difference = {"null": DIFFERENCE_NULL, "df": [m, k - m + 1]}
    if k < m or n_layers <= k:
        difference.update(F=float("nan"), p_value=float("nan"))
        difference["note"] = (
            f"{n_pairs} pairs need at least {m} cosine projections; {n_layers} layers give {k}"
        )
    else:
        contrasts = differences[:, 1:] - differences[:, :1]
        z = cosine_projections(n_layers, k) @ contrasts  # [K+1, m]
        omega = z[1:].T @ z[1:] / k
        wald = float(z[0] @ np.linalg.solve(omega, z[0]))
        f = (k - m + 1) * wald / (k * m)
        difference.update(F=f, p_value=float(stats.f.sf(f, m, k - m + 1)))
    out["difference"] = difference
    return out


def phase_models(results, preferred, specs, layer_differences, confidence_level) -> dict:
    """The pair model per phase with at least two pairs of equal depth (phases never pooled).

    `layer_differences` maps each tested pair's label to its ``D [L, J]``
    (specifications `specs`); the model uses the `preferred` one's column.
    """
    if results.sizes["pair"] < 2:
        return {}
    j = specs.index(tuple(preferred))
    phases = pair_phases(results)
    out = {"specification": list(preferred)}
    for phase in sorted(set(phases)):
        labels = [
            str(p)
            for p, ph in zip(results.pair.values, phases, strict=True)
            if ph == phase and str(p) in layer_differences
        ]
        if len(labels) < 2:
            continue
        depths = {layer_differences[label].shape[0] for label in labels}
        if len(depths) != 1:
            out[phase] = {
                "pairs": labels,
                "note": "pairs of different depths cannot be paired by layer",
            }
            continue
        columns = np.stack([layer_differences[label][:, j] for label in labels], axis=1)
        if not np.isfinite(columns).all():
            out[phase] = {
                "pairs": labels,
                "note": "the preferred specification is undefined for a pair",
            }
            continue
        out[phase] = pair_model(columns, labels, confidence_level=confidence_level)
    return out
