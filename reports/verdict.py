"""Section (a), the verdict: per pair, the preferred specification's asymmetry and the joint tests."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import xarray as xr

from robustness.stats import verdict

from . import formatting as fmt
from .caveats import caveats
from .context import ReportContext
from .plotting import OKABE_ITO, SvgFigure, figure, finish, scale_label
from .registry import Section, needs_stats, spec_label
from .render import fragment
from .tables import Column, Row, Table

__all__ = ["verdict_section"]


# ----------------------------------------------------------------------- (a) verdict


def _verdict_table(ctx: ReportContext) -> Table:
    stats = ctx.stats
    c, k, n = ctx.preferred
    level = int(round(ctx.confidence_level * 100))
    rows: list[tuple[str, str, Callable]] = [
        (
            "asymmetry",
            f"asymmetry A, preferred specification ({spec_label(ctx.preferred)})",
            fmt.signed,
        ),
        ("ci_low", f"{level}% interval, low (layer bootstrap)", fmt.signed),
        ("ci_high", f"{level}% interval, high (layer bootstrap)", fmt.signed),
    ]
    if "seq_ci_low" in stats:
        rows += [
            ("seq_ci_low", f"{level}% interval, low (sequence bootstrap, BCa)", fmt.signed),
            ("seq_ci_high", f"{level}% interval, high (sequence bootstrap, BCa)", fmt.signed),
        ]
    rows += [
        ("p_signflip", "sign-flip p (two-sided)", fmt.p_value),
        ("p_perm", "label-permutation p", fmt.p_value),
        ("median_asymmetry", f"median asymmetry over the {n} specifications", fmt.signed),
        ("quartile_low", "… lower quartile of those specifications", fmt.signed),
        ("quartile_high", "… upper quartile of those specifications", fmt.signed),
        ("median_effect", "median effect size d_z, all specifications", fmt.effect),
        ("p_median_effect", "… joint p", fmt.p_value),
        ("share_significant", "share significant with read > write", fmt.share),
        ("p_share_significant", "… joint p", fmt.p_value),
        ("stouffer_z", "Stouffer's Z", fmt.effect),
        ("p_stouffer_z", "… joint p", fmt.p_value),
        ("n_specifications", "specifications tested", fmt.integer),
        ("n_layers", "layers", fmt.integer),
    ]
    values: dict[str, dict[str, float]] = {}
    for pair in ctx.pairs:
        cell = stats.sel(pair=pair, construction=c, cutoff=k, normalisation=n)
        row = {
            name: float(cell[name])
            for name in ("asymmetry", "ci_low", "ci_high", "p_signflip", "p_perm")
        }
        if "seq_ci_low" in stats:
            row.update(seq_ci_low=float(cell.seq_ci_low), seq_ci_high=float(cell.seq_ci_high))
        same_scale = stats.asymmetry.sel(pair=pair, normalisation=n).values.ravel()
        same_scale = same_scale[np.isfinite(same_scale)]
        if same_scale.size:
            row["median_asymmetry"] = float(np.median(same_scale))
            row["quartile_low"], row["quartile_high"] = (
                float(q) for q in np.percentile(same_scale, [25, 75])
            )
        info = ctx.per_pair.get(pair, {})
        row.update(
            {key: float(v) for key, v in info.get("joint", {}).items() if not isinstance(v, bool)}
        )
        row["n_layers"] = float(info.get("n_layers", ctx.n_layers(pair)))
        values[pair] = row
    columns = (
        Column("quantity", "quantity", numeric=False),
        *(Column(f"pair:{p}", f"pair {p}") for p in ctx.pairs),
    )
    table_rows = []
    for key, label, rule in rows:
        cells = {"quantity": fmt.text(label)}
        for pair in ctx.pairs:
            cells[f"pair:{pair}"] = rule(values[pair].get(key))
        table_rows.append(Row(key, cells))
    return Table(
        "verdict-table",
        "The numbers behind the verdict, one column per pair",
        columns,
        tuple(table_rows),
    )


def _verdict_words(ctx: ReportContext, table: Table) -> list[dict]:
    """Per pair: the verdict `rsf stats` prints, and the numbers in a sentence (text taken from the table)."""
    shown = {row.key: row.cells for row in table.rows}
    level = int(round(ctx.confidence_level * 100))
    out = []
    for pair in ctx.pairs:
        info = ctx.per_pair.get(pair, {})
        joint = info.get("joint")
        if not joint:
            out.append(
                {
                    "pair": pair,
                    "verdict": "no complete specification: nothing to test",
                    "details": [],
                }
            )
            continue
        value = {key: str(cells[f"pair:{pair}"]) for key, cells in shown.items()}
        # "p = 0.031" but "p < 0.001": a shown p-value may already carry its relation.
        value |= {
            key: (v if v.startswith("<") else f"= {v}")
            for key, v in value.items()
            if key.startswith("p_")
        }
        details = [
            f"Under the preferred specification ({spec_label(ctx.preferred)}) the read set "
            f"({', '.join(ctx.read)}) minus the write set ({', '.join(ctx.write)}) is A = {value['asymmetry']} "
            f"on average over layers ({level}% interval {value['ci_low']} to {value['ci_high']}; "
            f"sign-flip p {value['p_signflip']}, label-permutation p {value['p_perm']}).",
            f"Over the {value['n_specifications']} defined specifications the median effect size is "
            f"d_z = {value['median_effect']} (joint p {value['p_median_effect']}); "
            f"{value['share_significant']} are significant with read > write (joint p "
            f"{value['p_share_significant']}); Stouffer's Z = {value['stouffer_z']} (joint p "
            f"{value['p_stouffer_z']}). The joint p-values apply one set of sign flips to every "
            "specification at once, so they account for the specifications' dependence.",
        ]
        out.append(
            {
                "pair": pair,
                "verdict": verdict(joint, int(info["n_layers"]), ctx.alpha),
                "details": details,
            }
        )
    return out


def _mixed_model_table(ctx: ReportContext) -> Table | None:
    mixed = json.loads(ctx.stats.attrs.get("mixed_model", "{}") or "{}")
    if not mixed.get("coefficients"):
        return None
    rows = tuple(
        Row(name, {"term": fmt.text(name), "coef": fmt.signed(v["coef"]), "p": fmt.p_value(v["p"])})
        for name, v in mixed["coefficients"].items()
    )
    columns = (
        Column("term", "term", numeric=False),
        Column("coef", "coefficient"),
        Column("p", "p"),
    )
    caption = f"Mixed model {mixed['formula']} on {spec_label(mixed['specification'])} (statsmodels MixedLM)"
    return Table("mixed-model", caption, columns, rows)


def verdict_section(ctx: ReportContext) -> Section:
    if ctx.stats is None:
        body = needs_stats()
        return Section("verdict", "Verdict", body)
    table = _verdict_table(ctx)
    body = fragment(
        "sections/verdict.html.j2",
        ctx=ctx,
        words=_verdict_words(ctx, table),
        table=table,
        trajectory=pair_trajectory(ctx.stats, ctx.pairs, ctx.preferred, ctx.confidence_level),
        mixed=_mixed_model_table(ctx),
        caveats=caveats(ctx),
    )
    return Section("verdict", "Verdict", body)


def pair_trajectory(
    stats: xr.Dataset, pairs, preferred: tuple[str, str, str], confidence_level: float
) -> SvgFigure | None:
    """The preferred specification's asymmetry with its interval, pair by pair, in dataset order."""
    if len(pairs) < 2:
        return None
    cell = stats.sel(construction=preferred[0], cutoff=preferred[1], normalisation=preferred[2])
    values = [float(cell.asymmetry.sel(pair=p)) for p in pairs]
    lows = [float(cell.ci_low.sel(pair=p)) for p in pairs]
    highs = [float(cell.ci_high.sel(pair=p)) for p in pairs]
    fig = figure(min(1.0 * len(pairs) + 2.5, 11), 2.6)
    axis = fig.subplots()
    x = np.arange(len(pairs))
    axis.errorbar(x, values, yerr=[np.subtract(values, lows), np.subtract(highs, values)], fmt="o-",
                  color=OKABE_ITO["blue"], capsize=3, linewidth=1)  # fmt: skip
    axis.axhline(0, color="black", linewidth=0.6)
    axis.set_xticks(x, [str(p) for p in pairs])
    axis.set_xlabel("pair")
    axis.set_ylabel(f"asymmetry ({scale_label(preferred[2])})")
    alt = (
        "Asymmetry across pairs under the preferred specification: "
        + "; ".join(
            f"{p} {v:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            for p, v, lo, hi in zip(pairs, values, lows, highs, strict=True)
        )
        + "."
    )
    caption = (
        f"The preferred specification ({'/'.join(preferred)}) pair by pair, in the order of the "
        f"results dataset, with {int(confidence_level * 100)}% layer-bootstrap intervals."
    )
    return finish(fig, "fig-trajectory", alt, caption)


# ----------------------------------------------------------------------- calibration
