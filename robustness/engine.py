"""The sweep engine: every construction × cutoff × normalisation × layer × matrix, per pair.

For one pair the work is ordered so that nothing expensive happens twice:

1. each model is loaded once; deltas and base weights are read from them;
2. one statistics pass per (model, corpus, settings), cached on disk;
3. one basis per (layer, site, construction) for the activation constructions,
   one per pair for the unembedding ones, one per (layer, matrix) for
   ``weight_svd`` and ``random``; each is reused for every cutoff and
   normalisation;
4. the energy profile on a basis is computed once, only up to the largest k
   any cutoff selects on it, and every cutoff reads off its cumulative sum.

Pairs are independent units of work: serially, or on a Dask cluster
(``workers`` for a ``LocalCluster``, ``scheduler`` for an existing one), with
identical results.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

import probes
from probes.cutoffs import UNDEFINED

from .cache import StatisticsCache
from .config import PairSpec, SweepConfig
from .corpus import Corpus
from .grid import ACTIVATION_SOURCE, TRAINED_SIDE_SOURCE, Grid, as_numpy, fill_replicates
from .models import load_model, resolve_device
from .resampling import bootstrap_chunk_size, bootstrap_weights, jackknife_weights

__all__ = ["PairResult", "run_sweep", "sweep_pair"]


@dataclass
class PairResult:
    """One pair's slice of the results dataset, before assembly."""

    label: str
    matrices: tuple[str, ...]
    rsf: np.ndarray  # [layer, matrix, construction, cutoff, normalisation]
    k: np.ndarray  # [layer, matrix, construction, cutoff]
    delta_fro: np.ndarray  # [layer, matrix]
    gram_purity: np.ndarray  # [layer, matrix]: Σ g², g = eig(G)/tr G
    provenance: dict
    statistics_passes: int = 0
    notes: list[str] = field(default_factory=list)
    # With --bootstrap: "replicates" [B, ...rsf] and "jackknife" [C, ...rsf] (leave one chunk out).
    bootstrap: dict | None = None


def _statistics(
    model, model_hash: str, corpus: Corpus, sites, config, device, cache, progress, label
):
    """Cached statistics pass; returns (statistics, 1 if a forward pass ran else 0).

    With bootstrap replicates the pass also keeps per-chunk statistics.
    """
    chunk_size = bootstrap_chunk_size(corpus.ids.shape[0]) if config.replicates else None
    settings = {
        "sites": sorted(sites),
        "dtype": config.dtype,
        "batch_size": config.batch_size,
        "device_type": torch.device(device).type,
        "chunk_size": chunk_size,
    }
    key = StatisticsCache.key(weights_hash=model_hash, corpus_hash=corpus.hash, settings=settings)
    stats = cache.load(key)
    if stats is not None:
        return stats, 0
    stats = probes.collect_statistics(
        model,
        corpus.ids,
        sites=sites,
        batch_size=config.batch_size,
        chunk_size=chunk_size,
        progress=progress,
        description=f"statistics {label}",
    )
    cache.store(key, stats)
    return stats, 1


def _resampling_weights(stats: dict, config: SweepConfig, label: str) -> np.ndarray:
    """Multinomial chunk counts for each replicate, then one leave-one-chunk-out row per chunk."""
    if not stats:
        return np.ones((config.replicates, 1))  # nothing corpus-dependent to resample
    any_chunks = next(iter(next(iter(stats.values())).chunks.values()))
    n_chunks = len(any_chunks.n)
    return np.vstack(
        [
            bootstrap_weights(n_chunks, config.replicates, config.seed, label),
            jackknife_weights(n_chunks),
        ]
    )


