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

Per pair (attr ``per_pair``): the specification-curve joint tests, the
variance decomposition and the ranking stability. Several pairs of one phase:
the pair model (:mod:`robustness.stats.pairs`, attr ``pair_model``). Every test's
null hypothesis is written out in the attr ``null_hypotheses``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats as scipy_stats

from robustness.io.provenance import provenance_attrs
from robustness.measure.experts import ExpertSpectra, each_expert
from robustness.measure.resampling import bca_interval, percentile_interval
from robustness.measure.results import pair_phases
from robustness.settings.specification import (
    CONTROLS,
    DEFAULT_PREFERRED,
    DEFAULT_READ,
    DEFAULT_WRITE,
    SPEC_DIMS,
    probe_scale,
)
from robustness.stats import curve
from robustness.stats.asymmetry import spec_tests
from robustness.stats.diagnostics import MASSIVE_RULE, diagnostics
from robustness.stats.layers import MIN_LAYERS, projections_for
from robustness.stats.pairs import pair_model

__all__ = [
    "SEQUENCE_REPLICATES_ADVISED",
    "NULL_HYPOTHESES",
    "compute_stats",
    "expected_shares",
    "results_fingerprint",
    "JOINT_DECISIONS",
    "joint_decision",
    "read_pair_model",
    "read_per_pair",
]

# Percentile endpoints settle with about a thousand replicates; fewer leave visible Monte Carlo error.
SEQUENCE_REPLICATES_ADVISED = 1000
CORPUS_CONSTRUCTIONS = ("act_cov", "act_moment", "act_cov_aligned")

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


def _scaled(block: xr.DataArray, n_layers: int, n_matrices: int) -> np.ndarray:
    """``[..., layer, matrix, spec]``: the probe on the statistics' scale, specs flattened in C order.

    `block` is one pair's ``rsf``-like array (leading dims, then layer, matrix,
    construction, cutoff, normalisation); each normalisation gets its own scale.
    """
    scaled = np.stack(
        [probe_scale(block.sel(normalisation=n).values, n) for n in block.normalisation.values],
        axis=-1,
    )
    return scaled.reshape(*scaled.shape[: scaled.ndim - 5], n_layers, n_matrices, -1)


def _sequence_intervals(results, pair, n_layers, read_idx, write_idx, confidence_level) -> dict:
    """Intervals from the sweep's sequence bootstrap: BCa and percentile, per specification.

    NaN where the construction does not depend on the corpus (its replicates
    all equal the estimate: no sampling variation to show, not a zero-width
    interval).
    """

    def asymmetry(variable: str) -> np.ndarray:
        block = results[variable].sel(pair=pair).isel(layer=slice(0, n_layers))
        s = _scaled(block, n_layers, results.sizes["matrix"])  # [..., layer, matrix, spec]
        per_layer = s[..., read_idx, :].mean(axis=-2) - s[..., write_idx, :].mean(axis=-2)
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


def _preferred(results: xr.Dataset, preferred: tuple, *, given: bool) -> tuple[tuple, str]:
    """The preferred specification and a note when it stands in for the paper's (never silently)."""
    present = all(v in results[d].values for v, d in zip(preferred, SPEC_DIMS, strict=True))
    if present:
        return tuple(preferred), ""
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
    return stand_in, note


