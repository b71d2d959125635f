"""Section (a), the verdict: per pair, the preferred specification's asymmetry and tests, the joint
tests over the counted specifications, and with several pairs of one phase the pair model."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xarray as xr

from robustness.stats.layers import MIN_LAYERS
from robustness.stats.summaries import joint_decision

from . import formatting as fmt
from .caveats import caveats
from .context import ReportContext, spec_roles
from .plotting import OKABE_ITO, SvgFigure, figure, finish, scale_label
from .registry import Section, needs_stats, spec_label
from .render import fragment
from .tables import Column, Row, Table

__all__ = [
    "pair_model_tables",
    "pair_trajectory",
    "plain_verdict",
    "verdict_section",
    "verdict_table",
]

INTERVAL = "interval over layers, EWC (dependence-robust)"
# The preferred specification's own numbers, per pair (the rest come from the joint tests).
PER_SPEC = ("asymmetry", "reference", "ci_low", "ci_high", "p_value", "p_signflip",
            "effect_size", "lag1_autocorrelation", "effective_layers")  # fmt: skip


# ----------------------------------------------------------------------- (a) verdict

VERDICT_WORDS = {
    "too_few_layers": "with {n_layers} layers the dependence-robust test cannot be computed (it needs "
    "{min_layers}); the data cannot settle the question",
    "nothing_counted": "no counted specification: nothing to test",
    "read_greater": "the read pathway is more aligned than the write pathway across the analytic choices: "
    "both the median effect and the share of significant specifications exceed what chance gives",
    "suggestive": "suggestive only: one joint test favours read > write, the other does not; the asymmetry "
    "depends on the analytic choices",
    "write_greater": "the asymmetry runs the other way: the write pathway is the more aligned",
    "none": "no robust read/write asymmetry: across the analytic choices the evidence does not exceed what "
    "chance gives",
}


def plain_verdict(joint: dict, n_layers: int, alpha: float) -> str:
    """One pair's joint tests in plain words (the report's and ``rsf stats``' verdict line)."""
    words = VERDICT_WORDS[joint_decision(joint, n_layers, alpha)]
    return words.format(n_layers=n_layers, min_layers=MIN_LAYERS)


def sequence_method(stats: xr.Dataset) -> str:
    """The sequence-bootstrap interval `rsf stats` reports (percentile: BCa under-covers in calibration)."""
    return "percentile"


def verdict_table(ctx: ReportContext) -> Table:
    """The numbers behind the verdict: one row per quantity, one column per pair."""
    quantities = _verdict_quantities(ctx)
    values = {pair: _verdict_numbers(ctx, pair) for pair in ctx.pairs}
    columns = (
        Column("quantity", "quantity", numeric=False),
        *(Column(f"pair:{p}", f"pair {p}") for p in ctx.pairs),
    )
    table_rows = []
    for key, label, rule in quantities:
        cells = {"quantity": fmt.text(label)}
        for pair in ctx.pairs:
            cells[f"pair:{pair}"] = rule(values[pair].get(key))
        table_rows.append(Row(key, cells))
    return Table(
        "verdict-table",
        "The numbers behind the verdict, one column per pair; the joint tests are over the counted "
        "specifications (controls and duplicates shown in (b), not counted)",
        columns,
        tuple(table_rows),
    )


