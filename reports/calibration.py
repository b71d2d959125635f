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


def _other_dim(variable, known: str) -> str | None:
    """The dimension of `variable` besides `known` (the scenario a rate was measured in), if any."""
    others = [d for d in variable.dims if d != known]
    return others[0] if others else None


def _holds(calibration, name: str, selection: dict):
    if name not in calibration:
        return None
    return fmt.text("yes" if int(calibration[name].sel(selection)) else "no")


def calibration_tables(calibration) -> list[Table]:
    """The calibration study's tables: type-I error, power, coverage and, when run, the sequence bootstrap's."""
    tables = [_type1_table(calibration), _power_table(calibration), _coverage_table(calibration)]
    if "seq_coverage" in calibration:
        tables.append(_sequence_table(calibration))
    return tables


def _type1_table(calibration) -> Table:
    """Type-I error per test (and per null scenario, when the study ran several)."""
    target = target_band(calibration, "type1_target")
    scenario = _other_dim(calibration.type1_error, "test")
    keys = [(t, sc) for t in calibration.test.values
            for sc in (calibration[scenario].values if scenario else [None])]  # fmt: skip

    def where(t, sc, dim):
        return {"test": t} | ({dim: sc} if sc is not None else {})

    type1_columns = [Column("test", "test", numeric=False)]
    if scenario:
        type1_columns.append(Column("scenario", "scenario", numeric=False))
    type1_columns += [Column("type1_error", "type-I error"), Column("type1_ci_low", "CI low"),
                      Column("type1_ci_high", "CI high")]  # fmt: skip
    if "assumptions_hold" in calibration:
        type1_columns.append(Column("assumptions_hold", "assumptions hold", numeric=False))
    return Table(
        "calibration-type1",
        "Type-I error under each null scenario with 95% Clopper–Pearson intervals"
        + (
            f" (target {target[0]:g}–{target[1]:g} where the test's assumptions hold)"
            if target
            else ""
        ),
        tuple(type1_columns),
        tuple(
            Row(
                f"{t}|{sc}" if sc is not None else str(t),
                {
                    "test": fmt.text(t),
                    **({"scenario": fmt.text(sc)} if sc is not None else {}),
                    **{
                        v: fmt.rate(calibration[v].sel(where(t, sc, scenario)))
                        for v in ("type1_error", "type1_ci_low", "type1_ci_high")
                    },
                    **(
                        {
                            "assumptions_hold": _holds(
                                calibration, "assumptions_hold", where(t, sc, scenario)
                            )
                        }
                        if "assumptions_hold" in calibration
                        else {}
                    ),
                },
            )  # fmt: skip
            for t, sc in keys
        ),
        scroll=scenario is not None,
    )