def _n_layers(results: xr.Dataset, pair) -> int:
    return int(results.n_layers.sel(pair=pair)) if "n_layers" in results else results.sizes["layer"]


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
    from tqdm.auto import tqdm

    from robustness.settings.options import StatsOptions

    options = StatsOptions(
        read=tuple(read), write=tuple(write), confidence_level=confidence_level,
        n_resamples=n_resamples, alpha=alpha, seed=seed,
        preferred=tuple(preferred) if preferred is not None else DEFAULT_PREFERRED,
        experts=experts,
    )  # fmt: skip
    if options.experts == "each":
        results = each_expert(results)
    read, write = _validate_sets(results, options.read, options.write)
    preferred, preferred_note = _preferred(results, options.preferred, given=preferred is not None)
    shape = tuple(results.sizes[d] for d in ("pair", *SPEC_DIMS))
    specs = [
        (str(c), str(k), str(n))
        for c in results.construction.values
        for k in results.cutoff.values
        for n in results.normalisation.values
    ]
    boot = "rsf_boot" in results
    names = STAT_NAMES + (SEQUENCE_NAMES if boot else ())
    out = {name: np.full(shape, np.nan) for name in names}
    counted_out = np.zeros(shape, dtype=np.int8)
    duplicate_out = np.full(shape, "", dtype=object)
    reason_out = np.full(shape, "", dtype=object)
    null = np.full((*shape, NULL_DRAWS), np.nan)
    per_pair: dict[str, dict] = {}
    layer_differences: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed)
    for p, pair in enumerate(tqdm(results.pair.values, desc="stats", disable=not progress)):
        info, parts = _pair_statistics(
            results, pair, read, write, specs, names, options, rng, boot=boot
        )
        per_pair[str(pair)] = info
        if "counted" in parts:
            duplicate_out[p] = parts["duplicate_of"].reshape(shape[1:])
            counted_out[p] = parts["counted"].reshape(shape[1:])
            reason_out[p] = parts["reasons"].reshape(shape[1:])
        if "flat" in parts:
            for name in names:
                out[name][p] = parts["flat"][name].reshape(shape[1:])
            null[p] = parts["null"].reshape(*shape[1:], NULL_DRAWS)
            layer_differences[str(pair)] = parts["differences"]
    models = _pair_models(results, preferred, specs, layer_differences, confidence_level)
    dims = ("pair", *SPEC_DIMS)
    data_vars = {name: (dims, values) for name, values in out.items()}
    data_vars["counted"] = (
        dims,
        counted_out,
        {"long_name": "in the joint tests: substantive, not a duplicate"},
    )
    data_vars["duplicate_of"] = (
        dims,
        duplicate_out,
        {"long_name": "the specification this one equals on the statistics' scale"},
    )
    data_vars["not_counted_reason"] = (
        dims,
        reason_out,
        {"long_name": "why a specification is not counted (empty when it is)"},
    )
    data_vars["null_asymmetry"] = (
        (*dims, "null_draw"),
        null,
        {
            "null_hypothesis": NULL_HYPOTHESES["p_value"]
            + ": draws of the rotation null about A_0 (NaN beyond n_resamples)"
        },
    )
    for name, text in NULL_HYPOTHESES.items():
        if name in data_vars:
            data_vars[name] = (*data_vars[name][:2], {"null_hypothesis": text})
    found = diagnostics(results)  # massive activations, the ranks each cutoff chose
    data_vars.update(found["data_vars"])
    replicates = int(results.sizes.get("replicate", 0))
    ds = xr.Dataset(
        data_vars,
        coords={
            **{d: results[d].values for d in dims},
            "layer": results.layer.values,
            **found["coords"],
            "phase": ("pair", np.asarray(pair_phases(results), dtype=object)),
            "control": (
                "construction",
                np.asarray([c in CONTROLS for c in results.construction.values], dtype=np.int8),
            ),
        },
        attrs={
            **provenance_attrs(
                "stats",
                title="read/write asymmetry statistics",
                seed=seed,
                inputs={"results": results_fingerprint(results)},
            ),
            "read_set": ",".join(read),
            "write_set": ",".join(write),
            "confidence_level": confidence_level,
            "alpha": alpha,
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
                if boot
                else "absent: the sweep had no --bootstrap"
            ),
            "sequence_replicates": replicates,
            "n_resamples": n_resamples,
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
            "preferred_specification": ",".join(preferred),
            "preferred_note": preferred_note,
            "per_pair": json.dumps(per_pair),
            "pair_model": json.dumps(models),
            "results_config": results.attrs.get("config", ""),
            "results_corpus_hash": results.attrs.get("corpus_hash", ""),
            "results_fingerprint": results_fingerprint(results),
        },
    )
    return ds


STAT_NAMES = ("asymmetry", "reference", "ci_low", "ci_high", "p_value", "p_greater", "p_signflip",
              "p_perm", "p_adj", "p_wy", "effect_size", "effect_ci_low", "effect_ci_high",
              "lag1_autocorrelation", "effective_layers")  # fmt: skip