def sweep_pair(
    pair: PairSpec,
    config: SweepConfig,
    corpus: Corpus,
    *,
    cache_root=None,
    progress: bool = True,
    threads: int | None = None,
) -> PairResult:
    """Run the whole grid for one pair (the unit of work for Dask)."""
    if threads is not None:  # a Dask worker: match the client's thread count, for identical results
        torch.set_num_threads(threads)
    cache = StatisticsCache(cache_root)
    device = resolve_device(config.device)
    constructions, cutoffs, normalisations = (
        config.constructions,
        config.cutoffs,
        config.normalisations,
    )
    models = {}
    for role, spec in tqdm(
        [("base", pair.base), ("aligned", pair.aligned)],
        desc=f"loading {pair.label}",
        disable=not progress,
        leave=False,
    ):
        models[role] = load_model(
            spec, device=device, dtype=config.dtype, trust_remote_code=config.trust_remote_code
        )
    base, aligned = models["base"], models["aligned"]
    dims = probes.model_dims(base)
    d, n_layers = dims.d_model, dims.n_layers
    matrices = tuple(m for m in config.matrices if m in probes.family_of(base).matrices)
    if not matrices:
        raise ValueError(
            f"pair {pair.label!r}: none of {list(config.matrices)} exist in {dims.model_type}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero deltas are reported below, once
        deltas = probes.extract_deltas(base, aligned, matrices=matrices)  # checks the pair first
    zero = [f"layer {layer} {m}" for (layer, m), delta in deltas.items() if not torch.any(delta)]
    notes = [f"all-zero delta (NaN fractions): {', '.join(zero)}"] if zero else []
    weights = probes.canonical_weights(base, matrices=matrices)
    provenance = {
        "base_id": pair.base,
        "aligned_id": pair.aligned,
        "phase": pair.phase,
        "base_hash": probes.weights_hash(pair.base),
        "aligned_hash": probes.weights_hash(pair.aligned),
        "model_type": dims.model_type,
        "n_layers": n_layers,
        "d_model": d,
        "n_heads": dims.n_heads,
        "n_kv_heads": dims.n_kv_heads,
        "tied_embeddings": int(probes.tied_embeddings(base)),
    }

    # Statistics: one pass per model whose activations some construction reads.
    sites = sorted({probes.SITE_OF[m] for m in matrices})
    stats, passes = {}, 0
    # A pretraining pair's base is an initialisation: its constructions come from the trained side.
    sources = TRAINED_SIDE_SOURCE if pair.phase == "pretrain" else ACTIVATION_SOURCE
    provenance["construction_side"] = "aligned" if pair.phase == "pretrain" else "base"
    for role in sorted({sources[c] for c in constructions if c in sources}):
        stats[role], ran = _statistics(
            models[role],
            provenance[f"{role}_hash"],
            corpus,
            sites,
            config,
            device,
            cache,
            progress,
            f"{pair.label}/{role}",
        )
        passes += ran

    pair_bases = {}
    if any(c.startswith("unembed") for c in constructions):
        side = models[provenance["construction_side"]]
        pair_bases = probes.prediction_subspaces(side)
        if "unembed_folded" in constructions and probes.final_norm_gain(side) is None:
            notes.append("the final norm has no gain: unembed_folded equals unembed")
    if pair.phase == "pretrain":
        notes.append(
            "a pretraining pair: activation and unembedding constructions from the trained side"
        )
    del aligned, models

    grid = Grid(config, d, pair.label, pair_bases, sources)
    shape = (n_layers, len(matrices), len(constructions), len(cutoffs))
    rsf = np.full((*shape, len(normalisations)), np.nan)
    ks = np.full(shape, UNDEFINED, dtype=np.int64)
    delta_fro = np.full((n_layers, len(matrices)), np.nan)
    purity = np.full((n_layers, len(matrices)), np.nan)
    resampled = [c for c in constructions if c in sources]
    weights_b = _resampling_weights(stats, config, pair.label) if config.replicates else None
    boot = np.full((len(weights_b), *rsf.shape), np.nan) if weights_b is not None else None
    for layer in tqdm(
        range(n_layers), desc=f"grid {pair.label}", disable=not progress, leave=False
    ):
        layer_deltas = [as_numpy(deltas[(layer, m)]) for m in matrices]
        layer_weights = [as_numpy(weights[(layer, m)]) if grid.need_w else None for m in matrices]
        prepared = grid.prepare(matrices, layer_deltas, layer_weights)
        grid.fill(layer, prepared, stats, rsf[layer], ks[layer])
        delta_fro[layer] = [np.linalg.norm(delta) for delta in layer_deltas]
        purity[layer] = [matrix.purity for matrix in prepared]
        if boot is None:
            continue
        # Replicates: the corpus-independent constructions keep their values; the
        # activation ones are recomputed from reweighted chunk statistics.
        boot[:, layer] = rsf[layer]
        if resampled:
            fill_replicates(grid, layer, prepared, stats, weights_b, boot[:, layer], resampled)
    bootstrap = None
    if boot is not None:
        n_boot = config.replicates
        bootstrap = {"replicates": boot[:n_boot], "jackknife": boot[n_boot:], "weights": weights_b}
    return PairResult(
        pair.label, matrices, rsf, ks, delta_fro, purity, provenance, passes, notes, bootstrap
    )


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return None
    counts = [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return max(counts) if counts else None


def _sweep_pair_limited(pair, config, corpus, cache_root, threads, blas_threads):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return sweep_pair(
            pair, config, corpus, cache_root=cache_root, progress=False, threads=threads
        )


def run_sweep(
    config: SweepConfig,
    corpus: Corpus,
    *,
    cache_root=None,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
) -> list[PairResult]:
    """Every pair of `config`, serially or on Dask; results in the config's pair order."""
    if not workers and not scheduler:
        return [
            sweep_pair(pair, config, corpus, cache_root=cache_root, progress=progress)
            for pair in tqdm(
                config.pairs, desc="pairs", disable=not progress or len(config.pairs) == 1
            )
        ]
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = Client(cluster)
    try:
        corpus_future = client.scatter(corpus, broadcast=True)
        futures = [
            client.submit(
                _sweep_pair_limited,
                pair,
                config,
                corpus_future,
                cache_root,
                torch.get_num_threads(),
                _blas_threads(),
                pure=False,
            )
            for pair in config.pairs
        ]
        for _ in tqdm(
            as_completed(futures), total=len(futures), desc="pairs", disable=not progress
        ):
            pass
        return client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
