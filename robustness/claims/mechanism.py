"""The claims on the mechanism, from the experiments' datasets (``--extra``), under the rules of
:mod:`robustness.claims.rules` (every interval at ``1 − 2α``, unions Holm-adjusted inside the claim).

- ``gradient_anisotropy`` (``gradients.nc``): per layer, the entropy effective
  rank of δ_t under DPO minus under cross-entropy, at both write sites
  (``o_out``, ``down_out``), paired over layers with the EWC test: at a
  checkpoint supported when it lies above 0 at both sites (CE's δ_t
  lower-rank, more anisotropic), contradicted when below 0 at both; overall
  supported when supported at every checkpoint, contradicted when
  contradicted at some (Holm across the checkpoints);
- ``trajectory_consistent`` (``trajectory.nc``): the per-layer asymmetry
  against the start, a concentration part per checkpoint against the margin:
  supported when above ``+m`` at every checkpoint, contradicted when inside
  ``±m`` or below ``−m`` at some (Holm);
- ``graded_control`` (``contrastive.nc``): **non-inferiority**: the slope of
  write concentration (the write set's level on the write construction,
  against its Haar reference) in λ, the upper end of its ``1 − 2α`` EWC
  interval over the layers' own slopes below the graded margin supports; a
  lower end above it contradicts;
- ``rank1_causal`` (``rank1.nc``): the read intervention against the pooled
  controls: ``(1 + b)/(1 + B)`` p on ``|Δmargin|`` and on KL both below α
  supports (intersection–union); both lower-tail p-values below α
  (below nearly every control) contradicts.

A dataset without the preferred specification a claim reads makes it
``not_tested`` with the reason, never a stand-in.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

import probes
from robustness.claims.registry import Outcome, decided, not_tested
from robustness.claims.rules import Decision, concentration, part, union_p, verdict_of
from robustness.settings.specification import DEFAULT_PREFERRED, probe_scale
from robustness.stats.layers import MIN_LAYERS

__all__ = [
    "gradient_claim",
    "graded_claim",
    "rank1_claim",
    "trajectory_claim",
    "variant_read_levels",
]

WRITE_SITES = ("o_out", "down_out")


def _too_few(n: int, what: str) -> Outcome:
    return Outcome(
        "inconclusive",
        reason=f"the EWC test over layers needs at least {MIN_LAYERS} layers; {what} has {n}",
    )


def gradient_claim(ds: xr.Dataset, *, alpha: float) -> Outcome:
    """``gradient_anisotropy`` from a gradients dataset (one checkpoint or several)."""
    objectives = [str(o) for o in ds.objective.values]
    if "ce" not in objectives or "dpo" not in objectives:
        return not_tested(
            "gradients.nc needs the objectives ce and dpo (rsf gradients --objective ce,dpo)"
        )
    rank = ds.entropy_rank
    if ds.sizes["layer"] < MIN_LAYERS:
        return _too_few(ds.sizes["layer"], "gradients.nc")
    checkpoints = [str(c) for c in ds.checkpoint.values] if "checkpoint" in rank.dims else [""]
    rows, support, contradict = [], [], []
    for checkpoint in checkpoints:
        cell = rank.sel(checkpoint=checkpoint) if checkpoint else rank
        sites = [
            part(site, (cell.sel(objective="dpo", site=site) - cell.sel(objective="ce", site=site)).values,
                 margin=0.0, alpha=alpha)
            for site in WRITE_SITES
        ]  # fmt: skip
        rows.append((checkpoint, sites))
        support.append(max(p.p_above for p in sites))  # both sites above 0
        contradict.append(max(p.p_below for p in sites))  # both sites below 0
    p_support = max(support)  # at every checkpoint
    p_contradict = union_p(contradict)  # at some checkpoint
    decision = Decision(
        verdict_of(p_support, p_contradict, alpha), p_support, p_contradict, math.nan
    )
    last = rows[-1][1][0]
    where = "; ".join(
        f"{c or 'the model'}: {verdict_of(up, low, alpha)} ("
        + ", ".join(f"{p.name} {p.estimate:+.2f} [{p.ci_low:+.2f}, {p.ci_high:+.2f}]" for p in sites)
        + ")"
        for (c, sites), up, low in zip(rows, support, contradict, strict=True)
    )  # fmt: skip
    return decided(
        decision, alpha, estimate=last.estimate, ci_low=last.ci_low, ci_high=last.ci_high, reference=0.0,
        n_specifications=len(checkpoints),
        method="entropy effective rank of δ_t, DPO − CE per layer, one-sided EWC tests over layers at "
        "o_out and down_out (estimate: o_out at the last checkpoint); contradictions Holm-adjusted "
        "across the checkpoints", reason=where,
    )  # fmt: skip


def _preferred_cell(ds: xr.Dataset) -> dict | None:
    """The preferred specification (``act_cov, k=8`` on the log2 ratio) in an experiment's dataset."""
    construction, cutoff, normalisation = DEFAULT_PREFERRED
    for candidate in (normalisation, "isotropic"):  # the same quantity on the statistics' scale
        if (
            construction in ds.construction.values
            and cutoff in ds.cutoff.values
            and candidate in ds.normalisation.values
        ):
            return {"construction": construction, "cutoff": cutoff, "normalisation": candidate}
    return None


