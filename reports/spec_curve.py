"""The specification curve (Simonsohn, Simmons & Nelson 2020): every specification's effect size, sorted.

One panel per pair: the curve on top (counted specifications filled, controls
hollow, coloured by the EWC test's verdict), under it an indicator panel of
each specification's analytic choices. Returns a
:class:`~reports.plotting.SvgFigure`; drawing conventions are in
:mod:`reports.plotting`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from robustness.settings.specification import Specification

from .context import spec_roles
from .formatting import plural
from .plotting import GREY, OKABE_ITO, SvgFigure, figure, finish, grid_shape, ordinal

__all__ = ["spec_curve"]

# The EWC test's verdict on a specification (legend label, colour, marker), in the order of
# `Verdicts.kinds`.
CATEGORIES = (
    ("read > write, EWC p < α", OKABE_ITO["blue"], "o"),
    ("write > read, EWC p < α", OKABE_ITO["vermillion"], "s"),
    ("not significant", GREY, "o"),
    ("no test (too few layers)", OKABE_ITO["black"], "x"),
)
PREFERRED_LABEL = "preferred specification"


@dataclass
class CurveLayout:
    """What every pair's panel shares: the choices' rows, the vertical scale, the legend so far.

    `rows` are ``(dim, None)`` for a dimension's heading, then ``(dim, value)``
    per choice used; `span` and `pad` are the counted specifications' range of
    effect sizes and intervals and the margin around it. The panels record
    what they put in the legend, whether any control was drawn and how many
    points fell beyond the scale (the caption says so).
    """

    rows: list[tuple[str, str | None]]
    span: tuple[float, float]
    pad: float
    legend_done: set[str] = field(default_factory=set)
    any_control: bool = False
    clipped: int = 0


@dataclass(frozen=True)
class Verdicts:
    """One pair's specifications in curve order: tested, the verdict of each (`CATEGORIES`), control."""

    tested: np.ndarray
    kinds: list[np.ndarray]
    control: np.ndarray

    @classmethod
    def of(cls, frame, alpha: float) -> Verdicts:
        tested = np.isfinite(frame["p_value"]).to_numpy()
        significant = (frame["p_value"] < alpha).to_numpy()
        positive = (frame["asymmetry"] > 0).to_numpy()
        kinds = [significant & positive, significant & ~positive, tested & ~significant, ~tested]
        return cls(tested, kinds, (frame["role"] == "control").to_numpy())

    @property
    def n_counted(self) -> int:
        return int((~self.control).sum())

    @property
    def n_control(self) -> int:
        return int(self.control.sum())


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
    layout = CurveLayout(_choice_rows(stats, frames), *_curve_scale(frames))
    cols, nrows = grid_shape(len(frames), 2)
    curve_h, row_h = 2.3, 0.14 * len(layout.rows) + 0.3
    fig = figure(5.4 * cols + 0.6, nrows * (curve_h + row_h) + 0.5)
    grid = fig.add_gridspec(2 * nrows, cols, height_ratios=[curve_h, row_h] * nrows)
    alt_parts = []
    for index, (pair, frame) in enumerate(frames.items()):
        r, c = divmod(index, cols)
        top = fig.add_subplot(grid[2 * r, c])
        bottom = fig.add_subplot(grid[2 * r + 1, c], sharex=top)
        verdicts = Verdicts.of(frame, alpha)
        _draw_curve(top, frame, verdicts, layout)
        top.set_title(
            f"pair {pair}: {plural(verdicts.n_counted, 'counted specification')}, "
            f"{plural(verdicts.n_control, 'control')}"
        )
        top.tick_params(labelbottom=False)
        target = _curve_preferred(stats, pair, preferred)
        rank = _mark_preferred((top, bottom), frame, target, layout)
        _draw_choices(bottom, frame, layout.rows)
        where = _preferred_words(preferred, target, rank, len(frame))
        alt_parts.append(_panel_alt(pair, frame, verdicts, where))
    _add_legend(fig, layout)
    alt = "Specification curve. " + " ".join(alt_parts)
    return finish(fig, "fig-spec-curve", alt, _curve_caption(alpha, layout.clipped))


