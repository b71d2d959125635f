"""`rsf stats`: the statistics dataset (``stats.nc``) from a results dataset.

One row per specification (``pair, construction, cutoff, normalisation``):
``asymmetry``, ``ci_low``/``ci_high`` (cluster bootstrap over layers),
``p_signflip``, ``p_perm``, ``p_adj`` (Benjamini–Hochberg over the pair's
specifications), ``p_wy`` (Westfall–Young min-p), ``effect_size`` (Cohen's
d_z of the per-layer differences) with its interval, and the sign-flip null
draws for plotting. Per pair: the specification-curve joint tests, the share
of variation in effect size owed to each analytic choice (type-II ANOVA,
statsmodels), and how stable the ranking of layers is across specifications
(Kendall's W and ICC, pingouin). With several pairs, a mixed model
``s ~ pathway * pair + (1 | layer)`` on the preferred specification.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pandas as pd
import xarray as xr

from .asymmetry import spec_tests
from .provenance import provenance_attrs
from .resampling import bca_interval
from .specification import DEFAULT_PREFERRED, DEFAULT_READ, DEFAULT_WRITE, SPEC_DIMS, probe_scale

__all__ = ["compute_stats", "results_fingerprint", "verdict"]


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


def _variance_shares(frame: pd.DataFrame) -> dict[str, float]:
    """Share of the effect-size sum of squares per analytic choice (type-II ANOVA)."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    factors = [f for f in SPEC_DIMS if frame[f].nunique() > 1]
    if not factors or len(frame) <= sum(frame[f].nunique() - 1 for f in factors) + 1:
        return {}
    model = smf.ols("effect_size ~ " + " + ".join(f"C({f})" for f in factors), data=frame).fit()
    table = anova_lm(model, typ=2)
    total = float(table["sum_sq"].sum())
    shares = {f: float(table.loc[f"C({f})", "sum_sq"]) / total for f in factors}
    shares["residual"] = float(table.loc["Residual", "sum_sq"]) / total
    return shares


def _ranking_stability(differences: np.ndarray) -> dict[str, float]:
    """Kendall's W and ICC (agreement, consistency) of per-layer differences across specifications."""
    import pingouin

    n_layers, n_specs = differences.shape
    if n_layers < 3 or n_specs < 2:
        return {}
    frame = pd.DataFrame({
        "layer": np.repeat(np.arange(n_layers), n_specs),
        "spec": np.tile(np.arange(n_specs), n_layers),
        "d": differences.ravel(),
    })  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        friedman = pingouin.friedman(data=frame, dv="d", within="layer", subject="spec")
        icc = pingouin.intraclass_corr(
            data=frame, targets="layer", raters="spec", ratings="d"
        ).set_index("Type")
    return {
        "kendall_w": float(friedman["W"].iloc[0]),
        "icc_agreement": float(icc.loc["ICC(A,1)", "ICC"]),  # ICC(2,1): absolute agreement
        "icc_consistency": float(icc.loc["ICC(C,1)", "ICC"]),  # ICC(3,1): consistency
    }


