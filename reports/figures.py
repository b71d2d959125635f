"""The report's figures: specification curve, RSF against the cutoff, heatmaps, nulls, shares, calibration.

Each returns a :class:`~reports.plotting.SvgFigure` (inline SVG, alt text,
caption); drawing conventions are in :mod:`reports.plotting`.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from robustness.settings.specification import probe_scale

from .context import spec_roles
from .formatting import plural
from .plotting import (
    GREY,
    MARKERS,
    MATRIX_MARKERS,
    OKABE_ITO,
    PATHWAY_COLOURS,
    SERIES,
    SvgFigure,
    figure,
    finish,
    grid_shape,
    layer_count,
    ordinal,
    quiet_nan,
    reference_level,
    scale_label,
)

__all__ = [
    "layer_heatmaps",
    "null_distributions",
    "rsf_by_cutoff",
    "spec_curve",
    "variance_shares",
]


# ----------------------------------------------------------------------- specification curve


def _spec_frame(stats: xr.Dataset, pair):
    """The pair's specifications on the curve: counted ones and controls, sorted by effect size.

    Duplicates (equal on the statistics' scale to a specification already drawn)
    and undefined specifications are left out.
    """
    variables = ["asymmetry", "effect_size", "effect_ci_low", "effect_ci_high", "p_value"]
    frame = stats[variables].sel(pair=pair).to_dataframe().reset_index()
    roles = spec_roles(stats, pair)
    frame["role"] = [
        roles[(r.construction, r.cutoff, r.normalisation)][0] for r in frame.itertuples()
    ]
    frame = frame[np.isfinite(frame["effect_size"]) & frame["role"].isin(["counted", "control"])]
    return frame.sort_values("effect_size", kind="stable").reset_index(drop=True)


def spec_curve(
    stats: xr.Dataset, pairs, preferred: tuple[str, str, str], alpha: float
) -> SvgFigure | None:
    """Specifications sorted by effect size with intervals, over an indicator panel of the choices.

    Counted specifications are filled markers; controls (shown, not counted) hollow
    diamonds; colour says the EWC test's verdict on each.
    """
    frames = {pair: _spec_frame(stats, pair) for pair in pairs}
    frames = {pair: f for pair, f in frames.items() if len(f)}
    if not frames:
        return None
    groups = [
        (dim, [str(v) for v in stats[dim].values])
        for dim in ("construction", "cutoff", "normalisation")
    ]
    rows: list[tuple[str, str | None]] = []
    for dim, values in groups:  # the choices of the specifications drawn (duplicates are not)
        used = [v for v in values if any((f[dim] == v).any() for f in frames.values())]
        rows.append((dim, None))
        rows.extend((dim, v) for v in used)
    cols, nrows = grid_shape(len(frames), 2)
    curve_h, row_h = 2.3, 0.14 * len(rows) + 0.3
    fig = figure(5.4 * cols + 0.6, nrows * (curve_h + row_h) + 0.5)
    grid = fig.add_gridspec(2 * nrows, cols, height_ratios=[curve_h, row_h] * nrows)
    # The scale is the counted specifications': a hollow control (weight_svd far below the
    # rest, say) is drawn at the edge as an arrow rather than squashing them.
    scaled = [f[f["role"] == "counted"] if (f["role"] == "counted").any() else f
              for f in frames.values()]  # fmt: skip
    lows = [f["effect_ci_low"].min() for f in scaled]
    highs = [f["effect_ci_high"].max() for f in scaled]
    values = [f["effect_size"].min() for f in scaled] + [f["effect_size"].max() for f in scaled]
    finite = [v for v in (*lows, *highs, *values) if np.isfinite(v)]
    span = (min(finite), max(finite)) if finite else (-1.0, 1.0)
    pad = 0.05 * (span[1] - span[0] or 1.0)
    categories = [
        ("read > write, EWC p < α", OKABE_ITO["blue"], "o"),
        ("write > read, EWC p < α", OKABE_ITO["vermillion"], "s"),
        ("not significant", GREY, "o"),
        ("no test (too few layers)", OKABE_ITO["black"], "x"),
    ]
    alt_parts = []
    legend_done: set[str] = set()
    any_control = False
    clipped = 0
    for index, (pair, frame) in enumerate(frames.items()):
        r, c = divmod(index, cols)
        top = fig.add_subplot(grid[2 * r, c])
        bottom = fig.add_subplot(grid[2 * r + 1, c], sharex=top)
        x = np.arange(len(frame))
        tested = np.isfinite(frame["p_value"]).to_numpy()
        significant = (frame["p_value"] < alpha).to_numpy()
        positive = (frame["asymmetry"] > 0).to_numpy()
        kinds = [significant & positive, significant & ~positive, tested & ~significant, ~tested]
        control = (frame["role"] == "control").to_numpy()
        for (label, colour, marker), mask in zip(categories, kinds, strict=True):
            for hollow in (False, True):
                chosen = mask & (control == hollow)
                if not chosen.any():
                    continue
                effect, low, high = (frame[v].to_numpy()[chosen]
                                     for v in ("effect_size", "effect_ci_low", "effect_ci_high"))  # fmt: skip
                shown = np.isfinite(low) & np.isfinite(high)
                if shown.any():
                    top.vlines(x[chosen][shown], low[shown], high[shown], color=colour,
                               linewidth=0.6, alpha=0.9)  # fmt: skip
                above, below = effect > span[1] + pad, effect < span[0] - pad
                inside = ~(above | below)
                top.plot(
                    x[chosen][inside],
                    effect[inside],
                    "D" if hollow else marker,
                    color=colour,
                    markerfacecolor="white" if hollow else colour,
                    markeredgewidth=0.9,
                    markersize=3.4 if hollow or colour != GREY else 2.6,
                    linestyle="none",
                    label=label if not hollow and label not in legend_done else None,
                )
                for outside, edge, arrow in ((above, span[1] + 0.6 * pad, "^"),
                                             (below, span[0] - 0.6 * pad, "v")):  # fmt: skip
                    if outside.any():
                        clipped += int(outside.sum())
                        top.plot(x[chosen][outside], np.full(outside.sum(), edge), arrow,
                                 color=colour, markerfacecolor="white", markersize=4,
                                 linestyle="none")  # fmt: skip
                if not hollow:
                    legend_done.add(label)
                else:
                    any_control = True
        top.axhline(0, color="black", linewidth=0.6)
        top.set_ylim(span[0] - pad, span[1] + pad)
        top.set_ylabel("effect size d_z")
        n_counted, n_control = int((~control).sum()), int(control.sum())
        top.set_title(
            f"pair {pair}: {plural(n_counted, 'counted specification')}, "
            f"{plural(n_control, 'control')}"
        )
        top.tick_params(labelbottom=False)
        target = _curve_preferred(stats, pair, preferred)
        is_preferred = (
            (frame["construction"] == target[0])
            & (frame["cutoff"] == target[1])
            & (frame["normalisation"] == target[2])
        ).to_numpy()
        rank = None
        if is_preferred.any():
            rank = int(np.flatnonzero(is_preferred)[0])
            for axis in (top, bottom):
                axis.axvspan(
                    rank - 0.5, rank + 0.5, color=OKABE_ITO["orange"], alpha=0.35, linewidth=0
                )
            label = "preferred specification"
            top.plot([rank], [span[1] + pad * 0.4], marker="v", color="black", markersize=6,
                     linestyle="none", label=label if label not in legend_done else None)  # fmt: skip
            legend_done.add(label)
        for y, (dim, label) in enumerate(rows):
            if label is None:
                continue
            used = (frame[dim] == label).to_numpy()
            bottom.plot(
                x[used],
                np.full(used.sum(), y),
                "|",
                color="black",
                markersize=4,
                markeredgewidth=0.8,
            )
        bottom.set_yticks(
            range(len(rows)), [label if label else dim.upper() for dim, label in rows]
        )
        for tick, (_, label) in zip(bottom.get_yticklabels(), rows, strict=True):
            if label is None:
                tick.set_fontweight("bold")
        bottom.set_ylim(len(rows) - 0.5, -0.5)
        bottom.set_xlim(-1, len(frame))
        bottom.set_xlabel("specifications, sorted by effect size")
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        bottom.tick_params(axis="y", labelsize=7, length=0)
        n_read = int((kinds[0] & ~control).sum())
        n_write = int((kinds[1] & ~control).sum())
        if rank is None:
            where = "the preferred specification is not among them"
        else:
            same = (
                ""
                if target == tuple(preferred)
                else f" (drawn as {'/'.join(target)}, which it equals)"
            )
            where = f"the preferred specification {'/'.join(preferred)}{same} ranks {ordinal(rank + 1)} of {len(frame)}"
        untested = " no test: too few layers;" if not tested.any() else ""
        alt_parts.append(
            f"Pair {pair}: {plural(n_counted, 'counted specification')} and "
            f"{plural(n_control, 'control')} with effect "
            f"sizes from {frame['effect_size'].min():+.2f} to {frame['effect_size'].max():+.2f};{untested} "
            f"{n_read} counted significant with read > write, {n_write} with write > read; {where}."
        )
    handles, labels = _legend_handles(fig)
    if any_control:
        handles.append(Line2D([], [], marker="D", color=GREY, markerfacecolor="white",
                              linestyle="none", markersize=3.4))  # fmt: skip
        labels.append("control, not counted (hollow; coloured as above)")
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7)
    alt = "Specification curve. " + " ".join(alt_parts)
    caption = (
        "Specification curve (Simonsohn, Simmons & Nelson 2020). Top: every counted specification's "
        "effect size (Hedges-corrected d_z of the per-layer read − write differences against the "
        "reference) with its interval from the EWC statistic, sorted; blue circles are significant "
        "with read > write, vermillion squares with write > read (two-sided EWC p < "
        f"{alpha:g}), grey dots are not significant. Hollow diamonds are the controls (random, "
        "weight_svd): shown, not counted in the joint tests. Duplicates (equal on the statistics' "
        "scale to a specification drawn) are left out. Bottom: the analytic choices of each "
        "specification (one tick per choice used). The shaded column and the triangle mark the "
        "paper's preferred specification. The vertical scale is the counted specifications'"
        + (
            f"; {plural(clipped, 'point')} beyond it (controls, usually) are drawn at the edge as "
            "hollow arrows pointing the way they lie."
            if clipped
            else "."
        )
    )
    return finish(fig, "fig-spec-curve", alt, caption)


def _curve_preferred(stats: xr.Dataset, pair, preferred) -> tuple[str, str, str]:
    """Where the curve draws the preferred specification: itself, or the one it duplicates."""
    role, text = spec_roles(stats, pair).get(tuple(preferred), ("", ""))
    return tuple(text[2:].split("/")) if role == "duplicate" else tuple(preferred)


def _legend_handles(fig):
    handles, labels = [], []
    for axis in fig.axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    return handles, labels


# ----------------------------------------------------------------------- rsf against the cutoff


def _set_mean(values: np.ndarray, columns: list[int]) -> np.ndarray:
    """Mean over the matrices in `columns`, then over layers: ``[..., layer, matrix, cutoff]`` → ``[..., cutoff]``."""
    with quiet_nan():
        return np.nanmean(np.nanmean(values[..., columns, :], axis=-2), axis=-2)


def _k_range(ks: np.ndarray) -> str:
    """``8`` or ``1–250``: the ranks a cutoff chose over layers and matrices (NaN: undefined)."""
    with quiet_nan():
        low, high = np.nanmin(ks), np.nanmax(ks)
    if not np.isfinite(low):
        return "—"
    return f"{low:.0f}" if low == high else f"{low:.0f}–{high:.0f}"


def rsf_by_cutoff(
    results: xr.Dataset,
    pairs,
    constructions: list[str],
    normalisation: str,
    read: list[str],
    write: list[str],
    confidence_level: float = 0.95,
) -> SvgFigure | None:
    """The probe against the rank cutoff, per matrix and per pathway set, with sequence-bootstrap bands."""
    matrices = [str(m) for m in results.matrix.values]
    pathways = dict(zip(matrices, (str(p) for p in results.pathway.values), strict=True))
    read_idx = [matrices.index(m) for m in read if m in matrices]
    write_idx = [matrices.index(m) for m in write if m in matrices]
    panels = [(c, p) for c in constructions for p in pairs]
    if not panels or not read_idx or not write_idx:
        return None
    cols = len(pairs)
    fig = figure(min(4.2 * cols, 11) + 0.4, 2.8 * len(constructions) + 0.4)
    axes = fig.subplots(len(constructions), cols, squeeze=False, sharey="row")
    tail = 100 * (1 - confidence_level) / 2
    boot = "rsf_boot" in results
    banded, alt_parts = [], []
    for (construction, pair), axis in zip(panels, axes.ravel(), strict=True):
        n_layers = layer_count(results, pair)
        cell = results.rsf.sel(pair=pair, construction=construction, normalisation=normalisation)
        values = probe_scale(
            cell.isel(layer=slice(0, n_layers)).transpose("layer", "matrix", "cutoff").values,
            normalisation,
        )
        ks = results.k.sel(pair=pair, construction=construction).isel(layer=slice(0, n_layers))
        ks = ks.transpose("layer", "matrix", "cutoff").values.astype(float)
        ks[ks < 0] = np.nan
        with quiet_nan():
            median_k = np.nanmedian(ks.reshape(-1, ks.shape[-1]), axis=0)
        defined = np.flatnonzero(np.isfinite(median_k) & np.isfinite(values).any(axis=(0, 1)))
        order = defined[np.argsort(median_k[defined], kind="stable")]
        if not order.size:
            axis.set_title(f"{construction}, pair {pair}: no defined cutoff")
            axis.set_axis_off()
            continue
        x = np.arange(order.size)
        labels = [
            f"{results.cutoff.values[i]}\nread k {_k_range(ks[:, read_idx, i])}"
            f"\nwrite k {_k_range(ks[:, write_idx, i])}"
            for i in order
        ]
        for m, matrix in enumerate(matrices):
            if m not in read_idx + write_idx:
                continue
            with quiet_nan():
                line = np.nanmean(values[:, m, order], axis=0)
            axis.plot(x, line, marker=MATRIX_MARKERS.get(matrix, "o"), markersize=3, linewidth=0.7,
                      color=PATHWAY_COLOURS[pathways[matrix]], alpha=0.45,
                      linestyle="-" if pathways[matrix] == "read" else "--")  # fmt: skip
        summary = {}
        for name, columns in (("read", read_idx), ("write", write_idx)):
            colour = PATHWAY_COLOURS[name]
            mean = _set_mean(values, columns)[order]
            summary[name] = mean
            axis.plot(x, mean, color=colour, linewidth=2.2, marker=MARKERS[0] if name == "read" else "s",
                      markersize=4, label=f"{name} set mean ({', '.join(read if name == 'read' else write)})")  # fmt: skip
            if boot:
                replicates = results.rsf_boot.sel(
                    pair=pair, construction=construction, normalisation=normalisation
                )
                replicates = replicates.isel(layer=slice(0, n_layers)).transpose(
                    "replicate", "layer", "matrix", "cutoff"
                )
                draws = _set_mean(probe_scale(replicates.values, normalisation), columns)[:, order]
                with quiet_nan():
                    low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=0)
                if np.nanmax(high - low, initial=0.0) > 0:
                    axis.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
                    banded.append(construction)
        reference = reference_level(normalisation)
        if reference is not None:
            axis.axhline(reference, color="black", linewidth=0.6, linestyle=":")
        axis.set_xticks(x, labels, fontsize=7)
        axis.set_title(f"{construction} · pair {pair}")
        axis.set_ylabel(scale_label(normalisation))
        gaps = summary["read"] - summary["write"]
        alt_parts.append(
            f"{construction}, pair {pair}: read-set minus write-set mean from {np.nanmin(gaps):+.2f} to "
            f"{np.nanmax(gaps):+.2f} over {order.size} cutoffs"
        )
    axes.ravel()[0].legend(loc="best", fontsize=7)
    band_text = (
        f"Shaded bands: {int(confidence_level * 100)}% percentile intervals over the sweep's sequence-bootstrap "
        f"replicates ({results.sizes.get('replicate', 0)}), for the constructions that depend on the corpus "
        f"({', '.join(sorted(set(banded)))}); the others do not move across replicates."
        if banded
        else "No bands: the sweep was run without --bootstrap, or none of these constructions depends on the corpus."
    )
    caption = (
        f"The probe ({scale_label(normalisation)}, layer mean) against the rank cutoff, cutoffs ordered by "
        "their median k over layers and matrices; under each, the range of k the read and the write "
        "matrices chose over layers (a spectral cutoff may choose very different ranks for the two "
        "pathways). Thin lines: single matrices (read solid, write dashed); "
        f"thick lines: the read-set and write-set means the asymmetry compares. {band_text}"
    )
    alt = "The probe against the rank cutoff. " + "; ".join(alt_parts) + "."
    return finish(fig, "fig-rsf-cutoff", alt, caption)


# ----------------------------------------------------------------------- heatmaps


def layer_heatmaps(
    results: xr.Dataset, pairs, specs: list[tuple[str, str, str]]
) -> SvgFigure | None:
    """Layer × matrix heatmaps of the probe (statistics' scale) for chosen specifications."""
    if not specs:
        return None
    matrices = [str(m) for m in results.matrix.values]
    pathways = [str(p) for p in results.pathway.values]
    n_layers = results.sizes["layer"]
    cols = len(pairs)
    fig = figure(min(2.6 * cols + 1.0, 11), (0.16 * n_layers + 1.2) * len(specs) + 0.3)
    axes = fig.subplots(len(specs), cols, squeeze=False)
    cmap = matplotlib.colormaps["cividis"]
    annotate = n_layers <= 16
    alt_parts = []
    for r, (construction, cutoff, normalisation) in enumerate(specs):
        cell = results.rsf.sel(
            construction=construction, cutoff=cutoff, normalisation=normalisation
        )
        values = probe_scale(
            cell.transpose("pair", "layer", "matrix").sel(pair=list(pairs)).values, normalisation
        )
        finite = values[np.isfinite(values)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        image = None
        for c, pair in enumerate(pairs):
            axis = axes[r, c]
            grid = values[c]
            # pcolormesh, not imshow: vector cells, no embedded raster image.
            edges_x, edges_y = (
                np.arange(grid.shape[1] + 1) - 0.5,
                np.arange(grid.shape[0] + 1) - 0.5,
            )
            image = axis.pcolormesh(
                edges_x, edges_y, np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax
            )
            axis.invert_yaxis()
            axis.set_facecolor("#DDDDDD")  # where a pair has no such layer or matrix
            axis.set_xticks(
                range(len(matrices)),
                [f"{m}\n{p[0].upper()}" for m, p in zip(matrices, pathways, strict=True)],
                fontsize=7,
            )
            axis.set_yticks(range(n_layers), [str(v) for v in results.layer.values], fontsize=6.5)
            axis.set_ylabel("layer")
            axis.set_title(f"{construction}, {cutoff}, {normalisation}\npair {pair}", fontsize=7.5)
            axis.spines[:].set_visible(False)
            if annotate:
                middle = (vmin + vmax) / 2
                for (li, mi), v in np.ndenumerate(grid):
                    if np.isfinite(v):
                        axis.text(mi, li, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                                  color="white" if v < middle else "black")  # fmt: skip
            if finite.size:
                hot = np.unravel_index(
                    np.nanargmax(np.where(np.isfinite(grid), grid, -np.inf)), grid.shape
                )
                alt_parts.append(
                    f"{construction}/{cutoff}/{normalisation}, pair {pair}: values {np.nanmin(grid):+.2f} to "
                    f"{np.nanmax(grid):+.2f}, highest at layer {results.layer.values[hot[0]]} {matrices[hot[1]]}"
                )
        if image is not None:
            bar = fig.colorbar(
                image, ax=list(axes[r]), label=scale_label(normalisation), shrink=0.9
            )
            bar.solids.set_rasterized(False)  # vector, so the SVG embeds no image
    caption = (
        "The probe per layer and matrix (R: read, W: write) on the statistics' scale, for the chosen "
        "specifications; one colour scale per row (cividis: dark is low, yellow is high), grey where a "
        "pair has no such layer or matrix."
    )
    return finish(
        fig, "fig-heatmaps", "Layer by matrix heatmaps. " + "; ".join(alt_parts) + ".", caption
    )


# ----------------------------------------------------------------------- null distributions


def null_distributions(
    stats: xr.Dataset, pairs, specs: list[tuple[str, str, str]]
) -> SvgFigure | None:
    """Draws of the asymmetry under the rotation null of the EWC test, with the observed statistic."""
    if "null_asymmetry" not in stats or not specs:
        return None
    cols = len(pairs)
    fig = figure(min(3.0 * cols + 0.5, 11), 2.1 * len(specs) + 0.3)
    axes = fig.subplots(len(specs), cols, squeeze=False)
    alt_parts = []
    for r, spec in enumerate(specs):
        for c, pair in enumerate(pairs):
            axis = axes[r, c]
            cell = stats.sel(pair=pair, construction=spec[0], cutoff=spec[1], normalisation=spec[2])
            draws = cell.null_asymmetry.values
            draws = draws[np.isfinite(draws)]
            observed, p = float(cell.asymmetry), float(cell.p_value)
            reference = float(cell.reference) if "reference" in cell else 0.0
            title = f"{'/'.join(spec)} · pair {pair}"
            if not draws.size or not np.isfinite(observed):
                why = "not defined" if not np.isfinite(observed) else "no test: too few layers"
                axis.set_title(f"{title}\n({why})", fontsize=7.5)
                axis.set_axis_off()
                continue
            axis.hist(draws, bins=min(40, max(5, np.unique(draws).size)), color=GREY, alpha=0.8)
            axis.axvline(reference, color="black", linewidth=0.8, linestyle=":")
            axis.axvline(observed, color=OKABE_ITO["blue"], linewidth=2)
            axis.set_title(f"{title}\nobserved {observed:+.3f}, EWC p = {p:.3g}", fontsize=7.5)
            axis.set_xlabel("asymmetry under the rotation null")
            axis.set_yticks([])
            axis.xaxis.set_major_locator(MaxNLocator(5))
            alt_parts.append(
                f"{'/'.join(spec)}, pair {pair}: {draws.size} rotation-null draws from "
                f"{draws.min():+.3f} to {draws.max():+.3f} about the reference {reference:+.3f}, "
                f"observed {observed:+.3f}, EWC p {p:.3g}"
            )
    caption = (
        "Null distributions of the asymmetry under the rotation null of the EWC test: random "
        "rotations of the layers' cosine projections, the same for every specification (a sample "
        "of them), as histograms about the reference A₀ (dotted); the blue line is the observed "
        "asymmetry and the title gives the EWC test's two-sided p-value."
    )
    return finish(
        fig, "fig-nulls", "Rotation null distributions. " + "; ".join(alt_parts) + ".", caption
    )


# ----------------------------------------------------------------------- variance decomposition


def variance_shares(shares: dict[str, dict[str, float]], terms: list[str]) -> SvgFigure | None:
    """Grouped bars: each analytic choice's (and pair of choices') share of the total sum of squares of effect size, per pair."""
    shares = {pair: s for pair, s in shares.items() if s}
    if not shares or not terms:
        return None
    pairs = list(shares)
    fig = figure(6.0, 0.3 * len(terms) * max(1, len(pairs)) ** 0.5 + 1.3)
    axis = fig.subplots()
    height = 0.8 / len(pairs)
    for i, pair in enumerate(pairs):
        y = np.arange(len(terms)) + (i - (len(pairs) - 1) / 2) * height
        values = [100 * shares[pair].get(t, np.nan) for t in terms]
        axis.barh(y, values, height=height * 0.95, color=SERIES[i % len(SERIES)],
                  hatch=["", "//", "..", "xx"][i // len(SERIES) % 4], label=f"pair {pair}")  # fmt: skip
    axis.set_yticks(range(len(terms)), [t.replace("×", " × ") for t in terms])
    axis.invert_yaxis()
    axis.set_xlabel("% of the total sum of squares of effect size")
    if len(pairs) > 1:
        axis.legend(loc="lower right")
    parts = []
    for pair in pairs:
        driver = max(
            (t for t in shares[pair] if t != "residual"), key=shares[pair].get, default=None
        )
        if driver:
            parts.append(
                f"pair {pair}: {driver} moves the result most ({shares[pair][driver]:.0%})"
            )
    caption = (
        "Which analytic choice moves the result: each choice's and each pair of choices' share of "
        "the total sum of squares of effect size across the counted specifications; the residual is "
        "the rest (the three-way interaction)."
    )
    return finish(fig, "fig-variance", "Variance decomposition. " + "; ".join(parts) + ".", caption)


# ----------------------------------------------------------------------- trajectory