def _choice_rows(stats: xr.Dataset, frames: dict) -> list[tuple[str, str | None]]:
    """The indicator panel's rows: per dimension a heading, then the choices the curve draws.

    Only the choices of the specifications drawn (duplicates are not).
    """
    rows: list[tuple[str, str | None]] = []
    for dim in ("construction", "cutoff", "normalisation"):
        values = [str(v) for v in stats[dim].values]
        used = [v for v in values if any((f[dim] == v).any() for f in frames.values())]
        rows.append((dim, None))
        rows.extend((dim, v) for v in used)
    return rows


def _curve_scale(frames: dict) -> tuple[tuple[float, float], float]:
    """The vertical scale, the counted specifications' (span, pad).

    A hollow control (weight_svd far below the rest, say) is drawn at the edge
    as an arrow rather than squashing them.
    """
    scaled = [f[f["role"] == "counted"] if (f["role"] == "counted").any() else f
              for f in frames.values()]  # fmt: skip
    lows = [f["effect_ci_low"].min() for f in scaled]
    highs = [f["effect_ci_high"].max() for f in scaled]
    values = [f["effect_size"].min() for f in scaled] + [f["effect_size"].max() for f in scaled]
    finite = [v for v in (*lows, *highs, *values) if np.isfinite(v)]
    span = (min(finite), max(finite)) if finite else (-1.0, 1.0)
    return span, 0.05 * (span[1] - span[0] or 1.0)


def _draw_curve(top, frame, verdicts: Verdicts, layout: CurveLayout) -> None:
    """The curve: each category's intervals and effect sizes, filled then hollow (the controls)."""
    x = np.arange(len(frame))
    for style, mask in zip(CATEGORIES, verdicts.kinds, strict=True):
        for hollow in (False, True):
            chosen = mask & (verdicts.control == hollow)
            if not chosen.any():
                continue
            effect, low, high = (frame[v].to_numpy()[chosen]
                                 for v in ("effect_size", "effect_ci_low", "effect_ci_high"))  # fmt: skip
            shown = np.isfinite(low) & np.isfinite(high)
            if shown.any():
                top.vlines(x[chosen][shown], low[shown], high[shown], color=style[1],
                           linewidth=0.6, alpha=0.9)  # fmt: skip
            _draw_effects(top, x[chosen], effect, style, hollow, layout)
            if not hollow:
                layout.legend_done.add(style[0])
            else:
                layout.any_control = True
    span, pad = layout.span, layout.pad
    top.axhline(0, color="black", linewidth=0.6)
    top.set_ylim(span[0] - pad, span[1] + pad)
    top.set_ylabel("effect size d_z")


def _draw_effects(top, x, effect, style, hollow: bool, layout: CurveLayout) -> None:
    """One category's effect sizes: markers within the scale, hollow arrows at its edge beyond it."""
    label, colour, marker = style
    span, pad = layout.span, layout.pad
    above, below = effect > span[1] + pad, effect < span[0] - pad
    inside = ~(above | below)
    top.plot(
        x[inside],
        effect[inside],
        "D" if hollow else marker,
        color=colour,
        markerfacecolor="white" if hollow else colour,
        markeredgewidth=0.9,
        markersize=3.4 if hollow or colour != GREY else 2.6,
        linestyle="none",
        label=label if not hollow and label not in layout.legend_done else None,
    )
    for outside, edge, arrow in ((above, span[1] + 0.6 * pad, "^"),
                                 (below, span[0] - 0.6 * pad, "v")):  # fmt: skip
        if outside.any():
            layout.clipped += int(outside.sum())
            top.plot(x[outside], np.full(outside.sum(), edge), arrow,
                     color=colour, markerfacecolor="white", markersize=4,
                     linestyle="none")  # fmt: skip


