"""The results dataset (``results.nc``): assembly, atomic writing and reading.

Layout (a contract, ``docs/design.md`` §4):

- dims ``pair, layer, matrix, construction, cutoff, normalisation``;
- coords ``pair`` (labels), ``phase(pair)`` (``align`` or ``pretrain``), ``layer`` (int), ``matrix`` (canonical order, as
  present), ``pathway(matrix)``, ``construction``, ``cutoff``, ``normalisation``;
- ``rsf(pair, layer, matrix, construction, cutoff, normalisation)``,
  ``k(pair, layer, matrix, construction, cutoff)`` (−1 where undefined),
  ``delta_fro(pair, layer, matrix)``, ``gram_purity(pair, layer, matrix)``
  (``Σ g²``, for Haar moments without the deltas), ``quantisation(pair, side,
  layer, matrix)`` (each side's storage type), ``quantisation_floor(pair, layer,
  matrix)`` (the delta's rounding floor over its norm), ``top_direction_share(pair,
  layer, site)``; provenance per pair (``base_id``,
  ``aligned_id``, ``base_hash``, ``aligned_hash`` and the model's widths);
- attrs: package versions, creation time, the full config as TOML, seed, corpus
  hash and source, token count and sequence length.

Pairs with fewer layers, or without a matrix another pair has (GPT-2 has no
``gate``), are NaN there (``k`` = −1).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

import probes
from robustness.io.provenance import provenance_attrs

if TYPE_CHECKING:  # annotations only: reading a dataset loads neither torch nor the engine
    from robustness.measure.corpus import Corpus
    from robustness.measure.engine import PairResult
    from robustness.settings.config import SweepConfig

__all__ = [
    "PROVENANCE",
    "build_dataset",
    "sweep_dataset",
    "pair_phases",
]

PROVENANCE = (
    "base_id",
    "aligned_id",
    "base_hash",
    "aligned_hash",
    "base_revision",
    "base_commit",
    "aligned_revision",
    "aligned_commit",
    "model_type",
    "n_layers",
    "d_model",
    "n_heads",
    "n_kv_heads",
    "tied_embeddings",
    "construction_side",
    "dtype",
    "targeted_matrices",
)


def sweep_dataset(
    config: SweepConfig,
    corpus: Corpus,
    *,
    cache_root=None,
    progress: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
) -> xr.Dataset:
    """``results.nc`` of every pair of `config` on `corpus`: the sweep (:func:`robustness.measure.runner.
    run_sweep`) assembled by :func:`build_dataset` (the notes it gathered are in
    ``attrs["notes"]``: a JSON list of ``"label: note"`` lines)."""
    from robustness.measure.runner import run_sweep  # loads torch: only when a sweep runs

    results = run_sweep(
        config, corpus, cache_root=cache_root, progress=progress, workers=workers,
        scheduler=scheduler,
    )  # fmt: skip
    return build_dataset(results, config, corpus)


def build_dataset(results: list[PairResult], config: SweepConfig, corpus: Corpus) -> xr.Dataset:
    """Assemble per-pair results into the contract's dataset (all values float64 / int64)."""
    present = {m for result in results for m in result.matrices}
    matrices = [m for m in probes.MATRICES if m in present]
    n_layers = max(result.rsf.shape[0] for result in results)
    arrays = _matrix_arrays(results, matrices, n_layers, config)
    width = arrays["gram_spectrum"].shape[-1]
    data_vars = {
        name: (dims, arrays[name], {"long_name": long_name})
        for name, (dims, long_name) in MATRIX_VARIABLES.items()
    }
    data_vars.update(_expert_variables(results, matrices, n_layers, width, config))
    for name in PROVENANCE:
        values = [result.provenance[name] for result in results]
        data_vars[name] = (
            "pair",
            np.asarray(values, dtype=object if isinstance(values[0], str) else np.int64),
        )
    if config.replicates:
        data_vars.update(_bootstrap_variables(results, matrices, arrays["rsf"].shape))
    notes = [f"{result.label}: {note}" for result in results for note in result.notes]
    return xr.Dataset(
        data_vars,
        coords={
            "pair": ("pair", np.asarray([r.label for r in results], dtype=object)),
            "phase": (
                "pair",
                np.asarray([r.provenance["phase"] for r in results], dtype=object),
                {"long_name": "training phase that produced the delta: align or pretrain"},
            ),
            "layer": ("layer", np.arange(n_layers, dtype=np.int64)),
            "side": ("side", np.asarray(["base", "aligned"], dtype=object)),
            "site": ("site", np.asarray(probes.SITES, dtype=object)),
            "matrix": ("matrix", np.asarray(matrices, dtype=object)),
            "pathway": ("matrix", np.asarray([probes.PATHWAY[m] for m in matrices], dtype=object)),
            "construction": ("construction", np.asarray(config.constructions, dtype=object)),
            "cutoff": ("cutoff", np.asarray(config.cutoffs, dtype=object)),
            "normalisation": ("normalisation", np.asarray(config.normalisations, dtype=object)),
        },
        attrs={
            **provenance_attrs(
                "results",
                title="relative-subspace-fraction sweep",
                corpus=corpus,
                seed=config.seed,
                inputs={
                    f"{r.label}/{role}": r.provenance[f"{role}_hash"]
                    for r in results
                    for role in ("base", "aligned")
                },
            ),
            "config": config.to_toml(),
            "bootstrap_replicates": int(config.replicates),
            "bootstrap_unit": "chunks of consecutive sequences (at most 32 per corpus); "
            "only activation constructions vary across replicates",
            "notes": json.dumps(notes),
        },
    )


