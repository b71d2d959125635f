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

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

import probes
from probes.cutoffs import UNDEFINED

from .cache import StatisticsCache
from .config import PairSpec, SweepConfig
from .corpus import Corpus

__all__ = ["PairResult", "preflight", "resolve_device", "run_sweep", "sweep_pair"]

BOOTSTRAP_CHUNKS = 32
REPLICATE_BLOCK = 8  # bootstrap replicates reweighted and decomposed together
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
    # With --bootstrap: "replicates" [B, ...rsf] and "jackknife" [C, ...rsf] (leave one chunk out).
    bootstrap: dict | None = None


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


def preflight(config: SweepConfig) -> dict[str, dict]:
    """Check every pair from configs alone (no weights): types, widths, cutoffs.

    Returns each pair's widths (``model_type``, ``n_layers``, ``d_model``, ``vocab_size``). A missing path, an unreachable
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
        widths[pair.label] = base
    return widths


def check_corpus(corpus: Corpus, widths: dict[str, dict]) -> None:
    """Token ids must exist in every pair's vocabulary (an ids file may not match the models)."""
    largest = int(corpus.ids.max())
    for label, w in widths.items():
        if w["vocab_size"] is not None and largest >= int(w["vocab_size"]):
            raise ValueError(
                f"the corpus holds token id {largest}, outside pair {label!r}'s vocabulary of {w['vocab_size']}"
            )


def _load(spec: str, config: SweepConfig, device: str):
    path = os.path.expanduser(spec) if os.path.exists(os.path.expanduser(spec)) else spec
    try:
        return probes.load_model(
            path, dtype=config.dtype, device=device, trust_remote_code=config.trust_remote_code
        )
    except OSError as error:
        raise ValueError(f"cannot load model {spec!r}: {error}") from None


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


def bootstrap_chunk_size(n_sequences: int) -> int:
    """Sequences per bootstrap chunk: at most BOOTSTRAP_CHUNKS chunks of whole sequences."""
    return math.ceil(n_sequences / min(n_sequences, BOOTSTRAP_CHUNKS))


def _resampling_weights(stats: dict, config: SweepConfig, label: str) -> np.ndarray:
    """Multinomial chunk counts for each replicate, then one leave-one-chunk-out row per chunk."""
    if not stats:
        return np.ones((config.replicates, 1))  # nothing corpus-dependent to resample
    any_chunks = next(iter(next(iter(stats.values())).chunks.values()))
    n_chunks = len(any_chunks.n)
    rng = probes.construction_rng(config.seed, label, "bootstrap")
    counts = rng.multinomial(n_chunks, np.full(n_chunks, 1.0 / n_chunks), size=config.replicates)
    jackknife = 1.0 - np.eye(n_chunks)
    return np.vstack([counts.astype(np.float64), jackknife])


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

    grid = _Grid(config, d, pair.label, pair_bases)
    shape = (n_layers, len(matrices), len(constructions), len(cutoffs))
    rsf = np.full((*shape, len(normalisations)), np.nan)
    ks = np.full(shape, UNDEFINED, dtype=np.int64)
    delta_fro = np.full((n_layers, len(matrices)), np.nan)
    resampled = [c for c in constructions if c in ACTIVATION_SOURCE]
    weights_b = _resampling_weights(stats, config, pair.label) if config.replicates else None
    boot = np.full((len(weights_b), *rsf.shape), np.nan) if weights_b is not None else None
    for layer in tqdm(
        range(n_layers), desc=f"grid {pair.label}", disable=not progress, leave=False
    ):
        layer_deltas = [_as_numpy(deltas[(layer, m)]) for m in matrices]
        layer_weights = [_as_numpy(weights[(layer, m)]) if grid.need_w else None for m in matrices]
        prepared = grid.prepare(matrices, layer_deltas, layer_weights)
        grid.fill(layer, prepared, stats, rsf[layer], ks[layer])
        delta_fro[layer] = [np.linalg.norm(delta) for delta in layer_deltas]
        if boot is None:
            continue
        # Replicates: the corpus-independent constructions keep their values; the
        # activation ones are recomputed from reweighted chunk statistics.
        boot[:, layer] = rsf[layer]
        if resampled:
            _fill_replicates(grid, layer, prepared, stats, weights_b, boot[:, layer], resampled)
    bootstrap = None
    if boot is not None:
        n_boot = config.replicates
        bootstrap = {"replicates": boot[:n_boot], "jackknife": boot[n_boot:], "weights": weights_b}
    return PairResult(
        pair.label, matrices, rsf, ks, delta_fro, provenance, passes, notes, bootstrap
    )


