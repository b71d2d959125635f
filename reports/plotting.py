"""Drawing for the report: palettes, matplotlib figures saved straight to inline SVG, helpers.

No pyplot and no global backend: each figure is a ``matplotlib.figure.Figure``
saved as SVG with text kept as text (``svg.fonttype = 'none'``, generic
sans-serif fonts, no font files or URLs), a fixed hash salt and no date, so
the same datasets give the same bytes. Element ids are prefixed per figure so
several SVGs can live in one HTML document.

Colours are the Okabe–Ito palette (distinguishable with the common colour
vision deficiencies); heatmaps use cividis. Categories are also told apart by
marker shape, never by colour alone.
"""

from __future__ import annotations

import html
import io
import math
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib
import matplotlib.text
import numpy as np
import xarray as xr
from markupsafe import Markup
from matplotlib.figure import Figure

from .formatting import element_id

__all__ = [
    "GREY",
    "MARKERS",
    "MATRIX_MARKERS",
    "OKABE_ITO",
    "PATHWAY_COLOURS",
    "SERIES",
    "SvgFigure",
    "band",
    "errorbar",
    "figure",
    "finish",
    "grid_shape",
    "layer_count",
    "ordinal",
    "quiet_nan",
    "reference_level",
    "scale_label",
]

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
GREY = "#8C8C8C"
PATHWAY_COLOURS = {"read": OKABE_ITO["blue"], "write": OKABE_ITO["vermillion"]}
SERIES = [
    OKABE_ITO[c]
    for c in ("blue", "orange", "green", "vermillion", "purple", "sky_blue", "black", "yellow")
]
MARKERS = "osD^vP*Xh<>"
MATRIX_MARKERS = dict(zip(("q", "k", "v", "o", "up", "gate", "down"), "osD^vPX", strict=True))
RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "rsf-report",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "image.cmap": "cividis",
}
_ID = re.compile(r'(\bid="|href="#|url\(#)([^")]+)')


@dataclass(frozen=True)
class SvgFigure:
    """An inline SVG with its alt text (read by screen readers) and caption (shown)."""

    id: str
    svg: Markup
    alt: str
    caption: str


def _to_svg(fig: Figure, ident: str, alt: str) -> Markup:
    buffer = io.StringIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = _ID.sub(lambda m: f"{m.group(1)}{ident}-{m.group(2)}", text)
    head_end = text.index(">") + 1
    width = re.search(r'\swidth="([\d.]+)pt"', text[:head_end])
    head = re.sub(r'\s(width|height)="[^"]*"', "", text[:head_end])
    # Scales down with the page, never up past its drawn size (text stays the size it was set in).
    style = f' style="max-width: {width.group(1)}pt"' if width else ""
    head = head.replace(
        "<svg", f'<svg role="img" aria-label="{html.escape(alt)}" class="chart"{style}', 1
    )
    return Markup(head + f"<title>{html.escape(alt)}</title>" + text[head_end:])


def figure(width: float, height: float) -> Figure:
    with matplotlib.rc_context(RC):
        return Figure(figsize=(width, height), layout="constrained")


def finish(fig: Figure, ident: str, alt: str, caption: str) -> SvgFigure:
    """The figure as inline SVG; `ident` (from labels, perhaps) becomes a safe id first."""
    ident = element_id(ident)
    for text in fig.findobj(matplotlib.text.Text):
        text.set_parse_math(False)  # labels are literal: a "$" in a pair's name is not TeX
    return SvgFigure(ident, _to_svg(fig, ident, alt), alt, caption)


def scale_label(normalisation: str) -> str:
    """The axis label for the probe on the statistics' scale (``log2`` for ratio normalisations)."""
    return {
        "fraction": "F(k)",
        "isotropic": "log₂ isotropic ratio",
        "log_isotropic": "log₂ F(k) / (k/d)",
        "base_relative": "log₂ F_ΔW(k) / F_W(k)",
        "null_z": "z against a Haar subspace",
    }.get(normalisation, normalisation)


def reference_level(normalisation: str) -> float | None:
    """Where "no preferred alignment" sits on the statistics' scale (none for ``fraction``)."""
    return None if normalisation == "fraction" else 0.0


def grid_shape(n: int, most: int) -> tuple[int, int]:
    cols = min(n, most)
    return cols, math.ceil(n / cols)


def layer_count(results: xr.Dataset, pair) -> int:
    if "n_layers" in results:
        return int(results.n_layers.sel(pair=pair))
    return results.sizes["layer"]


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@contextmanager
def quiet_nan():
    """Means over all-NaN slices are NaN by design here (missing layers, undefined cutoffs)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def errorbar(axis, x, value, low, high, **style):
    """The values joined by a line, each with its interval as a vertical bar.

    Drawn as bars from low to high rather than ``errorbar``'s distances: a
    percentile interval need not contain the point estimate.
    """
    value, low, high = (np.asarray(a, dtype=np.float64) for a in (value, low, high))
    axis.plot(x, value, linewidth=1, **style)
    shown = np.isfinite(low) & np.isfinite(high)
    if shown.any():
        axis.vlines(
            np.asarray(x)[shown], low[shown], high[shown], color=style.get("color"), linewidth=1
        )


# ----------------------------------------------------------------------- gradients


def band(axis, x, value, low, high, **style):
    """The values joined by a line over a shaded interval (drawn where both bounds are finite)."""
    value, low, high = (np.asarray(a, dtype=np.float64) for a in (value, low, high))
    (line,) = axis.plot(x, value, linewidth=1, **style)
    shown = np.isfinite(low) & np.isfinite(high)
    if shown.any():
        axis.fill_between(
            np.asarray(x, dtype=np.float64), low, high, where=shown, color=line.get_color(),
            alpha=0.15, linewidth=0,
        )  # fmt: skip
