"""Automatic caveats: what in these datasets limits what the report can claim.

Each check reads only the datasets. A caveat names the pair it concerns, says
what follows for the reader and, where one exists, what to run instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from robustness.settings.specification import DEFAULT_PREFERRED
from robustness.stats.diagnostics import MASSIVE_SHARE, SMALL_K, small_ranks
from robustness.stats.layers import MIN_LAYERS
from robustness.stats.statistics import SEQUENCE_REPLICATES_ADVISED

from .context import ReportContext, spec_roles

__all__ = [
    "AUTOCORRELATION_STRONG",
    "SEQUENCE_REPLICATES_ADVISED",
    "MONTE_CARLO_MIN",
    "Caveat",
    "caveats",
]

# SEQUENCE_REPLICATES_ADVISED (robustness.stats.statistics): below that many replicates the percentile
# sequence intervals carry visible Monte Carlo error.
# Below this many Monte Carlo resamples the smallest possible p-value, 1/(1+B),
# and the Monte Carlo error of p near α are too coarse to report a test.
MONTE_CARLO_MIN = 999
# A lag-1 autocorrelation of the per-layer differences above this leaves few
# effective layers (L(1 − r)/(1 + r) < L/3): the diagnostic is worth a caveat.
AUTOCORRELATION_STRONG = 0.5
# Covariance bases from fewer tokens per residual dimension are noisy.
TOKENS_PER_DIMENSION = 10
# A delta less than 1/FLOOR_RATIO times its rounding floor is "not clearly above" it: its
# rounding could then carry more than FLOOR_RATIO² (1%) of the delta's energy.
FLOOR_RATIO = 0.1
FLOAT_TYPES = {"F32", "F64", "F16", "BF16", "LoRA"}


@dataclass(frozen=True)
class Caveat:
    key: str
    text: str
    serious: bool = True


def _tied(ctx: ReportContext) -> list[Caveat]:
    unembed = [str(c) for c in ctx.results.construction.values if str(c).startswith("unembed")]
    tied = [p for p in ctx.pairs if ctx.provenance(p, "tied_embeddings", 0)]
    if not (unembed and tied):
        return []
    return [Caveat(
        "tied-embeddings",
        f"Pair(s) {', '.join(tied)} tie the input and output embeddings, so {', '.join(unembed)} "
        "measure the embedding subspace — the one every layer's input is built from — not a "
        "separate prediction subspace: a write-side alignment with it is not evidence of "
        "alignment with what the model predicts.",
    )]  # fmt: skip


def _layers(ctx: ReportContext) -> list[Caveat]:
    """Too few layers for the dependence-robust test (its p-values are NaN), or for the sign flips."""
    out = []
    for pair in ctx.pairs:
        info = ctx.per_pair.get(pair, {})
        n = int(info.get("n_layers", ctx.n_layers(pair)))
        note = info.get("note")
        if n < MIN_LAYERS:
            said = f" (`rsf stats`: “{note}”)" if note else ""
            out.append(Caveat(
                f"few-layers-{pair}",
                f"Pair {pair} has {n} layers, too few for the dependence-robust EWC test to reach "
                f"α = {ctx.alpha:g}: it needs at least {MIN_LAYERS}, so no interval, p-value or joint "
                f"test is computed for it and the data cannot settle the question{said}. The "
                f"sign-flip p-values shown assume exchangeable layers and cannot fall below 2/2^{n} = "
                f"{2 * 2.0**-n:.3g}.",
            ))  # fmt: skip
        elif note:
            out.append(Caveat(f"few-layers-{pair}", f"Pair {pair}: `rsf stats` notes: {note}."))
        elif 2 * 2.0**-n > ctx.alpha and ctx.stats is not None:
            out.append(Caveat(
                f"few-layers-signflip-{pair}",
                f"Pair {pair} has {n} layers: the smallest two-sided sign-flip p-value is 2/2^{n} = "
                f"{2 * 2.0**-n:.3g}, above α = {ctx.alpha:g}; the EWC test the verdict uses has "
                "continuous p-values and is not limited this way.",
                serious=False,
            ))  # fmt: skip
    return out


def _autocorrelation(ctx: ReportContext) -> list[Caveat]:
    """Strong lag-1 autocorrelation of the preferred specification's per-layer differences."""
    if ctx.stats is None:
        return []
    c, k, n = ctx.preferred
    out = []
    for pair in ctx.pairs:
        cell = ctx.stats.sel(pair=pair, construction=c, cutoff=k, normalisation=n)
        r1, effective = float(cell.lag1_autocorrelation), float(cell.effective_layers)
        if np.isfinite(r1) and r1 > AUTOCORRELATION_STRONG:
            out.append(Caveat(
                f"autocorrelation-{pair}",
                f"Pair {pair}: the per-layer differences of the preferred specification have a lag-1 "
                f"autocorrelation of {r1:+.2f} (a diagnostic), about {effective:.1f} effective layers "
                f"of {ctx.n_layers(pair)}. The EWC test allows for dependence between neighbouring "
                "layers, but with so few effective layers its interval is wide and its assumption "
                "(autocorrelation negligible beyond a few layers) is strained; the sign-flip test, "
                "which assumes exchangeable layers, is not to be trusted here.",
            ))  # fmt: skip
    return out


