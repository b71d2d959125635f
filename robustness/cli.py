"""The ``rsf`` command line.

``main(argv=None)`` so that tests call the CLI in-process. Errors a user can
cause are one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__

__all__ = ["main"]


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsf",
        description="Relative-subspace-fraction probe of transformer weight deltas, "
        "with robustness sweeps and honest uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"rsf {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (UserError, ValueError, FileNotFoundError, PermissionError) as error:
        print(f"rsf: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
