"""`rsf stats`: the statistics dataset (``stats.nc``) from a results dataset.

One row per specification (``pair, construction, cutoff, normalisation``):

- ``asymmetry`` ``A``; ``reference`` ``A_0`` (0, or the Haar reference of the
  ``random`` control); ``p_value``, ``ci_low``/``ci_high``: the test the
  verdict uses (attr ``p_value_method``: the EWC t-test over layers, which
  holds under serial dependence, :mod:`robustness.stats.layers`); ``p_greater`` its
  one-sided version;
- ``p_signflip`` (exchangeable layers) and ``p_perm`` (exchangeable matrices
  within a layer), each described by its null hypothesis;
- ``p_adj`` (Benjamini–Hochberg) and ``p_wy`` (Westfall–Young step-down
  min-p), over the counted specifications only;
- ``effect_size``: Hedges-corrected d_z, its interval from the EWC statistic;
- ``lag1_autocorrelation`` and ``effective_layers`` of ``D_l`` (diagnostics);
- ``counted``, ``duplicate_of``, ``not_counted_reason``, ``control(construction)``:
  which specifications the specification curve counts and why not
  (:mod:`robustness.stats.curve`: controls, duplicates, undefined ones, and read and
  write ranks more than 4-fold apart at some layer);
- with the sweep's ``--bootstrap``, ``seq_ci_*``: the sequence-bootstrap
  interval, percentile (BCa beside it as ``seq_ci_*_bca``: it under-covers in
  calibration, 0.70–0.84, even from 1000 replicates).

Per pair, as variables on ``pair`` and their own dimensions
(:mod:`robustness.stats.summaries`, read back as dicts with
:func:`~robustness.stats.summaries.read_per_pair`): the counts, the
specification-curve joint tests, the variance decomposition and the ranking
stability (:mod:`robustness.stats.pair_tests`, one pair's tests). Several pairs
of one phase: the pair model (:func:`robustness.stats.pairs.phase_models`, on
dim ``pair_model_phase``, read back with
:func:`~robustness.stats.summaries.read_pair_model`). Every test's null
hypothesis is written out in the attr ``null_hypotheses``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from robustness.io.provenance import provenance_attrs
from robustness.measure.experts import each_expert
from robustness.measure.results import pair_phases
from robustness.settings.specification import (
    CONTROLS,
    DEFAULT_PREFERRED,
    DEFAULT_READ,
    DEFAULT_WRITE,
    SPEC_DIMS,
)
from robustness.stats.diagnostics import MASSIVE_RULE, diagnostics
from robustness.stats.pair_tests import (
    NULL_DRAWS,
    SEQUENCE_NAMES,
    STAT_NAMES,
    PairStatistics,
    StatsGrid,
    pair_statistics,
)
from robustness.stats.pairs import phase_models
from robustness.stats.summaries import pair_model_variables, per_pair_variables

if TYPE_CHECKING:
    from robustness.settings.options import StatsOptions

__all__ = [
    "SEQUENCE_REPLICATES_ADVISED",
    "NULL_HYPOTHESES",
    "PairsTested",
    "compute_stats",
    "results_fingerprint",
    "stats_dataset",
    "run_pair_tests",
]

# Percentile endpoints settle with about a thousand replicates; fewer leave visible Monte Carlo error.
SEQUENCE_REPLICATES_ADVISED = 1000

NULL_HYPOTHESES = {
    "p_value": "E[D_l] = A_0 (the reference: 0, or the random control's Haar reference), with D_l a "
    "weakly dependent series over layers (autocorrelation negligible beyond about L/(2K) layers, K the "
    "cosine projections) whose projections are close to normal: the EWC t-test, t_K",
    "p_signflip": "the D_l − A_0 are independent across layers and each symmetric about 0 (exchangeable "
    "layers); exact over all 2^L sign vectors when 2^L ≤ 65536",
    "p_perm": "within each layer the read and write matrices are exchangeable (q, k, o, down "
    "interchangeable): a stronger null than no asymmetry, since q and k share their input site and o and "
    "down their output site; not used by the verdict",
    "joint": "every counted specification has E[D_l] = A_0, under the EWC assumptions: one random rotation "
    "of the EWC projections for all specifications (their dependence kept), Monte Carlo (1+b)/(1+B)",
    "p_adj": "Benjamini–Hochberg over the counted specifications' p_value",
    "p_wy": "Westfall–Young step-down min-p over the counted specifications, under the joint rotations",
    "pair_model": "overall: the mean over pairs of D_{l,p} is 0; difference: every pair of one phase has "
    "the same mean D (orthonormal-series F test)",
}


def results_fingerprint(results: xr.Dataset) -> str:
    """SHA-256 of a results dataset's values and labels: which sweep a stats file was made from.

    Covers ``rsf`` and the coordinates that label it, not the file's bytes or its
    creation time, so a re-run with the same inputs and seed (identical values)
    has the same fingerprint.
    """
    digest = hashlib.sha256()
    for dim in ("pair", "layer", "matrix", "construction", "cutoff", "normalisation"):
        digest.update("\x1f".join(map(str, results[dim].values)).encode() + b"\x1e")
    values = np.asarray(results.rsf.values, dtype="<f8")
    digest.update(np.where(np.isnan(values), np.nan, values).tobytes())  # one NaN bit pattern
    return "sha256:" + digest.hexdigest()


def _validate_sets(results: xr.Dataset, read, write) -> tuple[list[str], list[str]]:
    matrices = list(results.matrix.values)
    for name, chosen in (("read", read), ("write", write)):
        missing = [m for m in chosen if m not in matrices]
        if missing:
            raise ValueError(
                f"--{name} names {missing}, absent from the results: present are {', '.join(matrices)}"
            )
        if not chosen:
            raise ValueError(f"the {name} set is empty")
    if set(read) & set(write):
        raise ValueError(
            f"a matrix cannot be both read and write: {sorted(set(read) & set(write))}"
        )
    return list(read), list(write)


@dataclass(frozen=True)
class Preferred:
    """The specification the summary and the pair model lead with, and why when it is a stand-in."""

    specification: tuple[str, str, str]
    note: str


def _preferred(results: xr.Dataset, preferred: tuple, *, given: bool) -> Preferred:
    """The preferred specification and a note when it stands in for the paper's (never silently)."""
    present = all(v in results[d].values for v, d in zip(preferred, SPEC_DIMS, strict=True))
    if present:
        return Preferred(tuple(preferred), "")
    if given:
        available = "; ".join(
            f"{dim}s {', '.join(map(str, results[dim].values))}" for dim in SPEC_DIMS
        )
        raise ValueError(
            f"the preferred specification {','.join(preferred)} is not in the results, whose "
            f"specifications combine {available}"
        )
    stand_in = tuple(str(results[d].values[0]) for d in SPEC_DIMS)
    note = (
        f"the paper's specification {','.join(preferred)} was not swept: "
        f"{','.join(stand_in)} leads the summary and the pair model in its place"
    )
    return Preferred(stand_in, note)


