"""Reading a report for the tests: its sections, figures, tables and links, and the rounding the
report documents, written out again (used by tests/cli/test_report.py and tests/reports)."""

from __future__ import annotations

import hashlib
import math
from html.parser import HTMLParser
from pathlib import Path

SECTIONS = (
    "claims",
    "verdict",
    "specification-curve",
    "rsf-cutoff",
    "heatmaps",
    "null-distributions",
    "variance",
    "calibration",
    "methods",
    "provenance",
    "caveats",
)


MISSING = "—"


class Page(HTMLParser):
    """What the tests read from the report: sections, figures, tables, URL-bearing attributes."""

    URL_ATTRS = {"src", "href", "xlink:href", "action", "data", "poster", "srcset", "formaction"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.sections: list[str] = []
        self.urls: list[tuple[str, str, str]] = []
        self.figures: list[dict] = []
        self.tables: dict[str, dict[str, dict[str, tuple[str, str | None]]]] = {}
        self.row_classes: dict[str, dict[str, set[str]]] = {}  # table id → row key → its classes
        self.section_text: dict[str, str] = {}  # section id → its text (figures' SVG left out)
        self.caveats: list[str] = []
        self.meta: list[dict] = []
        self._table = self._row = self._cell = None
        self._section: str | None = None
        self._in_svg = 0
        self._in_details = 0  # inside a cell's <details>: its text is kept apart (COLUMN:details)
        self._details: list[str] = []
        self._text: list[str] = []
        self._caption = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        for name, value in attrs.items():
            if name in self.URL_ATTRS:
                self.urls.append((tag, name, value or ""))
        if tag == "meta":
            self.meta.append(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
            self._section = attrs.get("id")
            self.section_text[self._section] = ""
        if tag == "svg":
            self._in_svg += 1
        if tag == "figure":
            self.figures.append({"id": attrs.get("id"), "caption": "", "alt": None, "title": False})
        if tag == "svg" and self.figures:
            self.figures[-1]["alt"] = attrs.get("aria-label")
        if tag == "title" and self.figures:
            self.figures[-1]["title"] = True
        if tag == "figcaption":
            self._caption, self._text = True, []
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), {})
            self._table_id = attrs.get("id")
        if tag == "tr" and self._table is not None and "data-row" in attrs:
            self._row = self._table.setdefault(attrs["data-row"], {})
            classes = set((attrs.get("class") or "").split())
            self.row_classes.setdefault(self._table_id, {})[attrs["data-row"]] = classes
        if tag == "td" and self._row is not None:
            self._cell, self._text = (attrs["data-col"], attrs.get("data-value")), []
            self._details = []
        if tag == "details" and self._cell is not None:
            self._in_details += 1
        if tag == "li" and "data-caveat" in attrs:
            self.caveats.append(attrs["data-caveat"])

    def handle_endtag(self, tag):
        if tag == "svg":
            self._in_svg -= 1
        if tag == "section":
            self._section = None
        if tag == "figcaption":
            self.figures[-1]["caption"] = "".join(self._text).strip()
            self._caption = False
        if tag == "details" and self._in_details:
            self._in_details -= 1
        if tag == "td" and self._cell is not None:
            column, value = self._cell
            self._row[column] = ("".join(self._text).strip(), value)
            if self._details:
                self._row[f"{column}:details"] = ("\n".join(self._details), None)
            self._cell = None
        if tag == "tr":
            self._row = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._section is not None and not self._in_svg:
            self.section_text[self._section] += data
        if self._in_details:
            if data.strip():
                self._details.append(data.strip())
        elif self._caption or self._cell is not None:
            self._text.append(data)


# The report's documented rounding (reports/formatting.py), written out again here.
def shown(x, rule: str) -> str:
    if x is None or not math.isfinite(float(x)):
        return MISSING
    x = float(x)
    if rule == "p":
        return "< 0.001" if x < 0.001 else f"{x:.3f}"
    rules = {"signed": "+.3f", "effect": "+.2f", "share": ".0%", "expected_share": ".1%",
             "rate": ".3f", "agreement": ".2f", "autocorrelation": "+.2f", "layers": ".1f",
             "statistic": ".2f", "integer": "d"}  # fmt: skip
    return format(int(x) if rule == "integer" else x, rules[rule])


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
