"""Trends of the ``gradients.nc`` measures along one training phase's checkpoints.

Pretraining and alignment steps are counted apart, so a trend never runs
across the change of objective; within a phase, each layer-mean measure
against the checkpoints' steps by :func:`robustness.mechanism.trend.trend_test`
(the layers as blocks, their slopes tested by EWC over layers).
"""

from __future__ import annotations

import numpy as np

from robustness.mechanism.trend import trend_test

__all__ = ["MEASURES", "phase_trends"]

MEASURES = ("entropy_rank", "participation_ratio", "prediction_ratio", "leading_share")


def _segments(checkpoints) -> list[tuple[str, list[int]]]:
    """The checkpoints of each phase, in order of first appearance: a trend runs within one phase."""
    out: dict[str, list[int]] = {}
    for i, checkpoint in enumerate(checkpoints):
        out.setdefault(checkpoint.phase or "checkpoints", []).append(i)
    return list(out.items())


def phase_trends(observed: dict, checkpoints, level: float, seed: int) -> tuple[dict, list[str]]:
    """``trend_*(segment, objective, site, measure)``: each measure against the step, per phase.

    A segment is one phase's checkpoints (pretraining and alignment steps are
    counted apart, so a trend never runs across the change of objective);
    the step where the folder names give one, else the position. Per layer
    the least-squares slope, then the EWC test over the layers' own slopes
    (:func:`robustness.mechanism.trend.trend_test`). NaN with fewer than 3
    checkpoints in the segment. ``leading_share`` and ``prediction_ratio``
    at their first entry (the top eigenvalue, the first cutoff).
    """
    segments = _segments(checkpoints)
    sample = observed["entropy_rank"]
    shape = (len(segments), sample.shape[1], sample.shape[3], len(MEASURES))
    names = ("slope", "slope_ci_low", "slope_ci_high", "p_value", "spearman")
    out = {name: np.full(shape, np.nan) for name in names}
    rng = np.random.default_rng(seed)
    for g, (_, members) in enumerate(segments):
        steps = np.array(
            [checkpoints[i].step if checkpoints[i].step is not None else i for i in members],
            dtype=np.float64,
        )
        if len(members) < 3 or len(set(steps)) != len(members):
            continue
        for m, measure in enumerate(MEASURES):
            values = observed[measure][members]
            if values.ndim == 5:
                values = values[..., 0]
            for o in range(shape[1]):
                for s in range(shape[2]):
                    result = trend_test(
                        values[:, o, :, s], steps, confidence_level=level, rng=rng, n_resamples=999
                    )
                    for name in names:
                        out[name][g, o, s, m] = getattr(result, name)
    dims = ("segment", "objective", "site", "measure")
    notes = {
        "long_name": "along one phase's checkpoints, per step; NaN with fewer than 3 checkpoints"
    }
    return {f"trend_{name}": (dims, values, notes) for name, values in out.items()}, [
        label for label, _ in segments
    ]