def _grid(results: xr.Dataset, read: list[str], write: list[str]) -> StatsGrid:
    """Every specification of `results` (C order) and the statistics kept for each."""
    specs = [
        (str(c), str(k), str(n))
        for c in results.construction.values
        for k in results.cutoff.values
        for n in results.normalisation.values
    ]
    boot = "rsf_boot" in results
    return StatsGrid(read, write, specs, STAT_NAMES + (SEQUENCE_NAMES if boot else ()), boot)


@dataclass(frozen=True)
class SpecArrays:
    """The dataset's per-specification arrays ``[pair, construction, cutoff, normalisation]``."""

    values: dict[str, np.ndarray]  # each statistic
    counted: np.ndarray
    duplicate_of: np.ndarray
    reasons: np.ndarray
    null: np.ndarray  # [..., null_draw]

    @classmethod
    def empty(cls, shape: tuple[int, ...], names) -> SpecArrays:
        """NaN statistics, nothing counted, no duplicates or reasons."""
        return cls(
            values={name: np.full(shape, np.nan) for name in names},
            counted=np.zeros(shape, dtype=np.int8),
            duplicate_of=np.full(shape, "", dtype=object),
            reasons=np.full(shape, "", dtype=object),
            null=np.full((*shape, NULL_DRAWS), np.nan),
        )

    def fill(self, p: int, found: PairStatistics) -> None:
        """Pair `p`'s rows, from what could be computed for it."""
        shape = self.counted.shape[1:]
        if found.counted is not None:
            self.duplicate_of[p] = found.duplicate_of.reshape(shape)
            self.counted[p] = found.counted.reshape(shape)
            self.reasons[p] = found.reasons.reshape(shape)
        if found.flat:
            for name, values in self.values.items():
                values[p] = found.flat[name].reshape(shape)
            self.null[p] = found.null.reshape(*shape, NULL_DRAWS)


