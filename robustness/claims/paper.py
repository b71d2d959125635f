"""``claims.nc``: every claim of the paper evaluated on one results dataset and its extras.

:func:`paper_claims` checks its inputs (a ``stats.nc`` must come from these
results, by fingerprint; each extra dataset from these models, by weights
hash), evaluates the claims of :mod:`robustness.claims.levels` (from the results)
and :mod:`robustness.claims.mechanism` (from the extras), then decides them
**as a family**: on each pair, the p-values of support of the claims tested
there are Holm-adjusted together, and so are their p-values of
contradiction (:func:`robustness.claims.rules.family`); a claim is supported when
its adjusted support p is below α, contradicted when its adjusted
contradiction p is. One row per (pair, claim): ``verdict``, ``estimate``,
``ci_low``, ``ci_high`` (at ``ci_level``: ``1 − 2α`` for the one-sided and
equivalence tests), ``p_value`` (the p of the test the verdict rests on:
support, or contradiction for a contradicted claim), ``p_adjusted`` (its Holm
adjustment), ``reference``, ``mechanical_reference`` and ``excess`` (read
claims), ``margin_needed``, ``robust_share`` over ``robust_n`` decisive
specifications, ``n_specifications``, ``p_joint``, ``method`` and ``reason``.
A claim whose input is missing is ``not_tested``, with the reason and the
command that would test it. Claims from the extras attach to the alignment
pairs whose models they measured.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import xarray as xr

from robustness.claims import mechanism
from robustness.claims.levels import agnostic_claim, level_claims, pretrain_partner
from robustness.claims.registry import CLAIM_IDS, CLAIMS, Outcome
from robustness.claims.rules import family
from robustness.io.provenance import provenance_attrs
from robustness.measure.experts import each_expert
from robustness.measure.results import pair_phases
from robustness.stats.statistics import results_fingerprint
from robustness.stats.summaries import read_per_pair

__all__ = ["EXTRA_KINDS", "paper_claims"]

EXTRA_KINDS = ("gradients", "trajectory", "contrastive", "rank1")
COMMANDS = {
    "gradient_anisotropy": "rsf gradients --model {base} --out gradients.nc",
    "trajectory_consistent": "rsf experiment trajectory --checkpoints {base},…,{aligned} --out trajectory.nc",
    "graded_control": "rsf experiment contrastive --base {base} --out contrastive.nc",
    "rank1_causal": "rsf experiment rank1 --model {base} --out rank1.nc",
}
NEEDS = {
    "gradient_anisotropy": "gradients",
    "trajectory_consistent": "trajectory",
    "graded_control": "contrastive",
    "rank1_causal": "rank1",
}
VARIABLES = (
    "estimate", "ci_low", "ci_high", "ci_level", "p_value", "p_adjusted", "reference",
    "mechanical_reference", "excess", "margin_needed", "robust_share", "p_joint",
)  # fmt: skip


def _extra_hashes(ds: xr.Dataset) -> set[str]:
    """The weights hashes of the models an extra dataset measured."""
    found = set()
    for name in ("model_hash", "base_hash", "reference_hash"):
        value = ds.attrs.get(name)
        if value:
            found.add(str(value))
    for name in ("model_hash", "base_hash", "aligned_hash", "checkpoint_hash"):
        if name in ds:
            found.update(str(v) for v in np.asarray(ds[name].values).ravel() if str(v))
    inputs = ds.attrs.get("inputs")
    if inputs:
        found.update(str(v) for v in json.loads(inputs).values() if str(v).startswith("sha256:"))
    return found


def _check_inputs(results: xr.Dataset, stats, extras) -> dict:
    fingerprint = results_fingerprint(results)
    if stats is not None:
        recorded = stats.attrs.get("results_fingerprint", "")
        if recorded != fingerprint:
            raise ValueError(
                f"the statistics were made from other results (stats {recorded or 'without a fingerprint'} "
                f"vs results {fingerprint}): re-run rsf stats on these results (with the same "
                "--experts)"
            )
    by_kind = {}
    model_hashes = {str(h) for name in ("base_hash", "aligned_hash") for h in results[name].values}
    for ds in extras:
        kind = str(ds.attrs.get("kind", ""))
        if kind not in EXTRA_KINDS:
            raise ValueError(
                f"an extra dataset of kind {kind!r}: rsf claims reads {', '.join(EXTRA_KINDS)}"
            )
        if kind in by_kind:
            raise ValueError(f"two {kind} datasets given: pass one of each kind")
        hashes = _extra_hashes(ds)
        if not hashes & model_hashes:
            shown = ", ".join(sorted(hashes)) or "none recorded"
            raise ValueError(
                f"the {kind} dataset measured other models ({shown}) than the results' "
                f"({', '.join(sorted(model_hashes))})"
            )
        by_kind[kind] = (ds, hashes)
    return by_kind


def paper_claims(
    results: xr.Dataset,
    *,
    stats: xr.Dataset | None = None,
    extras=(),
    margin: float = 0.5,
    isotropy_margin: float | None = None,
    graded_margin: float | None = None,
    alpha: float = 0.05,
    n_resamples: int = 9999,
    seed: int = 0,
    experts: str = "mean",
) -> xr.Dataset:
    """The claims dataset (see the module docstring); every input problem is a one-line ``ValueError``.

    `margin` is the one margin of the concentration and isotropy rules (log2
    units); `isotropy_margin` (write_isotropy) and `graded_margin`
    (graded_control, log2 per unit λ) default to it. `experts` as in
    :func:`robustness.stats.statistics.compute_stats` (the statistics must have been made
    the same way).
    """
    from robustness.settings.options import ClaimsOptions

    options = ClaimsOptions(
        margin=margin, isotropy_margin=isotropy_margin, graded_margin=graded_margin, alpha=alpha,
        n_resamples=n_resamples, seed=seed, experts=experts,
    )  # fmt: skip
    if options.experts == "each":
        results = each_expert(results)
    margins = options.margins()
    results = results.sortby("layer")
    by_kind = _check_inputs(results, stats, extras)
    outcomes = level_claims(
        results, margin=margin, isotropy_margin=margins["isotropy"], alpha=alpha,
        n_resamples=n_resamples, seed=seed,
    )  # fmt: skip
    pairs = [str(p) for p in results.pair.values]
    phases = dict(zip(pairs, pair_phases(results), strict=True))
    for pair in pairs:
        mine = _extras_of(results, pair, by_kind)
        outcomes[pair].update(_untested_extras(results, pair, phases[pair], mine))
        if phases[pair] == "align":
            outcomes[pair].update(_mechanism_claims(
                results, pair, mine, outcomes, margin=margin, graded_margin=margins["graded"],
                alpha=alpha,
            ))  # fmt: skip
    for pair in pairs:
        outcomes[pair] = _family(outcomes[pair], alpha)
    return _dataset(results, outcomes, pairs, phases, stats, by_kind, options, margins)


def _extras_of(results: xr.Dataset, pair: str, by_kind: dict) -> dict[str, xr.Dataset]:
    """``{kind: dataset}``: the extra datasets that measured this pair's models (by weights hash)."""
    hashes = {str(results[name].sel(pair=pair).values) for name in ("base_hash", "aligned_hash")}
    return {kind: ds for kind, (ds, h) in by_kind.items() if h & hashes}


