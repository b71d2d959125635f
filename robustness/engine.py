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

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

import probes

from .cache import StatisticsCache
from .config import PairSpec, SweepConfig
from .corpus import Corpus

__all__ = ["PairResult", "preflight", "resolve_device", "run_sweep", "sweep_pair"]

ACTIVATION_SOURCE = {"act_cov": "base", "act_moment": "base", "act_cov_aligned": "aligned"}


@dataclass
class PairResult:
    """One pair's slice of the results dataset, before assembly."""

    label: str
    matrices: tuple[str, ...]
    rsf: np.ndarray  # [layer, matrix, construction, cutoff, normalisation]
    k: np.ndarray  # [layer, matrix, construction, cutoff]
    delta_fro: np.ndarray  # [layer, matrix]
    provenance: dict
    statistics_passes: int = 0
    notes: list[str] = field(default_factory=list)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for, but no CUDA device is available")
    return device


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith("/") or spec.count("/") > 1


def open_model_config(spec: str, *, trust_remote_code: bool = False):
    """The model's config (no weights), with one-line errors for a bad path or hub id."""
    from transformers import AutoConfig

    if os.path.exists(os.path.expanduser(spec)):
        path = os.path.expanduser(spec)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(
                f"{spec} is not a model directory (no config.json): use save_pretrained"
            )
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if _looks_like_path(spec):
        raise FileNotFoundError(f"model directory not found: {spec}")
    try:
        return AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot reach hub id {spec!r} ({type(error).__name__}): no network or no such model; "
            "pass a local directory written by save_pretrained"
        ) from None


def _config_widths(config) -> dict:
    def get(*names):
        for name in names:
            value = getattr(config, name, None)
            if value is not None:
                return value
        return None

    return {
        "model_type": config.model_type,
        "n_layers": get("num_hidden_layers", "n_layer", "num_layers"),
        "d_model": get("hidden_size", "n_embd", "d_model"),
        "vocab_size": get("vocab_size"),
    }


def preflight(config: SweepConfig) -> dict[str, int]:
    """Check every pair from configs alone (no weights): types, widths, cutoffs.

    Returns the residual width per pair label. A missing path, an unreachable
    hub id, a mismatched pair and ``k > d`` all fail here, before any model loads.
    """
    widths = {}
    for pair in config.pairs:
        base = _config_widths(
            open_model_config(pair.base, trust_remote_code=config.trust_remote_code)
        )
        aligned = _config_widths(
            open_model_config(pair.aligned, trust_remote_code=config.trust_remote_code)
        )
        if base["model_type"] not in probes.SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"pair {pair.label!r}: unsupported model type {base['model_type']!r}: supported are "
                f"{', '.join(probes.SUPPORTED_MODEL_TYPES)}"
            )
        differences = [f"{k}: {base[k]} vs {aligned[k]}" for k in base if base[k] != aligned[k]]
        if differences:
            raise ValueError(
                f"pair {pair.label!r} is mismatched (base vs aligned): " + "; ".join(differences)
            )
        try:
            probes.validate_cutoffs(config.cutoffs, int(base["d_model"]))
        except ValueError as error:
            raise ValueError(f"pair {pair.label!r}: {error}") from None
        widths[pair.label] = int(base["d_model"])
    return widths


def _load(spec: str, config: SweepConfig, device: str):
    path = os.path.expanduser(spec) if os.path.exists(os.path.expanduser(spec)) else spec
    try:
        return probes.load_model(
            path, dtype=config.dtype, device=device, trust_remote_code=config.trust_remote_code
        )
    except OSError as error:
        raise ValueError(f"cannot load model {spec!r}: {error}") from None


def _statistics(model, corpus: Corpus, sites, config, device, cache, progress, label):
    """Cached statistics pass; returns (statistics, 1 if a forward pass ran else 0)."""
    settings = {
        "sites": sorted(sites),
        "dtype": config.dtype,
        "batch_size": config.batch_size,
        "device_type": torch.device(device).type,
        "chunk_size": None,
    }
    key = StatisticsCache.key(
        weights_hash=probes.weights_hash(model), corpus_hash=corpus.hash, settings=settings
    )
    stats = cache.load(key)
    if stats is not None:
        return stats, 0
    stats = probes.collect_statistics(
        model,
        corpus.ids,
        sites=sites,
        batch_size=config.batch_size,
        progress=progress,
        description=f"statistics {label}",
    )
    cache.store(key, stats)
    return stats, 1