def compute_stats(
    results: xr.Dataset,
    *,
    read=DEFAULT_READ,
    write=DEFAULT_WRITE,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    alpha: float = 0.05,
    seed: int = 0,
    preferred=None,
    experts: str = "mean",
    progress: bool = False,
) -> xr.Dataset:
    """The statistics dataset for every pair and specification of `results`.

    `experts` ``"each"`` makes every expert of a mixture-of-experts pair a pair
    of its own (:func:`robustness.measure.experts.each_expert`); ``"mean"`` tests the
    load-weighted mean the results hold.

    `n_resamples` is the number of Monte Carlo null draws (rotations, sign
    flips and permutations) where exact enumeration is too large. `preferred`
    names the specification the summary and the pair model lead with; one
    that `results` does not hold is an error listing the ones it does. Left
    out, it is the paper's (``act_cov, k=8, log_isotropic``) when swept, else
    the first swept specification, and the dataset says so (attr
    ``preferred_note``).
    """
    from robustness.settings.options import StatsOptions

    options = StatsOptions(
        read=tuple(read), write=tuple(write), confidence_level=confidence_level,
        n_resamples=n_resamples, alpha=alpha, seed=seed,
        preferred=tuple(preferred) if preferred is not None else DEFAULT_PREFERRED,
        experts=experts,
    )  # fmt: skip
    tested = run_pair_tests(
        results, options, preferred_given=preferred is not None, progress=progress
    )
    return stats_dataset(tested)


@dataclass(frozen=True)
class PairsTested:
    """Every pair tested: the arrays over specifications, each pair's summary and the pair model.

    `results` is what was tested (with ``experts="each"``, one pair per expert).
    """

    results: xr.Dataset
    options: StatsOptions
    grid: StatsGrid
    preferred: Preferred
    arrays: SpecArrays
    per_pair: dict[str, dict]  # read back from stats.nc by robustness.stats.summaries.read_per_pair
    pair_model: dict  # read back by robustness.stats.summaries.read_pair_model


def run_pair_tests(
    results: xr.Dataset, options: StatsOptions, *, preferred_given: bool, progress: bool = False
) -> PairsTested:
    """Every pair's tests under `options` (a :class:`StatsOptions`), and the pair model per phase.

    `preferred_given`: the options' preferred specification was asked for (one
    the results lack is then an error, not a stand-in).
    """
    from tqdm.auto import tqdm

    if options.experts == "each":
        results = each_expert(results)
    grid = _grid(results, *_validate_sets(results, options.read, options.write))
    chosen = _preferred(results, options.preferred, given=preferred_given)
    arrays = SpecArrays.empty(tuple(results.sizes[d] for d in ("pair", *SPEC_DIMS)), grid.names)
    per_pair: dict[str, dict] = {}
    layer_differences: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(options.seed)
    for p, pair in enumerate(tqdm(results.pair.values, desc="stats", disable=not progress)):
        found = pair_statistics(results, pair, grid, options, rng)
        per_pair[str(pair)] = found.info
        arrays.fill(p, found)
        if found.differences is not None:
            layer_differences[str(pair)] = found.differences
    models = phase_models(
        results, chosen.specification, grid.specs, layer_differences, options.confidence_level
    )
    return PairsTested(results, options, grid, chosen, arrays, per_pair, models)


def stats_dataset(tested: PairsTested) -> xr.Dataset:
    """The statistics dataset: per specification, the diagnostics, per pair and the pair model."""
    results = tested.results
    found = diagnostics(results)  # massive activations, the ranks each cutoff chose
    summary_vars, summary_coords = per_pair_variables(
        tested.per_pair, joint_null=NULL_HYPOTHESES["joint"]
    )
    model_vars, model_coords = pair_model_variables(tested.pair_model, list(tested.per_pair))
    return xr.Dataset(
        {**_spec_variables(tested.arrays), **found["data_vars"], **summary_vars, **model_vars},
        coords={
            **{d: results[d].values for d in ("pair", *SPEC_DIMS)},
            "layer": results.layer.values,
            **found["coords"],
            "phase": ("pair", np.asarray(pair_phases(results), dtype=object)),
            "control": (
                "construction",
                np.asarray([c in CONTROLS for c in results.construction.values], dtype=np.int8),
            ),
            **summary_coords,
            **model_coords,
        },
        attrs=_stats_attrs(results, tested.options, tested.grid, tested.preferred),
    )


