"""Report sections for the mechanism experiments' datasets: trajectory, contrastive, rank1.

The gradients dataset has its own module, :mod:`reports.gradients`.

Each is registered with :func:`reports.sections.register_section` under the
dataset's ``kind`` attribute, and appears when its file is given to
``rsf report --extra``. Like the rest of the package, these read datasets
only; rounding goes through :mod:`reports.formatting`.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from markupsafe import Markup

from . import formatting as fmt
from .plotting import MARKERS, OKABE_ITO, SvgFigure, errorbar, figure, finish, scale_label
from .registry import register_section
from .render import figure_and_table
from .tables import Column, Row, Table

__all__ = ["contrastive_section", "rank1_section", "trajectory_section"]


# ----------------------------------------------------------------------- trajectory


def _trajectory_spec(ds: xr.Dataset) -> dict:
    construction = (
        "act_cov" if "act_cov" in ds.construction.values else str(ds.construction.values[0])
    )
    return {"construction": construction, "cutoff": str(ds.cutoff.values[0]),
            "normalisation": str(ds.normalisation.values[0])}  # fmt: skip


@register_section("trajectory", title="Trajectory: RSF along checkpoints")
def trajectory_section(ctx, source) -> Markup:
    ds = source.dataset
    spec = _trajectory_spec(ds)
    x = ds.position.values
    fig = figure(7.2, 2.8)
    axes = fig.subplots(1, 2, sharey=True)
    for axis, reference in zip(axes, ds.reference.values, strict=True):
        cell = ds.sel(reference=reference, **spec)
        errorbar(axis, x, cell.asymmetry.values, cell.asymmetry_ci_low.values, cell.asymmetry_ci_high.values,
                  color=OKABE_ITO["black"], marker="o", label="read − write")  # fmt: skip
        axis.plot(
            x, cell.read_rsf.values, color=OKABE_ITO["blue"], marker="s", linewidth=1, label="read"
        )
        axis.plot(
            x,
            cell.write_rsf.values,
            color=OKABE_ITO["vermillion"],
            marker="^",
            linewidth=1,
            label="write",
        )
        axis.axhline(0, color="black", linewidth=0.6)
        axis.set_xticks(
            x, [str(c) for c in ds.checkpoint.values], rotation=30, ha="right", fontsize=7
        )
        axis.set_title(f"relative to the {reference} checkpoint")
    axes[0].set_ylabel(scale_label(spec["normalisation"]))
    axes[0].legend()
    alt = "Asymmetry along the checkpoints: " + "; ".join(
        f"{c} {float(ds.asymmetry.sel(reference='start', checkpoint=c, **spec)):+.3f}"
        for c in ds.checkpoint.values
    )
    chart = finish(
        fig,
        "fig-trajectory-checkpoints",
        alt,
        f"{'/'.join(spec.values())}: layer means of the read set ({ds.attrs.get('read_set')}) and write set "
        f"({ds.attrs.get('write_set')}) and their difference with {fmt.level_percent(ds)}% EWC intervals over layers (dependence-robust), "
        f"from {ds.attrs.get('start_label')}.",
    )
    seq = "asymmetry_seq_ci_low" in ds
    columns = [Column("reference", "relative to", numeric=False), Column("checkpoint", "checkpoint", numeric=False),
               Column("read", "read"), Column("write", "write"), Column("asymmetry", "asymmetry"),
               Column("low", "CI low"), Column("high", "CI high")]  # fmt: skip
    if seq:
        columns += [Column("seq_low", "seq. CI low"), Column("seq_high", "seq. CI high")]
    rows = []
    for reference in ds.reference.values:
        for checkpoint in ds.checkpoint.values:
            cell = ds.sel(reference=reference, checkpoint=checkpoint, **spec)
            cells = {
                "reference": fmt.text(reference), "checkpoint": fmt.text(checkpoint),
                "read": fmt.signed(cell.read_rsf), "write": fmt.signed(cell.write_rsf),
                "asymmetry": fmt.signed(cell.asymmetry), "low": fmt.signed(cell.asymmetry_ci_low),
                "high": fmt.signed(cell.asymmetry_ci_high),
            }  # fmt: skip
            if seq:
                cells["seq_low"] = fmt.signed(cell.asymmetry_seq_ci_low)
                cells["seq_high"] = fmt.signed(cell.asymmetry_seq_ci_high)
            rows.append(Row(f"{reference}|{checkpoint}", cells))
    table = Table("trajectory-table", f"Read, write and asymmetry per checkpoint ({'/'.join(spec.values())})",
                  tuple(columns), tuple(rows))  # fmt: skip
    intro = (
        "If alignment writes its delta along the read pathway's principal directions from the start, "
        "the asymmetry appears at the first checkpoint and grows with the cumulative delta (relative "
        "to the start); the step-to-step deltas (relative to the previous checkpoint) show whether "
        "each stretch of training has the same shape."
    )
    return figure_and_table(intro, chart, table)


# ----------------------------------------------------------------------- contrastive


@register_section("contrastive", title="Graded contrastive objective: (1 − λ)·CE + λ·DPO")
def contrastive_section(ctx, source) -> Markup:
    ds = source.dataset
    spec = {"cutoff": str(ds.cutoff.values[0]), "normalisation": str(ds.normalisation.values[0])}
    intro = (
        "Variants of one base trained with the same data, steps and seed, differing only in the "
        "objective's mix of cross-entropy on the chosen continuation (λ = 0) and DPO (λ = 1). If the "
        "asymmetry comes from the contrastive objective's gradients, it and the gradients' anisotropy "
        "should move together with λ."
    )
    return figure_and_table(
        intro,
        _contrastive_chart(ds, spec),
        _contrastive_trends(ds, spec),
        _contrastive_variants(ds, spec),
    )


def _contrastive_chart(ds: xr.Dataset, spec: dict) -> SvgFigure:
    """Against λ: read, write and their difference (left); the effective rank of δ_t (right)."""
    lams = ds.lam.values
    fig = figure(7.2, 2.8)
    axes = fig.subplots(1, 2)
    axes[0].plot(
        lams,
        ds.paper_read_rsf.sel(**spec).values,
        color=OKABE_ITO["blue"],
        marker="s",
        label=f"read ({ds.attrs.get('read_construction')})",
    )
    axes[0].plot(
        lams,
        ds.paper_write_rsf.sel(**spec).values,
        color=OKABE_ITO["vermillion"],
        marker="^",
        label=f"write ({ds.attrs.get('write_construction')})",
    )
    errorbar(axes[0], lams, ds.paper_asymmetry.sel(**spec).values, ds.paper_asymmetry_ci_low.sel(**spec).values,
              ds.paper_asymmetry_ci_high.sel(**spec).values, color=OKABE_ITO["black"], marker="o", label="read − write")  # fmt: skip
    axes[0].axhline(0, color="black", linewidth=0.6)
    axes[0].set_xlabel("λ")
    axes[0].set_ylabel(scale_label(spec["normalisation"]))
    axes[0].legend()
    has_ci = "delta_mean_entropy_rank_ci_low" in ds
    value = ds.delta_mean_entropy_rank.values
    errorbar(axes[1], lams, value, ds.delta_mean_entropy_rank_ci_low.values if has_ci else value,
              ds.delta_mean_entropy_rank_ci_high.values if has_ci else value, color=OKABE_ITO["green"], marker="D")  # fmt: skip
    axes[1].set_xlabel("λ")
    axes[1].set_ylabel("δ_t entropy rank (write sites)")
    alt = "Against λ: " + "; ".join(
        f"λ={float(l):g} asymmetry {float(a):+.3f}, δ rank {float(r):.2f}"
        for l, a, r in zip(lams, ds.paper_asymmetry.sel(**spec).values, value, strict=True)
    )
    return finish(fig, "fig-contrastive", alt,
                  f"Left: read RSF, write RSF and their difference per variant ({spec['cutoff']}, {spec['normalisation']}), "
                  f"with {fmt.level_percent(ds)}% EWC intervals over layers (dependence-robust). Right: the effective rank of L_λ's gradients δ_t on "
                  "the base at the write sites, with bootstrap intervals.")  # fmt: skip


def _contrastive_trends(ds: xr.Dataset, spec: dict) -> Table:
    """The trend of each quantity against λ, for those the dataset has."""
    wanted = [
        f"{q}[{spec['cutoff']},{spec['normalisation']}]"
        for q in ("read_rsf", "write_rsf", "asymmetry")
    ]
    wanted += ["delta_entropy_rank", "delta_participation_ratio", "delta_prediction_ratio"]
    rows = []
    for name in wanted:
        if name not in ds.trend.values:
            continue
        row = ds.sel(trend=name)
        rows.append(Row(name, {
            "quantity": fmt.text(name), "slope": fmt.signed(row.trend_slope), "low": fmt.signed(row.trend_slope_ci_low),
            "high": fmt.signed(row.trend_slope_ci_high), "p": fmt.p_value(row.trend_p_value),
            "p_perm": fmt.p_value(row.trend_p_permutation) if "trend_p_permutation" in ds else fmt.text(""),
            "rho": fmt.effect(row.trend_spearman), "page": fmt.p_value(row.trend_page_p),
        }))  # fmt: skip
    return Table(
        "contrastive-trends",
        "Trend against λ: fixed-effects slope per unit λ (the mean of the layers' own slopes) with its "
        "EWC interval and p over layers (dependence-robust), the within-layer permutation p (assumes "
        "independent layers), Spearman's ρ of the layer means and Page's L test",
        (
            Column("quantity", "quantity", numeric=False),
            Column("slope", "slope"),
            Column("low", "CI low"),
            Column("high", "CI high"),
            Column("p", "p (EWC)"),
            Column("p_perm", "p perm."),
            Column("rho", "Spearman ρ"),
            Column("page", "p Page"),
        ),  # fmt: skip
        tuple(rows),
    )


def _contrastive_variants(ds: xr.Dataset, spec: dict) -> Table:
    """One row per variant: λ, read, write, the asymmetry with its interval, δ_t's entropy rank."""
    return Table(
        "contrastive-table",
        "Per variant",
        (
            Column("lam", "λ"),
            Column("read", "read"),
            Column("write", "write"),
            Column("asymmetry", "asymmetry"),
            Column("low", "CI low"),
            Column("high", "CI high"),
            Column("rank", "δ entropy rank"),
        ),  # fmt: skip
        tuple(
            Row(
                str(label),
                {
                    "lam": fmt.rank(ds.lam.sel(lam_label=label)),
                    "read": fmt.signed(ds.paper_read_rsf.sel(lam_label=label, **spec)),
                    "write": fmt.signed(ds.paper_write_rsf.sel(lam_label=label, **spec)),
                    "asymmetry": fmt.signed(ds.paper_asymmetry.sel(lam_label=label, **spec)),
                    "low": fmt.signed(ds.paper_asymmetry_ci_low.sel(lam_label=label, **spec)),
                    "high": fmt.signed(ds.paper_asymmetry_ci_high.sel(lam_label=label, **spec)),
                    "rank": fmt.rank(ds.delta_mean_entropy_rank.sel(lam_label=label)),
                },
            )  # fmt: skip
            for label in ds.lam_label.values
        ),
    )


