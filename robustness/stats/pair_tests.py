"""One pair's statistics: which specifications it counts, their tests and its summary.

For one pair of a results dataset, on the statistics' scale (:func:`scaled`):
the read and write sets it can be tested on (a LoRA pair: its targeted
matrices), which specifications count (:mod:`robustness.stats.curve`: controls,
duplicates, undefined ones, mismatched ranks), each specification's tests
(:func:`robustness.stats.asymmetry.spec_tests`, against the random control's
Haar reference), the sweep's sequence-bootstrap intervals, and the per-pair
summary ``stats.nc`` keeps: counts, the joint tests, the variance
decomposition, the ranking stability and the expected shares of significant
specifications.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats as scipy_stats

from robustness.measure.experts import ExpertSpectra
from robustness.measure.resampling import bca_interval, percentile_interval
from robustness.settings.specification import CONTROLS, SPEC_DIMS, probe_scale
from robustness.stats import curve
from robustness.stats.asymmetry import SpecTests, spec_tests
from robustness.stats.layers import MIN_LAYERS, projections_for

__all__ = [
    "CORPUS_CONSTRUCTIONS",
    "NULL_DRAWS",
    "SEQUENCE_NAMES",
    "STAT_NAMES",
    "PairStatistics",
    "StatsGrid",
    "expected_shares",
    "pair_statistics",
]

CORPUS_CONSTRUCTIONS = ("act_cov", "act_moment", "act_cov_aligned")
STAT_NAMES = ("asymmetry", "reference", "ci_low", "ci_high", "p_value", "p_greater", "p_signflip",
              "p_perm", "p_adj", "p_wy", "effect_size", "effect_ci_low", "effect_ci_high",
              "lag1_autocorrelation", "effective_layers")  # fmt: skip
SEQUENCE_NAMES = ("seq_ci_low", "seq_ci_high", "seq_ci_low_bca", "seq_ci_high_bca",
                  "seq_ci_low_percentile", "seq_ci_high_percentile")  # fmt: skip
NULL_DRAWS = 1000  # draws of the rotation null kept per specification (null_asymmetry)


@dataclass(frozen=True)
class StatsGrid:
    """What every pair is tested on: the chosen sets, the specifications and the statistics kept.

    `specs` are ``(construction, cutoff, normalisation)`` in C order over the
    results' coordinates; `names` the per-specification statistics (with
    :data:`SEQUENCE_NAMES` when `boot`, the sweep having a sequence bootstrap).
    """

    read: list[str]
    write: list[str]
    specs: list[tuple[str, str, str]]
    names: tuple[str, ...]
    boot: bool


@dataclass(frozen=True)
class PairView:
    """One pair of the results as the tests see it: its layers and its read and write matrices."""

    results: xr.Dataset
    pair: object
    n_layers: int
    read_idx: list[int]
    write_idx: list[int]

    def scaled(self, variable: str = "rsf") -> np.ndarray:
        """``[..., layer, matrix, spec]``: the pair's `variable` on the statistics' scale."""
        block = self.results[variable].sel(pair=self.pair).isel(layer=slice(0, self.n_layers))
        return scaled(block, self.n_layers, self.results.sizes["matrix"])


@dataclass(frozen=True)
class SpecCounting:
    """Which of a pair's specifications count (arrays over specifications, C order)."""

    duplicate_of: list[str]
    counted: np.ndarray  # substantive, not a duplicate, read and write ranks matched
    complete: np.ndarray  # finite at every layer and read or write matrix
    matched: np.ndarray
    reasons: list[str]  # why not counted ("" when counted)


@dataclass
class PairStatistics:
    """One pair's results: its summary (``info``) and what could be computed for it.

    ``duplicate_of``, ``counted`` (counted and complete) and ``reasons`` per
    specification once the pair has read and write matrices; ``flat`` (each
    statistic per specification), ``null`` (the rotation null's draws) and
    ``differences`` (read − write per layer and specification) once it has
    complete specifications and two layers.
    """

    info: dict
    duplicate_of: np.ndarray | None = None
    counted: np.ndarray | None = None
    reasons: np.ndarray | None = None
    flat: dict[str, np.ndarray] = field(default_factory=dict)
    null: np.ndarray | None = None
    differences: np.ndarray | None = None


