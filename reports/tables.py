"""Tables for the report: named columns, keyed rows, cells that keep their unrounded values.

The template writes every cell as ``<td data-col="KEY" data-value="FULL">TEXT</td>``
inside ``<tr data-row="KEY">``: the inline sorter reads ``data-value``, a
reader without scripts sees a plain table, and tests can find any number by
row and column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .formatting import Cell, element_id, text

__all__ = ["Column", "Row", "Table"]


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    numeric: bool = True
    help: str = ""
    breaks: bool = False  # long text (hashes, paths) may break across lines; nothing else does


@dataclass(frozen=True)
class Row:
    key: str
    cells: Mapping[str, Cell]
    css_class: str = ""


@dataclass(frozen=True)
class Table:
    id: str
    caption: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...] = field(default_factory=tuple)
    scroll: bool = False

    def __post_init__(self):
        object.__setattr__(self, "id", element_id(self.id))  # ids from labels: never raw

    def cell(self, row: Row, column: Column) -> Cell:
        found = row.cells.get(column.key)
        return found if found is not None else text("")
