"""Assemble the report from its inputs and write it atomically."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone
from pathlib import Path

from markupsafe import Markup

from robustness import __version__
from robustness.io.files import atomic_output, check_writable

from .context import build_context
from .inputs import ReportInputs, load_inputs
from .render import asset, render
from .sections import build_sections

__all__ = ["build_report", "script_hash", "write_report"]


def build_report(inputs: ReportInputs) -> str:
    """The report as one self-contained HTML document."""
    context = build_context(inputs)
    pairs = ", ".join(context.pairs)
    script = asset("sort.js")
    return render(
        "report.html.j2",
        title=f"RSF robustness report: {pairs}"
        if len(context.pairs) < 5
        else f"RSF robustness report: {len(context.pairs)} pairs",
        sections=build_sections(context),
        sources=inputs.sources,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        rsf_version=__version__,
        # Our own files, inlined verbatim (escaping would break their quotes). The page's
        # Content-Security-Policy allows this one script by its hash and no other: nothing a
        # dataset's strings could inject would run, even if an escape were ever missed.
        css=Markup(asset("style.css")),
        js=Markup(script),
        script_hash=script_hash(script),
    )


def script_hash(script: str) -> str:
    """The CSP source of an inline script: ``'sha256-…'`` of its exact text."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def write_report(
    results_path,
    out_path,
    *,
    stats_path=None,
    calibration_path=None,
    extra_paths=(),
    claims_path=None,
    mkdir: bool = False,
) -> Path:
    """Write the HTML report for `results_path` (and the optional statistics, claims and calibration datasets).

    `extra_paths` are datasets of other kinds (``gradients``, ``trajectory``,
    ``contrastive``, ``rank1``, …), each shown by the section registered for its kind.

    Every input is read and checked, and the output folder checked writable,
    before anything is written; the file appears under `out_path` only when
    complete; it may not be one of the inputs, nor a link or a device, and
    its missing folders are created only with `mkdir`. Returns `out_path` as
    a :class:`~pathlib.Path`.
    """
    inputs = (results_path, stats_path, calibration_path, claims_path, *extra_paths)
    out = check_writable(out_path, inputs=[p for p in inputs if p is not None], mkdir=mkdir)
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