def _power_table(calibration) -> Table:
    """Rejection rate per test against each plant and strength."""
    power_columns = [Column("test", "test", numeric=False)]
    for plant in calibration.plant.values:
        for strength in calibration.strength.values:
            power_columns.append(Column(f"{plant}:{strength:g}", f"{plant} β = {strength:g}"))
    return Table(
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


def _coverage_table(calibration) -> Table:
    """Coverage of each interval over layers, per scenario."""
    target = target_band(calibration, "coverage_target")
    where_dim = _other_dim(calibration.coverage, "interval")
    coverage_columns = [Column("interval", "interval", numeric=False),
                        Column("scenario", "scenario", numeric=False),
                        Column("coverage", "coverage"), Column("coverage_ci_low", "CI low"),
                        Column("coverage_ci_high", "CI high")]  # fmt: skip
    if "coverage_assumptions_hold" in calibration:
        coverage_columns.append(Column("assumptions_hold", "assumptions hold", numeric=False))
    return Table(
        "calibration-coverage",
        "Coverage of the intervals over layers with 95% Clopper–Pearson intervals"
        + (f" (target {target[0]:g}–{target[1]:g})" if target else ""),
        tuple(coverage_columns),
        tuple(
            Row(
                f"{i}|{s}",
                {
                    "interval": fmt.text(i),
                    "scenario": fmt.text(s),
                    **{
                        v: fmt.rate(calibration[v].sel({"interval": i, where_dim: s}))
                        for v in ("coverage", "coverage_ci_low", "coverage_ci_high")
                    },
                    **(
                        {
                            "assumptions_hold": _holds(
                                calibration,
                                "coverage_assumptions_hold",
                                {"interval": i, where_dim: s},
                            )
                        }
                        if "coverage_assumptions_hold" in calibration
                        else {}
                    ),
                },
            )  # fmt: skip
            for i in calibration.interval.values
            for s in calibration[where_dim].values
        ),
        scroll=True,
    )


def _sequence_table(calibration) -> Table:
    """Coverage of the sequence-bootstrap intervals, one row per setting the study varied."""
    dims = list(calibration.seq_coverage.dims)
    frame = calibration[["seq_coverage", "seq_coverage_ci_low", "seq_coverage_ci_high"]]
    frame = frame.to_dataframe().reset_index()
    return Table(
        "calibration-sequence",
        "Coverage of the sequence-bootstrap intervals with 95% Clopper–Pearson intervals",
        (*(Column(d, d.removeprefix("seq_").replace("_", " "), numeric=False) for d in dims),
         Column("seq_coverage", "coverage"), Column("seq_coverage_ci_low", "CI low"),
         Column("seq_coverage_ci_high", "CI high")),
        tuple(
            Row("|".join(str(r[d]) for d in dims), {
                **{d: fmt.text(f"{r[d]:g}" if isinstance(r[d], float) else r[d]) for d in dims},
                **{v: fmt.rate(r[v]) for v in ("seq_coverage", "seq_coverage_ci_low", "seq_coverage_ci_high")},
            })
            for _, r in frame.iterrows()
        ),
    )  # fmt: skip


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
        assumptions=json.loads(calibration.attrs.get("assumption_rules", "{}") or "{}"),
        figure=calibration_errors(calibration, target_band(calibration, "type1_target")),
        tables=calibration_tables(calibration),
    )
    return Section("calibration", "Calibration", body)


def calibration_errors(calibration: xr.Dataset, target: tuple[float, float] | None) -> SvgFigure:
    """Type-I error of every test with its binomial interval, against the target band and α.

    With several null scenarios, the first (the isotropic null) is drawn; the table has them all.
    """
    tests = [str(t) for t in calibration.test.values]
    scenario = _other_dim(calibration.type1_error, "test")
    first = {scenario: calibration[scenario].values[0]} if scenario else {}
    error = calibration.type1_error.sel(first).values
    low = calibration.type1_ci_low.sel(first).values
    high = calibration.type1_ci_high.sel(first).values
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
    shown = np.isfinite(error)
    axis.errorbar(error[shown], y[shown], xerr=[(error - low)[shown], (high - error)[shown]],
                  fmt="o", color=OKABE_ITO["blue"], capsize=3)  # fmt: skip
    axis.set_yticks(y, tests)
    axis.invert_yaxis()
    where = f" ({first[scenario]} scenario)" if scenario else ""
    axis.set_xlabel(f"type-I error under the isotropic null{where}")
    axis.legend(loc="lower right")
    alt = (
        f"Type-I error by test{where}: "
        + "; ".join(
            f"{t} {e:.3f} [{lo:.3f}, {hi:.3f}]"
            for t, e, lo, hi in zip(tests, error, low, high, strict=True)
        )
        + "."
    )
    caption = (
        "Calibration: the rate at which each test rejects simulated pairs with no planted "
        f"asymmetry{where}, with 95% Clopper–Pearson intervals; a calibrated test sits in the target "
        "band around α."
        + (
            " The table gives every null scenario and whether each test's assumptions hold in it."
            if scenario
            else ""
        )
    )
    return finish(fig, "fig-calibration", alt, caption)