def _matrix_arrays(results, matrices, n_layers, config) -> dict:
    """The :data:`MATRIX_VARIABLES`' values: each pair's arrays on the union of the pairs'
    layers and matrices (NaN, ``k`` = −1, where a pair has none; spectra zero-padded)."""
    shape = (len(results), n_layers, len(matrices), len(config.constructions), len(config.cutoffs))
    rsf = np.full((*shape, len(config.normalisations)), np.nan)
    ks = np.full(shape, -1, dtype=np.int64)
    fro = np.full(shape[:3], np.nan)
    purity = np.full(shape[:3], np.nan)
    mechanical = np.full(shape, np.nan)
    storage = np.full((len(results), 2, *shape[1:3]), "", dtype=object)
    floor = np.full(shape[:3], np.nan)
    top_share = np.full((len(results), n_layers, len(probes.SITES)), np.nan)
    width = max(r.gram_spectrum.shape[-1] for r in results)
    spectra = np.full((*shape[:3], width), np.nan)
    for p, result in enumerate(results):
        columns = [matrices.index(m) for m in result.matrices]
        layers = result.rsf.shape[0]
        rsf[p, :layers, columns] = result.rsf.transpose(1, 0, 2, 3, 4)
        ks[p, :layers, columns] = result.k.transpose(1, 0, 2, 3)
        fro[p, :layers, columns] = result.delta_fro.T
        purity[p, :layers, columns] = result.gram_purity.T
        mechanical[p, :layers, columns] = result.mechanical.transpose(1, 0, 2, 3)
        own = result.gram_spectrum.shape[-1]
        spectra[p, :layers, columns, :own] = result.gram_spectrum.transpose(1, 0, 2)
        spectra[p, :layers, columns, own:] = 0.0
        if result.storage is not None:
            storage[p, :, :layers, columns] = result.storage.transpose(1, 2, 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                floor[p, :layers, columns] = (result.rounding_floor / result.delta_fro).T
        if result.top_share is not None:
            top_share[p, :layers] = result.top_share
    return {
        "rsf": rsf, "k": ks, "delta_fro": fro, "gram_purity": purity, "gram_spectrum": spectra,
        "mechanical_reference": mechanical, "quantisation": storage, "quantisation_floor": floor,
        "top_direction_share": top_share,
    }  # fmt: skip


# The per-matrix (and per-site) variables of results.nc: dimensions and long name.
MATRIX_VARIABLES = {
    "rsf": (
        ("pair", "layer", "matrix", "construction", "cutoff", "normalisation"),
        "relative subspace fraction, normalised",
    ),
    "k": (
        ("pair", "layer", "matrix", "construction", "cutoff"),
        "rank selected by the cutoff (-1: undefined)",
    ),
    "delta_fro": (("pair", "layer", "matrix"), "Frobenius norm of the delta"),
    "gram_purity": (
        ("pair", "layer", "matrix"),
        "Σ g_i², g = eig(G)/tr G: the delta's Gram purity (1/d isotropic … 1 rank one), "
        "for Haar moments without the deltas",
    ),
    "gram_spectrum": (
        ("pair", "layer", "matrix", "eigen"),
        "g = eig(G)/tr G, descending (zero-padded to the widest d): each "
        "delta's normalised Gram spectrum, for its exact Haar reference",
    ),
    "mechanical_reference": (
        ("pair", "layer", "matrix", "construction", "cutoff"),
        "log2 of the activations' own top-k energy share over k/d: the level "
        "the outer-product mechanism alone predicts (read matrices, activation "
        "constructions; NaN elsewhere)",
    ),
    "quantisation": (
        ("pair", "side", "layer", "matrix"),
        "how each side stores the matrix: F32, F16, BF16, a GGUF type (Q8_0, "
        "Q4_1, Q4_K, …), a transformers quantisation method, or LoRA",
    ),
    "quantisation_floor": (
        ("pair", "layer", "matrix"),
        "rounding floor of the delta over its norm: sqrt(Σ step²/12) of both "
        "sides' grids (the coarser of stored type and run dtype) / ‖ΔW‖_F; NaN where a "
        "type has no linear grid",
    ),
    "top_direction_share": (
        ("pair", "layer", "site"),
        "λ₁ / tr of the site's activation covariance (act_cov, on the "
        "construction side): the share of the variance in its top direction",
    ),
}


def _bootstrap_variables(results, matrices, shape) -> dict:
    """``rsf_boot`` (and ``rsf_jack`` with ``--bca``) from the pairs' bootstrap rows."""
    dims = ("pair", "layer", "matrix", "construction", "cutoff", "normalisation")
    out = {}
    for name, dim in (("replicates", "replicate"), ("jackknife", "jackknife")):
        count = max(result.bootstrap[name].shape[0] for result in results)
        if name == "jackknife" and count == 0:
            continue  # swept without --bca: no leave-one-chunk-out rows
        values = np.full((count, *shape), np.nan)
        for p, result in enumerate(results):
            columns = [matrices.index(m) for m in result.matrices]
            block = result.bootstrap[name]
            layers = block.shape[1]
            values[: block.shape[0], p, :layers, columns] = block.transpose(2, 0, 1, 3, 4, 5)
        variable = "rsf_boot" if name == "replicates" else "rsf_jack"
        long_name = (
            "rsf on a bootstrap resample of the corpus' sequence chunks"
            if name == "replicates"
            else "rsf with one sequence chunk left out (for BCa's acceleration)"
        )
        out[variable] = ((dim, *dims), values, {"long_name": long_name})
    return out


def _expert_variables(results, matrices, n_layers, width, config) -> dict:
    """A mixture-of-experts sweep's per-expert values and routing shares (robustness.measure.experts)."""
    with_experts = [r for r in results if r.experts is not None]
    if not with_experts:
        return {}
    n_experts = max(r.experts["expert_load"].shape[1] for r in with_experts)
    grid = (len(config.constructions), len(config.cutoffs), len(config.normalisations))
    shape = (len(results), n_layers, len(matrices), n_experts)
    rsf = np.full((*shape, *grid), np.nan)
    spectra = np.full((*shape, width), np.nan)
    purity = np.full(shape, np.nan)
    load = np.full((len(results), n_layers, n_experts), np.nan)
    for p, result in enumerate(results):
        if result.experts is None:
            continue
        columns = [matrices.index(m) for m in result.matrices]
        layers, own = result.rsf.shape[0], result.experts["expert_load"].shape[1]
        rsf[p, :layers, columns, :own] = result.experts["rsf"].transpose(1, 0, 2, 3, 4, 5)
        found = result.experts["spectrum"].transpose(1, 0, 2, 3)
        spectra[p, :layers, columns, :own, : found.shape[-1]] = found
        purity[p, :layers, columns, :own] = result.experts["purity"].transpose(1, 0, 2)
        load[p, :layers, :own] = result.experts["expert_load"]
    matrix_dims = ("pair", "layer", "matrix", "expert")
    return {
        "rsf_expert": (
            (*matrix_dims, "construction", "cutoff", "normalisation"),
            rsf,
            {"long_name": "each expert's relative subspace fraction, normalised (rsf is their "
             "mean weighted by expert_load; NaN for matrices without experts)"},
        ),
        "gram_spectrum_expert": (
            (*matrix_dims, "eigen"),
            spectra,
            {"long_name": "each expert's delta's normalised Gram spectrum (its exact Haar "
             "reference; gram_spectrum is NaN for these matrices)"},
        ),
        "gram_purity_expert": (
            matrix_dims,
            purity,
            {"long_name": "Σ g_i² of each expert's delta's Gram spectrum"},
        ),
        "expert_load": (
            ("pair", "layer", "expert"),
            load,
            {"long_name": "each expert's routing share on the probe corpus: its summed routing "
             "weights over all experts' (the weights of the mean over experts)"},
        ),
    }  # fmt: skip


def pair_phases(results: xr.Dataset) -> list[str]:
    """Each pair's phase: the ``phase`` coordinate, or ``align`` for files written before it existed."""
    if "phase" in results.coords or "phase" in results:
        return [str(p) for p in results["phase"].values]
    return ["align"] * results.sizes["pair"]