# ----------------------------------------------------------------------- rank1


@register_section("rank1", title="Rank-1 interventions against matched controls")
def rank1_section(ctx, source) -> Markup:
    ds = source.dataset
    matrices = [str(m) for m in ds.matrix.values]
    fig = figure(7.2, 2.6)
    axes = fig.subplots(1, 2)
    for axis, measure, label in (
        (axes[0], "abs_margin_change", "|Δ DPO margin|"),
        (axes[1], "kl", "KL(base ‖ intervened)"),
    ):
        for m, matrix in enumerate(matrices):
            cell = ds.sel(matrix=matrix)
            for f, (family, colour) in enumerate(
                (("random", OKABE_ITO["sky_blue"]), ("matched", OKABE_ITO["orange"]))
            ):
                values = cell[measure].where(cell.family == family, drop=True).values
                jitter = (
                    np.linspace(-0.12, 0.12, len(values))
                    if len(values) > 1
                    else np.zeros(len(values))
                )
                axis.scatter(m + (f - 0.5) * 0.3 + jitter, values, s=10, color=colour, marker=MARKERS[f + 1],
                             label=family if m == 0 else None)  # fmt: skip
            axis.scatter([m], [float(cell[measure].sel(intervention="principal"))], s=60, color="black",
                         marker="*", label="principal" if m == 0 else None, zorder=3)  # fmt: skip
        axis.set_xticks(
            range(len(matrices)),
            [f"{m} ({r})" for m, r in zip(matrices, ds.role.values, strict=True)],
        )
        axis.set_ylabel(label)
        axis.set_yscale("log")
    axes[0].legend()
    alt = "Rank-1 effects: " + "; ".join(
        f"{m} principal |Δmargin| {float(ds.abs_margin_change.sel(matrix=m, intervention='principal')):.4g}, "
        f"p {float(ds.p_margin.sel(matrix=m, control='all')):.3g}"
        for m in matrices
    )
    chart = finish(fig, "fig-rank1", alt,
                     f"Each point one intervention ΔW = α u vᵀ at layer {ds.attrs.get('layer')} with ‖ΔW‖_F = α; the "
                     "star is the principal direction, the others its controls.")  # fmt: skip
    rows = []
    for matrix in matrices:
        cell = ds.sel(matrix=matrix)
        principal = cell.sel(intervention="principal")
        controls = cell.where(cell.family != "principal", drop=True)
        rows.append(Row(matrix, {
            "matrix": fmt.text(f"{matrix} ({cell.role.values})"),
            "margin": fmt.small(principal.margin_change), "low": fmt.small(principal.margin_change_ci_low),
            "high": fmt.small(principal.margin_change_ci_high), "kl": fmt.small(principal.kl),
            "control_margin": fmt.small(np.median(controls.abs_margin_change)), "control_kl": fmt.small(np.median(controls.kl)),
            **{f"p_margin_{c}": fmt.p_value(cell.p_margin.sel(control=c)) for c in cell.control.values},
            **{f"p_kl_{c}": fmt.p_value(cell.p_kl.sel(control=c)) for c in cell.control.values},
        }))  # fmt: skip
    controls_kinds = [str(c) for c in ds.control.values]
    table = Table(
        "rank1-table",
        f"Principal direction against its controls: Δ margin with {fmt.level_percent(ds)}% interval over held-out pairs, KL, "
        "the controls' medians, and p = (1 + b)/(1 + B) with b controls at least as large",
        (
            Column("matrix", "matrix", numeric=False),
            Column("margin", "Δ margin"),
            Column("low", "CI low"),
            Column("high", "CI high"),
            Column("kl", "KL"),
            Column("control_margin", "controls |Δ margin|"),
            Column("control_kl", "controls KL"),
            *(Column(f"p_margin_{c}", f"p |Δm| {c}") for c in controls_kinds),
            *(Column(f"p_kl_{c}", f"p KL {c}") for c in controls_kinds),
        ),  # fmt: skip
        tuple(rows),
        scroll=True,
    )
    intro = (
        "A rank-1 update of fixed norm along the read matrix's top principal activation direction, and "
        "along the write matrix's top prediction direction, against random directions and against the "
        "next principal (or prediction) directions. If behaviour is most sensitive along the principal "
        "directions, the star sits above its controls."
    )
    return figure_and_table(intro, chart, table)