def _resamples(ctx: ReportContext) -> list[Caveat]:
    out = []
    replicates = int(ctx.results.sizes.get("replicate", 0))
    if replicates == 0:
        out.append(Caveat(
            "no-sequence-bootstrap",
            "The sweep was run without a sequence bootstrap: no interval includes the uncertainty "
            "of estimating the activation subspaces from a finite corpus, and figure (c) has no "
            f"bands. Run `rsf sweep --bootstrap {SEQUENCE_REPLICATES_ADVISED}`.",
        ))  # fmt: skip
    elif replicates < SEQUENCE_REPLICATES_ADVISED:
        out.append(Caveat(
            "sequence-replicates",
            f"The sequence bootstrap has {replicates} replicates: the endpoints of its percentile "
            f"intervals (seq_ci_*) and the bands in (c) carry visible Monte Carlo error below about "
            f"{SEQUENCE_REPLICATES_ADVISED}. Run `rsf sweep --bootstrap {SEQUENCE_REPLICATES_ADVISED}`.",
        ))  # fmt: skip
    if ctx.stats is not None:
        n_resamples = int(ctx.stats.attrs.get("n_resamples", MONTE_CARLO_MIN))
        if n_resamples < MONTE_CARLO_MIN:
            inexact = [
                p for p in ctx.pairs if ctx.per_pair.get(p, {}).get("signflip_exact") is False
            ]
            also = f", and the sign flips of pair(s) {', '.join(inexact)}" if inexact else ""
            out.append(Caveat(
                "monte-carlo-resamples",
                f"The Monte Carlo tests used {n_resamples} null draws (the joint tests and the "
                f"Westfall–Young adjustment, under rotations{also}): no such p-value can fall below "
                f"1/{n_resamples + 1} = {1 / (n_resamples + 1):.3g}, and near α their Monte Carlo "
                f"error is visible. Run `rsf stats --resamples 9999`.",
            ))  # fmt: skip
    return out


def _incomplete(ctx: ReportContext) -> list[Caveat]:
    out = []
    total = int(
        np.prod([ctx.results.sizes[d] for d in ("construction", "cutoff", "normalisation")])
    )
    for pair in ctx.pairs:
        missing = ctx.per_pair.get(pair, {}).get("incomplete_specifications", 0)
        if missing:
            out.append(Caveat(
                f"incomplete-{pair}",
                f"Pair {pair}: {missing} of {total} specifications are undefined (a cutoff a "
                "construction cannot define, such as var or pr on random bases, or mp outside the "
                "activation constructions) and are left out of the specification curve and the joint tests.",
                serious=False,
            ))  # fmt: skip
    return out