def _eigen_all(subspace_tasks: dict) -> dict:
    """Run independent eigendecompositions two at a time, one BLAS thread each.

    LAPACK's tridiagonal reduction barely uses a second core, so two
    single-threaded eigendecompositions side by side finish sooner than the
    same two in sequence with two threads each. The results do not depend on
    how the work is scheduled.
    """
    if len(subspace_tasks) < 2:
        return {key: task() for key, task in subspace_tasks.items()}
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(task) for key, task in subspace_tasks.items()}
        return {key: future.result() for key, future in futures.items()}


@dataclass
class _Matrix:
    """One matrix of one layer, with everything every basis reuses."""

    name: str
    pathway: str
    delta: np.ndarray
    w_from: np.ndarray | None
    gram_w: np.ndarray | None
    gram_delta: np.ndarray | None  # only for wide matrices, where it is the cheaper route
    purity: float | None


class _Grid:
    """The per-layer work of one pair: bases, then profiles, then every cutoff and normalisation."""

    def __init__(self, config: SweepConfig, d: int, label: str, pair_bases: dict):
        self.config, self.d, self.label, self.pair_bases = config, d, label, pair_bases
        self.need_w = (
            "weight_svd" in config.constructions or "base_relative" in config.normalisations
        )
        self.need_purity = "null_z" in config.normalisations
        # Fixed cutoffs are all a basis without a spectrum (random) can define.
        fixed = [
            probes.resolve_cutoff(c, d=d)
            for c in config.cutoffs
            if probes.parse_cutoff(c).rule in ("k", "frac")
        ]
        self.random_k = max(fixed, default=0)

    def prepare(self, matrices, deltas, weights) -> list[_Matrix]:
        prepared = []
        for name, delta, w_from in zip(matrices, deltas, weights, strict=True):
            pathway = probes.PATHWAY[name]
            # Wide matrices (the MLP's 4d side) are cheaper through their d×d Gram.
            wide = (delta.shape[0] if pathway == "read" else delta.shape[1]) > self.d
            gram_delta = probes.residual_gram(delta, pathway=pathway) if wide else None
            purity = None
            if self.need_purity:
                purity = probes.gram_purity(delta if gram_delta is None else None, gram=gram_delta)
            gram_w = probes.residual_gram(w_from, pathway=pathway) if self.need_w else None
            prepared.append(_Matrix(name, pathway, delta, w_from, gram_w, gram_delta, purity))
        return prepared

    def basis_tasks(self, layer, prepared, stats, constructions) -> dict:
        """The eigendecompositions one layer needs, as ``{key: callable}`` for :func:`_eigen_all`."""
        tasks = {}
        for matrix in prepared:
            site = probes.SITE_OF[matrix.name]
            for construction in constructions:
                if construction in ACTIVATION_SOURCE and (site, construction) not in tasks:
                    site_stats = stats[ACTIVATION_SOURCE[construction]].sites[(layer, site)]
                    tasks[(site, construction)] = partial(
                        site_stats.subspace,
                        centred=construction != "act_moment",
                        construction=construction,
                    )
                elif construction == "weight_svd":
                    tasks[(matrix.name, construction)] = partial(
                        probes.gram_subspace, matrix.gram_w, "weight_svd"
                    )
        return tasks

    def _subspace(self, bases, layer, matrix: str, construction: str):
        if construction in ACTIVATION_SOURCE:
            return bases[(probes.SITE_OF[matrix], construction)]
        if construction in self.pair_bases:
            return self.pair_bases[construction]
        if construction == "weight_svd":
            return bases[(matrix, construction)]
        if self.random_k < 1:  # only spectrum cutoffs: nothing a random basis can define
            return None
        rng = probes.construction_rng(self.config.seed, self.label, layer, matrix)
        return probes.random_subspace(self.d, rng=rng, k=self.random_k)

    def fill(self, layer, prepared, stats, rsf, ks, *, constructions=None, bases=None) -> None:
        """Fill ``rsf[matrix, construction, cutoff, normalisation]`` and ``ks`` for one layer.

        ``constructions`` limits the work to some constructions (their indices in
        the config are kept): a bootstrap replicate redoes only the activation ones.
        ``bases`` are the results of :meth:`basis_tasks` when already computed.
        """
        d, cutoffs, normalisations = self.d, self.config.cutoffs, self.config.normalisations
        chosen = constructions or self.config.constructions
        if bases is None:
            bases = _eigen_all(self.basis_tasks(layer, prepared, stats, chosen))
        for mi, matrix in enumerate(prepared):
            for construction in chosen:
                ci = self.config.constructions.index(construction)
                subspace = self._subspace(bases, layer, matrix.name, construction)
                if subspace is None:
                    continue
                k = np.array([
                    probes.resolve_cutoff(c, d=d, spectrum=subspace.spectrum, n_samples=subspace.n_samples)
                    for c in cutoffs
                ])  # fmt: skip
                ks[mi, ci] = k
                if k.max() < 1:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter(
                        "ignore", RuntimeWarning
                    )  # zero deltas: noted once per pair
                    fraction = probes.fractions_at(
                        matrix.delta,
                        subspace.basis,
                        k,
                        pathway=matrix.pathway,
                        gram=matrix.gram_delta,
                    )
                base_fraction = None
                if "base_relative" in normalisations:
                    if construction == "weight_svd":  # W on its own singular basis: closed form
                        share = np.cumsum(subspace.spectrum) / subspace.spectrum.sum()
                        base_fraction = np.where(k >= 1, share[np.clip(k, 1, None) - 1], np.nan)
                    else:
                        gram = matrix.gram_w if matrix.gram_delta is not None else None
                        base_fraction = probes.fractions_at(
                            matrix.w_from, subspace.basis, k, pathway=matrix.pathway, gram=gram
                        )
                for ni, name in enumerate(normalisations):
                    rsf[mi, ci, :, ni] = probes.normalise(
                        name, fraction, k, d, base_fraction=base_fraction, purity=matrix.purity
                    )