def _verdict_quantities(ctx: ReportContext) -> list[tuple[str, str, Callable]]:
    """The verdict table's rows in order: key, label and how the number is shown."""
    level = int(round(ctx.confidence_level * 100))
    scale = ctx.preferred_as(ctx.pairs[0])[2]
    rows: list[tuple[str, str, Callable]] = [
        (
            "asymmetry",
            f"asymmetry A, preferred specification ({spec_label(ctx.preferred)})",
            fmt.signed,
        ),
        ("reference", "… reference A₀ it is tested against", fmt.signed),
        ("ci_low", f"… {level}% {INTERVAL}, low", fmt.signed),
        ("ci_high", f"… {level}% {INTERVAL}, high", fmt.signed),
    ]
    if "seq_ci_low" in ctx.stats:
        method = sequence_method(ctx.stats)
        rows += [
            ("seq_ci_low", f"… {level}% interval, low (sequence bootstrap, {method})", fmt.signed),
            (
                "seq_ci_high",
                f"… {level}% interval, high (sequence bootstrap, {method})",
                fmt.signed,
            ),
        ]
    rows += [
        ("p_value", "… p, EWC t-test over layers (two-sided; the verdict's test)", fmt.p_value),
        ("p_signflip", "… sign-flip p, assuming exchangeable layers", fmt.p_value),
        ("effect_size", "… effect size d_z (Hedges-corrected)", fmt.effect),
        ("lag1_autocorrelation", "… lag-1 autocorrelation of D_l (diagnostic)", fmt.autocorrelation),
        ("effective_layers", "… effective layers, L(1 − r₁)/(1 + r₁) (diagnostic)", fmt.layers),
        ("median_asymmetry", f"median A over the counted {scale} specifications", fmt.signed),
        ("quartile_low", "… lower quartile of those specifications", fmt.signed),
        ("quartile_high", "… upper quartile of those specifications", fmt.signed),
        ("n_specifications", "counted specifications (in the joint tests)", fmt.integer),
        ("median_effect", "median effect size d_z, counted specifications", fmt.effect),
        ("p_median_effect", "… joint p", fmt.p_value),
        ("share_significant", "share significant with read > write (EWC p < α)", fmt.share),
        ("under_null", "… expected under the null (α/2)", fmt.expected_share),
        ("under_median_effect", "… expected if every one had the median effect", fmt.expected_share),
        ("p_share_significant", "… joint p", fmt.p_value),
        ("stouffer_z", "Stouffer's Z", fmt.effect),
        ("p_stouffer_z", "… joint p", fmt.p_value),
        ("n_null", "joint tests' null draws (rotations)", fmt.integer),
        ("n_layers", "layers", fmt.integer),
        ("projections", "cosine projections K (the EWC test's degrees of freedom)", fmt.integer),
    ]  # fmt: skip
    return rows