SEQUENCE_NAMES = ("seq_ci_low", "seq_ci_high", "seq_ci_low_bca", "seq_ci_high_bca",
                  "seq_ci_low_percentile", "seq_ci_high_percentile")  # fmt: skip
NULL_DRAWS = 1000  # draws of the rotation null kept per specification (null_asymmetry)


def _pair_statistics(results, pair, read, write, specs, names, options, rng, *, boot: bool):
    """One pair's tests: ``(info, parts)``, `parts` holding what was computed (see compute_stats).

    ``counted``, ``duplicate_of`` and ``reasons`` (per specification) once the pair has read
    and write matrices; ``flat`` (each statistic per specification), ``null`` (the rotation
    null's draws) and ``differences`` (read − write per layer and specification) once it has
    complete specifications and two layers.
    """
    matrices = list(results.matrix.values)
    n_layers = _n_layers(results, pair)
    pair_read, pair_write = _targeted_sets(results, pair, read, write)
    read_idx = [matrices.index(m) for m in pair_read]
    write_idx = [matrices.index(m) for m in pair_write]
    if not pair_read or not pair_write:
        missing = [f"no {name} matrix ({', '.join(chosen)})" for name, chosen, kept in
                   (("read", read, pair_read), ("write", write, pair_write)) if not kept]  # fmt: skip
        note = f"its LoRA adapter targets {' and '.join(missing)}: the asymmetry is not tested"
        return {"n_layers": n_layers, "note": note}, {}
    rsf = results.rsf.sel(pair=pair).isel(layer=slice(0, n_layers))
    s = _scaled(rsf, n_layers, len(matrices))  # [layer, matrix, spec]
    duplicate_of = curve.duplicates(s, specs, options.preferred)
    matched, mismatch = curve.matched_k(_spec_ranks(results, pair, n_layers), read_idx, write_idx)
    counted = curve.counted_mask(specs, duplicate_of, matched)
    complete = np.isfinite(s[:, read_idx + write_idx]).all(axis=(0, 1))
    parts = {
        "duplicate_of": np.asarray(duplicate_of, dtype=object),
        "counted": counted & complete,
        "reasons": np.asarray(
            _not_counted_reasons(specs, duplicate_of, complete, mismatch, counted), dtype=object
        ),
    }
    info: dict = {
        "n_layers": n_layers,
        "read_set": ",".join(pair_read),
        "write_set": ",".join(pair_write),
        "incomplete_specifications": int((~complete).sum()),
        "counted_specifications": int((counted & complete).sum()),
        "k_mismatched_specifications": int((~matched & complete).sum()),
        "projections": projections_for(n_layers),
    }
    if n_layers < MIN_LAYERS:
        info["note"] = (
            f"{n_layers} layers: the dependence-robust test needs at least {MIN_LAYERS}; "
            "its p-values are NaN"
        )
    if complete.sum() == 0 or n_layers < 2:
        return info, parts
    reference = _references(results, pair, n_layers, specs, read_idx, write_idx)
    tests = spec_tests(
        s[:, :, complete], read_idx, write_idx, reference=reference[:, complete],
        counted=counted[complete], confidence_level=options.confidence_level,
        n_resamples=options.n_resamples, alpha=options.alpha, rng=rng, n_null_draws=NULL_DRAWS,
    )  # fmt: skip
    flat = {name: np.full(complete.size, np.nan) for name in names}
    for name in names:
        if hasattr(tests, name):
            flat[name][complete] = getattr(tests, name)
    if boot:
        flat.update(_sequence_intervals(
            results, pair, n_layers, read_idx, write_idx, options.confidence_level
        ))  # fmt: skip
    draws = np.full((complete.size, NULL_DRAWS), np.nan)
    draws[complete, : tests.null_draws.shape[0]] = tests.null_draws.T
    use = counted & complete
    frame = pd.DataFrame(
        [dict(zip(SPEC_DIMS, spec, strict=True), effect_size=e)
         for spec, e, u in zip(specs, flat["effect_size"], use, strict=True) if u]
    )  # fmt: skip
    differences = s[:, read_idx].mean(axis=1) - s[:, write_idx].mean(axis=1)
    info.update({
        "joint": tests.joint,
        "signflip_exact": tests.signflip_exact,
        "perm_exact": tests.perm_exact,
        "variance_shares": curve.variance_shares(frame) if len(frame) > 1 else {},
        "ranking_stability": curve.ranking_stability(differences[:, use]),
    })  # fmt: skip
    standardised = tests.standardised_effect[tests.counted]
    standardised = standardised[np.isfinite(standardised)]
    info["expected_share"] = expected_shares(
        tests.projections,
        n_layers,
        options.alpha,
        float(np.median(standardised)) if standardised.size else float("nan"),
    )
    return info, {**parts, "flat": flat, "null": draws, "differences": differences}


