"""Flags derived from the option schema, and what they are read back into.

Every option is declared once, in the library's settings classes
(:mod:`robustness.settings.config`, :mod:`robustness.settings.options`; the machinery is
:mod:`robustness.settings.schema`). :func:`add_options` turns a class's declarations
into argparse flags with their help and defaults; :func:`read_options` reads
the flags a user gave back, checked by the same declarations, as keyword
arguments of that class. Nothing below ``rsf`` ever sees an ``argparse``
namespace, and nothing here imports torch or transformers: a command's
``--help`` and its argument errors return at once.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from robustness.settings.config import CorpusSpec, SweepConfig
from robustness.settings.schema import Kind, check_value, flag_fields

__all__ = [
    "Parser",
    "add_options",
    "cache_root",
    "command_corpus",
    "corpus_spec",
    "read_options",
    "sweep_config",
]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``rsf CMD: error: …`` and exit status 2, no usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _long(flags: tuple[str, ...]) -> str:
    """The flag named in messages: the first long one (``--quiet`` of ``-q, --quiet``)."""
    return next((flag for flag in flags if flag.startswith("--")), flags[0])


def _dest(flags: tuple[str, ...]) -> str:
    return _long(flags).lstrip("-").replace("-", "_")


def _converter(kind: Kind, meta, flag: str):
    """The flag's text → a checked value of the declared type (a comma list for tuples).

    The declaration's checks (range, allowed values, syntax) run here, while the
    arguments are parsed, so a bad value is argparse's one line before any
    library is imported: ``argument --resamples: must be at least 1, got 0``.
    """
    convert = {int: int, float: float, str: str}[kind.base]
    noun = {int: "integer", float: "number", str: "string"}[kind.base]

    def scalar(text: str):
        try:
            return convert(text.strip())
        except ValueError:
            article = "an" if noun[0] in "aeiou" else "a"
            raise argparse.ArgumentTypeError(f"{text.strip()!r} is not {article} {noun}") from None

    def parse(text: str):
        value = (
            tuple(scalar(part) for part in text.split(",") if part.strip())
            if kind.many
            else scalar(text)
        )
        try:
            return check_value(kind, meta, value, flag, "flag")
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(flag).lstrip(": ")) from None

    return parse


class _Alias(argparse.Action):
    """A value that has several spellings (``--resamples``, ``--permutations``): giving two
    different values under them is an error, not "the last one wins"."""

    def __call__(self, parser, namespace, value, option_string=None):
        before = getattr(namespace, self.dest, None)
        if before is not None and before != value and before != self.default:
            parser.error(
                f"{' and '.join(self.option_strings)} spell one option: give one value, "
                f"got {before!r} and {value!r}"
            )
        setattr(namespace, self.dest, value)


def _shown_default(default, meta) -> str | None:
    if default is None or default is False or default == () or meta.count:
        return None
    if isinstance(default, tuple):
        if meta.choices is not None and set(default) == set(meta.choices):
            return "all"
        return ",".join(map(str, default))
    return str(default)


def _group(parser, title: str | None):
    """The parser's argument group called `title` (made once), or the parser itself."""
    if title is None:
        return parser
    groups = parser.__dict__.setdefault("_rsf_groups", {})
    if title not in groups:
        groups[title] = parser.add_argument_group(title)
    return groups[title]


def add_options(
    parser,
    cls,
    names=None,
    *,
    title: str | None = None,
    defaults: dict | None = None,
    notes: dict | None = None,
) -> None:
    """Add the flags of `cls`'s options (those in `names`, default all) to `parser`.

    `defaults` replaces a declared default for this command (it is applied and
    shown in the help); `notes` replaces the help's "(default …)" text. A flag
    the parser already has is not added again: one flag then feeds every
    class that declares it (``--seed`` of a sweep and its training, say).
    """
    defaults, notes = defaults or {}, notes or {}
    group = _group(parser, title)
    taken = set(parser._option_string_actions)  # argparse keeps no public list of its flags
    declared = {entry[0]: entry for entry in flag_fields(cls)}
    for name in names if names is not None else declared:
        name, flags, meta, kind, default = declared[name]
        if any(flag in taken for flag in flags):
            continue
        default = defaults.get(name, default)
        shown = notes.get(name, _shown_default(default, meta))
        if name in notes:
            text = f"{meta.help} ({shown})"
        else:
            text = meta.help + (f" (default {shown})" if shown else "")
        if not flags[0].startswith("-"):
            group.add_argument(flags[0], help=text)
        elif meta.count:
            group.add_argument(*flags, action="count", default=0, dest=_dest(flags), help=text)
        elif kind.base is bool and not kind.many:
            group.add_argument(
                *flags, action="store_true", default=None, dest=_dest(flags), help=text
            )
        else:
            group.add_argument(
                *flags, type=_converter(kind, meta, _long(flags)), default=defaults.get(name),
                dest=_dest(flags), metavar=meta.metavar or _dest(flags).upper(), help=text,
                **({"action": _Alias} if len(flags) > 1 else {}),
            )  # fmt: skip


def read_options(cls, args, names=None) -> dict:
    """The options of `cls` the user gave (or a command's applied defaults), checked; ``{field: value}``.

    A flag left out is left out of the result, so the settings' own default
    (or a config file's value) stands. Errors name the flag: ``--resamples
    must be at least 1, got 0``.
    """
    values = {}
    for name, flags, meta, kind, _default in flag_fields(cls):
        if names is not None and name not in names:
            continue
        value = getattr(args, _dest(flags), None)
        if value is None or (meta.count and value == 0):
            continue
        values[name] = check_value(kind, meta, value, _long(flags), "flag")
    return values


# ---------------------------------------------------------------------------- readers


def cache_root(args):
    """The cache of ``--cache-dir``/``--no-cache`` (``None``: no cache)."""
    from robustness.measure.cache import default_cache_dir

    if getattr(args, "no_cache", False):
        return None
    return args.cache_dir or default_cache_dir()


def corpus_spec(args, base: CorpusSpec | None = None) -> CorpusSpec:
    """`base` (default the built-in corpus) with the corpus flags the user gave."""
    base = CorpusSpec() if base is None else base
    given = read_options(CorpusSpec, args)
    if "paths" in given:  # --corpus replaces the config's corpus, text or ids
        base = replace(base, paths=(), ids=None)
    return replace(base, **given)


def command_corpus(args, tokenizer_source: str, *, default_tokens: int, trust_remote_code=False):
    """The corpus of a command's corpus flags, text tokenised by `tokenizer_source`'s tokenizer.

    `default_tokens` is the command's count for text when ``--tokens`` is left
    out (an id file gives all its rows).
    """
    from robustness.measure.corpus import load_corpus

    spec = corpus_spec(args)
    if spec.ids is None and spec.tokens is None:
        spec = replace(spec, tokens=default_tokens)
    return load_corpus(spec, tokenizer_source=tokenizer_source, trust_remote_code=trust_remote_code)


def sweep_config(config: SweepConfig, args, **changes) -> SweepConfig:
    """`config` with the command's corpus, probe grid, bootstrap and run flags.

    Flags left out keep `config`'s values; `changes` are further settings of
    the command (``None`` keeps the value too).
    """
    return config.with_options(
        corpus=corpus_spec(args, config.corpus), **read_options(SweepConfig, args), **changes
    )


def note(args, message: str) -> None:
    """A note or warning for the user: one line on stderr, unless ``-qq``."""
    if getattr(args, "quiet", 0) < 2:
        print(message, file=sys.stderr)
