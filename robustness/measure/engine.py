"""The sweep engine: every construction × cutoff × normalisation × layer × matrix, per pair.

For one pair the work is ordered so that nothing expensive happens twice:

1. neither model is loaded whole: each is a skeleton over its checkpoint
   (:class:`probes.LayerwiseModel`), and everything below runs one layer at a
   time, that layer's weights read, used and released before the next;
2. one layer-sequential statistics pass per (model, corpus, settings), each
   layer's statistics cached on disk (without bootstrap chunks);
3. per layer, the deltas (streamed from both checkpoints), then one basis per (layer, site, construction) for the activation constructions,
   one per pair for the unembedding ones, one per (layer, matrix) for
   ``weight_svd`` and ``random``; each is reused for every cutoff and
   normalisation;
4. the energy profile on a basis is computed once, only up to the largest k
   any cutoff selects on it, and every cutoff reads off its cumulative sum.

Pairs are independent units of work: serially, or on a Dask cluster
(``workers`` for a ``LocalCluster``, ``scheduler`` for an existing one), with
identical results; a single pair on a cluster is split into layer blocks
instead (the statistics pass on the client, each layer's grid and bootstrap
a task).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

import probes
from probes.cutoffs import UNDEFINED
from robustness.measure.cache import StatisticsCache
from robustness.measure.corpus import Corpus
from robustness.measure.experts import collapse, routing_shares, rows_mean
from robustness.measure.grid import (
    ACTIVATION_SOURCE,
    TRAINED_SIDE_SOURCE,
    Grid,
    as_numpy,
    fill_replicates,
)
from robustness.measure.models import (
    open_layerwise,
    resolve_device,
    select_matrices,
    targeted_matrices,
)
from robustness.measure.resampling import (
    bootstrap_chunk_size,
    bootstrap_weights,
    jackknife_weights,
    sequence_chunks,
)
from robustness.settings.config import PairSpec, SweepConfig

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
    gram_spectrum: np.ndarray | None = None  # [layer, matrix, d]: g, descending, zero-padded
    mechanical: np.ndarray | None = None  # [layer, matrix, construction, cutoff]
    statistics_passes: int = 0
    notes: list[str] = field(default_factory=list)
    # With --bootstrap: "replicates" [B, ...rsf] and "jackknife" [C, ...rsf] (leave one chunk out).
    bootstrap: dict | None = None
    # Wall seconds of each stage: hashing, prediction_bases, statistics, grid (bootstrap included).
    timings: dict = field(default_factory=dict)
    storage: np.ndarray | None = None  # [layer, matrix, side]: F32, BF16, Q4_1, … (base, aligned)
    rounding_floor: np.ndarray | None = None  # [layer, matrix]: sqrt(Σ step²/12), both sides
    top_share: np.ndarray | None = None  # [layer, site]: λ₁/tr of the site's covariance
    # A mixture-of-experts pair: "rsf" [layer, matrix, expert, c, k, n], "spectrum"
    # [layer, matrix, expert, d], "purity" [layer, matrix, expert] (NaN for matrices without
    # experts) and "expert_load" [layer, expert] (routing shares); robustness.measure.experts.
    experts: dict | None = None


def _statistics_settings(config: SweepConfig, sites, device, dtype, chunk_size, layer) -> dict:
    return {
        "sites": sorted(sites),
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": config.batch_size,
        "device_type": torch.device(device).type,
        "chunk_size": chunk_size,
        "layer": layer,
        "pass": "layerwise",
    }


CHUNK_CACHE_BYTES = 512 << 20  # chunk statistics of a whole pass are cached only below this


def _layer_statistics(models, hashes, corpus, sites, config, cache, progress, label):
    """Yield ``(layer, {role: that layer's statistics}, whether a forward pass computed them)``.

    Each layer's statistics are a cache entry of their own, read when that
    layer is reached (an interrupted sweep resumes; a finished one runs no
    forward pass). Bootstrap chunk statistics are cached only when a whole
    pass's come to less than :data:`CHUNK_CACHE_BYTES` (the demo's: 25 MB);
    a real model's (about 100 GB at 8B shapes) exist only while their layer
    is computed.
    """
    n_seq = corpus.ids.shape[0]
    chunk_size = bootstrap_chunk_size(n_seq) if config.replicates else None
    first = next(iter(models.values())).model
    n_layers = len(probes.layer_modules(first))
    if chunk_size is not None:
        d = int(first.get_input_embeddings().weight.shape[1])
        n_chunks = len(sequence_chunks(n_seq))
        chunk_bytes = len(models) * n_layers * len(sites) * n_chunks * d * (d + 1) // 2 * 4
        if chunk_bytes > CHUNK_CACHE_BYTES:
            cache = StatisticsCache(None)
    keys = {
        (role, layer): StatisticsCache.key(
            weights_hash=hashes[role],
            corpus_hash=corpus.hash,
            settings=_statistics_settings(config, sites, lw.device, lw.dtype, chunk_size, layer),
        )
        for role, lw in models.items()
        for layer in range(n_layers)
    }
    start = 0
    if all(cache.contains(key) for key in keys.values()):
        for layer in range(n_layers):
            stats = {role: cache.load(keys[(role, layer)]) for role in models}
            if any(value is None for value in stats.values()):
                break  # a corrupt entry (warned about and removed): recompute from here
            yield layer, stats, False
            start = layer + 1
        if start == n_layers:
            return
    passes = probes.layerwise_statistics(
        models,
        corpus.ids,
        sites=sites,
        batch_size=config.batch_size,
        chunk_size=chunk_size,
        progress=progress,
        description=f"statistics {label}",
    )
    for layer, stats in passes:
        if layer < start:
            continue  # already yielded from the cache
        for role, layer_stats in stats.items():
            cache.store(keys[(role, layer)], layer_stats)
        yield layer, stats, True


def _resampling_weights(config: SweepConfig, corpus: Corpus, resampled: bool, key: str):
    """Multinomial chunk counts for each replicate, drawn once for every layer.

    Seeded by the seed and `key` (the base's weights hash), never by a label.

    With ``bca`` one leave-one-chunk-out row per chunk follows (BCa's
    acceleration); without it there are none to compute.
    """
    n_chunks = len(sequence_chunks(corpus.ids.shape[0])) if resampled else 1
    rows = [bootstrap_weights(n_chunks, config.replicates, config.seed, key)]
    if config.bca:
        rows.append(jackknife_weights(n_chunks))
    return np.vstack(rows)


def _eigh_device(device) -> str | None:
    """The device of the bootstrap's batched eigendecompositions: a GPU's; None (NumPy) on the CPU."""
    return None if torch.device(device).type == "cpu" else str(device)


def _open_pair(pair: PairSpec, config: SweepConfig, device, progress, notes):
    sides = {}
    for role, spec in tqdm(
        [("base", pair.base), ("aligned", pair.aligned)],
        desc=f"opening {pair.label}",
        disable=not progress,
        leave=False,
    ):
        adapter = None
        if role == "aligned" and probes.is_adapter(spec):  # LoRA: the base with the adapter merged
            spec, adapter = pair.base, spec
        sides[role], note = open_layerwise(
            spec,
            device=device,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            adapter=adapter,
        )
        if note:
            notes.append(note)
    return sides


@dataclass
class _LayerJob:
    """One pair's per-layer work besides the statistics pass: deltas, bases, fractions, replicates.

    Picklable (:meth:`portable` drops the opened sides), so a Dask worker can
    run a layer block: it reopens the pair's skeletons from their configs.
    """

    pair: PairSpec
    config: SweepConfig
    device: str
    matrices: tuple[str, ...]
    grid: Grid
    weights_b: np.ndarray | None
    resampled: list[str]
    load_role: str = "base"  # whose statistics carry a mixture-of-experts layer's routing
    sides: dict | None = None

    def portable(self) -> _LayerJob:
        return _LayerJob(
            self.pair, self.config, self.device, self.matrices, self.grid, self.weights_b,
            self.resampled, self.load_role,
        )  # fmt: skip

    def run(self, layer: int, stats: dict, *, progress: bool = False) -> dict:
        if self.sides is None:
            self.sides = _open_pair(self.pair, self.config, self.device, False, [])
        base, aligned = self.sides["base"], self.sides["aligned"]
        grid, matrices = self.grid, self.matrices
        deltas, base_weights = probes.layer_deltas(
            base, aligned, layer, matrices, with_base=grid.need_w
        )
        precision = probes.layer_precision(base, aligned, layer, matrices)
        zero = []
        if aligned.adapter is None:  # an adapter's untargeted matrices are said in its note
            zero = [f"layer {layer} {m}" for m in matrices if not torch.any(deltas[m])]
        # One row per matrix, or per expert of a mixture-of-experts MLP matrix (robustness.measure.experts).
        prepared, delta_fro, rows = [], [], []
        for mi, matrix in enumerate(matrices):  # one float64 delta at a time
            delta = as_numpy(deltas.pop(matrix))
            weight = as_numpy(base_weights.pop(matrix)) if grid.need_w else None
            delta_fro.append(np.linalg.norm(delta))
            stack = delta if delta.ndim == 3 else delta[None]
            weights = None if weight is None else weight if weight.ndim == 3 else weight[None]
            for expert in range(stack.shape[0]):
                # Only residual factors are kept: a wide matrix's delta (470 MB at 8B shapes)
                # leaves as a d × d triangle.
                w = None if weights is None else weights[expert]
                prepared.extend(grid.prepare((matrix,), [stack[expert]], [w]))
                rows.append((mi, expert))
            del delta, weight, stack, weights
        shape = (len(rows), len(self.config.constructions), len(self.config.cutoffs))
        per_row = {
            "rsf": np.full((*shape, len(self.config.normalisations)), np.nan),
            "k": np.full(shape, UNDEFINED, dtype=np.int64),
            "mechanical": np.full(shape, np.nan),
            "spectrum": np.zeros((len(rows), grid.d)),
            "purity": np.asarray([matrix.purity for matrix in prepared], dtype=np.float64),
        }
        top_share = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # zero deltas: noted once
            grid.fill(layer, prepared, stats, per_row["rsf"], per_row["k"],
                      mechanical=per_row["mechanical"], top_share=top_share)  # fmt: skip
        for row, matrix in enumerate(prepared):
            per_row["spectrum"][row, : matrix.spectrum.size] = matrix.spectrum  # NaN: a zero delta
        out = {
            "delta_fro": delta_fro,
            "zero": zero,
            "storage": [[precision[m].base, precision[m].aligned] for m in matrices],
            "floor": [precision[m].floor for m in matrices],
            "top_share": [top_share.get(site, np.nan) for site in probes.SITES],
        }
        shares = None
        if len(rows) == len(matrices):  # no experts: a row is a matrix
            out.update(per_row)
        else:
            shares = routing_shares(stats[self.load_role].expert_load[layer])
            out.update({name: np.empty((len(matrices), *v.shape[1:]), v.dtype)
                        for name, v in per_row.items()})  # fmt: skip
            out["experts"] = collapse(rows, len(matrices), shares, out, per_row)
            out["expert_load"] = shares
        if self.weights_b is not None:
            # Replicates: the corpus-independent constructions keep their values; the
            # activation ones are recomputed from reweighted chunk statistics.
            boot = np.broadcast_to(
                per_row["rsf"], (len(self.weights_b), *per_row["rsf"].shape)
            ).copy()
            if self.resampled:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    fill_replicates(
                        grid, layer, prepared, stats, self.weights_b, boot, self.resampled,
                        progress=progress, label=f"bootstrap {self.pair.label} layer {layer}",
                    )  # fmt: skip
            if shares is not None:  # each replicate's expert mean, with the corpus's shares
                boot = np.stack([rows_mean(b, rows, len(matrices), shares) for b in boot])
            out["boot"] = boot
        return out


def _thread_limits() -> tuple[int, int | None]:
    return torch.get_num_threads(), _blas_threads()


def _run_layer_job(job: _LayerJob, layer: int, stats: dict, threads: int, blas_threads):
    """A Dask worker's layer block, with the client's thread counts (for identical results)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return job.run(layer, stats)


def sweep_pair(
    pair: PairSpec,
    config: SweepConfig,
    corpus: Corpus,
    *,
    cache_root=None,
    progress: bool = True,
    threads: int | None = None,
    client=None,
) -> PairResult:
    """Run the whole grid for one pair (the unit of work for Dask), one layer at a time.

    With a Dask `client` the statistics pass runs here and each layer's grid
    and bootstrap run as a task on the cluster (layer blocks of one pair).

    Neither model is ever held whole: each side is a skeleton over its
    checkpoint (:class:`probes.LayerwiseModel`), the statistics pass runs one
    layer at a time (:func:`probes.layerwise_statistics`), and each layer's
    deltas, bases, fractions and bootstrap replicates are computed and
    dropped before the next layer is read.
    """
    if threads is not None:  # a Dask worker: match the client's thread count, for identical results
        torch.set_num_threads(threads)
    cache = StatisticsCache(cache_root)
    device = resolve_device(config.device)
    constructions = config.constructions
    notes: list[str] = []
    sides = _open_pair(pair, config, device, progress, notes)
    base, aligned = sides["base"], sides["aligned"]
    probes.check_pair(base.model, aligned.model)
    dims = probes.model_dims(base.model)
    d, n_layers = dims.d_model, dims.n_layers
    matrices = select_matrices(dims.model_type, config.matrices, label=pair.label)
    provenance, origins, timings = _pair_provenance(pair, sides, dims, matrices, progress)
    hashes = {role: provenance[f"{role}_hash"] for role in ("base", "aligned")}

    # A pretraining pair's base is an initialisation: its constructions come from the trained side.
    sources = TRAINED_SIDE_SOURCE if pair.phase == "pretrain" else ACTIVATION_SOURCE
    provenance["construction_side"] = "aligned" if pair.phase == "pretrain" else "base"
    roles = sorted({sources[c] for c in constructions if c in sources})
    load_role = provenance["construction_side"]
    if dims.n_experts > 1 and load_role not in roles:  # the routing shares need a forward pass
        roles = sorted({*roles, load_role})
    pair_bases = {}
    clock = time.perf_counter()
    if any(c.startswith("unembed") for c in constructions):
        side = sides[provenance["construction_side"]]
        with side.parts(*side.prediction_prefixes()) as model:
            pair_bases = probes.prediction_subspaces(model)
            if "unembed_folded" in constructions and probes.final_norm_gain(model) is None:
                notes.append("the final norm has no gain: unembed_folded equals unembed")
    timings["prediction_bases"] = time.perf_counter() - clock
    if pair.phase == "pretrain":
        notes.append(
            "a pretraining pair: activation and unembedding constructions from the trained side"
        )

    grid = Grid(config, d, hashes["base"], pair_bases, sources)
    grid.eigh_device = _eigh_device(device)
    resampled = [c for c in constructions if c in sources]
    weights_b = (
        _resampling_weights(config, corpus, bool(roles), hashes["base"])
        if config.replicates
        else None
    )
    found = _Collected(config, n_layers, len(matrices), d, dims.n_experts, weights_b)
    sites = sorted({probes.SITE_OF[m] for m in matrices})
    passes = {"ran": False}

    def statistics():
        if not roles:
            yield from ((layer, {}) for layer in range(n_layers))
            return
        # A LoRA side's activations are those of the base with the adapter merged: both hashes.
        # A hub revision's resolved commit is part of the key beside its weights hash.
        role_hashes = {
            role: (
                provenance[f"{role}_hash"]
                if sides[role].adapter is None
                else f"{provenance['base_hash']}+{provenance[f'{role}_hash']}"
            )
            + (f"@{origins[role].commit}" if origins[role].commit else "")
            for role in roles
        }
        models = {role: sides[role] for role in roles}
        for layer, stats, ran in _layer_statistics(
            models, role_hashes, corpus, sites, config, cache, progress, pair.label
        ):
            passes["ran"] = passes["ran"] or ran
            yield layer, stats

    job = _LayerJob(pair, config, device, matrices, grid, weights_b, resampled, load_role)
    job.sides = sides
    timings["statistics"] = timings["grid"] = 0.0
    layers = iter(statistics())
    bar = tqdm(total=n_layers, desc=f"layers {pair.label}", disable=not progress, leave=False)

    def keep(layer, out):
        found.keep(layer, out)
        bar.update(1)

    pending, portable = {}, None
    while True:
        clock = time.perf_counter()
        try:
            layer, stats = next(layers)
        except StopIteration:
            break
        timings["statistics"] += time.perf_counter() - clock
        clock = time.perf_counter()
        if client is None:
            keep(layer, job.run(layer, stats, progress=progress))
        else:  # a layer block on the cluster; at most two per worker in flight
            # Sent straight to the workers (not through the scheduler in the task graph):
            # the job once (its pair bases), each layer's statistics where its task runs.
            if portable is None:
                portable = client.scatter(job.portable(), broadcast=True, hash=False)
            (scattered,) = client.scatter([stats], hash=False)  # a list: one future, no dict keys
            pending[layer] = client.submit(
                _run_layer_job, portable, layer, scattered, *_thread_limits(), pure=False
            )
            while len(pending) > 2 * max(1, len(client.scheduler_info()["workers"])):
                done = min(pending)
                keep(done, pending.pop(done).result())
        del stats
        timings["grid"] += time.perf_counter() - clock
    clock = time.perf_counter()
    for layer in sorted(pending):
        keep(layer, pending.pop(layer).result())
    timings["grid"] += time.perf_counter() - clock
    bar.close()
    if found.zero:
        notes.insert(0, f"all-zero delta (NaN fractions): {', '.join(found.zero)}")
    return found.result(pair.label, matrices, provenance, len(roles) if passes["ran"] else 0,
                        notes, timings, weights_b)  # fmt: skip


def _pair_provenance(pair, sides, dims, matrices, progress) -> tuple[dict, dict, dict]:
    """``(provenance, origins, timings)``: what results.nc records per pair, each side's
    :class:`probes.hub.Source`, and the seconds the weights hashes took."""
    clock = time.perf_counter()
    hashes = {
        role: probes.weights_hash(getattr(pair, role), progress=progress)
        for role in ("base", "aligned")
    }
    timings = {"hashing": time.perf_counter() - clock}
    origins = {role: probes.resolve_source(getattr(pair, role)) for role in ("base", "aligned")}
    base, aligned = sides["base"], sides["aligned"]
    provenance = {
        "base_id": pair.base,
        "aligned_id": pair.aligned,
        "phase": pair.phase,
        "base_hash": hashes["base"],
        "aligned_hash": hashes["aligned"],
        **origins["base"].provenance("base"),
        **origins["aligned"].provenance("aligned"),
        "model_type": dims.model_type,
        "n_layers": dims.n_layers,
        "d_model": dims.d_model,
        "n_heads": dims.n_heads,
        "n_kv_heads": dims.n_kv_heads,
        "tied_embeddings": int(bool(getattr(base.model.config, "tie_word_embeddings", False))),
        "dtype": str(base.dtype).removeprefix("torch."),
        # A LoRA pair: the canonical matrices its adapter targets ("" = a full model, every one).
        "targeted_matrices": ",".join(m for m in matrices if m in targeted_matrices(aligned)),
    }
    return provenance, origins, timings


class _Collected:
    """One pair's per-layer outputs (:meth:`_LayerJob.run`), gathered in layer order."""

    def __init__(self, config, n_layers, n_matrices, d, n_experts, weights_b):
        grid = (len(config.constructions), len(config.cutoffs))
        shape = (n_layers, n_matrices, *grid)
        self.rsf = np.full((*shape, len(config.normalisations)), np.nan)
        self.k = np.full(shape, UNDEFINED, dtype=np.int64)
        self.delta_fro = np.full((n_layers, n_matrices), np.nan)
        self.purity = np.full((n_layers, n_matrices), np.nan)
        self.mechanical = np.full(shape, np.nan)
        self.spectra = np.full((n_layers, n_matrices, d), np.nan)
        self.storage = np.full((n_layers, n_matrices, 2), "", dtype=object)
        self.rounding_floor = np.full((n_layers, n_matrices), np.nan)
        self.top_share = np.full((n_layers, len(probes.SITES)), np.nan)
        self.boot = (
            None if weights_b is None else np.full((len(weights_b), *self.rsf.shape), np.nan)
        )
        self.experts = None
        if n_experts > 1:
            self.experts = {
                "rsf": np.full((n_layers, n_matrices, n_experts, *self.rsf.shape[2:]), np.nan),
                "spectrum": np.full((n_layers, n_matrices, n_experts, d), np.nan),
                "purity": np.full((n_layers, n_matrices, n_experts), np.nan),
                "expert_load": np.full((n_layers, n_experts), np.nan),
            }
        self.replicates = config.replicates
        self.zero: list[str] = []

    def keep(self, layer: int, out: dict) -> None:
        if self.experts is not None:
            for name in ("rsf", "spectrum", "purity"):
                self.experts[name][layer] = out["experts"][name]
            self.experts["expert_load"][layer] = out["expert_load"]
        self.rsf[layer], self.k[layer] = out["rsf"], out["k"]
        self.mechanical[layer], self.spectra[layer] = out["mechanical"], out["spectrum"]
        self.delta_fro[layer], self.purity[layer] = out["delta_fro"], out["purity"]
        self.storage[layer], self.rounding_floor[layer] = out["storage"], out["floor"]
        self.top_share[layer] = out["top_share"]
        if self.boot is not None:
            self.boot[:, layer] = out["boot"]
        self.zero.extend(out["zero"])

    def result(self, label, matrices, provenance, passes, notes, timings, weights_b) -> PairResult:
        bootstrap = None
        if self.boot is not None:
            n = self.replicates
            bootstrap = {"replicates": self.boot[:n], "jackknife": self.boot[n:],
                         "weights": weights_b}  # fmt: skip
        return PairResult(
            label, matrices, self.rsf, self.k, self.delta_fro, self.purity, provenance,
            self.spectra, self.mechanical, passes, notes, bootstrap, timings, self.storage,
            self.rounding_floor, self.top_share, self.experts,
        )  # fmt: skip


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
    """Every pair of `config`, serially or on Dask; results in the config's pair order.

    On Dask, several pairs are the tasks (each a whole sweep on one worker);
    a single pair is split into layer blocks (its statistics pass here, each
    layer's grid and bootstrap on a worker). Either way the results equal a
    serial run's.
    """
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
        if len(config.pairs) == 1:  # one pair: its layer blocks are the tasks
            return [
                sweep_pair(
                    config.pairs[0], config, corpus, cache_root=cache_root, progress=progress,
                    client=client,
                )
            ]  # fmt: skip
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