def _targeted_sets(results, pair, read, write) -> tuple[list[str], list[str]]:
    """The read and write sets a pair can be tested on: for a LoRA pair, the targeted matrices only."""
    if "targeted_matrices" not in results:
        return list(read), list(write)
    targeted = str(results.targeted_matrices.sel(pair=pair).values)
    if not targeted:  # a full model: every matrix has a delta
        return list(read), list(write)
    kept = set(targeted.split(","))
    return [m for m in read if m in kept], [m for m in write if m in kept]


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


def _references(results, pair, n_layers, specs, read_idx, write_idx) -> np.ndarray:
    """``[L, J]``: each specification's ``A_0`` per layer (the random control's Haar reference)."""
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
        k, purity, specs, read_idx, write_idx, d, spectrum=spectrum, experts=experts
    )


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


def _pair_models(results, preferred, specs, layer_differences, confidence_level) -> dict:
    """The pair model per phase with at least two pairs of equal depth (phases never pooled)."""
    if results.sizes["pair"] < 2:
        return {}
    j = specs.index(tuple(preferred))
    phases = pair_phases(results)
    out = {"specification": list(preferred)}
    for phase in sorted(set(phases)):
        labels = [
            str(p)
            for p, ph in zip(results.pair.values, phases, strict=True)
            if ph == phase and str(p) in layer_differences
        ]
        if len(labels) < 2:
            continue
        depths = {layer_differences[label].shape[0] for label in labels}
        if len(depths) != 1:
            out[phase] = {
                "pairs": labels,
                "note": "pairs of different depths cannot be paired by layer",
            }
            continue
        columns = np.stack([layer_differences[label][:, j] for label in labels], axis=1)
        if not np.isfinite(columns).all():
            out[phase] = {
                "pairs": labels,
                "note": "the preferred specification is undefined for a pair",
            }
            continue
        out[phase] = pair_model(columns, labels, confidence_level=confidence_level)
    return out


def read_per_pair(stats: xr.Dataset) -> dict[str, dict]:
    """The per-pair summary of a stats dataset: sets, counts, notes and the joint tests."""
    return json.loads(stats.attrs.get("per_pair", "{}") or "{}")


def read_pair_model(stats: xr.Dataset) -> dict:
    """The model across pairs, per phase, of a stats dataset (empty with one pair per phase)."""
    return json.loads(stats.attrs.get("pair_model", "{}") or "{}")


JOINT_DECISIONS = (
    "too_few_layers",
    "nothing_counted",
    "read_greater",
    "suggestive",
    "write_greater",
    "none",
)


def joint_decision(joint: dict, n_layers: int, alpha: float) -> str:
    """One pair's joint tests decided: one of :data:`JOINT_DECISIONS` (the report words them).

    ``read_greater`` when the median effect is positive and both the median-effect and
    share-of-significant tests reject at `alpha`; ``suggestive`` when only one does;
    ``write_greater`` when the median effect is negative and its one-sided p exceeds
    ``1 − alpha``; ``none`` otherwise.
    """
    if n_layers < MIN_LAYERS:
        return "too_few_layers"
    if "median_effect" not in joint:
        return "nothing_counted"
    positive = joint["median_effect"] > 0
    if positive and joint["p_median_effect"] < alpha and joint["p_share_significant"] < alpha:
        return "read_greater"
    if positive and min(joint["p_median_effect"], joint["p_share_significant"]) < alpha:
        return "suggestive"
    if joint["median_effect"] < 0 and joint["p_median_effect"] > 1 - alpha:
        return "write_greater"
    return "none"
