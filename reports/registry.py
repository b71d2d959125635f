"""Report sections: the :class:`Section` record and the registry for sections of other datasets.

Datasets beyond the core ones (results, statistics, claims, calibration) add a
section through :func:`register_section`, keyed by the dataset's ``kind``
attribute::

    @register_section("gradients", title="Gradient alignment")
    def gradients_section(ctx, source):   # source.dataset is the xarray Dataset
        return fragment("sections/gradients.html.j2", ...)

Registered sections go after the calibration and before the methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from markupsafe import Markup

from .context import ReportContext
from .inputs import Source
from .render import fragment

__all__ = ["Section", "needs_stats", "register_section", "registered_kinds", "spec_label"]


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    body: Markup


Builder = Callable[[ReportContext, Source], Markup]
REGISTRY: dict[str, tuple[str, Builder]] = {}


def register_section(kind: str, *, title: str) -> Callable[[Builder], Builder]:
    """Register a builder for datasets whose ``kind`` attribute is `kind`."""
    if kind in ("results", "stats", "calibration", "claims"):
        raise ValueError(f"`kind` {kind!r} is a core input; register another kind")

    def decorate(builder: Builder) -> Builder:
        REGISTRY[kind] = (title, builder)
        return builder

    return decorate


def registered_kinds() -> tuple[str, ...]:
    return tuple(REGISTRY)


def spec_label(spec) -> str:
    return "/".join(spec)


def needs_stats():
    """The body of a section that has nothing to show without ``stats.nc``: what to run."""
    return fragment(
        "sections/missing.html.j2",
        needs="stats.nc",
        command="rsf stats results.nc --out stats.nc",
    )
