"""``rsf report``: the reviewer-facing HTML report from the datasets."""

from __future__ import annotations

from reports import write_report

from .options import split_list

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "report",
        help="the reviewer-facing HTML report from the datasets",
        description="One self-contained HTML file (inline figures, no network requests): "
        "verdict, specification curve, evidence, methods, provenance and caveats.",
    )
    parser.add_argument("results", help="results.nc written by rsf sweep")
    parser.add_argument("--stats", help="stats.nc written by rsf stats from the same results")
    parser.add_argument("--claims", help="claims.nc written by rsf claims from the same results")
    parser.add_argument("--calibration", help="calibration.nc written by rsf calibrate")
    parser.add_argument(
        "--extra",
        help="comma list of further datasets (rsf gradients, rsf experiment …), a section each",
    )
    parser.add_argument("--out", default="report.html", help="output file (default report.html)")
    parser.set_defaults(run=run)


def run(args) -> int:
    out = write_report(
        args.results,
        args.out,
        stats_path=args.stats,
        calibration_path=args.calibration,
        claims_path=args.claims,
        extra_paths=split_list(args.extra) or (),
    )
    print(f"wrote {out}")
    return 0