def _mixed_model(results: xr.Dataset, preferred, read, write) -> dict:
    """``s ~ pathway * pair + (1 | layer)`` on the preferred specification (statsmodels MixedLM)."""
    import statsmodels.formula.api as smf

    construction, cutoff, normalisation = preferred
    cell = results.rsf.sel(construction=construction, cutoff=cutoff, normalisation=normalisation)
    rows = []
    for pair in results.pair.values:
        values = probe_scale(cell.sel(pair=pair).values, normalisation)
        for li, layer in enumerate(results.layer.values):
            for mi, matrix in enumerate(results.matrix.values):
                if matrix in read or matrix in write:
                    if np.isfinite(values[li, mi]):
                        rows.append({"s": values[li, mi], "pair": str(pair), "layer": int(layer),
                                     "pathway": "read" if matrix in read else "write"})  # fmt: skip
    frame = pd.DataFrame(rows)
    if frame.empty or frame["pair"].nunique() < 2:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.mixedlm(
            "s ~ C(pathway, Treatment('write')) * pair", frame, groups=frame["layer"]
        ).fit()
    table = pd.DataFrame({"coef": fit.params, "p": fit.pvalues}).dropna()
    return {
        "formula": "s ~ pathway * pair + (1 | layer)",
        "specification": list(preferred),
        "coefficients": {
            name: {"coef": float(r.coef), "p": float(r.p)} for name, r in table.iterrows()
        },
    }


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
    """Intervals from the sweep's sequence bootstrap: percentile and BCa, per specification."""

    def asymmetry(variable: str) -> np.ndarray:
        block = results[variable].sel(pair=pair).isel(layer=slice(0, n_layers))
        s = _scaled(block, n_layers, results.sizes["matrix"])  # [..., layer, matrix, spec]
        per_layer = s[..., read_idx, :].mean(axis=-2) - s[..., write_idx, :].mean(axis=-2)
        return per_layer.mean(axis=-2)  # [..., spec]

    replicates, jackknife, observed = asymmetry("rsf_boot"), asymmetry("rsf_jack"), asymmetry("rsf")
    low, high = bca_interval(replicates, jackknife, observed, confidence_level)
    tail = 100 * (1 - confidence_level) / 2
    valid = np.isfinite(replicates).all(axis=0)
    pct = np.full((2, observed.size), np.nan)
    pct[:, valid] = np.percentile(replicates[:, valid], [tail, 100 - tail], axis=0)
    return {
        "seq_ci_low": low,
        "seq_ci_high": high,
        "seq_ci_low_percentile": pct[0],
        "seq_ci_high_percentile": pct[1],
    }


