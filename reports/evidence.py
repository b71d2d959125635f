"""Sections (b)–(f), the evidence: specification curve, RSF against the cutoff, heatmaps, nulls, variance."""

from __future__ import annotations

from robustness.specification import SPEC_DIMS

from . import figures
from . import formatting as fmt
from .context import ReportContext
from .registry import Section, needs_stats, spec_label
from .render import fragment
from .tables import Column, Row, Table

__all__ = [
    "heatmap_section",
    "null_section",
    "rsf_cutoff_section",
    "spec_curve_section",
    "spec_table",
    "variance_section",
    "variance_table",
]


# ----------------------------------------------------------------------- (b) specification curve


def spec_table(ctx: ReportContext) -> Table:
    stats = ctx.stats
    numbers = [
        ("asymmetry", "A", fmt.signed),
        ("ci_low", "CI low", fmt.signed),
        ("ci_high", "CI high", fmt.signed),
    ]
    if "seq_ci_low" in stats:
        numbers += [
            ("seq_ci_low", "seq. CI low", fmt.signed),
            ("seq_ci_high", "seq. CI high", fmt.signed),
        ]
    numbers += [
        ("effect_size", "d_z", fmt.effect),
        ("p_signflip", "p sign-flip", fmt.p_value),
        ("p_perm", "p perm.", fmt.p_value),
        ("p_adj", "p BH", fmt.p_value),
        ("p_wy", "p WY", fmt.p_value),
    ]
    columns = (
        Column("preferred", "pref.", numeric=False, help="the paper's preferred specification"),
        Column("pair", "pair", numeric=False),
        *(Column(d, d, numeric=False) for d in SPEC_DIMS),
        *(Column(name, label) for name, label, _ in numbers),
    )
    frame = stats[[name for name, _, _ in numbers]].to_dataframe().reset_index()
    frame = frame.set_index(["pair", *SPEC_DIMS])
    rows = []
    for (pair, c, k, n), record in frame.iterrows():
        preferred = (c, k, n) == tuple(ctx.preferred)
        cells = {
            "preferred": fmt.text("★" if preferred else ""),
            "pair": fmt.text(pair),
            "construction": fmt.text(c),
            "cutoff": fmt.text(k),
            "normalisation": fmt.text(n),
        }
        for name, _, rule in numbers:
            cells[name] = rule(record[name])
        rows.append(Row(f"{pair}|{c}|{k}|{n}", cells, "preferred" if preferred else ""))
    caption = (
        "Every specification: asymmetry A with its layer-bootstrap interval"
        + (" and sequence-bootstrap interval" if "seq_ci_low" in stats else "")
        + ", effect size, and p-values (sign-flip, label permutation, Benjamini–Hochberg and "
        "Westfall–Young adjusted over the pair's specifications); — where undefined"
    )
    return Table("spec-table", caption, columns, tuple(rows), scroll=True)


def spec_curve_section(ctx: ReportContext) -> Section:
    if ctx.stats is None:
        body = needs_stats()
    else:
        body = fragment(
            "sections/figure_and_table.html.j2",
            intro=(
                "Each specification is one construction × cutoff × normalisation. If the asymmetry "
                "belongs to the models, the curve sits above zero whatever the choices; if it "
                "belongs to the analyst, its sign follows particular choices in the panel below."
            ),
            figure=figures.spec_curve(ctx.stats, ctx.pairs, ctx.preferred, ctx.alpha),
            table=spec_table(ctx),
        )
    return Section("specification-curve", "Specification curve", body)


# ----------------------------------------------------------------------- (c) rsf against the cutoff


