"""The report's first section: the paper's claims, one by one, from ``claims.nc`` (``rsf claims``).

Per pair, a table (claim, what the paper says, the test, estimate with its
interval, reference, p, robustness, verdict) and one figure: every tested
claim's estimate with its interval against its reference line, or its
equivalence band for ``write_isotropy`` and its margin for ``graded_control``.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from markupsafe import Markup

from . import formatting as fmt
from .context import ReportContext
from .plotting import GREY, OKABE_ITO, SvgFigure, figure, finish
from .registry import Section
from .render import fragment
from .tables import Column, Row, Table

__all__ = ["VERDICT_COLOURS", "claims_figure", "claims_section", "claims_table"]

VERDICT_COLOURS = {
    "supported": OKABE_ITO["blue"],
    "contradicted": OKABE_ITO["vermillion"],
    "inconclusive": GREY,
    "not_tested": GREY,
}
VERDICT_MARKERS = {"supported": "o", "contradicted": "s", "inconclusive": "D", "not_tested": "x"}
# Claims whose interval must clear +margin (drawn as a dotted line).
CONCENTRATION = (
    "read_concentration", "read_write_asymmetry", "pretraining_writes_prediction",
    "trajectory_consistent",
)  # fmt: skip


def _number(row, name):
    return row[name] if name in row else np.nan


def claims_table(claims: xr.Dataset, pair: str) -> Table:
    """One row per claim; what the paper says, the test and its method in the claim cell's details."""
    rows = []
    cell = claims.sel(pair=pair)
    for claim in claims.claim.values:
        row = cell.sel(claim=claim)
        verdict = str(row.verdict.values)
        low, high = fmt.signed(row.ci_low), fmt.signed(row.ci_high)
        interval = f"[{low}, {high}]" if low.value is not None else fmt.MISSING
        details = [("the paper says", row.says.values), ("the test", row.test.values)]
        details += [("method", row.method.values), ("why", row.reason.values)]
        share = float(row.robust_share)
        n = int(_number(row, "robust_n")) if "robust_n" in row else None
        robust = fmt.share(share)
        if n is not None and robust.value is not None:
            robust = fmt.Cell(f"{robust.text} of {n}", share)
        rows.append(
            Row(
                str(claim),
                {
                    "claim": fmt.text(claim, details),
                    "verdict": fmt.text(verdict.replace("_", " ")),
                    "estimate": fmt.signed(row.estimate),
                    "interval": fmt.Cell(interval, low.value),
                    "reference": fmt.signed(row.reference),
                    "excess": fmt.signed(_number(row, "excess")),
                    "p_value": fmt.p_value(row.p_value),
                    "p_adjusted": fmt.p_value(_number(row, "p_adjusted")),
                    "margin_needed": fmt.signed(_number(row, "margin_needed")),
                    "robust_share": robust,
                },
                css_class=f"verdict-{verdict}",
            )
        )
    columns = (
        Column("claim", "claim", numeric=False),
        Column("verdict", "verdict", numeric=False),
        Column("estimate", "estimate"),
        Column("interval", "interval", help="at the level the decision uses: 1 − 2α (ci_level)"),
        Column("reference", "Haar ref.", help="the estimate's Haar reference (0 for differences)"),
        Column("excess", "excess", help="read claims: the log2 ratio over the mechanical reference "
               "(the level the outer-product mechanism alone predicts)"),
        Column("p_value", "p", help="the p-value of the test the verdict rests on"),
        Column("p_adjusted", "p Holm", help="adjusted across the claims tested on this pair"),
        Column("margin_needed", "margin", help="the margin needed: for a concentration claim the "
               "largest still supported; for isotropy the smallest that would support it"),
        Column("robust_share", "robust", help="share of the decisive eligible specifications "
               "agreeing with the preferred one's verdict, of how many"),
    )  # fmt: skip
    caption = (
        f"Pair {pair}: each claim tested as stated at its preferred specification, decided for the family "
        f"of claims tested on the pair (Holm). Margin ±{claims.attrs.get('margin', claims.attrs['isotropy_margin']):g} "
        f"log2 (write isotropy ±{claims.attrs['isotropy_margin']:g}, graded control "
        f"{claims.attrs['graded_margin']:+g} per unit λ); α = {claims.attrs['alpha']:g}; intervals at "
        f"{1 - 2 * claims.attrs['alpha']:.0%} (1 − 2α). Open a claim's method for what it says, its test "
        "and why."
    )
    return Table(f"claims-{pair}", caption, columns, tuple(rows))