def _untested_extras(results: xr.Dataset, pair: str, phase: str, mine: dict) -> dict[str, Outcome]:
    """The claims on the extras that stay ``not_tested`` on this pair: all of them off the alignment
    pairs, else those whose dataset is missing, with the command that would make it."""
    ids = {role: str(results[f"{role}_id"].sel(pair=pair).values) for role in ("base", "aligned")}
    out = {}
    for claim, kind in NEEDS.items():
        if phase != "align":
            out[claim] = Outcome("not_tested", reason="a claim about the alignment pairs")
        elif kind not in mine:
            command = COMMANDS[claim].format(**ids)
            out[claim] = Outcome(
                "not_tested",
                reason=f"needs {kind}.nc of this pair's models: {command}, then --extra",
            )
    return out


def _mechanism_claims(
    results: xr.Dataset, pair: str, mine: dict, outcomes: dict, *, margin, graded_margin, alpha
) -> dict[str, Outcome]:
    """The claims an alignment pair's extras test (:mod:`robustness.claims.mechanism`), and
    ``read_objective_agnostic`` again with the contrastive variants beside the phases."""
    out = {}
    if "gradients" in mine:
        out["gradient_anisotropy"] = mechanism.gradient_claim(mine["gradients"], alpha=alpha)
    if "trajectory" in mine:
        out["trajectory_consistent"] = mechanism.trajectory_claim(
            mine["trajectory"], margin=margin, alpha=alpha
        )
    if "contrastive" in mine:
        out["graded_control"] = mechanism.graded_claim(
            mine["contrastive"], margin=graded_margin, alpha=alpha
        )
        variants = mechanism.variant_read_levels(mine["contrastive"], margin=margin, alpha=alpha)
        seen = {"align": outcomes[pair]["read_concentration"]}
        partner = pretrain_partner(results, pair, paired=False)  # as level_claims chose it
        if partner:
            seen["pretrain"] = outcomes[partner]["read_concentration"]
        out["read_objective_agnostic"] = agnostic_claim(seen, variants, margin=margin, alpha=alpha)
    if "rank1" in mine:
        out["rank1_causal"] = mechanism.rank1_claim(mine["rank1"], alpha=alpha)
    return out