def scaled(block: xr.DataArray, n_layers: int, n_matrices: int) -> np.ndarray:
    """``[..., layer, matrix, spec]``: the probe on the statistics' scale, specs flattened in C order.

    `block` is one pair's ``rsf``-like array (leading dims, then layer, matrix,
    construction, cutoff, normalisation); each normalisation gets its own scale.
    """
    values = np.stack(
        [probe_scale(block.sel(normalisation=n).values, n) for n in block.normalisation.values],
        axis=-1,
    )
    return values.reshape(*values.shape[: values.ndim - 5], n_layers, n_matrices, -1)


def pair_statistics(
    results: xr.Dataset, pair, grid: StatsGrid, options, rng: np.random.Generator
) -> PairStatistics:
    """One pair's counting, tests and summary (`options`: the :class:`StatsOptions` in force)."""
    matrices = list(results.matrix.values)
    n_layers = _n_layers(results, pair)
    pair_read, pair_write = _targeted_sets(results, pair, grid.read, grid.write)
    if not pair_read or not pair_write:
        missing = [f"no {name} matrix ({', '.join(chosen)})" for name, chosen, kept in
                   (("read", grid.read, pair_read), ("write", grid.write, pair_write)) if not kept]  # fmt: skip
        note = f"its LoRA adapter targets {' and '.join(missing)}: the asymmetry is not tested"
        return PairStatistics(info={"n_layers": n_layers, "note": note})
    view = PairView(results, pair, n_layers, [matrices.index(m) for m in pair_read],
                    [matrices.index(m) for m in pair_write])  # fmt: skip
    s = view.scaled()  # [layer, matrix, spec]
    counting = _count_specifications(view, s, grid.specs, options.preferred)
    out = PairStatistics(
        info=_counting_summary(n_layers, pair_read, pair_write, counting),
        duplicate_of=np.asarray(counting.duplicate_of, dtype=object),
        counted=counting.counted & counting.complete,
        reasons=np.asarray(counting.reasons, dtype=object),
    )
    if counting.complete.sum() == 0 or n_layers < 2:
        return out
    complete = counting.complete
    tests = spec_tests(
        s[:, :, complete], view.read_idx, view.write_idx,
        reference=_references(view, grid.specs)[:, complete], counted=counting.counted[complete],
        confidence_level=options.confidence_level, n_resamples=options.n_resamples,
        alpha=options.alpha, rng=rng, n_null_draws=NULL_DRAWS,
    )  # fmt: skip
    out.flat = {name: np.full(complete.size, np.nan) for name in grid.names}
    for name in grid.names:
        if hasattr(tests, name):
            out.flat[name][complete] = getattr(tests, name)
    if grid.boot:
        out.flat.update(_sequence_intervals(view, options.confidence_level))
    out.null = np.full((complete.size, NULL_DRAWS), np.nan)
    out.null[complete, : tests.null_draws.shape[0]] = tests.null_draws.T
    out.differences = s[:, view.read_idx].mean(axis=1) - s[:, view.write_idx].mean(axis=1)
    out.info.update(_curve_summary(tests, out, grid.specs, options.alpha))
    return out


def _n_layers(results: xr.Dataset, pair) -> int:
    return int(results.n_layers.sel(pair=pair)) if "n_layers" in results else results.sizes["layer"]


def _targeted_sets(results, pair, read, write) -> tuple[list[str], list[str]]:
    """The read and write sets a pair can be tested on: for a LoRA pair, the targeted matrices only."""
    if "targeted_matrices" not in results:
        return list(read), list(write)
    targeted = str(results.targeted_matrices.sel(pair=pair).values)
    if not targeted:  # a full model: every matrix has a delta
        return list(read), list(write)
    kept = set(targeted.split(","))
    return [m for m in read if m in kept], [m for m in write if m in kept]


