"""Sections (b)–(f), the evidence: specification curve, RSF against the cutoff, heatmaps, nulls, variance."""

from __future__ import annotations

from robustness.settings.specification import SPEC_DIMS

from . import figures
from . import formatting as fmt
from .context import ReportContext, spec_roles
from .registry import Section, needs_stats, spec_label
from .render import fragment
from .spec_curve import spec_curve
from .tables import Column, Row, Table
from .verdict import sequence_method

# Rows of the specification table styled by their place in the curve.
ROLE_CLASS = {"control": "control", "duplicate": "duplicate", "undefined": "undefined"}

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
        ("asymmetry", "A", fmt.signed, ""),
        (
            "reference",
            "reference",
            fmt.signed,
            "A₀, the value A is tested against: 0, or the random control's Haar reference",
        ),
        ("ci_low", "CI low", fmt.signed, "interval over layers, EWC (dependence-robust)"),
        ("ci_high", "CI high", fmt.signed, "interval over layers, EWC (dependence-robust)"),
    ]
    if "seq_ci_low" in stats:
        method = sequence_method(stats)
        numbers += [
            ("seq_ci_low", "seq. CI low", fmt.signed, f"sequence bootstrap, {method}"),
            ("seq_ci_high", "seq. CI high", fmt.signed, f"sequence bootstrap, {method}"),
        ]
    numbers += [
        ("effect_size", "d_z", fmt.effect, "Hedges-corrected d_z of the per-layer differences"),
        ("effect_ci_low", "d_z low", fmt.effect, "from the EWC statistic"),
        ("effect_ci_high", "d_z high", fmt.effect, "from the EWC statistic"),
        ("p_value", "p (EWC)", fmt.p_value, "EWC t-test over layers: the verdict's test"),
        ("p_signflip", "p sign-flip", fmt.p_value, "assumes exchangeable layers"),
        ("p_perm", "p perm.", fmt.p_value, "within-layer exchangeability of the read and write matrices"),
        ("p_adj", "p BH", fmt.p_value, "Benjamini–Hochberg over the counted specifications"),
        ("p_wy", "p WY", fmt.p_value, "Westfall–Young step-down min-p over the counted specifications"),
        ("lag1_autocorrelation", "lag-1", fmt.autocorrelation, "lag-1 autocorrelation of D_l (diagnostic)"),
        ("effective_layers", "eff. layers", fmt.layers, "L(1 − r₁)/(1 + r₁) (diagnostic)"),
    ]  # fmt: skip
    columns = (
        Column("preferred", "pref.", numeric=False, help="the paper's preferred specification"),
        Column("pair", "pair", numeric=False),
        *(Column(d, d, numeric=False) for d in SPEC_DIMS),
        Column("counted", "counted", numeric=False,
               help="in the joint tests; a control is shown, not counted; = another specification it equals"),
        *(Column(name, label, help=help) for name, label, _, help in numbers),
    )  # fmt: skip
    frame = stats[[name for name, _, _, _ in numbers]].to_dataframe().reset_index()
    frame = frame.set_index(["pair", *SPEC_DIMS])
    roles = {pair: spec_roles(stats, pair) for pair in ctx.pairs}
    rows = []
    for (pair, c, k, n), record in frame.iterrows():
        preferred = (c, k, n) == tuple(ctx.preferred)
        role, role_text = roles[pair][(c, k, n)]
        cells = {
            "preferred": fmt.text("★" if preferred else ""),
            "pair": fmt.text(pair),
            "construction": fmt.text(c),
            "cutoff": fmt.text(k),
            "normalisation": fmt.text(n),
            "counted": fmt.text(role_text),
        }
        for name, _, rule, _ in numbers:
            cells[name] = rule(record[name])
        css = " ".join(x for x in ("preferred" if preferred else "", ROLE_CLASS.get(role, "")) if x)
        rows.append(Row(f"{pair}|{c}|{k}|{n}", cells, css))
    caption = (
        "Every specification: asymmetry A against its reference with its interval over layers (EWC, "
        "dependence-robust)"
        + (" and sequence-bootstrap interval" if "seq_ci_low" in stats else "")
        + ", effect size d_z (Hedges) with its interval, and p-values: EWC (the verdict's), sign-flip "
        "(exchangeable layers), label permutation (within-layer exchangeability), Benjamini–Hochberg "
        "and Westfall–Young adjusted over the pair's counted specifications; controls are shown, not "
        "counted, and a duplicate names the specification it equals; — where undefined"
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
                "belongs to the analyst, its sign follows particular choices in the panel below. "
                f"{ctx.stats.attrs.get('counted_rule', '')[:1].upper()}"
                f"{ctx.stats.attrs.get('counted_rule', '')[1:]}: the joint tests count those; "
                "the controls are drawn hollow, and duplicates are left out of the curve "
                "(the table marks them)."
            ),
            figure=spec_curve(ctx.stats, ctx.pairs, ctx.preferred, ctx.alpha),
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
    title = "Null distributions"
    if ctx.stats is None:
        return Section("null-distributions", title, needs_stats())
    n_resamples = int(ctx.stats.attrs.get("n_resamples", 0))
    draws = min(ctx.stats.sizes.get("null_draw", 0), n_resamples)
    exact = {p: ctx.per_pair.get(p, {}).get("signflip_exact") for p in ctx.pairs}
    signflip = "; ".join(
        f"pair {p}: {'exact, all 2^' + str(ctx.n_layers(p)) + ' sign vectors' if e else 'Monte Carlo, ' + str(ctx.stats.attrs.get('n_resamples')) + ' draws'}"
        for p, e in exact.items()
    )
    intro = (
        "The null drawn here is the rotation null of the EWC test: under its null hypothesis the "
        "layers' cosine projections are invariant under rotation, so random rotations, the same for "
        "every specification, give the asymmetry's null distribution about the reference A₀ "
        f"({n_resamples} rotations, {draws} of them kept per specification); the same "
        "rotations give the joint tests and the Westfall–Young adjustment. The p-value shown is the "
        "EWC t-test's own. The sign-flip test, which assumes exchangeable layers, is reported beside "
        f"it in (b) ({signflip})."
    )
    body = fragment(
        "sections/figure_and_table.html.j2",
        intro=intro,
        figure=figures.null_distributions(ctx.stats, ctx.pairs, ctx.chosen_specs()),
        table=None,
    )
    return Section("null-distributions", title, body)


