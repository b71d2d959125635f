"""``rsf claims``: the paper's claims, one by one, into ``claims.nc``."""

from __future__ import annotations

import xarray as xr

from robustness.dataset import open_dataset
from robustness.files import check_writable
from robustness.paper import paper_claims

from .options import split_list
from .output import publish

__all__ = ["add_parser", "claim_lines", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "claims",
        help="test each of the paper's claims as stated, with its robustness",
        description="Every claim of the paper tested as stated (levels against each delta's Haar "
        "reference, equivalence for near-isotropy, dependence-robust tests over layers), with a "
        "verdict at its preferred specification and its robustness over the eligible ones.",
    )
    parser.add_argument("results", help="results.nc written by rsf sweep")
    parser.add_argument("--stats", help="stats.nc written by rsf stats from the same results")
    parser.add_argument(
        "--extra",
        help="comma list of gradients.nc, trajectory.nc, contrastive.nc, rank1.nc (the mechanism claims)",
    )
    parser.add_argument(
        "--isotropy-margin", type=float, default=0.5,
        help="equivalence margin of write_isotropy, log2 units (default 0.5, a factor √2)",
    )  # fmt: skip
    parser.add_argument(
        "--graded-margin", type=float, default=0.25,
        help="non-inferiority margin of graded_control, log2 per unit λ (default 0.25)",
    )  # fmt: skip
    parser.add_argument(
        "--alpha", type=float, default=0.05, help="significance level (default 0.05)"
    )
    parser.add_argument(
        "--resamples", type=int, default=9999, help="rotations of the joint tests (default 9999)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the rotations (default 0)")
    parser.add_argument("--out", default="claims.nc", help="output dataset (default claims.nc)")
    parser.add_argument("--quiet", action="store_true", help="no 'wrote' line")
    parser.set_defaults(run=run)


def run(args) -> int:
    for name in ("isotropy_margin", "graded_margin"):
        if not getattr(args, name) > 0:
            raise ValueError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    out = check_writable(args.out)
    results = open_dataset(args.results)
    if "rsf" not in results:
        raise ValueError(f"{args.results} is not an rsf results dataset (no `rsf` variable)")
    stats = open_dataset(args.stats) if args.stats else None
    extras = [open_dataset(path) for path in split_list(args.extra) or ()]
    claims = paper_claims(
        results, stats=stats, extras=extras, isotropy_margin=args.isotropy_margin,
        graded_margin=args.graded_margin, alpha=args.alpha, n_resamples=args.resamples, seed=args.seed,
    )  # fmt: skip
    return publish(claims, out, claim_lines(claims), quiet=args.quiet)


def claim_lines(claims: xr.Dataset) -> list[str]:
    """A table per pair (claim, verdict, estimate with interval, reference, p, robustness) and a summary line."""
    lines = []
    for pair in claims.pair.values:
        rows = claims.sel(pair=pair)
        lines.append(f"pair {pair} ({str(rows.phase.values)})")
        lines.append(f"  {'claim':31s} {'verdict':13s} {'estimate [interval]':>28s} {'reference':>9s} "
                     f"{'p':>8s} {'robust':>7s}")  # fmt: skip
        counts = {}
        for claim in rows.claim.values:
            row = rows.sel(claim=claim)
            verdict = str(row.verdict.values)
            counts[verdict] = counts.get(verdict, 0) + 1
            estimate = float(row.estimate)
            interval = (
                f"{estimate:+.3f} [{float(row.ci_low):+.3f}, {float(row.ci_high):+.3f}]"
                if estimate == estimate
                else "—"
            )
            reference = (
                f"{float(row.reference):+.3f}"
                if float(row.reference) == float(row.reference)
                else "—"
            )
            p = f"{float(row.p_value):.3g}" if float(row.p_value) == float(row.p_value) else "—"
            share = float(row.robust_share)
            robust = f"{share:.0%}" if share == share else "—"
            lines.append(
                f"  {str(claim):31s} {verdict:13s} {interval:>28s} {reference:>9s} {p:>8s} {robust:>7s}"
            )
            if verdict == "not_tested":
                lines.append(f"      {str(row.reason.values)}")
        summary = ", ".join(
            f"{counts[v]} {v}"
            for v in ("supported", "contradicted", "inconclusive", "not_tested")
            if v in counts
        )
        lines.append(f"  {pair}: {summary}")
    return lines