def _null_control(ctx: ReportContext) -> list[Caveat]:
    """The `random` control departs from its Haar reference (EWC p < α) on any of its specifications."""
    if ctx.stats is None or "random" not in ctx.stats.construction.values:
        return []
    hits = {}
    for pair in ctx.pairs:
        roles = spec_roles(ctx.stats, pair)
        own = [s for s, (role, _) in roles.items() if s[0] == "random" and role == "control"]
        p = [float(ctx.stats.p_value.sel(pair=pair, construction=c, cutoff=k, normalisation=n))
             for c, k, n in own]  # fmt: skip
        departing = [s for s, v in zip(own, p, strict=True) if v < ctx.alpha]
        if departing:
            hits[pair] = (departing, sum(np.isfinite(p)))
    if not hits:
        return []
    listed = "; ".join(
        f"pair {p}: {len(d)} of {n} ({', '.join('/'.join(s[1:]) for s in d)})"
        for p, (d, n) in hits.items()
    )
    return [Caveat(
        "null-control",
        "The random construction — the null control, tested against its Haar reference (what a "
        "random basis gives for these deltas) — departs from it (EWC p < "
        f"α = {ctx.alpha:g}) in {listed}: something other than alignment with a subspace (such as "
        "the matrices' shapes or norms) separates read from write here, or the test does not hold "
        "its level for these layers.",
    )]  # fmt: skip


def _unmatched_ranks(ctx: ReportContext) -> list[Caveat]:
    """Specifications left out of the curve because read and write ranks are too far apart."""
    if ctx.stats is None or "not_counted_reason" not in ctx.stats:
        return []
    out = []
    for pair in ctx.pairs:
        reasons = [str(r) for r in ctx.stats.not_counted_reason.sel(pair=pair).values.ravel()]
        unmatched = [r for r in reasons if "ranks differ" in r]
        if unmatched:
            out.append(Caveat(
                f"unmatched-ranks-{pair}",
                f"Pair {pair}: {len(unmatched)} specification(s) are not counted in the specification "
                "curve or the joint tests because their read and write matrices' cutoffs chose ranks "
                f"more than 4-fold apart at some layer (for example: {unmatched[0]}); a spectral cutoff "
                "does this when one direction carries most of a site's variance.",
            ))  # fmt: skip
    return out


def _preferred_duplicate(ctx: ReportContext) -> list[Caveat]:
    if ctx.stats is None or not ctx.pairs:
        return []
    equal = ctx.preferred_as(ctx.pairs[0])
    if equal == tuple(ctx.preferred):
        return []
    return [Caveat(
        "preferred-duplicate",
        f"The preferred specification ({'/'.join(ctx.preferred)}) equals {'/'.join(equal)} on the "
        "statistics' scale: the joint tests count it once, as that one, and the specification "
        "curve draws it there.",
        serious=False,
    )]  # fmt: skip


def _preferred(ctx: ReportContext) -> list[Caveat]:
    if tuple(ctx.preferred) == DEFAULT_PREFERRED:
        return []
    return [Caveat(
        "preferred",
        f"The paper's preferred specification ({'/'.join(DEFAULT_PREFERRED)}) is not the one "
        f"marked here ({'/'.join(ctx.preferred)}): it was not in the sweep, or another was chosen "
        "with `rsf stats --preferred`.",
        serious=False,
    )]  # fmt: skip


def _corpus(ctx: ReportContext) -> list[Caveat]:
    attrs = ctx.results.attrs
    out = []
    tokens = int(attrs.get("n_tokens", 0))
    activation = [str(c) for c in ctx.results.construction.values if str(c).startswith("act_")]
    if "d_model" in ctx.results and activation and tokens:
        d = int(ctx.results.d_model.max())
        if tokens < TOKENS_PER_DIMENSION * d:
            out.append(Caveat(
                "few-tokens",
                f"The activation subspaces come from {tokens} tokens for a residual width of {d} "
                f"(fewer than {TOKENS_PER_DIMENSION} per dimension): the {', '.join(activation)} bases "
                "are dominated by estimation noise.",
            ))  # fmt: skip
    for note in json.loads(attrs.get("notes", "[]") or "[]"):
        out.append(Caveat("sweep-note", f"From the sweep: {note}", serious=False))
    return out


def _stored(ctx: ReportContext, pair: str) -> dict[str, set[str]]:
    """``{side: storage types}`` of one pair's matrices (empty for results without them)."""
    if "quantisation" not in ctx.results:
        return {}
    return {
        side: {
            str(v) for v in ctx.results.quantisation.sel(pair=pair, side=side).values.ravel() if v
        }
        for side in ("base", "aligned")
    }


