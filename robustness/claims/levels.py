"""The paper's claims, one by one: each tested as stated, with a verdict and its robustness.

Claim ids (a contract, ``docs/design.md`` §4) and what the paper says are in
:data:`robustness.claims.registry.CLAIMS`. Every **level** is a log2 isotropic
ratio against **its Haar reference** (:func:`probes.haar_reference`: the
expected log2 ratio of that delta under a Haar-random subspace of the same k,
exact from its stored Gram spectrum), never against 0: per layer,
``s − reference`` (:class:`robustness.claims.pair_levels.Levels`), tested over
layers with the dependence-robust EWC test (:mod:`robustness.stats.layers`). The rules
(:mod:`robustness.claims.rules`) are symmetric, with one margin ``m`` (default 0.5
log2, a factor √2), and written once here and in the README:

- ``read_concentration`` (a concentration claim): each read matrix's level on
  an activation construction, its ``1 − 2α`` interval above ``+m``: supported
  when every read matrix's is; contradicted when some read matrix's interval
  lies inside ``±m`` or below ``−m`` (Holm across the matrices). Beside it the
  **mechanical reference** (the level the outer-product mechanism alone
  predicts: the activations' own top-k share over k/d) and the **excess** of
  the log2 ratio over it;
- ``write_isotropy`` (an isotropy claim): each write matrix's level on an
  unembedding construction inside ``±m`` (two one-sided tests) supports, and
  no layer's own value may lie outside ``±m`` (per-layer values on an
  unembedding basis carry no corpus-sampling error: a departing layer bars
  support, inconclusive, naming it); contradicted when some write matrix's
  interval lies wholly outside ``±m`` (Holm). Eligible cutoffs have
  ``k ≤ d/8`` at every layer;
- ``read_write_asymmetry`` (concentration, on the pathways' means): per layer
  the read set's level on the activation construction minus the write set's
  on the prediction construction, above ``+m``;
- ``pretraining_writes_prediction`` (concentration): for a ``pretrain``
  pair, each write matrix's level on the unembedding above ``+m``, and above
  the alignment pair's by more than ``m`` (paired over layers); stored on the
  alignment pair it compares;
- ``read_objective_agnostic``: in every phase (and every contrastive variant
  given) read concentration supported **and** the excess over the mechanical
  reference equivalent to 0 within ``±m``; contradicted when, in any of them
  (Holm), concentration is contradicted or the excess lies wholly outside
  ``±m``;
- the claims on the mechanism read the extra datasets
  (:mod:`robustness.claims.mechanism`).

Every claim is decided at its **preferred specification**; one that the
results do not hold makes the claim ``not_tested`` with the reason, never a
fallback. ``robust_share`` counts, among the eligible specifications with a
decisive verdict (duplicates on the statistics' scale merged, and for the
asymmetry read and write ranks within 4-fold of each other), those agreeing
with the preferred one's (``robust_n`` of them); ``p_joint`` is Stouffer's Z
across them under one set of rotations of the EWC projections. Verdicts are
then taken for the family of claims tested on a pair (:func:`robustness.claims.rules.family`).

For ``phase = "pretrain"`` pairs the sweep takes the activation and
unembedding constructions from the trained (``aligned``) side, since the
initialisation has no structure (``results.construction_side``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr

import probes
from robustness.claims.pair_levels import (
    Levels,
    joint_stouffer,
    merged_specifications,
    preferred_index,
    robust_share,
)
from robustness.claims.registry import Outcome, decided, not_tested
from robustness.claims.rules import (
    Decision,
    Part,
    concentration,
    isotropy,
    part,
    union_p,
    verdict_of,
)
from robustness.measure.results import pair_phases
from robustness.settings.specification import DEFAULT_READ, DEFAULT_WRITE
from robustness.stats.curve import ranks_matched
from robustness.stats.layers import MIN_LAYERS

__all__ = [
    "ACTIVATION",
    "PREDICTION",
    "PREFERRED",
    "agnostic_claim",
    "level_claims",
    "pretrain_partner",
]

ACTIVATION = probes.ACTIVATION_CONSTRUCTIONS
PREDICTION = probes.PREDICTION_CONSTRUCTIONS
# The specification each level claim is decided at (isotropic is the same log2 ratio).
PREFERRED = {
    "read_concentration": ("act_cov", "k=8", "log_isotropic"),
    "write_isotropy": ("unembed", "k=8", "log_isotropic"),
    "read_write_asymmetry": ("act_cov|unembed", "k=8", "log_isotropic"),
    "pretraining_writes_prediction": ("unembed", "k=8", "log_isotropic"),
}


def _absent(claim: str) -> Outcome:
    spec = "/".join(PREFERRED[claim])
    return not_tested(
        f"its preferred specification {spec} is not in the results (or undefined there): sweep it "
        "to test this claim (no other specification stands in for it)"
    )


def _undefined(what: str) -> Outcome:
    return not_tested(f"{what} is undefined at some layer in every specification (an all-zero delta "
                      "has no direction)")  # fmt: skip


def _too_few(lv) -> Outcome:
    return Outcome(
        "inconclusive",
        reason=f"{lv.n_layers} layers: too few for the test over layers ({MIN_LAYERS} needed)",
    )


def _parts_line(parts) -> str:
    return "; ".join(
        f"{p.name} {p.estimate:+.3f} [{p.ci_low:+.3f}, {p.ci_high:+.3f}]" for p in parts
    )


def level_claims(
    results: xr.Dataset,
    *,
    read=DEFAULT_READ,
    write=DEFAULT_WRITE,
    margin: float = 0.5,
    isotropy_margin: float | None = None,
    alpha: float = 0.05,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, dict[str, Outcome]]:
    """``{pair: {claim: Outcome}}`` for the claims tested from ``results.nc`` alone (unadjusted)."""
    isotropy_margin = margin if isotropy_margin is None else isotropy_margin
    phases = dict(zip([str(p) for p in results.pair.values], pair_phases(results), strict=True))
    levels = {pair: Levels(results, pair) for pair in phases}
    out = {pair: {} for pair in phases}
    rules = {"margin": margin, "alpha": alpha}
    for pair, lv in levels.items():
        # Rotations keyed by the pair's weights, never its label or its place in the file.
        rng = probes.construction_rng(seed, "claims", *lv.hashes)
        joint = {"n_resamples": n_resamples, "rng": rng}
        out[pair]["read_concentration"] = _read_concentration(lv, read, **rules, **joint)
        out[pair]["write_isotropy"] = _write_isotropy(
            lv, write, margin=isotropy_margin, alpha=alpha
        )
        out[pair]["read_write_asymmetry"] = _asymmetry_claim(lv, read, write, **rules, **joint)
    aligns = [p for p, ph in phases.items() if ph == "align"]
    pretrains = [p for p, ph in phases.items() if ph == "pretrain"]
    for pair in aligns:
        partner = pretrain_partner(results, pair, paired=True)
        if partner is None and pretrains:
            shown = ", ".join(f"{q} ({levels[q].n_layers})" for q in pretrains)
            out[pair]["pretraining_writes_prediction"] = not_tested(
                f"no pretrain pair with this pair's {levels[pair].n_layers} layers (pretrain: {shown}): the "
                "comparison is paired over layers")  # fmt: skip
        else:
            out[pair]["pretraining_writes_prediction"] = _pretraining_claim(
                levels[pair], levels[partner] if partner else None, partner, write, **rules
            )
        phases_seen = {"align": out[pair]["read_concentration"]}
        seen = pretrain_partner(results, pair, paired=False)
        if seen:
            phases_seen["pretrain"] = out[seen]["read_concentration"]
        out[pair]["read_objective_agnostic"] = agnostic_claim(phases_seen, **rules)
    for pair in pretrains:
        for claim in ("pretraining_writes_prediction", "read_objective_agnostic"):
            out[pair][claim] = not_tested("stored on the alignment pair it compares")
    return out


def pretrain_partner(results: xr.Dataset, pair, *, paired: bool) -> str | None:
    """The pretrain pair an alignment pair is compared with: the first with as many layers
    (``pretraining_writes_prediction`` is paired over layers); with ``paired=False``
    (``read_objective_agnostic``, which compares each phase's own tests) that one, else the
    first pretrain pair, in the order of their labels (never the file's)."""
    labels = [str(p) for p in results.pair.values]
    pretrains = sorted(
        p for p, phase in zip(labels, pair_phases(results), strict=True) if phase == "pretrain"
    )

    def layers(label):
        return (
            int(results.n_layers.sel(pair=label))
            if "n_layers" in results
            else results.sizes["layer"]
        )

    same = next((q for q in pretrains if layers(q) == layers(pair)), None)
    if same is not None or paired:
        return same
    return pretrains[0] if pretrains else None


# ---------------------------------------------------------------------------- the level claims


@dataclass(frozen=True)
class _Chosen:
    """A level claim's specifications (merged), their levels ``[layer, spec]``, the index of the
    paper's preferred one and the claim's matrices present in the results."""

    specs: list
    values: np.ndarray
    j: int
    present: list


def _chosen(lv, specs, matrices, claim: str) -> _Chosen | Outcome:
    """The specifications a level claim decides on, or the outcome that ends it first."""
    values = np.stack([lv.level(spec, matrices) for spec in specs], axis=1)
    specs, values = merged_specifications(specs, values)
    if not specs:
        return _undefined(f"the level of {','.join(matrices)}")
    j = preferred_index(specs, PREFERRED[claim])
    if j is None:
        return _absent(claim)
    if lv.n_layers < MIN_LAYERS:
        return _too_few(lv)
    return _Chosen(specs, values, j, [m for m in matrices if m in lv.matrices])


def _matrix_parts(lv, spec, present, *, margin, alpha) -> tuple[np.ndarray, list[Part]]:
    """Each present matrix's levels ``[layer, matrix]`` at `spec` and its test against the margin."""
    per_matrix = lv.matrix_levels(spec, present)
    return per_matrix, [
        part(m, per_matrix[:, i], margin=margin, alpha=alpha) for i, m in enumerate(present)
    ]


def _read_concentration(lv, matrices, *, margin, alpha, n_resamples, rng) -> Outcome:
    specs = lv.specs(ACTIVATION)
    if not specs:
        return not_tested(f"no {', '.join(ACTIVATION)} specification in the results")
    chosen = _chosen(lv, specs, matrices, "read_concentration")
    if isinstance(chosen, Outcome):
        return chosen
    specs, values, j, present = chosen.specs, chosen.values, chosen.j, chosen.present

    def decide(spec) -> tuple[Decision, list[Part]]:
        _, parts = _matrix_parts(lv, spec, present, margin=margin, alpha=alpha)
        return concentration(parts, alpha=alpha), parts

    decision, parts = decide(specs[j])
    verdicts = [decide(spec)[0].verdict for spec in specs]
    share, n = robust_share(verdicts, decision.verdict)
    mean = part("mean", values[:, j], margin=margin, alpha=alpha)
    excess, mechanical = lv.excess(specs[j], present)
    excess_part = part("excess", excess, margin=margin, alpha=alpha)
    return decided(
        decision, alpha, estimate=mean.estimate, ci_low=mean.ci_low, ci_high=mean.ci_high,
        reference=lv.reference(specs[j], present), robust_share=share, robust_n=n,
        n_specifications=len(specs), p_joint=joint_stouffer(values, alpha=alpha, n_resamples=n_resamples, rng=rng),
        mechanical_reference=mechanical, excess=excess_part.estimate, excess_part=excess_part,
        method=f"EWC tests over layers of each read matrix's level (log2 ratio − Haar reference) against "
        f"+{margin:g}, at {'/'.join(specs[j])}: {_parts_line(parts)}; excess over the mechanical reference "
        f"{excess_part.estimate:+.3f} [{excess_part.ci_low:+.3f}, {excess_part.ci_high:+.3f}]",
    )  # fmt: skip


def _departures(levels: np.ndarray, names, margin: float) -> tuple[str, float]:
    """Layers whose own value lies outside ``±margin`` (by matrix), and the largest absolute value."""
    outside = [
        f"{name} at layer {layer} ({levels[layer, i]:+.2f})"
        for i, name in enumerate(names)
        for layer in np.flatnonzero(np.abs(levels[:, i]) >= margin)
    ]
    worst = float(np.nanmax(np.abs(levels))) if levels.size else 0.0
    if not outside:
        return "", worst
    shown = ", ".join(outside[:4]) + (f" and {len(outside) - 4} more" if len(outside) > 4 else "")
    return f"a layer's own level lies outside ±{margin:g}: {shown}", worst


def _write_isotropy(lv, matrices, *, margin, alpha) -> Outcome:
    specs = [s for s in lv.specs(PREDICTION) if lv.eligible_k(s, matrices)]
    if not specs:
        return not_tested(f"no unembedding specification with k ≤ d/8 = {lv.d / 8:g}")
    chosen = _chosen(lv, specs, matrices, "write_isotropy")
    if isinstance(chosen, Outcome):
        return chosen
    specs, values, j, present = chosen.specs, chosen.values, chosen.j, chosen.present

    def decide(spec) -> tuple[Decision, list[Part]]:
        per_matrix, parts = _matrix_parts(lv, spec, present, margin=margin, alpha=alpha)
        departures, worst = _departures(per_matrix, present, margin)
        return isotropy(parts, alpha=alpha, departures=departures, worst_point=worst), parts

    decision, parts = decide(specs[j])
    verdicts = [decide(spec)[0].verdict for spec in specs]
    share, n = robust_share(verdicts, decision.verdict)
    mean = part("mean", values[:, j], margin=margin, alpha=alpha)
    return decided(
        decision, alpha, estimate=mean.estimate, ci_low=mean.ci_low, ci_high=mean.ci_high,
        reference=lv.reference(specs[j], present), robust_share=share, robust_n=n, n_specifications=len(specs),
        method=f"two one-sided EWC tests of each write matrix's level against ±{margin:g} at α = {alpha:g} "
        f"(its {1 - 2 * alpha:.0%} interval inside the margin), and every layer's own level inside it; "
        f"eligible cutoffs k ≤ d/8; at {'/'.join(specs[j])}: {_parts_line(parts)}",
        reason=decision.cap,
    )  # fmt: skip


def _asymmetry_claim(lv, read, write, *, margin, alpha, n_resamples, rng) -> Outcome:
    labels, columns, matched = [], [], []
    for act in lv.specs(ACTIVATION):
        for pred in lv.specs(PREDICTION):
            if act[1:] != pred[1:]:
                continue
            labels.append((f"{act[0]}|{pred[0]}", act[1], act[2]))
            columns.append(lv.level(act, read) - lv.level(pred, write))
            matched.append(not ranks_matched(lv.ranks(act, read), lv.ranks(pred, write)))
    if not columns:
        return not_tested("needs an activation and an unembedding construction in the results")
    values = np.stack(columns, axis=1)
    keep = {label: ok for label, ok in zip(labels, matched, strict=True)}
    labels, values = merged_specifications(labels, values)
    if not labels:
        return _undefined(f"the read ({','.join(read)}) − write ({','.join(write)}) level")
    j = preferred_index(labels, PREFERRED["read_write_asymmetry"])
    if j is None:
        return _absent("read_write_asymmetry")
    if lv.n_layers < MIN_LAYERS:
        return _too_few(lv)
    parts = [
        part(labels[i][0], values[:, i], margin=margin, alpha=alpha) for i in range(len(labels))
    ]
    decisions = [concentration([p], alpha=alpha) for p in parts]
    eligible = [i for i, label in enumerate(labels) if keep[label]]
    share, n = robust_share([decisions[i].verdict for i in eligible], decisions[j].verdict)
    unmatched = len(labels) - len(eligible)
    return decided(
        decisions[j], alpha, estimate=parts[j].estimate, ci_low=parts[j].ci_low, ci_high=parts[j].ci_high,
        reference=0.0, robust_share=share, robust_n=n, n_specifications=len(eligible),
        p_joint=joint_stouffer(values[:, eligible], alpha=alpha, n_resamples=n_resamples, rng=rng),
        method=f"EWC test over layers of read level ({labels[j][0].split('|')[0]}) − write level "
        f"({labels[j][0].split('|')[1]}), each against its Haar reference, against +{margin:g}; at "
        f"{labels[j][1]}, {labels[j][2]}",
        reason=(f"{unmatched} specification(s) left out of the robustness: read and write ranks more "
                "than 4-fold apart at some layer" if unmatched else ""),
    )  # fmt: skip


def _pretraining_claim(align, pretrain, partner, write, *, margin, alpha):
    if pretrain is None:
        return not_tested("needs a pair with phase = pretrain (an initialisation or early checkpoint "
                          "→ base, [[pair]] phase = \"pretrain\"; rsf demo adds one)")  # fmt: skip
    specs = pretrain.specs(PREDICTION)
    j = preferred_index(specs, PREFERRED["pretraining_writes_prediction"])
    if j is None:
        return _absent("pretraining_writes_prediction")
    spec = specs[j]
    present = [m for m in write if m in pretrain.matrices]
    own = pretrain.matrix_levels(spec, present)
    difference = own - align.matrix_levels(spec, present)
    if pretrain.n_layers < MIN_LAYERS:
        return _too_few(pretrain)
    parts = [
        part(f"pretrain {m}", own[:, i], margin=margin, alpha=alpha) for i, m in enumerate(present)
    ]
    parts += [part(f"pretrain − align {m}", difference[:, i], margin=margin, alpha=alpha)
              for i, m in enumerate(present)]  # fmt: skip
    decision = concentration(parts, alpha=alpha)
    paired = part("paired", difference.mean(axis=1), margin=margin, alpha=alpha)
    return decided(
        decision, alpha, estimate=paired.estimate, ci_low=paired.ci_low, ci_high=paired.ci_high,
        reference=0.0, n_specifications=1,
        method=f"EWC tests over layers against +{margin:g}: pretrain pair {partner!r}'s level of each write "
        f"matrix on {'/'.join(spec)}, and its excess over this alignment pair's, paired over layers "
        f"(the estimate: the write set's paired excess): {_parts_line(parts)}",
    )  # fmt: skip


def agnostic_claim(
    phases: dict[str, Outcome], variants: dict[str, Outcome] | None = None, *, margin, alpha
) -> Outcome:
    """``read_objective_agnostic``: in every phase and variant, concentration supported and the excess
    over the mechanical reference inside ``±margin``; contradicted in any (Holm) by a contradicted
    concentration or an excess wholly outside the margin."""
    seen = dict(phases) | dict(variants or {})
    if len(seen) < 2:
        return not_tested("needs a pair with phase = pretrain or a contrastive dataset "
                          "(rsf experiment contrastive) beside the alignment pair")  # fmt: skip
    untested = [name for name, o in seen.items() if o.decision is None]
    if untested:
        return not_tested(f"read_concentration is not tested in {', '.join(untested)}")
    no_excess = [
        name for name, o in seen.items() if o.excess_part is None or not o.excess_part.defined
    ]
    if no_excess:
        return not_tested(f"no mechanical reference for {', '.join(no_excess)} (results written before "
                          "it was stored: re-run rsf sweep)")  # fmt: skip
    p_support = max(max(o.decision.p_support, o.excess_part.p_inside) for o in seen.values())
    p_contradict = union_p(
        [p for o in seen.values()
         for p in (o.decision.p_contradict, min(o.excess_part.p_above, o.excess_part.p_below))]
    )  # fmt: skip
    decision = Decision(
        verdict_of(p_support, p_contradict, alpha), p_support, p_contradict, math.nan
    )
    worst = max(seen.values(), key=lambda o: abs(o.excess))
    return decided(
        decision, alpha, n_specifications=len(seen), excess=worst.excess,
        mechanical_reference=worst.mechanical_reference,
        method=f"read_concentration's rule and two one-sided tests of the excess over the mechanical "
        f"reference against ±{margin:g}, in every phase and variant (contradictions Holm-adjusted)",
        reason="; ".join(
            f"{name}: concentration {o.decision.verdict}, excess {o.excess_part.estimate:+.3f} "
            f"[{o.excess_part.ci_low:+.3f}, {o.excess_part.ci_high:+.3f}]"
            for name, o in seen.items()
        ),
    )  # fmt: skip
