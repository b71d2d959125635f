"""Automatic caveats: what in these datasets limits what the report can claim.

Each check reads only the datasets. A caveat names the pair it concerns, says
what follows for the reader and, where one exists, what to run instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from robustness.specification import DEFAULT_PREFERRED

from .context import ReportContext

__all__ = ["BCA_MIN_REPLICATES", "MONTE_CARLO_MIN", "Caveat", "caveats"]

# Efron & Tibshirani (1993, §14.3; 19.3): BCa needs of the order of 1000
# replicates, its bias correction and acceleration being tail quantities.
BCA_MIN_REPLICATES = 1000
# Below this many Monte Carlo resamples the smallest possible p-value, 1/(1+B),
# and the Monte Carlo error of p near α are too coarse to report a test.
MONTE_CARLO_MIN = 999
# Covariance bases from fewer tokens per residual dimension are noisy.
TOKENS_PER_DIMENSION = 10


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
    out = []
    for pair in ctx.pairs:
        n = ctx.n_layers(pair)
        smallest = 2 * 2.0**-n
        if smallest > ctx.alpha:
            out.append(Caveat(
                f"few-layers-{pair}",
                f"Pair {pair} has {n} layers: the smallest two-sided sign-flip p-value is "
                f"2/2^{n} = {smallest:.3g}, above α = {ctx.alpha:g}, so no specification can be "
                "significant on its own and the sign-flip test cannot settle the question for it.",
            ))  # fmt: skip
        elif n < 3:
            out.append(
                Caveat(
                    f"few-layers-{pair}",
                    f"Pair {pair} has {n} layers: too few for ranking stability.",
                )
            )
    return out


def _resamples(ctx: ReportContext) -> list[Caveat]:
    out = []
    replicates = int(ctx.results.sizes.get("replicate", 0))
    if replicates == 0:
        out.append(Caveat(
            "no-sequence-bootstrap",
            "The sweep was run without a sequence bootstrap: no interval includes the uncertainty "
            "of estimating the activation subspaces from a finite corpus, and figure (c) has no "
            "bands. Run `rsf sweep --bootstrap 1000`.",
        ))  # fmt: skip
    elif replicates < BCA_MIN_REPLICATES:
        out.append(Caveat(
            "bca-replicates",
            f"The sequence bootstrap has {replicates} replicates; BCa intervals need about "
            f"{BCA_MIN_REPLICATES} or more (Efron & Tibshirani 1993), so the sequence intervals "
            f"(seq_ci_*) and the bands in (c) are rough. Run `rsf sweep --bootstrap {BCA_MIN_REPLICATES}`.",
        ))  # fmt: skip
    if ctx.stats is not None:
        attrs = ctx.stats.attrs
        if int(attrs.get("layer_replicates", MONTE_CARLO_MIN)) < MONTE_CARLO_MIN:
            out.append(Caveat(
                "layer-resamples",
                f"The layer bootstrap used {int(attrs['layer_replicates'])} resamples (fewer than "
                f"{MONTE_CARLO_MIN}): its interval endpoints carry visible Monte Carlo error.",
            ))  # fmt: skip
        inexact = [p for p in ctx.pairs if ctx.per_pair.get(p, {}).get("signflip_exact") is False]
        n_perm = int(attrs.get("n_resamples", MONTE_CARLO_MIN))
        if inexact and n_perm < MONTE_CARLO_MIN:
            out.append(Caveat(
                "permutations",
                f"Monte Carlo tests used {n_perm} permutations for pair(s) {', '.join(inexact)}: no "
                f"p-value can fall below 1/{n_perm + 1} = {1 / (n_perm + 1):.3g}.",
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
    if ctx.stats is None or "random" not in ctx.stats.construction.values:
        return []
    p_adj = ctx.stats.p_adj.sel(construction="random")
    hits = {str(p): int((p_adj.sel(pair=p) < ctx.alpha).sum()) for p in ctx.pairs}
    hits = {p: n for p, n in hits.items() if n}
    if not hits:
        return []
    listed = ", ".join(f"{p}: {n}" for p, n in hits.items())
    return [Caveat(
        "null-control",
        f"The random construction — the null control, which should show no asymmetry — is "
        f"significant after Benjamini–Hochberg adjustment in some specifications ({listed}): "
        "something other than alignment with a subspace (such as the matrices' shapes or norms) "
        "separates read from write here.",
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
    dtype = ctx.config.get("run", {}).get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        out.append(Caveat(
            "dtype",
            f"Weights were loaded as {dtype}: deltas between nearly equal weights lose precision "
            "before they are upcast.",
        ))  # fmt: skip
    for note in json.loads(attrs.get("notes", "[]") or "[]"):
        out.append(Caveat("sweep-note", f"From the sweep: {note}", serious=False))
    return out


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
        *_resamples(ctx),
        *_null_control(ctx),
        *_corpus(ctx),
        *_preferred(ctx),
        *_incomplete(ctx),
    ]
    return sorted(found, key=lambda c: not c.serious)