def _as_numpy(tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy()


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
        models[role] = _load(spec, config, device)
    base, aligned = models["base"], models["aligned"]
    probes.check_pair(base, aligned)
    dims = probes.model_dims(base)
    d, n_layers = dims.d_model, dims.n_layers
    matrices = tuple(m for m in config.matrices if m in probes.family_of(base).matrices)
    if not matrices:
        raise ValueError(
            f"pair {pair.label!r}: none of {list(config.matrices)} exist in {dims.model_type}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero deltas are reported below, once
        deltas = probes.extract_deltas(base, aligned, matrices=matrices)
    zero = [f"layer {layer} {m}" for (layer, m), delta in deltas.items() if not torch.any(delta)]
    notes = [f"all-zero delta (NaN fractions): {', '.join(zero)}"] if zero else []
    weights = probes.canonical_weights(base, matrices=matrices)
    provenance = {
        "base_id": pair.base,
        "aligned_id": pair.aligned,
        "base_hash": probes.weights_hash(base),
        "aligned_hash": probes.weights_hash(aligned),
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
    for role in sorted({ACTIVATION_SOURCE[c] for c in constructions if c in ACTIVATION_SOURCE}):
        stats[role], ran = _statistics(
            models[role], corpus, sites, config, device, cache, progress, f"{pair.label}/{role}"
        )
        passes += ran
    del aligned, models

    pair_bases = {}
    if any(c.startswith("unembed") for c in constructions):
        gain = probes.final_norm_gain(base)
        pair_bases = probes.unembedding_subspaces(probes.unembedding(base), gain=gain)
        if gain is None:  # no final-norm gain (OLMo-1): folding it in changes nothing
            unfolded = pair_bases["unembed"]
            pair_bases["unembed_folded"] = probes.Subspace(
                "unembed_folded", unfolded.basis, unfolded.spectrum
            )
            notes.append("the final norm has no gain: unembed_folded equals unembed")

    need_w = "weight_svd" in constructions or "base_relative" in normalisations
    need_purity = "null_z" in normalisations
    shape = (n_layers, len(matrices), len(constructions), len(cutoffs))
    rsf = np.full((*shape, len(normalisations)), np.nan)
    ks = np.full(shape, probes.cutoffs.UNDEFINED, dtype=np.int64)
    delta_fro = np.full((n_layers, len(matrices)), np.nan)
    for layer in tqdm(
        range(n_layers), desc=f"grid {pair.label}", disable=not progress, leave=False
    ):
        site_bases: dict[tuple[str, str], probes.Subspace] = {}
        for mi, matrix in enumerate(matrices):
            pathway, site = probes.PATHWAY[matrix], probes.SITE_OF[matrix]
            delta = _as_numpy(deltas[(layer, matrix)])
            w_from = _as_numpy(weights[(layer, matrix)]) if need_w else None
            delta_fro[layer, mi] = np.linalg.norm(delta)
            # Wide matrices (the MLP's 4d side) are cheaper through their d×d Gram.
            wide = (delta.shape[0] if pathway == "read" else delta.shape[1]) > d
            gram_delta = probes.residual_gram(delta, pathway=pathway) if wide else None
            gram_w = probes.residual_gram(w_from, pathway=pathway) if need_w else None
            purity = probes.gram_purity(delta) if need_purity else None
            for ci, construction in enumerate(constructions):
                if construction in ACTIVATION_SOURCE:
                    key = (site, construction)
                    if key not in site_bases:
                        site_stats = stats[ACTIVATION_SOURCE[construction]].sites[(layer, site)]
                        site_bases[key] = site_stats.subspace(
                            centred=construction != "act_moment", construction=construction
                        )
                    subspace = site_bases[key]
                elif construction in pair_bases:
                    subspace = pair_bases[construction]
                elif construction == "weight_svd":
                    subspace = probes.gram_subspace(gram_w, "weight_svd")
                else:  # random: seeded per (pair, layer, matrix)
                    rng = probes.construction_rng(config.seed, pair.label, layer, matrix)
                    subspace = probes.random_subspace(d, rng=rng)
                k = np.array(
                    [
                        probes.resolve_cutoff(
                            c, d=d, spectrum=subspace.spectrum, n_samples=subspace.n_samples
                        )
                        for c in cutoffs
                    ]
                )
                ks[layer, mi, ci] = k
                k_max = int(k.max())
                if k_max < 1:
                    continue
                top = subspace.basis[:, :k_max]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    fraction = np.cumsum(
                        probes.energy_profile(delta, top, pathway=pathway, gram=gram_delta)
                    )
                base_fraction = None
                if "base_relative" in normalisations:
                    if construction == "weight_svd":  # W on its own singular basis: closed form
                        base_fraction = (
                            np.cumsum(subspace.spectrum)[:k_max] / subspace.spectrum.sum()
                        )
                    else:
                        base_fraction = np.cumsum(
                            probes.energy_profile(
                                w_from, top, pathway=pathway, gram=gram_w if wide else None
                            )
                        )
                defined = k >= 1
                at = np.where(defined, k, 1) - 1
                for ni, name in enumerate(normalisations):
                    rsf[layer, mi, ci, :, ni] = probes.normalise(
                        name,
                        np.minimum(fraction[at], 1.0),
                        np.where(defined, k, -1),
                        d,
                        base_fraction=None if base_fraction is None else base_fraction[at],
                        purity=purity,
                    )
    return PairResult(pair.label, matrices, rsf, ks, delta_fro, provenance, passes, notes)


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
