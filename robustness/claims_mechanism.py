"""The claims on the mechanism, from the experiments' datasets (``--extra``).

- ``gradient_anisotropy`` (``gradients.nc``): per layer, the entropy effective
  rank of δ_t under DPO minus under cross-entropy, at both write sites
  (``o_out``, ``down_out``), paired over layers with the EWC interval:
  supported when the interval lies above 0 at both sites (CE's δ_t lower-rank,
  more anisotropic), contradicted when below 0 at both, inconclusive
  otherwise; with several checkpoints, supported when supported at every
  checkpoint, contradicted when contradicted at any, and the reason says
  where it holds;
- ``trajectory_consistent`` (``trajectory.nc``): the asymmetry against the
  start, its EWC interval above 0 at every checkpoint (supported), below 0
  at any (contradicted);
- ``graded_control`` (``contrastive.nc``): **non-inferiority**: the slope of
  write concentration (the write set's level on the write construction,
  against its Haar reference) in λ, its one-sided ``1 − α`` upper bound (the
  upper end of the ``1 − 2α`` EWC interval over the layers' own slopes) below
  the margin (default +0.25 log2 per unit λ) supports; a lower bound above it
  contradicts;
- ``rank1_causal`` (``rank1.nc``): the read intervention against the pooled
  controls: ``(1 + b)/(1 + B)`` p on ``|Δmargin|`` and on KL both below α
  supports; both at least ``1 − α`` (below nearly every control) contradicts.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

import probes

from .claims import Outcome
from .layers import MIN_LAYERS, layer_test
from .specification import DEFAULT_PREFERRED, probe_scale

__all__ = [
    "gradient_claim",
    "graded_claim",
    "rank1_claim",
    "trajectory_claim",
    "variant_read_levels",
]

WRITE_SITES = ("o_out", "down_out")


def _site_verdict(low: float, high: float) -> str:
    if low > 0:
        return "supported"
    if high < 0:
        return "contradicted"
    return "inconclusive"


def gradient_claim(ds: xr.Dataset, *, alpha: float, confidence_level: float) -> Outcome:
    """``gradient_anisotropy`` from a gradients dataset (one checkpoint or several)."""
    objectives = [str(o) for o in ds.objective.values]
    if "ce" not in objectives or "dpo" not in objectives:
        return Outcome("not_tested", reason="gradients.nc needs the objectives ce and dpo "
                       "(rsf gradients --objective ce,dpo)")  # fmt: skip
    rank = ds.entropy_rank
    if ds.sizes["layer"] < MIN_LAYERS:
        return Outcome(
            "inconclusive",
            reason=f"the EWC interval over layers needs at least {MIN_LAYERS} layers; "
            f"gradients.nc has {ds.sizes['layer']}",
        )
    checkpoints = [str(c) for c in ds.checkpoint.values] if "checkpoint" in rank.dims else [""]
    rows, verdicts = [], {}
    for checkpoint in checkpoints:
        cell = rank.sel(checkpoint=checkpoint) if checkpoint else rank
        per_site = {}
        for site in WRITE_SITES:
            difference = (
                cell.sel(objective="dpo", site=site) - cell.sel(objective="ce", site=site)
            ).values
            test = layer_test(difference, confidence_level=confidence_level)
            per_site[site] = (
                float(test.estimate[0]),
                float(test.ci_low[0]),
                float(test.ci_high[0]),
            )
        site_verdicts = [_site_verdict(low, high) for _, low, high in per_site.values()]
        if all(v == "supported" for v in site_verdicts):
            verdicts[checkpoint] = "supported"
        elif all(v == "contradicted" for v in site_verdicts):
            verdicts[checkpoint] = "contradicted"
        else:
            verdicts[checkpoint] = "inconclusive"
        rows.append(per_site)
    if all(v == "supported" for v in verdicts.values()):
        verdict = "supported"
    elif any(v == "contradicted" for v in verdicts.values()):
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    first = rows[-1]["o_out"]
    where = "; ".join(
        f"{c or 'the model'}: {v} (o_out {r['o_out'][0]:+.2f} [{r['o_out'][1]:+.2f}, {r['o_out'][2]:+.2f}], "
        f"down_out {r['down_out'][0]:+.2f} [{r['down_out'][1]:+.2f}, {r['down_out'][2]:+.2f}])"
        for (c, v), r in zip(verdicts.items(), rows, strict=True)
    )
    return Outcome(
        verdict, estimate=first[0], ci_low=first[1], ci_high=first[2], reference=0.0,
        n_specifications=len(checkpoints),
        method="entropy effective rank of δ_t, DPO − CE per layer, EWC interval over layers, at o_out and "
        "down_out (estimate: o_out at the last checkpoint)", reason=where,
    )  # fmt: skip


def _trajectory_spec(ds: xr.Dataset) -> dict:
    construction, cutoff, normalisation = DEFAULT_PREFERRED
    if normalisation not in ds.normalisation.values and "isotropic" in ds.normalisation.values:
        normalisation = "isotropic"  # the same quantity on the statistics' log2 scale
    return {
        "construction": construction if construction in ds.construction.values else str(ds.construction.values[0]),
        "cutoff": cutoff if cutoff in ds.cutoff.values else str(ds.cutoff.values[0]),
        "normalisation": normalisation if normalisation in ds.normalisation.values else str(ds.normalisation.values[0]),
    }  # fmt: skip


def trajectory_claim(ds: xr.Dataset) -> Outcome:
    """``trajectory_consistent`` from a trajectory dataset: against the start, at every checkpoint."""
    spec = _trajectory_spec(ds)
    cell = ds.sel(reference="start", **spec)
    low, high, value = (
        cell.asymmetry_ci_low.values,
        cell.asymmetry_ci_high.values,
        cell.asymmetry.values,
    )
    if not np.isfinite(low).all():
        return Outcome(
            "inconclusive", reason="the interval over layers is undefined (fewer than 4 layers)"
        )
    if (low > 0).all():
        verdict = "supported"
    elif (high < 0).any():
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    where = "; ".join(
        f"{c}: {v:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        for c, v, lo, hi in zip(ds.checkpoint.values, value, low, high, strict=True)
    )
    return Outcome(
        verdict, estimate=float(value[-1]), ci_low=float(low[-1]), ci_high=float(high[-1]), reference=0.0,
        n_specifications=int(value.size),
        method=f"asymmetry against the start at every checkpoint, EWC interval over layers; "
        f"{spec['construction']}/{spec['cutoff']}/{spec['normalisation']} (estimate: the last checkpoint)",
        reason=where,
    )  # fmt: skip


def _levels(
    ds: xr.Dataset, construction: str, matrices, cutoff: str, normalisation: str
) -> np.ndarray:
    """``[λ, layer]``: mean over `matrices` of the probe minus its Haar reference (when purity is known)."""
    cell = ds.rsf.sel(construction=construction, cutoff=cutoff, normalisation=normalisation)
    s = probe_scale(
        cell.sel(matrix=list(matrices)).transpose("lam_label", "layer", "matrix").values,
        normalisation,
    )
    if "gram_purity" in ds and "d_model" in ds.attrs:
        k = ds.k.sel(construction=construction, cutoff=cutoff, matrix=list(matrices))
        k = k.transpose("lam_label", "layer", "matrix").values
        purity = (
            ds.gram_purity.sel(matrix=list(matrices))
            .transpose("lam_label", "layer", "matrix")
            .values
        )
        s = s - probes.haar_reference(normalisation, k, int(ds.attrs["d_model"]), purity)
    return s.mean(axis=2)


def _contrastive_spec(ds: xr.Dataset) -> tuple[str, str]:
    cutoff = "k=8" if "k=8" in ds.cutoff.values else str(ds.cutoff.values[0])
    for normalisation in ("log_isotropic", "isotropic"):
        if normalisation in ds.normalisation.values:
            return cutoff, normalisation
    return cutoff, str(ds.normalisation.values[0])


def graded_claim(ds: xr.Dataset, *, margin: float, alpha: float) -> Outcome:
    """``graded_control`` from a contrastive dataset: non-inferiority of the write slope in λ."""
    cutoff, normalisation = _contrastive_spec(ds)
    write = [m for m in ds.attrs["write_set"].split(",") if m in ds.matrix.values]
    levels = _levels(ds, ds.attrs["write_construction"], write, cutoff, normalisation)  # [λ, L]
    lams = ds.lam.values
    centred = lams - lams.mean()
    slopes = np.einsum("i,il->l", centred, levels - levels.mean(axis=0)) / np.sum(centred**2)
    test = layer_test(slopes, confidence_level=1 - 2 * alpha)
    low, high = float(test.ci_low[0]), float(test.ci_high[0])
    if not np.isfinite(high):
        return Outcome(
            "inconclusive", reason="the interval over layers is undefined (fewer than 4 layers)"
        )
    if high < margin:
        verdict = "supported"
    elif low > margin:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    upper = layer_test(slopes, null_mean=margin)
    return Outcome(
        verdict, estimate=float(test.estimate[0]), ci_low=low, ci_high=high, p_value=float(upper.p_less[0]),
        reference=margin, n_specifications=1,
        method=f"slope of the write level ({ds.attrs['write_construction']}, {cutoff}, {normalisation}, against "
        f"its Haar reference) per unit λ: the mean of the layers' own slopes, one-sided EWC test of slope < "
        f"{margin:+g} (the {1 - 2 * alpha:.0%} interval's upper bound below the margin)",
    )  # fmt: skip


def variant_read_levels(
    ds: xr.Dataset, *, alpha: float, confidence_level: float
) -> dict[str, Outcome]:
    """Read concentration of every contrastive variant (for ``read_objective_agnostic``)."""
    cutoff, normalisation = _contrastive_spec(ds)
    read = [m for m in ds.attrs["read_set"].split(",") if m in ds.matrix.values]
    levels = _levels(ds, ds.attrs["read_construction"], read, cutoff, normalisation)
    test = layer_test(levels.T, confidence_level=confidence_level)
    out = {}
    for i, label in enumerate(ds.lam_label.values):
        if test.p_greater[i] < alpha:
            verdict = "supported"
        elif test.p_less[i] < alpha:
            verdict = "contradicted"
        else:
            verdict = "inconclusive"
        out[f"variant {label}"] = Outcome(
            verdict, estimate=float(test.estimate[i]), p_value=float(test.p_greater[i])
        )
    return out


def rank1_claim(ds: xr.Dataset, *, alpha: float) -> Outcome:
    """``rank1_causal`` from a rank-1 dataset: the read intervention against the pooled controls."""
    read = ds.where(ds.role == "read", drop=True)
    if read.sizes.get("matrix", 0) == 0:
        return Outcome("not_tested", reason="rank1.nc has no read intervention")
    p_margin = float(read.p_margin.sel(control="all").values[0])
    p_kl = float(read.p_kl.sel(control="all").values[0])
    if p_margin < alpha and p_kl < alpha:
        verdict = "supported"
    elif p_margin >= 1 - alpha and p_kl >= 1 - alpha:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    principal = read.sel(intervention="principal")
    n_controls = int((read.intervention != "principal").sum())
    floor = ""
    if 1 / (1 + n_controls) >= alpha:  # (1 + b)/(1 + B) ≥ 1/(1 + B): never below α
        floor = (
            f"; with {n_controls} controls p cannot fall below {1 / (1 + n_controls):.3g} ≥ α = {alpha:g}, "
            f"so the claim cannot be supported: raise --controls"
        )
    return Outcome(
        verdict, estimate=float(principal.margin_change.values[0]),
        ci_low=float(principal.margin_change_ci_low.values[0]), ci_high=float(principal.margin_change_ci_high.values[0]),
        p_value=max(p_margin, p_kl), n_specifications=1,
        method=f"read matrix {str(read.matrix.values[0])!r} at layer {ds.attrs['layer']}: principal direction "
        "against the pooled random and matched controls, (1+b)/(1+B); estimate: its Δmargin",
        reason=f"p(|Δmargin|) = {p_margin:.3g}, p(KL) = {p_kl:.3g}" + floor,
    )  # fmt: skip