def _spec_variables(arrays: SpecArrays) -> dict:
    """The per-specification variables, each test's with its null hypothesis."""
    dims = ("pair", *SPEC_DIMS)
    data_vars = {name: (dims, values) for name, values in arrays.values.items()}
    data_vars["counted"] = (
        dims,
        arrays.counted,
        {"long_name": "in the joint tests: substantive, not a duplicate"},
    )
    data_vars["duplicate_of"] = (
        dims,
        arrays.duplicate_of,
        {"long_name": "the specification this one equals on the statistics' scale"},
    )
    data_vars["not_counted_reason"] = (
        dims,
        arrays.reasons,
        {"long_name": "why a specification is not counted (empty when it is)"},
    )
    data_vars["null_asymmetry"] = (
        (*dims, "null_draw"),
        arrays.null,
        {
            "null_hypothesis": NULL_HYPOTHESES["p_value"]
            + ": draws of the rotation null about A_0 (NaN beyond n_resamples)"
        },
    )
    for name, text in NULL_HYPOTHESES.items():
        if name in data_vars:
            data_vars[name] = (*data_vars[name][:2], {"null_hypothesis": text})
    return data_vars


def _stats_attrs(results, options, grid: StatsGrid, chosen: Preferred) -> dict:
    """The dataset's attributes: provenance, the sets, and how every test and rule works."""
    replicates = int(results.sizes.get("replicate", 0))
    return {
        **provenance_attrs(
            "stats",
            title="read/write asymmetry statistics",
            seed=options.seed,
            inputs={"results": results_fingerprint(results)},
        ),
        "read_set": ",".join(grid.read),
        "write_set": ",".join(grid.write),
        "confidence_level": options.confidence_level,
        "alpha": options.alpha,
        "p_value_method": "EWC t-test over layers (equal-weighted cosine long-run variance, K = max(2, round(0.4 L^(2/3))) "
        "projections, t_K; Lazarus, Lewis, Stock & Watson 2018), chosen by calibration (rsf calibrate)",
        "ci_method": "EWC t interval over layers, the p_value test's own (mean ± t_K · ω̂/√L)",
        "effect_size_method": "Hedges-corrected d_z; interval: the noncentral-t interval of the EWC statistic, "
        "on the d_z scale (ω̂/σ̂)",
        "seq_ci_method": (
            f"sequence bootstrap from the sweep's rsf_boot: percentile, from {replicates} replicates "
            f"({SEQUENCE_REPLICATES_ADVISED} advised for stable endpoints); BCa beside it (seq_ci_*_bca) "
            "for comparison only: in calibration it under-covers (0.70-0.84) even from 1000 replicates; "
            "NaN for constructions that do not depend on the corpus"
            if grid.boot
            else "absent: the sweep had no --bootstrap"
        ),
        "sequence_replicates": replicates,
        "n_resamples": options.n_resamples,
        "scale": "log2 for isotropic and base_relative; as stored otherwise",
        "p_value_rule": "Monte Carlo (1+b)/(1+B); exact b/B when all arrangements are enumerated; "
        "the EWC p-value is analytic (t_K)",
        "counted_rule": f"substantive constructions (controls {', '.join(CONTROLS)} shown, not counted), "
        "one per set of specifications equal on the statistics' scale",
        "variance_method": "shares of the total sum of squares of effect_size over the counted specifications: "
        "main effects and two-way interactions, sequential (type I) in the order construction, cutoff, "
        "normalisation; on a complete grid the order does not matter",
        "null_hypotheses": json.dumps(NULL_HYPOTHESES),
        "massive_rule": MASSIVE_RULE,
        "preferred_specification": ",".join(chosen.specification),
        "preferred_note": chosen.note,
        "results_config": results.attrs.get("config", ""),
        "results_corpus_hash": results.attrs.get("corpus_hash", ""),
        "results_fingerprint": results_fingerprint(results),
    }
