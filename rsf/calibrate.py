"""``rsf calibrate``: the planted-truth simulation study, into ``calibration.nc``."""

from __future__ import annotations

import dataclasses
import json

from robustness.settings.options import CalibrationMode, CalibrationSettings, Output, Verbosity

from .options import add_options, read_options

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "calibrate", help="simulation study: type-I error, power, coverage"
    )
    add_options(parser, CalibrationSettings)
    add_options(parser, CalibrationMode)
    add_options(parser, Verbosity)
    add_options(parser, Output, title="output", defaults={"out": "calibration.nc"})
    parser.set_defaults(run=run)


def run(args) -> int:
    import robustness.api
    from robustness.io.datasets import write_dataset
    from robustness.io.files import check_writable

    out = check_writable(args.out, mkdir=bool(args.mkdir))
    given = read_options(CalibrationSettings, args)
    settings = (
        CalibrationSettings.fast(seed=given.get("seed", 0)) if args.fast else CalibrationSettings()
    )
    settings = dataclasses.replace(settings, **given)
    calibration = robustness.api.calibrate(settings, progress=not args.quiet)
    write_dataset(calibration, out)
    print("\n".join(summary_lines(calibration, settings)))
    misses = json.loads(calibration.attrs["misses"])
    print("misses against the targets: " + ("; ".join(misses) if misses else "none"))
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def summary_lines(calibration, settings) -> list[str]:
    """Type-I error per scenario (with whether the test's assumptions hold), power, coverage."""
    alpha = calibration.attrs["alpha"]
    lines = [f"type-I error at α = {alpha} ({settings.n_null} studies per scenario, 95% Clopper-Pearson; "
             "* = the test's assumptions do not hold there):"]  # fmt: skip
    scenarios = [str(s) for s in calibration.scenario.values]
    lines.append("  " + f"{'test':17s}" + "".join(f"{s[:14]:>16s}" for s in scenarios))
    for test in calibration.test.values:
        cells = []
        for scenario in scenarios:
            cell = calibration.sel(test=test, scenario=scenario)
            value = float(cell.type1_error)
            mark = "" if int(cell.assumptions_hold) else "*"
            cells.append(f"{value:.3f}{mark}" if value == value else "—")
        lines.append("  " + f"{str(test):17s}" + "".join(f"{c:>16s}" for c in cells))
    for plant in calibration.plant.values:
        lines.append(f"rejection rate against the {plant} plant's strength β:")
        for test in calibration.test.values:
            rates = calibration.power.sel(test=test, plant=plant).values
            if not (rates == rates).any():
                continue
            values = "  ".join(
                f"β={b:g}: {r:.2f}" for b, r in zip(calibration.strength.values, rates, strict=True)
            )
            lines.append(f"  {str(test):17s} {values}")
    lines.append("coverage of the 95% intervals over layers (ewc is what rsf stats reports):")
    for method in calibration.interval.values:
        for scenario in calibration.coverage_scenario.values:
            row = calibration.sel(coverage_scenario=scenario, interval=method)
            low, high = float(row.coverage_ci_low), float(row.coverage_ci_high)
            mark = "" if int(row.coverage_assumptions_hold) else " *"
            lines.append(
                f"  {str(method):12s} {str(scenario):22s} {float(row.coverage):.3f} [{low:.3f}, {high:.3f}]{mark}"
            )
    lines.append(
        "sequence bootstrap coverage (BCa / percentile), by chunk effect, replicates and cutoff:"
    )
    for effect in calibration.chunk_effect.values:
        for count in calibration.seq_replicates.values:
            cells = []
            for cutoff in calibration.seq_cutoff.values:
                bca, pct = (
                    float(calibration.seq_coverage.sel(seq_method=m, chunk_effect=effect,
                                                       seq_replicates=count, seq_cutoff=cutoff))
                    for m in ("BCa", "percentile")
                )  # fmt: skip
                cells.append(f"{cutoff}: {bca:.2f}/{pct:.2f}")
            lines.append(f"  η={effect:g}, {int(count)} replicates: " + "  ".join(cells))
    return lines