def rsf_cutoff_section(ctx: ReportContext) -> Section:
    constructions = [ctx.preferred[0]]
    present = [str(c) for c in ctx.results.construction.values]
    for extra in ("unembed", "random"):
        if extra in present and extra not in constructions:
            constructions.append(extra)
    figure = figures.rsf_by_cutoff(
        ctx.results,
        ctx.pairs,
        constructions,
        ctx.preferred[2],
        list(ctx.read),
        list(ctx.write),
        ctx.confidence_level,
    )
    body = fragment(
        "sections/figure_and_table.html.j2",
        intro=(
            f"How the probe grows with the rank cutoff for the preferred construction ({ctx.preferred[0]}), "
            "the unembedding's subspace and the random null control, each matrix and each pathway set."
        ),
        figure=figure,
        table=None,
    )
    return Section("rsf-cutoff", "RSF against the rank cutoff", body)


# ----------------------------------------------------------------------- (d) heatmaps


def heatmap_section(ctx: ReportContext) -> Section:
    specs = ctx.chosen_specs()
    body = fragment(
        "sections/figure_and_table.html.j2",
        intro=(
            "Where in the network the delta aligns: the preferred specification"
            + (
                " and the two ends of the first pair's specification curve"
                if ctx.stats is not None
                else ""
            )
            + f" ({'; '.join(spec_label(s) for s in specs)})."
        ),
        figure=figures.layer_heatmaps(ctx.results, ctx.pairs, specs),
        table=None,
    )
    return Section("heatmaps", "Layer × matrix heatmaps", body)


# ----------------------------------------------------------------------- (e) null distributions


def null_section(ctx: ReportContext) -> Section:
    if ctx.stats is None:
        body = needs_stats()
        return Section("null-distributions", "Permutation null distributions", body)
    exact = {p: ctx.per_pair.get(p, {}).get("signflip_exact") for p in ctx.pairs}
    how = "; ".join(
        f"pair {p}: {'exact, all 2^' + str(ctx.n_layers(p)) + ' sign vectors' if e else 'Monte Carlo, ' + str(ctx.stats.attrs.get('n_resamples')) + ' draws'}"
        for p, e in exact.items()
    )
    body = fragment(
        "sections/figure_and_table.html.j2",
        intro=f"The sign-flip test asks whether the per-layer differences could have either sign by chance ({how}).",
        figure=figures.null_distributions(ctx.stats, ctx.pairs, ctx.chosen_specs()),
        table=None,
    )
    return Section("null-distributions", "Permutation null distributions", body)


# ----------------------------------------------------------------------- (f) variance decomposition


def variance_table(ctx: ReportContext) -> Table:
    columns = (
        Column("pair", "pair", numeric=False),
        *(Column(f, f"{f} share") for f in ("construction", "cutoff", "normalisation", "residual")),
        Column("kendall_w", "Kendall's W"),
        Column("icc_agreement", "ICC(A,1)"),
        Column("icc_consistency", "ICC(C,1)"),
    )
    rows = []
    for pair in ctx.pairs:
        info = ctx.per_pair.get(pair, {})
        shares, stability = info.get("variance_shares", {}), info.get("ranking_stability", {})
        cells = {"pair": fmt.text(pair)}
        for f in ("construction", "cutoff", "normalisation", "residual"):
            cells[f] = fmt.share(shares.get(f))
        for key in ("kendall_w", "icc_agreement", "icc_consistency"):
            cells[key] = fmt.agreement(stability.get(key))
        rows.append(Row(pair, cells))
    caption = (
        "Share of the variation in effect size per analytic choice (type-II ANOVA), and how stable the "
        "ranking of layers by their read − write difference is across specifications (Kendall's W, ICC)"
    )
    return Table("variance-table", caption, columns, tuple(rows))


def variance_section(ctx: ReportContext) -> Section:
    if ctx.stats is None:
        body = needs_stats()
    else:
        shares = {p: ctx.per_pair.get(p, {}).get("variance_shares", {}) for p in ctx.pairs}
        body = fragment(
            "sections/figure_and_table.html.j2",
            intro=(
                "A large share for one choice means the answer depends on that choice; a large "
                "residual with small shares means no single choice drives it."
            ),
            figure=figures.variance_shares(shares),
            table=variance_table(ctx),
        )
    return Section("variance", "Variance decomposition: which choice moves the result", body)