def _curve_preferred(stats: xr.Dataset, pair, preferred) -> tuple[str, str, str]:
    """Where the curve draws the preferred specification: itself, or the one it duplicates."""
    role, text = spec_roles(stats, pair).get(tuple(preferred), ("", ""))
    return Specification.parse(text[2:]) if role == "duplicate" else tuple(preferred)


def _mark_preferred(axes, frame, target, layout: CurveLayout) -> int | None:
    """Shade the preferred specification's column in both panels, with a triangle above the curve.

    Returns its rank on the curve (from 0), or None when it is not drawn.
    """
    is_preferred = (
        (frame["construction"] == target[0])
        & (frame["cutoff"] == target[1])
        & (frame["normalisation"] == target[2])
    ).to_numpy()
    if not is_preferred.any():
        return None
    rank = int(np.flatnonzero(is_preferred)[0])
    for axis in axes:
        axis.axvspan(rank - 0.5, rank + 0.5, color=OKABE_ITO["orange"], alpha=0.35, linewidth=0)
    label = PREFERRED_LABEL if PREFERRED_LABEL not in layout.legend_done else None
    axes[0].plot([rank], [layout.span[1] + layout.pad * 0.4], marker="v", color="black",
                 markersize=6, linestyle="none", label=label)  # fmt: skip
    layout.legend_done.add(PREFERRED_LABEL)
    return rank


def _draw_choices(bottom, frame, rows) -> None:
    """The indicator panel: one tick per specification in the row of each of its choices."""
    x = np.arange(len(frame))
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
    bottom.set_yticks(range(len(rows)), [label if label else dim.upper() for dim, label in rows])
    for tick, (_, label) in zip(bottom.get_yticklabels(), rows, strict=True):
        if label is None:
            tick.set_fontweight("bold")
    bottom.set_ylim(len(rows) - 0.5, -0.5)
    bottom.set_xlim(-1, len(frame))
    bottom.set_xlabel("specifications, sorted by effect size")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.tick_params(axis="y", labelsize=7, length=0)


def _preferred_words(preferred, target, rank: int | None, n: int) -> str:
    """Where the preferred specification ranks on the curve, in words (for the alt text)."""
    if rank is None:
        return "the preferred specification is not among them"
    same = "" if target == tuple(preferred) else f" (drawn as {'/'.join(target)}, which it equals)"
    return (
        f"the preferred specification {'/'.join(preferred)}{same} ranks {ordinal(rank + 1)} of {n}"
    )


def _panel_alt(pair, frame, verdicts: Verdicts, where: str) -> str:
    """One pair's panel in words: counts, the range of effect sizes, the significant ones, `where`."""
    n_read = int((verdicts.kinds[0] & ~verdicts.control).sum())
    n_write = int((verdicts.kinds[1] & ~verdicts.control).sum())
    untested = " no test: too few layers;" if not verdicts.tested.any() else ""
    return (
        f"Pair {pair}: {plural(verdicts.n_counted, 'counted specification')} and "
        f"{plural(verdicts.n_control, 'control')} with effect "
        f"sizes from {frame['effect_size'].min():+.2f} to {frame['effect_size'].max():+.2f};{untested} "
        f"{n_read} counted significant with read > write, {n_write} with write > read; {where}."
    )


def _add_legend(fig, layout: CurveLayout) -> None:
    """One legend under the panels: each label once, and the hollow control marker if any was drawn."""
    handles, labels = [], []
    for axis in fig.axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if layout.any_control:
        handles.append(Line2D([], [], marker="D", color=GREY, markerfacecolor="white",
                              linestyle="none", markersize=3.4))  # fmt: skip
        labels.append("control, not counted (hollow; coloured as above)")
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7)


def _curve_caption(alpha: float, clipped: int) -> str:
    return (
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