def compute_stats(
    results: xr.Dataset,
    *,
    read=DEFAULT_READ,
    write=DEFAULT_WRITE,
    confidence_level: float = 0.95,
    layer_replicates: int = 9999,
    n_resamples: int = 9999,
    alpha: float = 0.05,
    seed: int = 0,
    preferred=DEFAULT_PREFERRED,
    progress: bool = False,
) -> xr.Dataset:
    """The statistics dataset for every pair and specification of `results`."""
    from tqdm.auto import tqdm

    if not 0 < confidence_level < 1:
        raise ValueError(f"`confidence_level` must lie in (0, 1), got {confidence_level}")
    if layer_replicates < 1:
        raise ValueError(f"`layer_replicates` must be at least 1, got {layer_replicates}")
    if n_resamples < 1:
        raise ValueError(f"`n_resamples` must be at least 1, got {n_resamples}")
    read, write = _validate_sets(results, read, write)
    matrices = list(results.matrix.values)
    read_idx, write_idx = [matrices.index(m) for m in read], [matrices.index(m) for m in write]
    shape = tuple(results.sizes[d] for d in ("pair", *SPEC_DIMS))
    names = ("asymmetry", "ci_low", "ci_high", "p_signflip", "p_perm", "p_greater", "p_adj", "p_wy",
             "effect_size", "effect_ci_low", "effect_ci_high")  # fmt: skip
    boot = "rsf_boot" in results and "rsf_jack" in results
    if boot:
        names += ("seq_ci_low", "seq_ci_high", "seq_ci_low_percentile", "seq_ci_high_percentile")
    out = {name: np.full(shape, np.nan) for name in names}
    n_draws = 1000
    null = np.full((*shape, n_draws), np.nan)
    per_pair: dict[str, dict] = {}
    rng = np.random.default_rng(seed)
    for p, pair in enumerate(tqdm(results.pair.values, desc="stats", disable=not progress)):
        n_layers = (
            int(results.n_layers.sel(pair=pair))
            if "n_layers" in results
            else results.sizes["layer"]
        )
        rsf = results.rsf.sel(pair=pair).isel(layer=slice(0, n_layers))
        s = _scaled(rsf, n_layers, len(matrices))  # [layer, matrix, spec]
        complete = np.isfinite(s[:, read_idx + write_idx]).all(axis=(0, 1))
        info: dict = {"n_layers": n_layers, "incomplete_specifications": int((~complete).sum())}
        if complete.sum() == 0 or n_layers < 2:
            per_pair[str(pair)] = info
            continue
        tests = spec_tests(s[:, :, complete], read_idx, write_idx, confidence_level=confidence_level,
                           layer_replicates=layer_replicates, n_resamples=n_resamples, alpha=alpha,
                           rng=rng, n_null_draws=n_draws)  # fmt: skip
        flat = {name: np.full(complete.size, np.nan) for name in names}
        for name in names:
            if hasattr(tests, name):
                flat[name][complete] = getattr(tests, name)
        if boot:
            seq = _sequence_intervals(
                results, pair, n_layers, read_idx, write_idx, confidence_level
            )
            for name, values in seq.items():
                flat[name] = values
        for name in names:
            out[name][p] = flat[name].reshape(shape[1:])
        draws = np.full((complete.size, n_draws), np.nan)
        draws[complete, : tests.null_draws.shape[0]] = tests.null_draws.T
        null[p] = draws.reshape(*shape[1:], n_draws)
        specs = list(np.ndindex(*shape[1:]))
        frame = pd.DataFrame([
            {"construction": results.construction.values[i], "cutoff": results.cutoff.values[j],
             "normalisation": results.normalisation.values[k], "effect_size": e}
            for (i, j, k), e, c in zip(specs, flat["effect_size"], complete, strict=True) if c
        ])  # fmt: skip
        differences = s[:, read_idx].mean(axis=1) - s[:, write_idx].mean(axis=1)
        info.update({
            "joint": tests.joint,
            "signflip_exact": tests.signflip_exact,
            "perm_exact": tests.perm_exact,
            "variance_shares": _variance_shares(frame),
            "ranking_stability": _ranking_stability(differences[:, complete]),
        })  # fmt: skip
        per_pair[str(pair)] = info
    preferred = tuple(preferred)
    if not all(v in results[d].values for v, d in zip(preferred, SPEC_DIMS, strict=True)):
        preferred = tuple(str(results[d].values[0]) for d in SPEC_DIMS)
    mixed = _mixed_model(results, preferred, read, write) if results.sizes["pair"] > 1 else {}
    dims = ("pair", *SPEC_DIMS)
    data_vars = {name: (dims, values) for name, values in out.items()}
    data_vars["null_asymmetry"] = ((*dims, "null_draw"), null)
    return xr.Dataset(
        data_vars,
        coords={d: results[d].values for d in dims},
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
            "ci_method": "cluster bootstrap over layers, studentized (bootstrap-t); chosen over BCa, which under-covers with few layers (rsf calibrate)",
            "seq_ci_method": "sequence bootstrap from the sweep's rsf_boot (BCa with leave-one-chunk-out acceleration; "
            "percentile alongside); absent without --bootstrap",
            "sequence_replicates": int(results.sizes.get("replicate", 0)),
            "layer_replicates": layer_replicates,
            "n_resamples": n_resamples,
            "alpha": alpha,
            "scale": "log2 for isotropic and base_relative; as stored otherwise",
            "p_value_rule": "Monte Carlo (1+b)/(1+B); exact b/B when all arrangements are enumerated",
            "preferred_specification": ",".join(preferred),
            "per_pair": json.dumps(per_pair),
            "mixed_model": json.dumps(mixed),
            "results_config": results.attrs.get("config", ""),
            "results_corpus_hash": results.attrs.get("corpus_hash", ""),
            "results_fingerprint": results_fingerprint(results),
        },
    )


def verdict(joint: dict, n_layers: int, alpha: float) -> str:
    """The plain-words verdict on one pair's joint tests (as `rsf stats` prints it)."""
    if joint["exact"] and 2.0**-n_layers * 2 > alpha:
        return (
            f"with {n_layers} layers the sign-flip test cannot reach α = {alpha} (smallest two-sided p is "
            f"{2 * 2.0**-n_layers:.3g}); the data cannot settle the question"
        )
    if (
        joint["median_effect"] > 0
        and joint["p_median_effect"] < alpha
        and joint["p_share_significant"] < alpha
    ):
        return (
            "the read pathway is more aligned than the write pathway across the analytic choices: "
            "both the median effect and the share of significant specifications exceed what chance gives"
        )
    if (
        joint["median_effect"] > 0
        and min(joint["p_median_effect"], joint["p_share_significant"]) < alpha
    ):
        return (
            "suggestive only: one joint test favours read > write, the other does not; the asymmetry "
            "depends on the analytic choices"
        )
    if joint["median_effect"] < 0 and joint["p_median_effect"] > 1 - alpha:
        return "the asymmetry runs the other way: the write pathway is the more aligned"
    return (
        "no robust read/write asymmetry: across the analytic choices the evidence does not exceed what "
        "chance gives"
    )
