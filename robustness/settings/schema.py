"""The option schema: how a setting is declared once and read from Python, flags or TOML.

A settings class is a frozen dataclass whose fields are declared with
:func:`option`: the default, a help text, the allowed values or range, the
command-line flag and the TOML table and key. Everything else is derived
from that one declaration (``docs/design.md`` §4, "Options"):

- validation and canonical values (:func:`validate`, run by every settings
  class's ``__post_init__``, so the Python API checks what the command line
  checks);
- strict TOML reading (:func:`read_table`): a bool is a TOML bool, an int is
  not a float, a list is not a string, an unknown key is refused, and every
  error names the file, the table and the key;
- TOML writing (:func:`to_table`);
- the command line's flags, their help and their defaults
  (:func:`flag_fields`, used by ``rsf.options``).

Why not pydantic or cattrs: both would validate, but neither derives
argparse flags or TOML tables, the messages would need rewriting to name a
flag or a table key, and the command line must describe itself without
importing more than the standard library (``rsf --help`` in well under a
second). The schema is therefore about a hundred lines of standard library:
dataclasses, ``typing`` and this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "AUTO",
    "Option",
    "OptionError",
    "flag_fields",
    "option",
    "read_table",
    "shown",
    "to_table",
    "validate",
]

AUTO = "auto-flag"  # the flag is the field's name, --with-dashes


class OptionError(ValueError):
    """A value an option does not allow; the message names where it came from."""


@dataclass(frozen=True)
class Option:
    """One option's declaration (a field's ``metadata["option"]``)."""

    help: str
    flags: tuple[str, ...] = ()  # empty: not on the command line
    table: str | None = None  # TOML table; None: not in a config file
    key: str | None = None  # TOML key (default the field's name)
    choices: tuple | None = None  # allowed values (of each item, for a list)
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself is excluded
    high_open: bool = False
    check: Callable | None = None  # value → canonical value, or ValueError(reason)
    metavar: str | None = None
    path: bool = False  # a path (or paths), relative to the config file's folder in TOML
    count: bool = False  # a flag given several times (-q, -qq)
    noun: str | None = None  # what one value is, for "unknown construction 'pca': valid are …"


def option(
    default=MISSING,
    help: str = "",
    *,
    flag: str | tuple[str, ...] | None = AUTO,
    table: str | None = None,
    key: str | None = None,
    choices=None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    check: Callable | None = None,
    metavar: str | None = None,
    path: bool = False,
    count: bool = False,
    noun: str | None = None,
):
    """A dataclass field declared as an option (see the module docstring).

    `flag` is the command-line spelling (``AUTO``: ``--field-name``; a tuple
    for aliases; ``None``: no flag); `table` the TOML table it is read from
    (``None``: not in config files). `low`/`high` bound a number (each
    element of a list), open where `low_open`/`high_open`; `choices` lists
    the allowed values (`noun` names one in the message: ``unknown
    construction 'pca': valid are …``); `check` canonicalises a value or
    raises ``ValueError`` with the reason.
    """
    flags = () if flag is None else (flag,) if isinstance(flag, str) else tuple(flag)
    meta = Option(
        help, flags, table, key, tuple(choices) if choices is not None else None,
        low, high, low_open, high_open, check, metavar, path, count, noun,
    )  # fmt: skip
    return dataclasses.field(default=default, metadata={"option": meta})


# ------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Kind:
    """What a field's annotation allows: a scalar type, a tuple of one, and whether ``None`` is."""

    base: type  # bool, int, float or str
    many: bool = False
    optional: bool = False

    def describe(self) -> str:
        word = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
        plural = {bool: "booleans", int: "integers", float: "finite numbers", str: "strings"}
        text = f"a list of {plural[self.base]}" if self.many else word[self.base]
        return text


@cache
def _kinds(cls) -> dict[str, Kind]:
    hints = typing.get_type_hints(cls)
    kinds = {}
    for f in dataclasses.fields(cls):
        if "option" not in f.metadata:
            continue
        kinds[f.name] = _kind(hints[f.name], f"{cls.__name__}.{f.name}")
    return kinds


def _kind(annotation, where: str) -> Kind:
    optional = False
    args = typing.get_args(annotation)
    if type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0]
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        base = args[0]
        return Kind(base, many=True, optional=optional)
    if annotation in (bool, int, float, str):
        return Kind(annotation, optional=optional)
    raise TypeError(f"{where}: an option must be bool, int, float, str or a tuple of one")


def _scalar(kind: Kind, value):
    """`value` as `kind.base`, strictly (no string to number, no float to int, no int to bool)."""
    if kind.base is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind.base is int:
        return int(value) if isinstance(value, numbers.Integral) else None
    if kind.base is float:
        if isinstance(value, numbers.Real) and math.isfinite(value):
            return float(value)
        return None
    return value if isinstance(value, str) else None


def shown(value, style: str) -> str:
    """A value as the user wrote it: TOML-like (``"no"``, ``true``) for files, repr for flags and Python."""
    if style != "toml":
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v, style) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _bounds_text(meta: Option) -> str:
    low, high = meta.low, meta.high
    if low is not None and high is not None:
        left = "(" if meta.low_open else "["
        right = ")" if meta.high_open else "]"
        return f"lie in {left}{low:g}, {high:g}{right}"
    if low is not None:
        if low == 0 and meta.low_open:
            return "be positive"
        if low == 0:
            return "be non-negative"
        return f"be {'greater than' if meta.low_open else 'at least'} {low:g}"
    return f"be {'less than' if meta.high_open else 'at most'} {high:g}"