def _fill_replicates(grid, layer, prepared, stats, weights, out, constructions) -> None:
    """Fill ``out[b]`` for each row of ``weights``, in blocks of REPLICATE_BLOCK replicates.

    A block's reweighted statistics come from one pass over the chunks per site,
    and its eigendecompositions (sites × replicates) share the two-thread pool,
    so no worker idles while the last site of a replicate finishes.
    """
    sites = sorted({(layer, probes.SITE_OF[m.name]) for m in prepared})
    scratch = np.empty(out.shape[1:4], dtype=np.int64)  # ks of one replicate: not kept
    for start in range(0, len(weights), REPLICATE_BLOCK):
        block = weights[start : start + REPLICATE_BLOCK]
        replicates = [
            {role: probes.ActivationStatistics(sites={}) for role in stats} for _ in block
        ]
        for role, role_stats in stats.items():
            for key in sites:
                for b, site in enumerate(role_stats.chunks[key].reweighted_many(block)):
                    replicates[b][role].sites[key] = site
        tasks = {
            (b, key): task
            for b, replicate in enumerate(replicates)
            for key, task in grid.basis_tasks(layer, prepared, replicate, constructions).items()
        }
        bases = _eigen_all(tasks)
        del tasks, replicates
        for b in range(len(block)):
            mine = {key: basis for (owner, key), basis in bases.items() if owner == b}
            grid.fill(
                layer, prepared, None, out[start + b], scratch, constructions=constructions, bases=mine
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