def _count_specifications(view: PairView, s: np.ndarray, specs, preferred) -> SpecCounting:
    """Duplicates, matched ranks and completeness: which specifications the curve counts, and why not."""
    duplicate_of = curve.duplicates(s, specs, preferred)
    matched, mismatch = curve.matched_k(
        _spec_ranks(view.results, view.pair, view.n_layers), view.read_idx, view.write_idx
    )
    counted = curve.counted_mask(specs, duplicate_of, matched)
    complete = np.isfinite(s[:, view.read_idx + view.write_idx]).all(axis=(0, 1))
    reasons = _not_counted_reasons(specs, duplicate_of, complete, mismatch, counted)
    return SpecCounting(duplicate_of, counted, complete, matched, reasons)


def _counting_summary(n_layers: int, pair_read, pair_write, counting: SpecCounting) -> dict:
    """The summary's sets and counts, and a note when the layers are too few for the EWC test."""
    complete, counted = counting.complete, counting.counted
    info: dict = {
        "n_layers": n_layers,
        "read_set": ",".join(pair_read),
        "write_set": ",".join(pair_write),
        "incomplete_specifications": int((~complete).sum()),
        "counted_specifications": int((counted & complete).sum()),
        "k_mismatched_specifications": int((~counting.matched & complete).sum()),
        "projections": projections_for(n_layers),
    }
    if n_layers < MIN_LAYERS:
        info["note"] = (
            f"{n_layers} layers: the dependence-robust test needs at least {MIN_LAYERS}; "
            "its p-values are NaN"
        )
    return info


def _curve_summary(tests: SpecTests, out: PairStatistics, specs, alpha: float) -> dict:
    """The joint tests, the variance decomposition, the ranking stability and the expected shares."""
    use = out.counted
    frame = pd.DataFrame(
        [dict(zip(SPEC_DIMS, spec, strict=True), effect_size=e)
         for spec, e, u in zip(specs, out.flat["effect_size"], use, strict=True) if u]
    )  # fmt: skip
    summary = {
        "joint": tests.joint,
        "signflip_exact": tests.signflip_exact,
        "perm_exact": tests.perm_exact,
        "variance_shares": curve.variance_shares(frame) if len(frame) > 1 else {},
        "ranking_stability": curve.ranking_stability(out.differences[:, use]),
    }
    standardised = tests.standardised_effect[tests.counted]
    standardised = standardised[np.isfinite(standardised)]
    summary["expected_share"] = expected_shares(
        tests.projections,
        tests.n_layers,
        alpha,
        float(np.median(standardised)) if standardised.size else float("nan"),
    )
    return summary


def _spec_ranks(results, pair, n_layers) -> np.ndarray:
    """``[L, M, J]``: the rank each cutoff chose, per layer, matrix and specification (C order)."""
    k = results.k.sel(pair=pair).isel(layer=slice(0, n_layers)).values  # [L, M, C, K]
    k = np.repeat(k[..., None], results.sizes["normalisation"], axis=-1)
    return k.reshape(n_layers, results.sizes["matrix"], -1)


def _not_counted_reasons(specs, duplicate_of, complete, mismatch, counted) -> list[str]:
    reasons = []
    for j, (construction, _, _) in enumerate(specs):
        if counted[j] and complete[j]:
            reasons.append("")
        elif not complete[j]:
            reasons.append("undefined at some layer or matrix")
        elif construction in CONTROLS:
            reasons.append("a control construction: shown, not counted")
        elif duplicate_of[j]:
            reasons.append(f"the same values as {duplicate_of[j]}")
        else:
            reasons.append(mismatch[j])
    return reasons


