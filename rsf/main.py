"""``rsf``: the parser, the commands, and errors mapped to one line and exit status 2.

Errors a user can cause (a bad path, an unknown name, a mismatched pair, an
unwritable output, a corrupt checkpoint, …) are raised by the library as
``ValueError`` and friends; here they become one line on stderr and exit
status 2, never a traceback. Argument errors are one line too
(:class:`rsf.options.Parser`).

The parser is built from the option schema alone: building it, ``--help``
and argument errors import neither torch nor transformers. A command imports
the library it runs when it runs.
"""

from __future__ import annotations

import logging
import sys
import warnings

from robustness import __version__

from . import (
    calibrate,
    claims,
    demo,
    experiment,
    export,
    gradients,
    inspect,
    report,
    revisions,
    stats,
    sweep,
)
from .options import Parser

__all__ = ["build_parser", "main"]

COMMANDS = (
    sweep, stats, claims, calibrate, report, inspect, revisions, export, gradients, experiment, demo,
)  # fmt: skip


def build_parser() -> Parser:
    parser = Parser(
        prog="rsf",
        description="Relative-subspace-fraction probe of transformer weight deltas, "
        "with robustness sweeps and honest uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"rsf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def quiet_libraries() -> None:
    """Silence the libraries' own progress bars and chatter (``--quiet``)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover - older hub clients
        pass
    logging.getLogger("distributed").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except (
        SystemExit
    ) as done:  # --help, --version, or an argument error (one line, already printed)
        return done.code if isinstance(done.code, int) else 2
    if getattr(args, "command", None) is None:
        print(parser.format_usage().rstrip(), file=sys.stderr)
        print("rsf: error: a command is needed (see rsf --help)", file=sys.stderr)
        return 2
    quiet = getattr(args, "quiet", 0)
    from robustness.io.provenance import recording_command  # standard library only

    try:
        if quiet:
            quiet_libraries()
        with warnings.catch_warnings(), recording_command(sys.argv[1:] if argv is None else argv):
            if quiet > 1:
                warnings.simplefilter("ignore")
            return args.run(args)
    except (ValueError, OSError) as error:  # OptionError, FileNotFoundError, … among them
        print(f"rsf: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rsf: interrupted; finished statistics stay in the cache", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return " ".join(text.split())
