"""The per-pair summaries and the pair model of ``stats.nc``, read back, and a pair's joint decision.

:func:`read_per_pair` and :func:`read_pair_model` are the one way anything
reads them (the ``ds.robustness`` accessor, the claims, the report, the CLI).
"""

from __future__ import annotations

import json

import xarray as xr

from robustness.stats.layers import MIN_LAYERS

__all__ = ["JOINT_DECISIONS", "joint_decision", "read_pair_model", "read_per_pair"]


def read_per_pair(stats: xr.Dataset) -> dict[str, dict]:
    """The per-pair summary of a stats dataset: sets, counts, notes and the joint tests."""
    return json.loads(stats.attrs.get("per_pair", "{}") or "{}")


def read_pair_model(stats: xr.Dataset) -> dict:
    """The model across pairs, per phase, of a stats dataset (empty with one pair per phase)."""
    return json.loads(stats.attrs.get("pair_model", "{}") or "{}")


JOINT_DECISIONS = (
    "too_few_layers",
    "nothing_counted",
    "read_greater",
    "suggestive",
    "write_greater",
    "none",
)


def joint_decision(joint: dict, n_layers: int, alpha: float) -> str:
    """One pair's joint tests decided: one of :data:`JOINT_DECISIONS` (the report words them).

    ``read_greater`` when the median effect is positive and both the median-effect and
    share-of-significant tests reject at `alpha`; ``suggestive`` when only one does;
    ``write_greater`` when the median effect is negative and its one-sided p exceeds
    ``1 − alpha``; ``none`` otherwise.
    """
    if n_layers < MIN_LAYERS:
        return "too_few_layers"
    if "median_effect" not in joint:
        return "nothing_counted"
    positive = joint["median_effect"] > 0
    if positive and joint["p_median_effect"] < alpha and joint["p_share_significant"] < alpha:
        return "read_greater"
    if positive and min(joint["p_median_effect"], joint["p_share_significant"]) < alpha:
        return "suggestive"
    if joint["median_effect"] < 0 and joint["p_median_effect"] > 1 - alpha:
        return "write_greater"
    return "none"
