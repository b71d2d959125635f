"""The reviewer-facing HTML report: one self-contained file from the sweep's datasets.

``write_report(results_path, out_path, *, stats_path=None, calibration_path=None,
extra_paths=(), claims_path=None, mkdir=False)`` is the entry point (``rsf
report`` calls it). Sections for other kinds of
dataset plug in with :func:`register_section`. This package reads datasets
only, never models; it is the one place numbers are rounded
(:mod:`reports.formatting`).
"""

from . import gradients, mechanism  # noqa: F401  (register the mechanism datasets' sections)
from .inputs import ReportInputs, load_inputs
from .report import build_report, write_report
from .sections import Section, register_section

__all__ = [
    "ReportInputs",
    "Section",
    "build_report",
    "load_inputs",
    "register_section",
    "write_report",
]
