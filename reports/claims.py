"""The report's first section: the paper's claims, one by one, from ``claims.nc`` (``rsf claims``).

Per pair, a table (claim, what the paper says, the test, estimate with its
interval, reference, p, robustness, verdict) and one figure: every tested
claim's estimate with its interval against its reference line, or its
equivalence band for ``write_isotropy`` and its margin for ``graded_control``.
"""

from __future__ import annotations

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


def claims_table(claims: xr.Dataset, pair: str) -> Table:
    rows = []
    cell = claims.sel(pair=pair)
    for claim in claims.claim.values:
        row = cell.sel(claim=claim)
        verdict = str(row.verdict.values)
        rows.append(
            Row(
                str(claim),
                {
                    "claim": fmt.text(claim),
                    "says": fmt.text(row.says.values),
                    "test": fmt.text(row.test.values),
                    "estimate": fmt.signed(row.estimate),
                    "ci_low": fmt.signed(row.ci_low),
                    "ci_high": fmt.signed(row.ci_high),
                    "reference": fmt.signed(row.reference),
                    "p_value": fmt.p_value(row.p_value),
                    "robust_share": fmt.share(row.robust_share),
                    "n_specifications": fmt.integer(row.n_specifications),
                    "verdict": fmt.text(verdict.replace("_", " ")),
                    "reason": fmt.text(
                        row.reason.values if verdict == "not_tested" else row.method.values
                    ),
                },
                css_class=f"verdict-{verdict}",
            )
        )
    columns = (
        Column("claim", "claim", numeric=False),
        Column("says", "the paper says", numeric=False),
        Column("test", "the test", numeric=False),
        Column("estimate", "estimate"),
        Column("ci_low", "interval, low"),
        Column("ci_high", "interval, high"),
        Column("reference", "reference"),
        Column("p_value", "p"),
        Column(
            "robust_share",
            "robustness",
            help="share of the eligible specifications whose own verdict agrees",
        ),
        Column("n_specifications", "specs"),
        Column("verdict", "verdict", numeric=False),
        Column("reason", "method, or what would test it", numeric=False),
    )
    caption = (
        f"Pair {pair}: each claim tested as stated at its preferred specification; robustness over its "
        f"eligible specifications (duplicates merged). Margins: write isotropy ±{claims.attrs['isotropy_margin']:g} "
        f"log2, graded control {claims.attrs['graded_margin']:+g} log2 per unit λ; α = {claims.attrs['alpha']:g}."
    )
    return Table(f"claims-{pair}", caption, columns, tuple(rows), scroll=True, wrap=True)


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
        span = [x for x in (value, low, high, reference) if np.isfinite(x)]
        pad = 0.15 * (max(span) - min(span) or 1.0)
        axis.set_xlim(min(span) - pad, max(span) + pad)
        axis.tick_params(axis="y", length=0)
    alt = f"Pair {pair}: estimates of {len(shown)} claims with their intervals against their references"
    caption = (
        "Each claim's estimate (marker) and interval (bar) against its reference (dashed line); for write "
        "isotropy the shaded band is the equivalence margin the interval must lie within. Colour and "
        "marker give the verdict (circle supported, square contradicted, diamond inconclusive); "
        "each panel has its own scale (log2 levels, differences of ranks, Δmargin)."
    )
    return finish(fig, f"fig-claims-{pair}", alt, caption)


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
            "tests; a non-significant difference never counts as support."
        )
        # The report's first screen answers the question: the claims' verdicts.
        parts.append(Markup('<div class="answer"><p>{}</p></div>').format(intro))
        parts.append(
            fragment(
                "sections/figure_and_table.html.j2",
                intro="",
                figure=claims_figure(claims, pair),
                table=claims_table(claims, pair),
            )
        )
    return Section("claims", "The paper's claims", Markup("").join(parts))
