"""Jinja2 rendering: the templates and the inline assets ship inside the package."""

from __future__ import annotations

from importlib.resources import files

import jinja2
from markupsafe import Markup

__all__ = ["asset", "figure_and_table", "fragment", "render"]

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("reports", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def asset(name: str) -> str:
    """The text of a file in ``reports/templates`` (the stylesheet, the table sorter)."""
    return files("reports").joinpath("templates", name).read_text(encoding="utf-8")


def render(name: str, **context) -> str:
    return _ENV.get_template(name).render(**context)


def fragment(name: str, **context) -> Markup:
    """A rendered (already escaped) piece of HTML to place inside another template."""
    return Markup(render(name, **context))


def figure_and_table(intro: str, figure, table, *extra) -> Markup:
    """A section body: an introduction, a figure and a table, then any further tables."""
    body = fragment("sections/figure_and_table.html.j2", intro=intro, figure=figure, table=table)
    for more in extra:
        if more is not None:
            body += fragment("sections/figure_and_table.html.j2", intro="", figure=None, table=more)
    return Markup(body)
