"""Assemble the report from its inputs and write it atomically."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from markupsafe import Markup

from robustness import __version__
from robustness.files import atomic_output, check_writable

from .context import build_context
from .inputs import ReportInputs, load_inputs
from .render import asset, render
from .sections import build_sections

__all__ = ["build_report", "write_report"]


def build_report(inputs: ReportInputs) -> str:
    """The report as one self-contained HTML document."""
    context = build_context(inputs)
    pairs = ", ".join(context.pairs)
    return render(
        "report.html.j2",
        title=f"RSF robustness report: {pairs}"
        if len(context.pairs) < 5
        else f"RSF robustness report: {len(context.pairs)} pairs",
        sections=build_sections(context),
        sources=inputs.sources,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        rsf_version=__version__,
        # Our own files, inlined verbatim (escaping would break their quotes).
        css=Markup(asset("style.css")),
        js=Markup(asset("sort.js")),
    )


def write_report(
    results_path,
    out_path,
    *,
    stats_path=None,
    calibration_path=None,
    extra_paths=(),
    claims_path=None,
) -> Path:
    """Write the HTML report for `results_path` (and the optional statistics, claims and calibration datasets).

    `extra_paths` are datasets of other kinds (``gradients``, ``trajectory``,
    ``contrastive``, ``rank1``, …), each shown by the section registered for its kind.

    Every input is read and checked, and the output folder checked writable,
    before anything is written; the file appears under `out_path` only when
    complete. Returns `out_path` as a :class:`~pathlib.Path`.
    """
    out = check_writable(out_path)
    inputs = load_inputs(
        results_path,
        stats_path=stats_path,
        calibration_path=calibration_path,
        extra_paths=tuple(extra_paths),
        claims_path=claims_path,
    )
    document = build_report(inputs)
    with atomic_output(out) as temporary:
        temporary.write_text(document, encoding="utf-8")
    return out