# ----------------------------------------------------------------------- (f) variance decomposition


MAIN_EFFECTS = ("construction", "cutoff", "normalisation")


def variance_terms(shares: dict[str, dict[str, float]]) -> list[str]:
    """The terms any pair has: main effects, then two-way interactions, then the residual."""
    present = {term for s in shares.values() for term in s}
    ordered = list(MAIN_EFFECTS)
    ordered += [f"{a}×{b}" for i, a in enumerate(MAIN_EFFECTS) for b in MAIN_EFFECTS[i + 1 :]]
    terms = [t for t in ordered if t in present]
    terms += sorted(present - set(ordered) - {"residual"})
    return terms + (["residual"] if "residual" in present else [])


def variance_table(ctx: ReportContext) -> Table:
    shares = {p: ctx.per_pair.get(p, {}).get("variance_shares", {}) for p in ctx.pairs}
    terms = variance_terms(shares) or [*MAIN_EFFECTS, "residual"]
    columns = (
        Column("pair", "pair", numeric=False),
        *(Column(t, t.replace("×", " × ")) for t in terms),
        Column("kendall_w", "Kendall's W"),
        Column("icc_agreement", "ICC(A,1)"),
        Column("icc_consistency", "ICC(C,1)"),
    )
    rows = []
    for pair in ctx.pairs:
        stability = ctx.per_pair.get(pair, {}).get("ranking_stability", {})
        cells = {"pair": fmt.text(pair)}
        for t in terms:
            cells[t] = fmt.share(shares[pair].get(t))
        for key in ("kendall_w", "icc_agreement", "icc_consistency"):
            cells[key] = fmt.agreement(stability.get(key))
        rows.append(Row(pair, cells))
    caption = (
        "Shares of the total sum of squares of effect size across the counted specifications, per "
        "analytic choice and pair of choices (they and the residual add to 100%), and how stable the "
        "ranking of layers by their read − write difference is across specifications (Kendall's W, ICC)"
    )
    return Table("variance-table", caption, columns, tuple(rows))


def variance_section(ctx: ReportContext) -> Section:
    if ctx.stats is None:
        body = needs_stats()
    else:
        shares = {p: ctx.per_pair.get(p, {}).get("variance_shares", {}) for p in ctx.pairs}
        method = ctx.stats.attrs.get("variance_method", "")
        body = fragment(
            "sections/figure_and_table.html.j2",
            intro=(
                "A large share for one choice, or for a pair of choices together, means the answer "
                "depends on it; a large residual with small shares means no single choice drives it. "
                f"Method: {method}."
            ),
            figure=figures.variance_shares(shares, variance_terms(shares)),
            table=variance_table(ctx),
        )
    return Section("variance", "Variance decomposition: which choice moves the result", body)