def _family(outcomes: dict[str, Outcome], alpha: float) -> dict[str, Outcome]:
    """Each tested claim's verdict at the family level: Holm across the pair's claims (see module)."""
    decided = {claim: o.decision for claim, o in outcomes.items() if o.decision is not None}
    adjusted = family(decided, alpha=alpha)
    out = dict(outcomes)
    for claim, (verdict, p_support, p_contradict) in adjusted.items():
        outcome = outcomes[claim]
        decision = outcome.decision
        contradicted = verdict == "contradicted"
        reason = outcome.reason
        if verdict != decision.verdict:
            reason = "; ".join(filter(None, [reason, (
                f"{decision.verdict} on its own (p = "
                f"{decision.p_contradict if decision.verdict == 'contradicted' else decision.p_support:.3g}), "
                f"{verdict} after Holm across the {len(adjusted)} claims tested on this pair")]))  # fmt: skip
        out[claim] = replace(
            outcome,
            verdict=verdict,
            p_value=decision.p_contradict if contradicted else decision.p_support,
            p_adjusted=p_contradict if contradicted else p_support,
            reason=reason,
        )
    return out


def _dataset(results, outcomes, pairs, phases, stats, by_kind, options, margins) -> xr.Dataset:
    shape = (len(pairs), len(CLAIM_IDS))
    numbers = {name: np.full(shape, np.nan) for name in VARIABLES}
    strings = {name: np.full(shape, "", dtype=object) for name in ("verdict", "method", "reason")}
    counts = {name: np.zeros(shape, dtype=np.int64) for name in ("n_specifications", "robust_n")}
    for p, pair in enumerate(pairs):
        for c, claim in enumerate(CLAIM_IDS):
            outcome = outcomes[pair].get(claim, Outcome("not_tested", reason="not evaluated"))
            for name in VARIABLES:
                numbers[name][p, c] = getattr(outcome, name)
            for name in strings:
                strings[name][p, c] = getattr(outcome, name)
            for name in counts:
                counts[name][p, c] = getattr(outcome, name)
    dims = ("pair", "claim")
    data = {name: (dims, values) for name, values in {**numbers, **strings, **counts}.items()}
    data["margin_needed"] = (dims, numbers["margin_needed"], {
        "long_name": "concentration claims: the largest margin still supported (the weakest part's "
        "lower bound); isotropy claims: the smallest margin that would support it"})  # fmt: skip
    data["robust_share"] = (dims, numbers["robust_share"], {
        "long_name": "share of the decisive eligible specifications agreeing with the preferred one's "
        "verdict (out of robust_n); NaN when the preferred verdict is not decisive"})  # fmt: skip
    inputs = {"results": results_fingerprint(results)}
    if stats is not None:
        inputs["stats"] = stats.attrs.get("results_fingerprint", "")
    for kind, (_, hashes) in by_kind.items():
        inputs[kind] = ",".join(sorted(hashes))
    rules = {claim.id: claim.test for claim in CLAIMS}
    side = {pair: str(results.construction_side.sel(pair=pair).values) if "construction_side" in results
            else "base" for pair in pairs}  # fmt: skip
    attrs = provenance_attrs(
        "claims", title="the paper's claims, tested one by one", seed=options.seed, inputs=inputs
    )
    attrs.update(
        rules=json.dumps(rules),
        margin=options.margin,
        isotropy_margin=margins["isotropy"],
        graded_margin=margins["graded"],
        alpha=options.alpha,
        confidence_level=1 - 2 * options.alpha,
        decision="each claim's p-values of support and of contradiction, Holm-adjusted across the "
        "claims tested on its pair; supported when the adjusted support p < alpha, contradicted when "
        "the adjusted contradiction p < alpha; unions inside a claim (parts, checkpoints, phases) "
        "Holm-adjusted too",
        construction_side=json.dumps(side),
        reference="levels against each delta's Haar reference (probes.haar_reference, exact from its "
        "Gram spectrum), EWC tests over layers",
        results_fingerprint=results_fingerprint(results),
    )
    if stats is not None:
        attrs["stats_joint"] = json.dumps({
            pair: info.get("joint", {}) for pair, info in read_per_pair(stats).items()
        })  # fmt: skip
    return xr.Dataset(
        data,
        coords={
            "pair": ("pair", np.asarray(pairs, dtype=object)),
            "phase": ("pair", np.asarray([phases[p] for p in pairs], dtype=object)),
            "claim": ("claim", np.asarray(CLAIM_IDS, dtype=object)),
            "says": ("claim", np.asarray([c.says for c in CLAIMS], dtype=object)),
            "test": ("claim", np.asarray([c.test for c in CLAIMS], dtype=object)),
            "preferred": ("claim", np.asarray([c.preferred for c in CLAIMS], dtype=object)),
        },
        attrs=attrs,
    )
