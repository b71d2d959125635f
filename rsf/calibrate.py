"""``rsf calibrate``: the planted-truth simulation study, into ``calibration.nc``."""

from __future__ import annotations

import dataclasses
import json

from robustness.calibration import CalibrationSettings, run_calibration
from robustness.dataset import write_dataset
from robustness.files import check_writable

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "calibrate", help="simulation study: type-I error, power, coverage"
    )
    parser.add_argument("--sims", type=int, help="null simulations (default 1000; 200 with --fast)")
    parser.add_argument("--fast", action="store_true", help="a quick study for CI (about a minute)")
    parser.add_argument(
        "--out", default="calibration.nc", help="output dataset (default calibration.nc)"
    )
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args) -> int:
    out = check_writable(args.out)
    settings = (
        CalibrationSettings.fast(seed=args.seed)
        if args.fast
        else CalibrationSettings(seed=args.seed)
    )
    if args.sims is not None:
        if args.sims < 10:
            raise ValueError(f"--sims must be at least 10, got {args.sims}")
        settings = dataclasses.replace(settings, n_null=args.sims)
    calibration = run_calibration(settings, progress=not args.quiet)
    write_dataset(calibration, out)
    alpha = calibration.attrs["alpha"]
    print(f"type-I error at α = {alpha} ({settings.n_null} null pairs, 95% Clopper-Pearson):")
    for test in calibration.test.values:
        row = calibration.sel(test=test)
        print(
            f"  {test:15s} {float(row.type1_error):.3f} [{float(row.type1_ci_low):.3f}, {float(row.type1_ci_high):.3f}]"
        )
    for plant in calibration.plant.values:
        print(f"rejection rate against the {plant} plant's strength β:")
        for test in calibration.test.values:
            rates = calibration.power.sel(test=test, plant=plant).values
            values = "  ".join(
                f"β={b:g}: {r:.2f}" for b, r in zip(calibration.strength.values, rates, strict=True)
            )
            print(f"  {test:15s} {values}")
    print("coverage of the 95% layer-bootstrap intervals (bootstrap-t is what rsf stats reports):")
    for method in calibration.interval.values:
        for scenario in calibration.scenario.values:
            row = calibration.sel(scenario=scenario, interval=method)
            low, high = float(row.coverage_ci_low), float(row.coverage_ci_high)
            print(
                f"  {method:12s} {scenario:22s} {float(row.coverage):.3f} [{low:.3f}, {high:.3f}]"
            )
    misses = json.loads(calibration.attrs["misses"])
    print("misses against the targets: " + ("; ".join(misses) if misses else "none"))
    if not args.quiet:
        print(f"wrote {out}")
    return 0