def trajectory_claim(ds: xr.Dataset, *, margin: float, alpha: float) -> Outcome:
    """``trajectory_consistent`` from a trajectory dataset: against the start, at every checkpoint."""
    spec = _preferred_cell(ds)
    if spec is None:
        return not_tested(
            "trajectory.nc has no act_cov, k=8, log_isotropic (or isotropic) specification"
        )
    cell = ds.sel(reference="start", **spec)
    # The per-layer pathway means are stored on the statistics' scale (log2 for ratios).
    per_layer = (cell.read_rsf_layer - cell.write_rsf_layer).transpose("checkpoint", "layer").values
    if per_layer.shape[-1] < MIN_LAYERS:
        return _too_few(per_layer.shape[-1], "trajectory.nc")
    parts = [
        part(str(c), per_layer[i], margin=margin, alpha=alpha)
        for i, c in enumerate(ds.checkpoint.values)
    ]
    decision = concentration(parts, alpha=alpha)
    return decided(
        decision, alpha, estimate=parts[-1].estimate, ci_low=parts[-1].ci_low, ci_high=parts[-1].ci_high,
        reference=0.0, n_specifications=len(parts),
        method=f"asymmetry against the start at every checkpoint, EWC tests over layers against "
        f"+{margin:g}; {'/'.join(spec.values())} (estimate: the last checkpoint)",
        reason="; ".join(f"{p.name}: {p.estimate:+.3f} [{p.ci_low:+.3f}, {p.ci_high:+.3f}]" for p in parts),
    )  # fmt: skip


def _levels(
    ds: xr.Dataset, construction: str, matrices, cutoff: str, normalisation: str
) -> np.ndarray:
    """``[λ, layer]``: mean over `matrices` of the probe minus its Haar reference (the caller has
    checked the dataset carries what the reference needs: :func:`_has_references`)."""
    cell = ds.rsf.sel(construction=construction, cutoff=cutoff, normalisation=normalisation)
    s = probe_scale(
        cell.sel(matrix=list(matrices)).transpose("lam_label", "layer", "matrix").values,
        normalisation,
    )
    k = ds.k.sel(construction=construction, cutoff=cutoff, matrix=list(matrices))
    k = k.transpose("lam_label", "layer", "matrix").values
    d = int(ds.attrs["d_model"])
    if "gram_spectrum" in ds:
        spectrum = ds.gram_spectrum.sel(matrix=list(matrices))
        spectrum = spectrum.transpose("lam_label", "layer", "matrix", "eigen").values[..., :d]
        s = s - probes.haar_reference(normalisation, k, d, spectrum=spectrum)
    else:  # written before the spectra: the Beta law from the purity
        purity = ds.gram_purity.sel(matrix=list(matrices)).transpose("lam_label", "layer", "matrix")
        s = s - probes.haar_reference(normalisation, k, d, purity.values)
    return s.mean(axis=2)


def _has_references(ds: xr.Dataset) -> bool:
    return "gram_spectrum" in ds or "gram_purity" in ds


NO_REFERENCES = (
    "contrastive.nc carries neither gram_spectrum nor gram_purity (written before the Haar "
    "references existed): re-run rsf experiment contrastive"
)


def _contrastive_cutoff(ds: xr.Dataset) -> tuple[str, str] | None:
    if "k=8" not in ds.cutoff.values:
        return None
    for normalisation in ("log_isotropic", "isotropic"):
        if normalisation in ds.normalisation.values:
            return "k=8", normalisation
    return None


def graded_claim(ds: xr.Dataset, *, margin: float, alpha: float) -> Outcome:
    """``graded_control`` from a contrastive dataset: non-inferiority of the write slope in λ."""
    chosen = _contrastive_cutoff(ds)
    if chosen is None:
        return not_tested("contrastive.nc has no k=8 cutoff on the log2 ratio")
    if not _has_references(ds):
        return not_tested(NO_REFERENCES)
    cutoff, normalisation = chosen
    write = [m for m in ds.attrs["write_set"].split(",") if m in ds.matrix.values]
    levels = _levels(ds, ds.attrs["write_construction"], write, cutoff, normalisation)  # [λ, L]
    if levels.shape[1] < MIN_LAYERS:
        return _too_few(levels.shape[1], "contrastive.nc")
    lams = ds.lam.values
    centred = lams - lams.mean()
    slopes = np.einsum("i,il->l", centred, levels - levels.mean(axis=0)) / np.sum(centred**2)
    slope = part("slope", slopes, margin=margin, alpha=alpha)
    # Non-inferiority: H0 slope ≥ m (supported below it); contradicted when the slope is above it.
    decision = Decision(
        verdict_of(slope.p_not_above, slope.p_above, alpha), slope.p_not_above, slope.p_above,
        slope.ci_high,
    )  # fmt: skip
    return decided(
        decision, alpha, estimate=slope.estimate, ci_low=slope.ci_low, ci_high=slope.ci_high,
        reference=margin, n_specifications=1,
        method=f"slope of the write level ({ds.attrs['write_construction']}, {cutoff}, {normalisation}, against "
        f"its Haar reference) per unit λ: the mean of the layers' own slopes, one-sided EWC test of slope < "
        f"{margin:+g} (the {1 - 2 * alpha:.0%} interval's upper bound below the margin)",
    )  # fmt: skip


