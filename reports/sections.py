"""The report's sections in order: the core ones, then those registered for extra datasets.

A builder takes the :class:`~reports.context.ReportContext` and returns a
:class:`~reports.registry.Section`. The core sections always appear, in a
fixed order (an empty one says what input it needs; :data:`CORE_BEFORE`):
the paper's claims (:mod:`reports.claims`), the verdict
(:mod:`reports.verdict`), the evidence — specification curve, RSF against
the cutoff, heatmaps, null distributions, variance decomposition —
(:mod:`reports.evidence`) and calibration (:mod:`reports.calibration`); then
the sections registered for extra datasets (:mod:`reports.registry`); then
methods, provenance and caveats (:mod:`reports.provenance`).
"""

from __future__ import annotations

from . import registry
from .calibration import calibration_section
from .claims import claims_section
from .context import ReportContext
from .evidence import (
    heatmap_section,
    null_section,
    rsf_cutoff_section,
    spec_curve_section,
    variance_section,
)
from .provenance import caveat_section, methods_section, provenance_section
from .registry import Section, register_section, registered_kinds
from .verdict import verdict_section

__all__ = ["Section", "build_sections", "register_section", "registered_kinds"]

# ----------------------------------------------------------------------- assembly

CORE_BEFORE = (
    claims_section,
    verdict_section,
    spec_curve_section,
    rsf_cutoff_section,
    heatmap_section,
    null_section,
    variance_section,
    calibration_section,
)
CORE_AFTER = (methods_section, provenance_section, caveat_section)


def build_sections(ctx: ReportContext) -> list[Section]:
    """The core sections, the registered ones for extra datasets, then methods, provenance, caveats."""
    sections = [build(ctx) for build in CORE_BEFORE]
    for index, source in enumerate(ctx.inputs.extra):
        if source.kind not in registry.REGISTRY:
            known = ", ".join(registered_kinds()) or "none registered"
            raise ValueError(
                f"{source.path}: no report section for datasets of kind {source.kind!r} ({known})"
            )
        title, builder = registry.REGISTRY[source.kind]
        sections.append(Section(f"extra-{index}-{source.kind}", title, builder(ctx, source)))
    sections.extend(build(ctx) for build in CORE_AFTER)
    return sections
