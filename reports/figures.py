"""The report's evidence figures: RSF against the cutoff, heatmaps, null distributions, shares.

The specification curve has its own module, :mod:`reports.spec_curve`; the
verdict's, calibration's and mechanism sections' figures live with their
sections. Each returns a :class:`~reports.plotting.SvgFigure` (inline SVG,
alt text, caption); drawing conventions are in :mod:`reports.plotting`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.ticker import MaxNLocator

from robustness.settings.specification import probe_scale

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
    layer_count,
    quiet_nan,
    reference_level,
    scale_label,
)

__all__ = [
    "layer_heatmaps",
    "null_distributions",
    "rsf_by_cutoff",
    "variance_shares",
]


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


@dataclass
class CutoffFigure:
    """What every panel of the probe against the cutoff shares: the dataset, the scale, the two sets.

    `sets` maps ``read`` and ``write`` to the columns of their matrices in the
    dataset's ``matrix`` dimension; `pathways` each matrix's pathway.
    """

    results: xr.Dataset
    normalisation: str
    read: list[str]
    write: list[str]
    confidence_level: float
    matrices: list[str] = field(init=False)
    pathways: dict[str, str] = field(init=False)
    sets: dict[str, list[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.matrices = [str(m) for m in self.results.matrix.values]
        self.pathways = dict(
            zip(self.matrices, (str(p) for p in self.results.pathway.values), strict=True)
        )
        self.sets = {
            name: [self.matrices.index(m) for m in members if m in self.matrices]
            for name, members in (("read", self.read), ("write", self.write))
        }


@dataclass(frozen=True)
class CutoffPanel:
    """One construction and pair: the probe per layer, matrix and cutoff, and the ranks chosen.

    `values` are on the statistics' scale, `ks` the ranks (NaN: undefined),
    both ``[layer, matrix, cutoff]`` over the pair's own layers; `order` holds
    the defined cutoffs' indices, by their median k over layers and matrices.
    """

    construction: str
    pair: object
    n_layers: int
    values: np.ndarray
    ks: np.ndarray
    order: np.ndarray


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
    spec = CutoffFigure(results, normalisation, read, write, confidence_level)
    panels = [(c, p) for c in constructions for p in pairs]
    if not panels or not spec.sets["read"] or not spec.sets["write"]:
        return None
    cols = len(pairs)
    fig = figure(min(4.2 * cols, 11) + 0.4, 2.8 * len(constructions) + 0.4)
    axes = fig.subplots(len(constructions), cols, squeeze=False, sharey="row")
    banded, alt_parts = [], []
    for (construction, pair), axis in zip(panels, axes.ravel(), strict=True):
        panel = _cutoff_panel(spec, construction, pair)
        if not panel.order.size:
            axis.set_title(f"{construction}, pair {pair}: no defined cutoff")
            axis.set_axis_off()
            continue
        x = np.arange(panel.order.size)
        _draw_matrix_lines(axis, x, spec, panel)
        summary = {}
        for name in ("read", "write"):
            summary[name], has_band = _draw_set(axis, x, spec, panel, name)
            if has_band:
                banded.append(construction)
        reference = reference_level(normalisation)
        if reference is not None:
            axis.axhline(reference, color="black", linewidth=0.6, linestyle=":")
        axis.set_xticks(x, _cutoff_labels(spec, panel), fontsize=7)
        axis.set_title(f"{construction} · pair {pair}")
        axis.set_ylabel(scale_label(normalisation))
        gaps = summary["read"] - summary["write"]
        alt_parts.append(
            f"{construction}, pair {pair}: read-set minus write-set mean from {np.nanmin(gaps):+.2f} to "
            f"{np.nanmax(gaps):+.2f} over {panel.order.size} cutoffs"
        )
    axes.ravel()[0].legend(loc="best", fontsize=7)
    alt = "The probe against the rank cutoff. " + "; ".join(alt_parts) + "."
    return finish(fig, "fig-rsf-cutoff", alt, _cutoff_caption(spec, banded))


def _cutoff_panel(spec: CutoffFigure, construction: str, pair) -> CutoffPanel:
    """The panel's probe values and chosen ranks, and its defined cutoffs in order of median k."""
    results, normalisation = spec.results, spec.normalisation
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
    return CutoffPanel(construction, pair, n_layers, values, ks, order)