def variant_read_levels(ds: xr.Dataset, *, margin: float, alpha: float) -> dict[str, Outcome]:
    """Read concentration and the excess over the mechanical reference of every contrastive variant
    (for ``read_objective_agnostic``)."""
    chosen = _contrastive_cutoff(ds)
    if chosen is None:
        return {"contrastive variants": not_tested("contrastive.nc has no k=8 cutoff")}
    if not _has_references(ds):
        return {"contrastive variants": not_tested(NO_REFERENCES)}
    cutoff, normalisation = chosen
    construction = ds.attrs["read_construction"]
    read = [m for m in ds.attrs["read_set"].split(",") if m in ds.matrix.values]
    out = {}
    for label in ds.lam_label.values:
        variant = ds.sel(lam_label=[label])
        parts = [
            part(m, _levels(variant, construction, [m], cutoff, normalisation)[0], margin=margin, alpha=alpha)
            for m in read
        ]  # fmt: skip
        excess_part, mechanical = None, math.nan
        if "mechanical_reference" in ds:
            s = probe_scale(
                variant.rsf.sel(construction=construction, cutoff=cutoff, normalisation=normalisation,
                                matrix=read).isel(lam_label=0).transpose("layer", "matrix").values,
                normalisation,
            )  # fmt: skip
            reference = variant.mechanical_reference.sel(construction=construction, cutoff=cutoff,
                                                         matrix=read).isel(lam_label=0)  # fmt: skip
            reference = reference.transpose("layer", "matrix").values
            excess_part = part("excess", (s - reference).mean(axis=1), margin=margin, alpha=alpha)
            mechanical = float(np.nanmean(reference))
        out[f"variant {label}"] = decided(
            concentration(parts, alpha=alpha), alpha, excess_part=excess_part,
            excess=excess_part.estimate if excess_part else math.nan, mechanical_reference=mechanical,
        )  # fmt: skip
    return out


def rank1_claim(ds: xr.Dataset, *, alpha: float) -> Outcome:
    """``rank1_causal`` from a rank-1 dataset: the read intervention against the pooled controls."""
    read = ds.where(ds.role == "read", drop=True)
    if read.sizes.get("matrix", 0) == 0:
        return not_tested("rank1.nc has no read intervention")
    p_margin = float(read.p_margin.sel(control="all").values[0])
    p_kl = float(read.p_kl.sel(control="all").values[0])
    n_controls = int((read.intervention != "principal").sum())
    # The lower-tail Monte Carlo p of each: (1 + #controls at least as small)/(1 + B).
    lower = [1.0 - p + 1.0 / (1 + n_controls) for p in (p_margin, p_kl)]
    decision = Decision(
        verdict_of(max(p_margin, p_kl), max(lower), alpha),
        max(p_margin, p_kl),
        max(lower),
        math.nan,
    )
    principal = read.sel(intervention="principal")
    floor = ""
    if 1 / (1 + n_controls) >= alpha:  # (1 + b)/(1 + B) ≥ 1/(1 + B): never below α
        floor = (
            f"; with {n_controls} controls p cannot fall below {1 / (1 + n_controls):.3g} ≥ α = {alpha:g}, "
            f"so the claim cannot be supported: raise --controls"
        )
    return decided(
        decision, alpha, estimate=float(principal.margin_change.values[0]),
        ci_low=float(principal.margin_change_ci_low.values[0]),
        ci_high=float(principal.margin_change_ci_high.values[0]),
        ci_level=float(ds.attrs.get("confidence_level", math.nan)), n_specifications=1,
        method=f"read matrix {str(read.matrix.values[0])!r} at layer {ds.attrs['layer']}: principal direction "
        "against the pooled random and matched controls, (1+b)/(1+B), both tests at α "
        "(intersection–union); estimate: its Δmargin",
        reason=f"p(|Δmargin|) = {p_margin:.3g}, p(KL) = {p_kl:.3g}" + floor,
    )  # fmt: skip