def claims_figure(claims: xr.Dataset, pair: str) -> SvgFigure | None:
    """The tested claims' estimates and intervals against their reference lines, one panel each."""
    cell = claims.sel(pair=pair)
    shown = [str(c) for c in claims.claim.values if np.isfinite(float(cell.sel(claim=c).estimate))]
    if not shown:
        return None
    fig = figure(7.2, 0.55 * len(shown) + 0.9)
    axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    for axis, claim in zip(axes, shown, strict=True):
        row = cell.sel(claim=claim)
        verdict = str(row.verdict.values)
        value, low, high = float(row.estimate), float(row.ci_low), float(row.ci_high)
        reference = float(row.reference)
        if claim == "write_isotropy":
            margin = float(claims.attrs["isotropy_margin"])
            axis.axvspan(-margin, margin, color=OKABE_ITO["sky_blue"], alpha=0.25, linewidth=0)
            reference = 0.0
        margin_line = math.nan
        if claim in CONCENTRATION and "margin" in claims.attrs:
            margin_line = float(claims.attrs["margin"])
            axis.axvline(margin_line, color=OKABE_ITO["sky_blue"], linewidth=1.2, linestyle=":")
        if np.isfinite(reference):
            axis.axvline(reference, color="black", linewidth=0.8, linestyle="--")
        if np.isfinite(low) and np.isfinite(high):
            axis.hlines(0, low, high, color=VERDICT_COLOURS[verdict], linewidth=2)
        axis.plot(
            [value],
            [0],
            marker=VERDICT_MARKERS[verdict],
            color=VERDICT_COLOURS[verdict],
            markersize=6,
        )
        axis.set_yticks([0], [f"{claim}: {verdict.replace('_', ' ')}"])
        span = [x for x in (value, low, high, reference, margin_line) if np.isfinite(x)]
        pad = 0.15 * (max(span) - min(span) or 1.0)
        axis.set_xlim(min(span) - pad, max(span) + pad)
        axis.tick_params(axis="y", length=0)
    alt = f"Pair {pair}: estimates of {len(shown)} claims with their intervals against their references"
    caption = (
        "Each claim's estimate (marker) and interval (bar) against its reference (dashed line); for write "
        "isotropy the shaded band is the equivalence margin the interval must lie within, for the "
        "concentration claims the dotted line the margin it must clear. Colour and "
        "marker give the verdict (circle supported, square contradicted, diamond inconclusive); "
        "each panel has its own scale (log2 levels, differences of ranks, Δmargin)."
    )
    return finish(fig, f"fig-claims-{pair}", alt, caption)


def reconciliation(ctx: ReportContext, pair: str) -> str:
    """A sentence when `rsf stats` (same construction on both sides) and the asymmetry claim
    (activations read, prediction subspace written) disagree, saying why both can hold."""
    claims, stats = ctx.claims, ctx.stats
    if claims is None or stats is None or pair not in [str(p) for p in stats.pair.values]:
        return ""
    claim = str(claims.verdict.sel(pair=pair, claim="read_write_asymmetry").values)
    if claim == "not_tested" or not ctx.has_spec(ctx.preferred):
        return ""
    c, k, n = ctx.preferred
    cell = stats.sel(pair=pair, construction=c, cutoff=k, normalisation=n)
    p, value = float(cell.p_value), float(cell.asymmetry)
    if not np.isfinite(p):
        return ""
    stats_finds = p < ctx.alpha and value > float(cell.reference)
    claim_finds = claim == "supported"
    if stats_finds == claim_finds:
        return ""
    margin = claims.attrs.get("margin", claims.attrs["isotropy_margin"])
    return (
        f"The Verdict section {'finds' if stats_finds else 'does not find'} read > write on "
        f"{c} at both pathways' sites ({k}, {n}: A = {value:+.3f}, p = {p:.3g}), while the claim "
        f"read_write_asymmetry is {claim.replace('_', ' ')}. Both can hold: `rsf stats` compares the "
        f"two pathways on one construction, against 0; the claim compares the read delta on its "
        f"activations ({c}) with the write delta on the prediction subspace (unembed), each against "
        f"its own Haar reference, and needs the difference to clear ±{float(margin):g} log2."
    )


def claims_section(ctx: ReportContext) -> Section:
    claims = ctx.claims
    if claims is None:
        body = fragment(
            "sections/missing.html.j2",
            needs="claims.nc",
            command="rsf claims results.nc --stats stats.nc --out claims.nc",
        )
        return Section("claims", "The paper's claims", body)
    parts = []
    for pair in [str(p) for p in claims.pair.values]:
        verdicts = [str(v) for v in claims.verdict.sel(pair=pair).values]
        counts = ", ".join(
            f"{verdicts.count(v)} {v.replace('_', ' ')}"
            for v in ("supported", "contradicted", "inconclusive", "not_tested")
            if v in verdicts
        )
        intro = (
            f"Pair {pair} ({str(claims.phase.sel(pair=pair).values)}): {counts}. Levels are log2 isotropic "
            "ratios against each delta's Haar reference; tests over layers are the dependence-robust EWC "
            "tests; a non-significant difference never counts as support. The claims compare the read "
            "delta on the activations it reads with the write delta on the prediction subspace."
        )
        # The report's first screen answers the question: the claims' verdicts.
        parts.append(Markup('<div class="answer"><p>{}</p>').format(intro))
        sentence = reconciliation(ctx, pair)
        if sentence:
            parts.append(Markup("<p>{}</p>").format(sentence))
        parts.append(Markup("</div>"))
        parts.append(
            fragment(
                "sections/figure_and_table.html.j2",
                intro="",
                figure=claims_figure(claims, pair),
                table=claims_table(claims, pair),
            )
        )
    return Section("claims", "The paper's claims", Markup("").join(parts))
