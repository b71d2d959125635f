"""The report's section for ``gradients.nc``: δ_t and a_t, at one model or along checkpoints.

One checkpoint (or a dataset without the ``checkpoint`` dimension): the
effective rank and prediction-subspace ratio per layer, with the chunk
bootstrap's intervals. Several: the layer-mean entropy effective rank and the
leading eigenvalue's share of the trace against the training step, one line
per objective and site with the EWC band over layers; pretraining and
alignment steps follow each other on one axis, split by a dashed line. Then
the paired contrast between objectives at each checkpoint and the trends
along each phase.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from markupsafe import Markup

from . import formatting as fmt
from .plotting import MARKERS, SERIES, SvgFigure, band, errorbar, figure, finish
from .registry import register_section
from .render import figure_and_table
from .tables import Column, Row, Table

__all__ = ["gradients_section"]

LINESTYLES = ("-", "--", ":", "-.")


@register_section("gradients", title="Gradient anisotropy: δ_t at the write sites")
def gradients_section(ctx, source) -> Markup:
    ds = source.dataset
    if "checkpoint" in ds.dims and ds.sizes["checkpoint"] > 1:
        return _along_checkpoints(ds)
    if "checkpoint" in ds.dims:
        ds = ds.isel(checkpoint=0)
    return _by_layer(ds)


def _by_layer(ds: xr.Dataset) -> Markup:
    """One model: per layer, as the section has always shown it."""
    cutoff = str(ds.cutoff.values[0])
    objectives = [str(o) for o in ds.objective.values]
    intro = (
        "An update is a sum of outer products δ_t a_tᵀ. Read matrices take their residual-side "
        "structure from the inputs a_t (attn_in, mlp_in), write matrices from the gradients δ_t "
        "flowing into the residual stream (o_out, down_out). Lower effective rank means more "
        "anisotropic; a prediction ratio above 1 means δ_t leans into the unembedding's top "
        f"directions. Model {ds.attrs.get('model_id', '')}, objectives {', '.join(objectives)}."
    )
    return figure_and_table(
        intro, _layer_chart(ds, cutoff, objectives), _layer_table(ds, cutoff, objectives)
    )


def _layer_chart(ds: xr.Dataset, cutoff: str, objectives: list[str]) -> SvgFigure:
    """Per layer, δ_t's entropy effective rank and prediction-subspace ratio at o and down's outputs."""
    has_ci = "mean_entropy_rank_ci_low" in ds
    fig = figure(7.2, 2.8)
    axes = fig.subplots(1, 2, sharex=True)
    for axis, measure, label in (
        (axes[0], "entropy_rank", "entropy effective rank"),
        (axes[1], "prediction_ratio", f"prediction-subspace ratio ({cutoff})"),
    ):
        for i, objective in enumerate(objectives):
            for j, site in enumerate(("o_out", "down_out")):
                cell = ds.sel(objective=objective, site=site)
                if measure == "prediction_ratio":
                    cell = cell.sel(cutoff=cutoff)
                value = cell[measure].values
                low = cell[f"{measure}_ci_low"].values if has_ci else value
                high = cell[f"{measure}_ci_high"].values if has_ci else value
                errorbar(
                    axis, ds.layer.values + 0.1 * i, value, low, high,
                    color=SERIES[i % len(SERIES)], marker=MARKERS[j], linestyle="-" if j == 0 else ":",
                    label=f"{objective}, {site}",
                )  # fmt: skip
        axis.set_xlabel("layer")
        axis.set_ylabel(label)
    axes[1].axhline(1.0, color="black", linewidth=0.6)
    axes[0].legend(fontsize=7)
    alt = "Gradient effective rank and prediction-subspace ratio by layer: " + "; ".join(
        f"{o} {s} mean entropy rank {float(ds.mean_entropy_rank.sel(objective=o, site=s)):.2f}"
        for o in objectives
        for s in ("o_out", "down_out")
    )
    return finish(
        fig,
        "fig-gradients",
        alt,
        f"Per layer, the entropy effective rank of δ_t at the outputs of o (solid) and down (dotted), and "
        f"the share of δ_t's energy in the top-{int(ds.k.sel(cutoff=cutoff))} prediction directions over "
        f"k/d (1 = isotropic), with {fmt.level_percent(ds)}% bootstrap intervals over sequence chunks.",
    )


def _layer_table(ds: xr.Dataset, cutoff: str, objectives: list[str]) -> Table:
    """Layer means per objective and site, with their intervals and the paired contrast."""
    has_ci = "mean_entropy_rank_ci_low" in ds
    columns = [Column("objective", "objective", numeric=False), Column("site", "site", numeric=False),
               Column("vector", "vector", numeric=False)]  # fmt: skip
    numbers = [
        ("participation_ratio", "PR"),
        ("entropy_rank", "entropy rank"),
        ("prediction_ratio", f"pred. ratio {cutoff}"),
    ]
    for name, label in numbers:
        columns.append(Column(name, label))
        if has_ci:
            columns += [Column(f"{name}_low", "low"), Column(f"{name}_high", "high")]
        columns.append(Column(f"{name}_contrast", f"Δ vs {objectives[0]}"))
    rows = []
    for objective in objectives:
        for site in (str(s) for s in ds.site.values):
            cells = {"objective": fmt.text(objective), "site": fmt.text(site),
                     "vector": fmt.text(str(ds.vector.sel(site=site).values))}  # fmt: skip
            for name, _ in numbers:
                sel = dict(objective=objective, site=site)
                if name == "prediction_ratio":
                    sel["cutoff"] = cutoff
                cells[name] = fmt.rank(ds[f"mean_{name}"].sel(**sel))
                if has_ci:
                    cells[f"{name}_low"] = fmt.rank(ds[f"mean_{name}_ci_low"].sel(**sel))
                    cells[f"{name}_high"] = fmt.rank(ds[f"mean_{name}_ci_high"].sel(**sel))
                cells[f"{name}_contrast"] = fmt.signed(ds[f"contrast_{name}"].sel(**sel))
            rows.append(Row(f"{objective}|{site}", cells))
    return Table(
        "gradients-table",
        f"Layer means (d = {ds.attrs.get('d_model')}) per objective and site, with {fmt.level_percent(ds)}% percentile "
        f"intervals, and the paired difference from {objectives[0]}",
        tuple(columns),
        tuple(rows),
        scroll=True,
    )


def training_positions(ds: xr.Dataset) -> tuple[np.ndarray, list[float]]:
    """Each checkpoint's place on one training axis, and where each later phase begins.

    Within a phase its own step (else its position in the list); a later
    phase's step 0 is the previous phase's last checkpoint (alignment starts
    from the end of pretraining).
    """
    steps = np.asarray(ds.step.values, dtype=np.float64)
    phases = [str(p) for p in ds.phase.values]
    x = np.where(np.isfinite(steps), steps, np.arange(len(steps), dtype=np.float64))
    out = x.copy()
    offset, boundaries = 0.0, []
    for i in range(1, len(x)):
        if phases[i] != phases[i - 1]:
            offset = out[i - 1]
            boundaries.append(float(offset))
        out[i] = x[i] + offset
    return out, boundaries


def _along_checkpoints(ds: xr.Dataset) -> Markup:
    objectives = [str(o) for o in ds.objective.values]
    kinds = {
        kind: [str(s) for s in ds.site.values if str(ds.vector.sel(site=s).values) == kind]
        for kind in ("gradient", "activation")
    }
    x, boundaries = training_positions(ds)
    level = fmt.level_percent(ds)
    fig = figure(7.2, 5.0)
    axes = fig.subplots(2, 2, sharex=True)
    measures = (
        ("entropy_rank", {}, "entropy effective rank"),
        ("leading_share", {"leading": 0}, "top eigenvalue / trace"),
    )
    titles = {"gradient": "δ_t at the write sites", "activation": "a_t at the read sites"}
    for row, (measure, extra, label) in enumerate(measures):
        for column, (kind, sites) in enumerate(kinds.items()):
            axis = axes[row, column]
            for i, objective in enumerate(objectives):
                for j, site in enumerate(sites):
                    cell = ds.sel(objective=objective, site=site).isel(**extra)
                    band(
                        axis, x, cell[f"mean_{measure}"].values, cell[f"mean_{measure}_layer_ci_low"].values,
                        cell[f"mean_{measure}_layer_ci_high"].values, color=SERIES[i % len(SERIES)],
                        linestyle=LINESTYLES[j % len(LINESTYLES)], marker=MARKERS[j % len(MARKERS)],
                        markersize=3, label=f"{objective}, {site}",
                    )  # fmt: skip
            for boundary in boundaries:
                axis.axvline(boundary, color="black", linewidth=0.6, linestyle="--")
            if row == 0:
                axis.set_title(titles[kind], fontsize=9)
                axis.set_yscale("log")
                axis.legend(fontsize=6)
            else:
                axis.set_ylim(0.0, 1.0)
                axis.set_xlabel(
                    "training step" + (" (pretraining | alignment)" if boundaries else "")
                )
            if column == 0:
                axis.set_ylabel(f"{label}\n(layer mean)")
    alt = "Entropy effective rank of δ_t along the checkpoints: " + "; ".join(
        f"{o} {s} from {float(ds.mean_entropy_rank.sel(objective=o, site=s).values[0]):.2f} to "
        f"{float(ds.mean_entropy_rank.sel(objective=o, site=s).values[-1]):.2f}"
        for o in objectives
        for s in kinds["gradient"]
    )
    chart = finish(
        fig,
        "fig-gradients",
        alt,
        f"At each checkpoint, layer means of the entropy effective rank (top, log scale) and of the top "
        f"eigenvalue's share of the trace (bottom) of δ_t at the write sites (left) and a_t at the read sites "
        f"(right), one line per objective and site, with {level}% EWC bands over layers (dependence-robust; "
        f"clipped to [0, 1] below).",
    )
    return figure_and_table(
        _intro(ds, objectives), chart, _contrast_table(ds, objectives), _trend_table(ds)
    )


def _intro(ds: xr.Dataset, objectives) -> str:
    return (
        "An update is a sum of outer products δ_t a_tᵀ. Read matrices take their residual-side "
        "structure from the inputs a_t (attn_in, mlp_in), write matrices from the gradients δ_t "
        "flowing into the residual stream (o_out, down_out). Lower effective rank means more "
        f"anisotropic. {ds.sizes['checkpoint']} checkpoints from {ds.checkpoint.values[0]} to "
        f"{ds.checkpoint.values[-1]}, objectives {', '.join(objectives)}; the DPO reference of an "
        "alignment checkpoint is the model alignment started from, of a pretraining checkpoint "
        "the checkpoint itself."
    )


def _contrast_table(ds: xr.Dataset, objectives) -> Table | None:
    if len(objectives) < 2:
        return None
    first, other = objectives[0], objectives[1]
    columns = [Column("checkpoint", "checkpoint", numeric=False), Column("step", "step"),
               Column("phase", "phase", numeric=False), Column("reference", "DPO reference", numeric=False)]  # fmt: skip
    write_sites = [
        str(s) for s in ds.site.values if str(ds.vector.sel(site=s).values) == "gradient"
    ]
    for site in write_sites:
        columns += [Column(f"{site}_{first}", f"{site} {first}"), Column(f"{site}_{other}", f"{site} {other}"),
                    Column(f"{site}_diff", f"{other} − {first}"), Column(f"{site}_low", "low"),
                    Column(f"{site}_high", "high")]  # fmt: skip
    rows = []
    for checkpoint in ds.checkpoint.values:
        cell = ds.sel(checkpoint=checkpoint)
        cells = {
            "checkpoint": fmt.text(checkpoint), "step": fmt.integer(cell.step),
            "phase": fmt.text(str(cell.phase.values)),
            "reference": fmt.text("itself" if str(cell.reference_hash.values) == str(cell.checkpoint_hash.values)
                                  else str(cell.reference_id.values)),
        }  # fmt: skip
        for site in write_sites:
            at = cell.sel(site=site)
            cells[f"{site}_{first}"] = fmt.rank(at.mean_entropy_rank.sel(objective=first))
            cells[f"{site}_{other}"] = fmt.rank(at.mean_entropy_rank.sel(objective=other))
            cells[f"{site}_diff"] = fmt.signed(at.contrast_entropy_rank.sel(objective=other))
            cells[f"{site}_low"] = fmt.signed(
                at.contrast_entropy_rank_layer_ci_low.sel(objective=other)
            )
            cells[f"{site}_high"] = fmt.signed(
                at.contrast_entropy_rank_layer_ci_high.sel(objective=other)
            )
        rows.append(Row(str(checkpoint), cells))
    return Table(
        "gradients-table",
        f"Entropy effective rank of δ_t, layer means, per checkpoint: {other} against {first}, paired over "
        f"layers, with the {fmt.level_percent(ds)}% EWC interval of the difference",
        tuple(columns),
        tuple(rows),
        scroll=True,
    )


def _trend_table(ds: xr.Dataset) -> Table | None:
    if not np.isfinite(ds.trend_slope.values).any():
        return None
    columns = (
        Column("segment", "phase", numeric=False), Column("objective", "objective", numeric=False),
        Column("site", "site", numeric=False), Column("measure", "measure", numeric=False),
        Column("slope", "slope /100 steps"), Column("low", "low"), Column("high", "high"),
        Column("p", "p (EWC)"), Column("rho", "Spearman ρ"),
    )  # fmt: skip
    rows = []
    for segment in ds.segment.values:
        for objective in ds.objective.values:
            for site in ds.site.values:
                for measure in ("entropy_rank", "leading_share"):
                    cell = ds.sel(segment=segment, objective=objective, site=site, measure=measure)
                    if not np.isfinite(float(cell.trend_slope)):
                        continue
                    rows.append(Row(f"{segment}|{objective}|{site}|{measure}", {
                        "segment": fmt.text(segment), "objective": fmt.text(objective), "site": fmt.text(site),
                        "measure": fmt.text(measure), "slope": fmt.per_step(cell.trend_slope),
                        "low": fmt.per_step(cell.trend_slope_ci_low), "high": fmt.per_step(cell.trend_slope_ci_high),
                        "p": fmt.p_value(cell.trend_p_value), "rho": fmt.effect(cell.trend_spearman),
                    }))  # fmt: skip
    return Table(
        "gradients-trends",
        "Trends along each phase's checkpoints (3 or more): per layer the least-squares slope against the step, "
        f"their mean with its {fmt.level_percent(ds)}% EWC interval and p over the layers' own slopes; "
        "Spearman's ρ of the layer means (leading_share: the top eigenvalue)",
        columns,
        tuple(rows),
        scroll=True,
    )
