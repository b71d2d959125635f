"""``rsf claims``: the paper's claims, one by one, into ``claims.nc``."""

from __future__ import annotations

from robustness.settings.options import ClaimsOptions, Inputs, Output, Verbosity

from .options import add_options, read_options
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
    add_options(parser, Inputs, ("results", "stats", "extra"))
    add_options(parser, ClaimsOptions, title="rules",
                notes={"isotropy_margin": "default: --margin", "graded_margin": "default: --margin"})  # fmt: skip
    add_options(parser, Verbosity)
    add_options(parser, Output, title="output", defaults={"out": "claims.nc"})
    parser.set_defaults(run=run)


def run(args) -> int:
    import robustness
    from robustness.io.datasets import open_dataset
    from robustness.io.files import check_writable

    options = ClaimsOptions(**read_options(ClaimsOptions, args))
    extra = read_options(Inputs, args, ("extra",)).get("extra", ())
    inputs = [args.results, args.stats, *extra]
    out = check_writable(args.out, inputs=inputs, mkdir=bool(args.mkdir))
    results = open_dataset(args.results, "results")
    stats = open_dataset(args.stats, "stats") if args.stats else None
    extras = [open_dataset(path) for path in extra]
    claims = robustness.paper_claims(
        results, stats=stats, extra=extras, margin=options.margin,
        isotropy_margin=options.isotropy_margin, graded_margin=options.graded_margin,
        alpha=options.alpha, n_resamples=options.n_resamples, seed=options.seed,
        experts=options.experts,
    )  # fmt: skip
    return publish(claims, out, claim_lines(claims), quiet=args.quiet)


def claim_lines(claims) -> list[str]:
    """A table per pair (claim, verdict, estimate with interval, p and its Holm adjustment, the
    excess over the mechanism, the margin needed, robustness) and a summary line."""

    def number(value, rule: str) -> str:
        value = float(value)
        return format(value, rule) if value == value else "—"

    lines = [
        f"margin ±{claims.attrs.get('margin', claims.attrs['isotropy_margin']):g} log2; α = "
        f"{claims.attrs['alpha']:g}, decided per pair with Holm across its tested claims; intervals "
        f"at {100 * (1 - 2 * claims.attrs['alpha']):g}%"
    ]
    for pair in claims.pair.values:
        rows = claims.sel(pair=pair)
        lines.append(f"pair {pair} ({str(rows.phase.values)})")
        lines.append(f"  {'claim':31s} {'verdict':13s} {'estimate [interval]':>28s} {'p':>8s} "
                     f"{'p Holm':>8s} {'excess':>7s} {'margin':>7s} {'robust':>10s}")  # fmt: skip
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
            share = float(row.robust_share)
            n = int(row.robust_n) if "robust_n" in row else 0
            robust = f"{share:.0%} of {n}" if share == share else "—"
            lines.append(
                f"  {str(claim):31s} {verdict:13s} {interval:>28s} {number(row.p_value, '.3g'):>8s} "
                f"{number(row.p_adjusted, '.3g'):>8s} {number(row.excess, '+.2f'):>7s} "
                f"{number(row.margin_needed, '+.2f'):>7s} {robust:>10s}"
            )
            if verdict == "not_tested" or (verdict == "inconclusive" and str(row.reason.values)):
                lines.append(f"      {str(row.reason.values)}")
        summary = ", ".join(
            f"{counts[v]} {v}"
            for v in ("supported", "contradicted", "inconclusive", "not_tested")
            if v in counts
        )
        lines.append(f"  {pair}: {summary}")
    return lines
