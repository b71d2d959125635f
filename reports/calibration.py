"""Section (g), calibration: type-I error, power and coverage of a calibration study."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from . import formatting as fmt
from .context import ReportContext
from .plotting import OKABE_ITO, SvgFigure, figure, finish
from .registry import Section
from .render import fragment
from .tables import Column, Row, Table

__all__ = ["calibration_section", "calibration_tables", "target_band"]


# ----------------------------------------------------------------------- (g) calibration


def target_band(calibration, name: str) -> tuple[float, float] | None:
    """A ``[low, high]`` target from the calibration's attrs (stored as JSON text or an array)."""
    raw = calibration.attrs.get(name)
    if raw is None:
        return None
    values = json.loads(raw) if isinstance(raw, str) else list(np.atleast_1d(raw))
    return (float(values[0]), float(values[1])) if len(values) == 2 else None


def calibration_tables(calibration) -> list[Table]:
    target = target_band(calibration, "type1_target")
    type1 = Table(
        "calibration-type1",
        "Type-I error under the isotropic null with 95% Clopper–Pearson intervals"
        + (f" (target {target[0]:g}–{target[1]:g})" if target else ""),
        (
            Column("test", "test", numeric=False),
            Column("type1_error", "type-I error"),
            Column("type1_ci_low", "CI low"),
            Column("type1_ci_high", "CI high"),
        ),  # fmt: skip
        tuple(
            Row(
                str(t),
                {
                    "test": fmt.text(t),
                    **{
                        v: fmt.rate(calibration[v].sel(test=t))
                        for v in ("type1_error", "type1_ci_low", "type1_ci_high")
                    },
                },
            )
            for t in calibration.test.values
        ),
    )
    power_columns = [Column("test", "test", numeric=False)]
    for plant in calibration.plant.values:
        for strength in calibration.strength.values:
            power_columns.append(Column(f"{plant}:{strength:g}", f"{plant} β = {strength:g}"))
    power = Table(
        "calibration-power",
        "Rejection rate against each plant's strength β (power; for the joint tests, which look for "
        "read > write, a write plant's rate is the wrong-direction rate)",
        tuple(power_columns),
        tuple(
            Row(
                str(t),
                {
                    "test": fmt.text(t),
                    **{
                        f"{plant}:{strength:g}": fmt.rate(
                            calibration.power.sel(test=t, plant=plant, strength=strength)
                        )
                        for plant in calibration.plant.values
                        for strength in calibration.strength.values
                    },
                },
            )  # fmt: skip
            for t in calibration.test.values
        ),
    )
    target = target_band(calibration, "coverage_target")
    coverage = Table(
        "calibration-coverage",
        "Coverage of the intervals over layers with 95% Clopper–Pearson intervals"
        + (f" (target {target[0]:g}–{target[1]:g})" if target else ""),
        (
            Column("interval", "interval", numeric=False),
            Column("scenario", "scenario", numeric=False),
            Column("coverage", "coverage"),
            Column("coverage_ci_low", "CI low"),
            Column("coverage_ci_high", "CI high"),
        ),  # fmt: skip
        tuple(
            Row(
                f"{i}|{s}",
                {
                    "interval": fmt.text(i),
                    "scenario": fmt.text(s),
                    **{
                        v: fmt.rate(calibration[v].sel(interval=i, scenario=s))
                        for v in ("coverage", "coverage_ci_low", "coverage_ci_high")
                    },
                },
            )  # fmt: skip
            for i in calibration.interval.values
            for s in calibration.scenario.values
        ),
    )
    return [type1, power, coverage]


def calibration_section(ctx: ReportContext) -> Section:
    calibration = ctx.calibration
    if calibration is None:
        body = fragment(
            "sections/missing.html.j2",
            needs="calibration.nc",
            command="rsf calibrate --out calibration.nc",
        )
        return Section("calibration", "Calibration", body)
    settings = json.loads(calibration.attrs.get("settings", "{}"))
    body = fragment(
        "sections/calibration.html.j2",
        settings=settings,
        attrs=calibration.attrs,
        misses=json.loads(calibration.attrs.get("misses", "[]") or "[]"),
        figure=calibration_errors(calibration, target_band(calibration, "type1_target")),
        tables=calibration_tables(calibration),
    )
    return Section("calibration", "Calibration", body)


def calibration_errors(calibration: xr.Dataset, target: tuple[float, float] | None) -> SvgFigure:
    """Type-I error of every test with its binomial interval, against the target band and α."""
    tests = [str(t) for t in calibration.test.values]
    error = calibration.type1_error.values
    low, high = calibration.type1_ci_low.values, calibration.type1_ci_high.values
    alpha = float(calibration.attrs.get("alpha", 0.05))
    fig = figure(6.0, 0.3 * len(tests) + 1.2)
    axis = fig.subplots()
    y = np.arange(len(tests))
    if target is not None:
        axis.axvspan(
            target[0],
            target[1],
            color=OKABE_ITO["sky_blue"],
            alpha=0.25,
            linewidth=0,
            label="target band",
        )
    axis.axvline(alpha, color="black", linewidth=0.7, linestyle=":", label=f"α = {alpha:g}")
    axis.errorbar(
        error, y, xerr=[error - low, high - error], fmt="o", color=OKABE_ITO["blue"], capsize=3
    )
    axis.set_yticks(y, tests)
    axis.invert_yaxis()
    axis.set_xlabel("type-I error under the isotropic null")
    axis.legend(loc="lower right")
    alt = (
        "Type-I error by test: "
        + "; ".join(
            f"{t} {e:.3f} [{lo:.3f}, {hi:.3f}]"
            for t, e, lo, hi in zip(tests, error, low, high, strict=True)
        )
        + "."
    )
    caption = (
        "Calibration: the rate at which each test rejects simulated pairs with no planted "
        "asymmetry, with 95% Clopper–Pearson intervals; a calibrated test sits in the target band around α."
    )
    return finish(fig, "fig-calibration", alt, caption)