def _references(view: PairView, specs) -> np.ndarray:
    """``[L, J]``: each specification's ``A_0`` per layer (the random control's Haar reference)."""
    results, pair, n_layers = view.results, view.pair, view.n_layers
    if "gram_purity" not in results or not any(c == "random" for c, _, _ in specs):
        return np.zeros((n_layers, len(specs)))
    k = _spec_ranks(results, pair, n_layers)
    purity = results.gram_purity.sel(pair=pair).isel(layer=slice(0, n_layers)).values
    d = int(results.d_model.sel(pair=pair)) if "d_model" in results else purity.shape[0]
    spectrum = (
        results.gram_spectrum.sel(pair=pair).isel(layer=slice(0, n_layers)).values[..., :d]
        if "gram_spectrum" in results
        else None  # results written before the spectra: the Beta law from the purity
    )
    experts = ExpertSpectra.of(results, pair, n_layers, d)
    return curve.references(
        k, purity, specs, view.read_idx, view.write_idx, d, spectrum=spectrum, experts=experts
    )


def _sequence_intervals(view: PairView, confidence_level: float) -> dict:
    """Intervals from the sweep's sequence bootstrap: BCa and percentile, per specification.

    NaN where the construction does not depend on the corpus (its replicates
    all equal the estimate: no sampling variation to show, not a zero-width
    interval).
    """
    results = view.results

    def asymmetry(variable: str) -> np.ndarray:
        s = view.scaled(variable)  # [..., layer, matrix, spec]
        per_layer = s[..., view.read_idx, :].mean(axis=-2) - s[..., view.write_idx, :].mean(axis=-2)
        return per_layer.mean(axis=-2)  # [..., spec]

    replicates, observed = asymmetry("rsf_boot"), asymmetry("rsf")
    if "rsf_jack" in results:
        jackknife = asymmetry("rsf_jack")
        bca_low, bca_high = bca_interval(replicates, jackknife, observed, confidence_level)
    else:  # swept without --bca: no jackknife rows, no BCa interval
        bca_low, bca_high = np.full(observed.shape, np.nan), np.full(observed.shape, np.nan)
    valid = np.isfinite(replicates).all(axis=0)
    pct = np.full((2, observed.size), np.nan)
    pct[:, valid] = percentile_interval(replicates[:, valid], confidence_level)
    corpus = np.array([
        c in CORPUS_CONSTRUCTIONS
        for c in results.construction.values
        for _ in results.cutoff.values
        for _ in results.normalisation.values
    ])  # fmt: skip
    out = {
        "seq_ci_low_bca": bca_low,
        "seq_ci_high_bca": bca_high,
        "seq_ci_low_percentile": pct[0],
        "seq_ci_high_percentile": pct[1],
    }
    for values in out.values():
        values[~corpus] = np.nan
    # Percentile, whatever the replicate count: in calibration BCa under-covers (0.70–0.84) even
    # from 1000 replicates, its corrections assuming a smooth statistic that spectral cutoffs,
    # moving in whole steps, are not (rsf calibrate; README).
    out["seq_ci_low"] = out["seq_ci_low_percentile"]
    out["seq_ci_high"] = out["seq_ci_high_percentile"]
    return out


def expected_shares(k: int, n_layers: int, alpha: float, standardised: float) -> dict:
    """The share of counted specifications significant with read > write, against two expectations.

    Under the null each test rejects in the positive direction with
    probability ``α/2``; if every specification had the median standardised
    effect ``δ = A/ω`` (the EWC scale), each would with the power
    ``P(t_K(√L δ) > t_{K, 1−α/2})``. A share near the second says one uniform
    effect explains it: it is not evidence that the result depends on the choices.
    """
    critical = scipy_stats.t.ppf(1 - alpha / 2, k)
    power = (
        float(scipy_stats.nct.sf(critical, k, np.sqrt(n_layers) * standardised))
        if np.isfinite(standardised)
        else float("nan")
    )
    return {
        "under_null": alpha / 2,
        "under_median_effect": power,
        "median_standardised_effect": standardised,
    }