def _cutoff_labels(spec: CutoffFigure, panel: CutoffPanel) -> list[str]:
    """Each cutoff's name over the ranges of k the read and the write matrices chose."""
    read_idx, write_idx = spec.sets["read"], spec.sets["write"]
    return [
        f"{spec.results.cutoff.values[i]}\nread k {_k_range(panel.ks[:, read_idx, i])}"
        f"\nwrite k {_k_range(panel.ks[:, write_idx, i])}"
        for i in panel.order
    ]


def _draw_matrix_lines(axis, x, spec: CutoffFigure, panel: CutoffPanel) -> None:
    """Thin lines, one per matrix of the two sets (layer mean): read solid, write dashed."""
    for m, matrix in enumerate(spec.matrices):
        if m not in spec.sets["read"] + spec.sets["write"]:
            continue
        with quiet_nan():
            line = np.nanmean(panel.values[:, m, panel.order], axis=0)
        pathway = spec.pathways[matrix]
        axis.plot(x, line, marker=MATRIX_MARKERS.get(matrix, "o"), markersize=3, linewidth=0.7,
                  color=PATHWAY_COLOURS[pathway], alpha=0.45,
                  linestyle="-" if pathway == "read" else "--")  # fmt: skip


def _draw_set(
    axis, x, spec: CutoffFigure, panel: CutoffPanel, name: str
) -> tuple[np.ndarray, bool]:
    """A set's mean (thick line) with its sequence-bootstrap band; the mean, and whether a band was drawn.

    A construction that does not depend on the corpus does not move across
    replicates: its band has no width and is not drawn.
    """
    colour, columns = PATHWAY_COLOURS[name], spec.sets[name]
    mean = _set_mean(panel.values, columns)[panel.order]
    members = spec.read if name == "read" else spec.write
    axis.plot(x, mean, color=colour, linewidth=2.2, marker=MARKERS[0] if name == "read" else "s",
              markersize=4, label=f"{name} set mean ({', '.join(members)})")  # fmt: skip
    if "rsf_boot" not in spec.results:
        return mean, False
    replicates = spec.results.rsf_boot.sel(
        pair=panel.pair, construction=panel.construction, normalisation=spec.normalisation
    )
    replicates = replicates.isel(layer=slice(0, panel.n_layers)).transpose(
        "replicate", "layer", "matrix", "cutoff"
    )
    draws = _set_mean(probe_scale(replicates.values, spec.normalisation), columns)[:, panel.order]
    tail = 100 * (1 - spec.confidence_level) / 2
    with quiet_nan():
        low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=0)
    if np.nanmax(high - low, initial=0.0) > 0:
        axis.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
        return mean, True
    return mean, False


def _cutoff_caption(spec: CutoffFigure, banded: list[str]) -> str:
    """The caption: how the panels are drawn, and what the bands are (or why there are none)."""
    band_text = (
        f"Shaded bands: {int(spec.confidence_level * 100)}% percentile intervals over the sweep's sequence-bootstrap "
        f"replicates ({spec.results.sizes.get('replicate', 0)}), for the constructions that depend on the corpus "
        f"({', '.join(sorted(set(banded)))}); the others do not move across replicates."
        if banded
        else "No bands: the sweep was run without --bootstrap, or none of these constructions depends on the corpus."
    )
    return (
        f"The probe ({scale_label(spec.normalisation)}, layer mean) against the rank cutoff, cutoffs ordered by "
        "their median k over layers and matrices; under each, the range of k the read and the write "
        "matrices chose over layers (a spectral cutoff may choose very different ranks for the two "
        "pathways). Thin lines: single matrices (read solid, write dashed); "
        f"thick lines: the read-set and write-set means the asymmetry compares. {band_text}"
    )


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