def _precision(ctx: ReportContext) -> list[Caveat]:
    """Reduced precision or quantisation, and deltas not clearly above their rounding floor.

    A pair stored and run in float32 gets nothing. Otherwise its storage is
    named, with how close its deltas come to their rounding floor
    (``quantisation_floor`` in results.nc): above FLOOR_RATIO somewhere is serious.
    """
    out = []
    for pair in ctx.pairs:
        stored = _stored(ctx, pair)
        run = str(ctx.provenance(pair, "dtype", "float32"))
        kinds = set().union(*stored.values()) if stored else set()
        if not (kinds - {"F32", "F64", "LoRA"}) and run in ("float32", "float64"):
            continue
        said = "; ".join(f"{side} {', '.join(sorted(k))}" for side, k in stored.items())
        said = f"stored as {said}; run in {run}" if said else f"run in {run}"
        ratio = ctx.results.quantisation_floor.sel(pair=pair).values.ravel()
        known = ratio[np.isfinite(ratio)]
        quantised = [side for side, k in stored.items() if k - FLOAT_TYPES]
        exact = (
            f" Only the {quantised[0]} side is quantised: the delta is exact if the other side was "
            "fine-tuned from its dequantised weights (then no floor applies), and carries the "
            "rounding if both were rounded from float models."
            if len(quantised) == 1
            else ""
        )
        above = int(np.sum(known > FLOOR_RATIO))
        if above:
            out.append(Caveat(
                f"quantisation-floor-{pair}",
                f"Pair {pair} ({said}): at {above} of {ratio.size} matrices the delta is less than "
                f"{1 / FLOOR_RATIO:.0f}× its rounding floor (largest floor/‖ΔW‖ {known.max():.2g}, "
                "`quantisation_floor` in results.nc), so rounding to the stored grids could carry "
                f"more than {FLOOR_RATIO**2:.0%} of those deltas' energy, and move their fractions.{exact}",
                serious=len(quantised) != 1,  # one quantised side: exact when fine-tuned from it
            ))  # fmt: skip
            continue
        unknown = ratio.size - known.size
        if known.size:
            floor = (
                f"every delta whose floor is known is at least {1 / FLOOR_RATIO:.0f}× it (largest "
                f"floor/‖ΔW‖ {known.max():.2g})"
            )
            floor += f"; {unknown} have none (a type without a linear grid)" if unknown else ""
        else:
            floor = "no rounding floor could be estimated (types without a linear grid)"
        out.append(Caveat(
            f"precision-{pair}",
            f"Pair {pair} is stored or run in reduced precision ({said}): {floor}.{exact}",
            serious=not known.size,
        ))  # fmt: skip
    return out


def _massive(ctx: ReportContext) -> list[Caveat]:
    """Sites where one direction carries at least half the variance (``massive_activation``)."""
    if ctx.stats is None or "massive_activation" not in ctx.stats:
        return []
    out = []
    for pair in ctx.pairs:
        flags = ctx.stats.massive_activation.sel(pair=pair)
        share = ctx.stats.top_direction_share.sel(pair=pair)
        parts = []
        for site in ctx.stats.site.values:
            layers = [
                int(layer) for layer in ctx.stats.layer.values if flags.sel(site=site, layer=layer)
            ]
            if layers:
                top = float(share.sel(site=site).max())
                parts.append(f"{site} at {len(layers)} of {ctx.n_layers(pair)} layers "
                             f"({fmt_layers(layers)}; up to {top:.0%})")  # fmt: skip
        if parts:
            out.append(Caveat(
                f"massive-activations-{pair}",
                f"Pair {pair} has massive activations — one direction carrying at least "
                f"{MASSIVE_SHARE:.0%} of a site's variance — at {'; '.join(parts)}. Spectral "
                "cutoffs (var, pr, mp) then choose one or two directions there; a comparison of "
                "read and write sides at such ranks measures the outlier direction, not a subspace.",
            ))  # fmt: skip
    return out