def _verdict_numbers(ctx: ReportContext, pair) -> dict[str, float]:
    """One pair's column: the preferred specification's tests, the spread of the counted
    specifications on its scale, the joint tests and the layers."""
    stats = ctx.stats
    c, k, n = ctx.preferred
    cell = stats.sel(pair=pair, construction=c, cutoff=k, normalisation=n)
    row = {name: float(cell[name]) for name in PER_SPEC}
    if "seq_ci_low" in stats:
        row.update(seq_ci_low=float(cell.seq_ci_low), seq_ci_high=float(cell.seq_ci_high))
    roles = spec_roles(stats, pair)
    scale = ctx.preferred_as(pair)[2]  # the preferred's normalisation, or the one it equals
    same_scale = np.array([
        float(stats.asymmetry.sel(pair=pair, construction=s[0], cutoff=s[1], normalisation=s[2]))
        for s, (role, _) in roles.items() if role == "counted" and s[2] == scale
    ])  # fmt: skip
    if same_scale.size:
        row["median_asymmetry"] = float(np.median(same_scale))
        row["quartile_low"], row["quartile_high"] = (
            float(q) for q in np.percentile(same_scale, [25, 75])
        )
    info = ctx.per_pair.get(pair, {})
    row.update({
        key: float(v) for key, v in info.get("joint", {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    })  # fmt: skip
    expected = info.get("expected_share", {})
    for key in ("under_null", "under_median_effect"):
        if key in expected:
            row[key] = float(expected[key])
    row["n_layers"] = float(info.get("n_layers", ctx.n_layers(pair)))
    if "projections" in info:
        row["projections"] = float(info["projections"])
    return row


def _relation(text: str) -> str:
    """``= 0.031`` but ``< 0.001``: a shown p-value may already carry its relation."""
    return text if text.startswith("<") else f"= {text}"


def _verdict_words(ctx: ReportContext, table: Table) -> list[dict]:
    """Per pair: the verdict `rsf stats` prints, and the numbers in sentences (text taken from the table)."""
    shown = {row.key: row.cells for row in table.rows}
    level = int(round(ctx.confidence_level * 100))
    out = []
    for pair in ctx.pairs:
        info = ctx.per_pair.get(pair, {})
        joint = info.get("joint", {})
        n_layers = int(info.get("n_layers", ctx.n_layers(pair)))
        value = {key: str(cells[f"pair:{pair}"]) for key, cells in shown.items()}
        p = {key: _relation(v) for key, v in value.items() if key.startswith("p_")}
        preferred = (
            f"Under the preferred specification ({spec_label(ctx.preferred)}) the read set "
            f"({', '.join(ctx.read)}) minus the write set ({', '.join(ctx.write)}), both measured on "
            f"that one construction, is A = {value['asymmetry']} on average over layers"
        )
        if value["p_value"] != fmt.MISSING:
            preferred += (
                f" ({level}% EWC interval over layers, dependence-robust: {value['ci_low']} to "
                f"{value['ci_high']}; p {p['p_value']}). "
                f"The sign-flip test, which assumes exchangeable layers, gives p {p['p_signflip']}."
            )
        else:
            preferred += (
                f"; with {n_layers} layers the dependence-robust test (it needs {MIN_LAYERS}) gives no "
                f"interval and no p-value. The sign-flip test, which assumes exchangeable layers, gives "
                f"p {p['p_signflip']}."
            )
        details = [preferred]
        if value["lag1_autocorrelation"] != fmt.MISSING:
            details.append(
                f"Diagnostics of its per-layer differences: lag-1 autocorrelation r₁ = "
                f"{value['lag1_autocorrelation']}, about {value['effective_layers']} effective layers "
                f"of {n_layers} (reported, not used to choose the test)."
            )
        if "median_effect" in joint:
            details.append(
                f"Over the {value['n_specifications']} counted specifications the median effect size is "
                f"d_z = {value['median_effect']} (joint p {p['p_median_effect']}); "
                f"{value['share_significant']} are significant with read > write (joint p "
                f"{p['p_share_significant']}), against {value['under_null']} expected under the null "
                f"and {value['under_median_effect']} if every specification had the median effect; "
                f"Stouffer's Z = {value['stouffer_z']} (joint p {p['p_stouffer_z']}). The joint "
                "p-values apply one random rotation of the EWC projections to every specification at "
                "once, so they account for the specifications' dependence."
            )
        out.append(
            {"pair": pair, "verdict": plain_verdict(joint, n_layers, ctx.alpha), "details": details}
        )
    return out


def pair_model_tables(ctx: ReportContext) -> tuple[list[Table], list[str]]:
    """The pair model per phase (tables), and the phases it could not be fitted for (sentences)."""
    model = ctx.pair_model
    spec = model.get("specification", list(ctx.preferred))
    level = int(round(ctx.confidence_level * 100))
    tables, notes = [], []
    columns = (
        Column("term", "term", numeric=False),
        Column("estimate", "estimate"),
        Column("ci_low", f"{level}% CI low"),
        Column("ci_high", f"{level}% CI high"),
        Column("F", "F"),
        Column("df", "df", numeric=False),
        Column("p_value", "p"),
        Column("null", "null hypothesis", numeric=False),
    )
    for phase, fitted in model.items():
        if phase == "specification" or not isinstance(fitted, dict):
            continue
        pairs = ", ".join(fitted.get("pairs", []))
        if "overall" not in fitted:
            notes.append(
                f"Pairs of phase {phase} ({pairs}): no pair model: {fitted.get('note', '')}."
            )
            continue
        overall, difference = fitted["overall"], fitted.get("difference", {})
        rows = [Row("overall", {
            "term": fmt.text("overall: mean over pairs"),
            "estimate": fmt.signed(overall.get("estimate")),
            "ci_low": fmt.signed(overall.get("ci_low")),
            "ci_high": fmt.signed(overall.get("ci_high")),
            "p_value": fmt.p_value(overall.get("p_value")),
            "null": fmt.text(overall.get("null", "")),
        })]  # fmt: skip
        for label, one in fitted.get("per_pair", {}).items():
            rows.append(Row(f"pair:{label}", {
                "term": fmt.text(f"pair {label}"),
                "estimate": fmt.signed(one.get("estimate")),
                "ci_low": fmt.signed(one.get("ci_low")),
                "ci_high": fmt.signed(one.get("ci_high")),
                "p_value": fmt.p_value(one.get("p_value")),
                "null": fmt.text("its mean D is 0"),
            }))  # fmt: skip
        df = difference.get("df", [])
        null = difference.get("null", "")
        if difference.get("note"):
            null = f"{null} ({difference['note']})"
        rows.append(Row("difference", {
            "term": fmt.text("difference between pairs"),
            "F": fmt.statistic(difference.get("F")),
            "df": fmt.text(", ".join(str(int(d)) for d in df)),
            "p_value": fmt.p_value(difference.get("p_value")),
            "null": fmt.text(null),
        }))  # fmt: skip
        caption = (
            f"Pair model, phase {phase} ({pairs}) on {spec_label(spec)}: EWC tests over "
            f"{fitted.get('n_layers', '?')} shared layers (K = {fitted.get('projections', '?')} cosine "
            "projections); the difference between pairs is the orthonormal-series F test"
        )
        tables.append(Table(f"pair-model-{phase}", caption, columns, tuple(rows)))
    return tables, notes


def verdict_section(ctx: ReportContext) -> Section:
    if ctx.stats is None:
        body = needs_stats()
        return Section("verdict", "Verdict", body)
    table = verdict_table(ctx)
    models, model_notes = pair_model_tables(ctx) if len(ctx.pairs) > 1 else ([], [])
    body = fragment(
        "sections/verdict.html.j2",
        ctx=ctx,
        words=_verdict_words(ctx, table),
        table=table,
        trajectory=pair_trajectory(ctx.stats, ctx.pairs, ctx.preferred, ctx.confidence_level),
        models=models,
        model_notes=model_notes,
        caveats=caveats(ctx),
    )
    return Section("verdict", "Verdict", body)


def pair_trajectory(
    stats: xr.Dataset, pairs, preferred: tuple[str, str, str], confidence_level: float
) -> SvgFigure | None:
    """The preferred specification's asymmetry with its EWC interval, pair by pair, in dataset order."""
    if len(pairs) < 2:
        return None
    cell = stats.sel(construction=preferred[0], cutoff=preferred[1], normalisation=preferred[2])
    values = np.array([float(cell.asymmetry.sel(pair=p)) for p in pairs])
    lows = np.array([float(cell.ci_low.sel(pair=p)) for p in pairs])
    highs = np.array([float(cell.ci_high.sel(pair=p)) for p in pairs])
    phases = [str(stats.phase.sel(pair=p).item()) for p in pairs] if "phase" in stats.coords else []
    fig = figure(min(1.0 * len(pairs) + 2.5, 11), 2.6)
    axis = fig.subplots()
    x = np.arange(len(pairs))
    # Consecutive pairs of one phase are a trajectory and are joined; pairs of different phases
    # (an alignment pair beside a pretraining pair) are not steps of one process.
    runs = [[0]]
    for i in range(1, len(pairs)):
        if phases and phases[i] != phases[i - 1]:
            runs.append([i])
        else:
            runs[-1].append(i)
    for run in runs:
        axis.plot(x[run], values[run], "o-" if len(run) > 1 else "o", color=OKABE_ITO["blue"],
                  linewidth=1)  # fmt: skip
    shown = np.isfinite(lows) & np.isfinite(highs)
    if shown.any():
        axis.vlines(x[shown], lows[shown], highs[shown], color=OKABE_ITO["blue"], linewidth=1)
    if (~shown).any():
        axis.plot(x[~shown], values[~shown], "o", color="white", markeredgecolor=OKABE_ITO["blue"],
                  label="no interval (too few layers)")  # fmt: skip
        axis.legend(loc="best", fontsize=7)
    axis.axhline(0, color="black", linewidth=0.6)
    labels = (
        [f"{p}\n({ph})" for p, ph in zip(pairs, phases, strict=True)]
        if len(set(phases)) > 1
        else [str(p) for p in pairs]
    )
    axis.set_xticks(x, labels)
    axis.set_xlabel("pair")
    axis.set_ylabel(f"asymmetry ({scale_label(preferred[2])})")
    alt = (
        "Asymmetry across pairs under the preferred specification: "
        + "; ".join(
            f"{p} {v:+.3f} " + (f"[{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else "(no interval)")
            for p, v, lo, hi in zip(pairs, values, lows, highs, strict=True)
        )
        + "."
    )
    caption = (
        f"The preferred specification ({'/'.join(preferred)}) pair by pair, in the order of the "
        f"results dataset, with {int(round(confidence_level * 100))}% EWC intervals over layers "
        "(dependence-robust); hollow points have none (fewer layers than the test needs). A line "
        "joins consecutive pairs of the same phase only."
    )
    return finish(fig, "fig-trajectory", alt, caption)
