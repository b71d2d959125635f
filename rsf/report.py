"""``rsf report``: the reviewer-facing HTML report from the datasets."""

from __future__ import annotations

from robustness.settings.options import Inputs, Output

from .options import add_options, read_options

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "report",
        help="the reviewer-facing HTML report from the datasets",
        description="One self-contained HTML file (inline figures, no network requests): "
        "verdict, specification curve, evidence, methods, provenance and caveats.",
    )
    add_options(parser, Inputs)
    add_options(parser, Output, title="output", defaults={"out": "report.html"})
    parser.set_defaults(run=run)


def run(args) -> int:
    from reports import write_report

    extra = read_options(Inputs, args, ("extra",)).get("extra", ())
    out = write_report(
        args.results,
        args.out,
        stats_path=args.stats,
        calibration_path=args.calibration,
        claims_path=args.claims,
        extra_paths=extra,
        mkdir=bool(args.mkdir),
    )
    print(f"wrote {out}")
    return 0