def _in_bounds(meta: Option, x) -> bool:
    if meta.low is not None and (x < meta.low or (meta.low_open and x == meta.low)):
        return False
    if meta.high is not None and (x > meta.high or (meta.high_open and x == meta.high)):
        return False
    return True


def check_value(kind: Kind, meta: Option, value, where: str, style: str):
    """`value` checked against one option's declaration, canonicalised; :class:`OptionError` naming `where`."""
    if value is None:
        if kind.optional:
            return None
        raise OptionError(f"{where} must be {kind.describe()}, got nothing")

    def fail(requirement: str, bad=value):
        raise OptionError(f"{where} must {requirement}, got {shown(bad, style)}")

    if kind.many:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            fail(
                f"be {kind.describe()}"
                + (f", e.g. [{shown(value, style)}]" if isinstance(value, str) else "")
            )
        items = []
        for item in value:
            converted = _scalar(kind, item)
            if converted is None:
                fail(f"be {kind.describe()}")
            items.append(converted)
        values = tuple(items)
    else:
        converted = _scalar(kind, value)
        if converted is None:
            fail(f"be {kind.describe()}")
        values = (converted,)
    for item in values:
        if meta.choices is not None and item not in meta.choices:
            listed = ", ".join(map(str, meta.choices))
            if meta.noun:
                raise OptionError(
                    f"{where}: unknown {meta.noun} {shown(item, style)}: valid are {listed}"
                )
            fail(f"be {'each ' if kind.many else ''}one of {listed}", item)
        if (meta.low is not None or meta.high is not None) and not _in_bounds(meta, item):
            fail(_bounds_text(meta), item)
    result = values if kind.many else values[0]
    if meta.check is not None:
        try:
            result = meta.check(result)
        except OptionError:
            raise
        except ValueError as error:
            raise OptionError(f"{where}: {error}") from None
    return result


def _fields(cls) -> list[tuple[dataclasses.Field, Option, Kind]]:
    kinds = _kinds(cls)
    return [
        (f, f.metadata["option"], kinds[f.name]) for f in dataclasses.fields(cls) if f.name in kinds
    ]


def validate(instance, *, style: str = "python", where: Callable[[str], str] | None = None) -> None:
    """Check and canonicalise every option field of a (frozen) settings instance, in place.

    Lists become tuples and ints become floats where a float is declared.
    `where` names a field in messages (default: the Python name in backticks).
    """
    name_of = where or (lambda name: f"`{name}`")
    for f, meta, kind in _fields(type(instance)):
        value = check_value(kind, meta, getattr(instance, f.name), name_of(f.name), style)
        object.__setattr__(instance, f.name, value)


# ------------------------------------------------------------------------- TOML


def read_table(
    cls,
    document: dict,
    table: str,
    *,
    source: str,
    root: Path | None = None,
    label: str | None = None,
) -> dict:
    """The options of `cls` in TOML table `table` of `document`, checked strictly.

    Returns ``{field name: value}`` for the keys present. An unknown key, a
    value of the wrong type or out of range is an :class:`OptionError`
    naming `source`, the table (or `label`, e.g. ``[[pair]] number 2``) and
    the key. Paths are made relative to `root` (the config's folder) when
    they exist there; a hub id stays as written.
    """
    fields = {
        (meta.key or f.name): (f, meta, kind)
        for f, meta, kind in _fields(cls)
        if meta.table == table
    }
    heading = label or f"[{table}]"
    entries = document.get(table, {}) if label is None else document
    if not isinstance(entries, dict):
        raise OptionError(f"{source}: {heading} must be a table, got {shown(entries, 'toml')}")
    unknown = sorted(set(entries) - set(fields))
    if unknown:
        raise OptionError(
            f"{source}: unknown key(s) {', '.join(unknown)} in {heading}: valid are {', '.join(sorted(fields))}"
        )
    values = {}
    for key, raw in entries.items():
        f, meta, kind = fields[key]
        value = check_value(kind, meta, raw, f"{source}: {heading} {key}", "toml")
        if meta.path and root is not None and value is not None:
            value = tuple(_local(root, v) for v in value) if kind.many else _local(root, value)
        values[f.name] = value
    return values


def _local(root: Path, value: str) -> str:
    """A path relative to the config file's folder, when it exists there; otherwise as written."""
    expanded = Path(value).expanduser()
    if expanded.is_absolute():
        return str(expanded)
    candidate = root / value
    return str(candidate) if candidate.exists() else value


def to_table(instance, table: str) -> dict:
    """The options of `instance` that live in TOML table `table`, as TOML values (``None`` left out)."""
    out = {}
    for f, meta, _kind in _fields(type(instance)):
        if meta.table != table:
            continue
        value = getattr(instance, f.name)
        if value is None:
            continue
        out[meta.key or f.name] = list(value) if isinstance(value, tuple) else value
    return out


# ------------------------------------------------------------------------- flags


def flag_fields(cls) -> list[tuple[str, tuple[str, ...], Option, Kind, object]]:
    """``(field name, flags, declaration, kind, default)`` of every option of `cls` that has a flag."""
    out = []
    for f, meta, kind in _fields(cls):
        if not meta.flags:
            continue
        flags = tuple(
            "--" + f.name.replace("_", "-") if flag == AUTO else flag for flag in meta.flags
        )
        default = f.default if f.default is not MISSING else None
        out.append((f.name, flags, meta, kind, default))
    return out