def _small_ranks(ctx: ReportContext) -> list[Caveat]:
    """Cutoffs that chose k ≤ SMALL_K anywhere (``k_range`` in stats.nc)."""
    if ctx.stats is None:
        return []
    out = []
    for pair in ctx.pairs:
        found = small_ranks(ctx.stats, pair)
        if found:
            listed = ", ".join(
                f"{c}/{k} on {pathway} (k = {low})" for c, k, pathway, low in found[:6]
            )
            more = f" and {len(found) - 6} more" if len(found) > 6 else ""
            out.append(Caveat(
                f"small-ranks-{pair}",
                f"Pair {pair}: {len(found)} cutoff choice(s) keep at most {SMALL_K} directions at some "
                f"layer: {listed}{more}. A fraction on one or two directions is a statement about "
                "those directions only; the table below gives each cutoff's range of k per pathway.",
            ))  # fmt: skip
    return out


def _experts(ctx: ReportContext) -> list[Caveat]:
    """A mixture-of-experts pair: its MLP matrices are a load-weighted mean over experts."""
    if "expert_load" not in ctx.results:
        return []
    found = []
    for pair in ctx.pairs:
        load = ctx.results.expert_load.sel(pair=pair).values
        if not np.isfinite(load).any():
            continue
        n = int(np.isfinite(load).any(axis=0).sum())
        found.append(Caveat(
            f"experts-{pair}",
            f"Pair {pair} is a mixture of {n} experts: its up, gate and down are the mean of the "
            f"experts' values weighted by their routing shares on the corpus (from "
            f"{np.nanmin(load):.1%} to {np.nanmax(load):.1%} of a layer's routing), each expert "
            "measured alone; `rsf stats --experts each` tests every expert as a pair of its own.",
            serious=False,
        ))  # fmt: skip
    return found


def fmt_layers(layers: list[int]) -> str:
    """``0–3, 7, 11–27``: consecutive layers as ranges."""
    runs, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            runs.append(f"{start}–{layer}" if layer > start else f"{layer}")
            start = None
    return ", ".join(runs)


def _inputs(ctx: ReportContext) -> list[Caveat]:
    out = []
    if ctx.stats is None:
        out.append(Caveat(
            "no-stats",
            "No statistics file was given: the verdict, the specification curve, the null "
            "distributions and the variance decomposition are empty. Run `rsf stats results.nc` "
            "and pass `--stats stats.nc`.",
        ))  # fmt: skip
    calibration = ctx.calibration
    if calibration is None:
        out.append(Caveat(
            "no-calibration",
            "No calibration file was given: this report does not show whether the tests hold "
            "their error rates. Run `rsf calibrate` and pass `--calibration calibration.nc`.",
            serious=False,
        ))  # fmt: skip
        return out
    settings = json.loads(calibration.attrs.get("settings", "{}"))
    d, layers = settings.get("d"), settings.get("n_layers")
    if "d_model" in ctx.results and d is not None and layers is not None:
        differ = [
            f"{p} (d = {int(ctx.results.d_model.sel(pair=p))}, {ctx.n_layers(p)} layers)"
            for p in ctx.pairs
            if int(ctx.results.d_model.sel(pair=p)) != d or ctx.n_layers(p) != layers
        ]
        if differ:
            out.append(Caveat(
                "calibration-shape",
                f"The calibration simulated d = {d} and {layers} layers; {', '.join(differ)} differ: "
                "its error rates describe the tests at that size, not this data exactly.",
                serious=False,
            ))  # fmt: skip
    misses = json.loads(calibration.attrs.get("misses", "[]") or "[]")
    if misses:
        out.append(
            Caveat(
                "calibration-misses",
                "The calibration missed its targets: " + "; ".join(misses) + ".",
            )
        )
    return out


def caveats(ctx: ReportContext) -> list[Caveat]:
    """Every caveat that applies, serious ones first."""
    found = [
        *_inputs(ctx),
        *_tied(ctx),
        *_layers(ctx),
        *_autocorrelation(ctx),
        *_resamples(ctx),
        *_null_control(ctx),
        *_precision(ctx),
        *_massive(ctx),
        *_small_ranks(ctx),
        *_experts(ctx),
        *_corpus(ctx),
        *_preferred(ctx),
        *_preferred_duplicate(ctx),
        *_unmatched_ranks(ctx),
        *_incomplete(ctx),
    ]
    return sorted(found, key=lambda c: not c.serious)
