"""``rsf stats``: test the read/write asymmetry of a results dataset, into ``stats.nc``."""

from __future__ import annotations

from robustness.settings.options import Inputs, Output, StatsOptions, Verbosity

from .options import add_options, note, read_options

__all__ = ["add_parser", "run", "summary"]


def add_parser(commands) -> None:
    parser = commands.add_parser("stats", help="test the read/write asymmetry in a results dataset")
    add_options(parser, Inputs, ("results",))
    add_options(parser, StatsOptions, ("read", "write"), title="pathway sets")
    add_options(parser, StatsOptions, ("confidence_level", "n_resamples", "alpha", "seed", "preferred",
                                       "experts"), title="tests")  # fmt: skip
    add_options(parser, Verbosity)
    add_options(parser, Output, title="output", defaults={"out": "stats.nc"})
    parser.set_defaults(run=run)


def run(args) -> int:
    import robustness
    from robustness.io.datasets import open_dataset, write_dataset
    from robustness.io.files import check_writable

    options = StatsOptions(**read_options(StatsOptions, args))
    out = check_writable(args.out, inputs=[args.results], mkdir=bool(args.mkdir))
    results = open_dataset(args.results, kind="results")
    stats = robustness.statistics(
        results,
        read=options.read,
        write=options.write,
        confidence_level=options.confidence_level,
        n_resamples=options.n_resamples,
        alpha=options.alpha,
        seed=options.seed,
        preferred=options.preferred if args.preferred is not None else None,
        experts=options.experts,
        progress=not args.quiet,
    )
    write_dataset(stats, out)
    if stats.attrs.get("preferred_note"):
        note(args, f"note: {stats.attrs['preferred_note']}")
    for pair, info in stats.robustness.per_pair().items():
        if "note" in info:
            note(args, f"note: pair {pair}: {info['note']}")
    print(summary(stats))
    if not args.quiet:
        print(f"\nwrote {out}")
    return 0


def summary(stats) -> str:
    """A readable summary of a statistics dataset, with the verdict in plain words."""
    from reports.verdict import plain_verdict

    lines = []
    per_pair = stats.robustness.per_pair()
    preferred = stats.robustness.preferred
    level = stats.attrs["confidence_level"]
    alpha = stats.attrs["alpha"]
    lines.append(f"read {{{stats.attrs['read_set']}}} vs write {{{stats.attrs['write_set']}}}; "
                 f"{level * 100:g}% intervals; α = {alpha}; tests over layers: EWC (dependence-robust)")  # fmt: skip
    for pair in stats.pair.values:
        info = per_pair[str(pair)]
        lines.append(
            f"\npair {pair} ({info['n_layers']} layers, {info.get('projections', '?')} cosine projections)"
        )
        sets = (info.get("read_set"), info.get("write_set"))
        if None not in sets and sets != (stats.attrs["read_set"], stats.attrs["write_set"]):
            lines.append(
                f"  tested: read {{{sets[0]}}} vs write {{{sets[1]}}} (the matrices its adapter targets)"
            )
        if "note" in info:
            lines.append(f"  note: {info['note']}")
        if info.get("k_mismatched_specifications"):
            lines.append(f"  {info['k_mismatched_specifications']} specification(s) not counted: their read and "
                         "write ranks differ more than 4-fold at some layer (see not_counted_reason)")  # fmt: skip
        if "median_effect" not in info.get("joint", {}):
            lines.append(
                "  verdict: " + plain_verdict(info.get("joint", {}), info["n_layers"], alpha)
            )
            continue
        joint = info["joint"]
        cell = stats.sel(
            pair=pair, construction=preferred[0], cutoff=preferred[1], normalisation=preferred[2]
        )
        lines.append(f"  preferred specification {preferred}: asymmetry {float(cell.asymmetry):+.3f} "
                     f"[{float(cell.ci_low):+.3f}, {float(cell.ci_high):+.3f}], p = {float(cell.p_value):.3g} (EWC); "
                     f"exchangeable-layers sign-flip p = {float(cell.p_signflip):.3g}; "
                     f"lag-1 autocorrelation {float(cell.lag1_autocorrelation):+.2f}")  # fmt: skip
        expected = info.get("expected_share", {})
        lines.append(f"  {joint['n_specifications']} counted specifications: median effect size d_z = {joint['median_effect']:+.2f} "
                     f"(joint p = {joint['p_median_effect']:.3g}); {joint['share_significant']:.0%} significant with "
                     f"read > write (joint p = {joint['p_share_significant']:.3g}; expected "
                     f"{expected.get('under_null', float('nan')):.1%} under the null and "
                     f"{expected.get('under_median_effect', float('nan')):.0%} if every specification had the median effect); "
                     f"Stouffer Z = {joint['stouffer_z']:.2f} (joint p = {joint['p_stouffer_z']:.3g})")  # fmt: skip
        shares = info.get("variance_shares", {})
        if shares:
            driver = max((k for k in shares if k != "residual"), key=shares.get, default=None)
            if driver:
                lines.append(
                    f"  the choice that moves the result most: {driver} ({shares[driver]:.0%} of the variation in effect size)"
                )
        stability = info.get("ranking_stability", {})
        if stability:
            lines.append(
                f"  layer rankings across specifications: Kendall's W = {stability['kendall_w']:.2f}, ICC(A,1) = {stability['icc_agreement']:.2f}"
            )
        lines.append("  verdict: " + plain_verdict(joint, info["n_layers"], alpha))
    models = stats.robustness.pair_model()
    for phase, model in models.items():
        if phase == "specification" or "overall" not in model:
            continue
        overall, difference = model["overall"], model["difference"]
        lines.append(f"\npairs of phase {phase} ({', '.join(model['pairs'])}): overall asymmetry "
                     f"{overall['estimate']:+.3f} [{overall['ci_low']:+.3f}, {overall['ci_high']:+.3f}], "
                     f"p = {overall['p_value']:.3g}; difference between pairs F = {difference['F']:.2f}, "
                     f"p = {difference['p_value']:.3g}")  # fmt: skip
    return "\n".join(lines)
