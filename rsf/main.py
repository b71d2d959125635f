"""``rsf``: the parser, the commands, and errors mapped to one line and exit status 2.

Errors a user can cause (a bad path, an unknown name, a mismatched pair, an
unwritable output, …) are raised by the library as ``ValueError`` and
friends; here they become one line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from robustness import __version__

from . import calibrate, claims, demo, experiment, gradients, inspect, report, stats, sweep

__all__ = ["build_parser", "main"]

COMMANDS = (sweep, stats, claims, calibrate, report, inspect, gradients, experiment, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsf",
        description="Relative-subspace-fraction probe of transformer weight deltas, "
        "with robustness sweeps and honest uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"rsf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    args = parser.parse_args(argv)
    if getattr(args, "command", None) is None:
        parser.print_help()
        return 0
    quiet = getattr(args, "quiet", False)
    if quiet:
        quiet_libraries()
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            return args.run(args)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        print(f"rsf: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rsf: interrupted; finished statistics stay in the cache", file=sys.stderr)
        return 130
