"""The sweep engine: every construction × cutoff × normalisation × layer × matrix of one pair.

For one pair the work is ordered so that nothing expensive happens twice:

1. neither model is loaded whole: each is a skeleton over its checkpoint
   (:class:`probes.LayerwiseModel`), and everything below runs one layer at a
   time, that layer's weights read, used and released before the next;
2. one layer-sequential statistics pass per (model, corpus, settings), each
   layer's statistics cached on disk (without bootstrap chunks;
   :mod:`robustness.measure.statistics_pass`);
3. per layer (:mod:`robustness.measure.layer_job`), the deltas (streamed from
   both checkpoints), then one basis per (layer, site, construction) for the
   activation constructions, one per pair for the unembedding ones, one per
   (layer, matrix) for ``weight_svd`` and ``random``; each is reused for every
   cutoff and normalisation;
4. the energy profile on a basis is computed once, only up to the largest k
   any cutoff selects on it, and every cutoff reads off its cumulative sum.

With a Dask client (:func:`robustness.measure.runner.run_sweep` with one
pair) the statistics pass runs here and each layer's grid and bootstrap is a
task on the cluster, with identical results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

import probes
from probes.cutoffs import UNDEFINED
from robustness.measure.cache import StatisticsCache
from robustness.measure.corpus import Corpus
from robustness.measure.grid import ACTIVATION_SOURCE, TRAINED_SIDE_SOURCE, Grid
from robustness.measure.layer_job import LayerBlocks, LayerJob, LocalLayers, open_pair
from robustness.measure.models import resolve_device, select_matrices, targeted_matrices
from robustness.measure.resampling import bootstrap_weights, jackknife_weights, sequence_chunks
from robustness.measure.statistics_pass import StatisticsPass
from robustness.settings.config import PairSpec, SweepConfig

if TYPE_CHECKING:
    from probes.adapters import ModelDims

__all__ = ["PairResult", "sweep_pair"]


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
    # Wall seconds of each stage: hashing, prediction_bases, statistics, grid (with --bootstrap
    # also "bootstrap", the part of "grid" its replicates took).
    timings: dict = field(default_factory=dict)
    storage: np.ndarray | None = None  # [layer, matrix, side]: F32, BF16, Q4_1, … (base, aligned)
    rounding_floor: np.ndarray | None = None  # [layer, matrix]: sqrt(Σ step²/12), both sides
    top_share: np.ndarray | None = None  # [layer, site]: λ₁/tr of the site's covariance
    # A mixture-of-experts pair: "rsf" [layer, matrix, expert, c, k, n], "spectrum"
    # [layer, matrix, expert, d], "purity" [layer, matrix, expert] (NaN for matrices without
    # experts) and "expert_load" [layer, expert] (routing shares); robustness.measure.experts.
    experts: dict | None = None


@dataclass
class _PairRun:
    """One pair's sweep: its settings, its two opened sides and what the engine records of them."""

    pair: PairSpec
    config: SweepConfig
    device: str
    progress: bool
    sides: dict  # role → probes.LayerwiseModel
    dims: ModelDims
    matrices: tuple[str, ...]
    provenance: dict  # what results.nc records per pair (robustness.measure.results.PROVENANCE)
    origins: dict  # role → probes.hub.Source
    timings: dict  # stage → wall seconds
    notes: list[str]


@dataclass
class _Roles:
    """Which side's activations each construction reads, and whose statistics a pass computes."""

    sources: dict  # construction → "base" | "aligned"
    side: str  # the construction side: the trained one for a pretraining pair
    roles: list[str]  # the sides of the statistics pass (none: no construction reads activations)


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
    run = _open_pair_run(pair, config, resolve_device(config.device), progress)
    roles = _construction_roles(run)
    run.provenance["construction_side"] = roles.side
    pair_bases = _prediction_bases(run, roles.side)
    if pair.phase == "pretrain":
        run.notes.append(
            "a pretraining pair: activation and unembedding constructions from the trained side"
        )
    job = _layer_job(run, roles, pair_bases, corpus)
    statistics = _statistics_pass(run, roles, corpus, cache)
    found = _Collected(run, job.weights_b)
    layers = LocalLayers(job, progress) if client is None else LayerBlocks(job, client)
    _sweep_layers(run, statistics, layers, found)
    if found.zero:
        run.notes.insert(0, f"all-zero delta (NaN fractions): {', '.join(found.zero)}")
    return found.result(run, len(roles.roles) if statistics.ran else 0)


def _open_pair_run(pair: PairSpec, config: SweepConfig, device, progress: bool) -> _PairRun:
    """Open both sides, check they are a pair, select its matrices and hash its weights."""
    notes: list[str] = []
    sides = open_pair(pair, config, device, progress, notes)
    probes.check_pair(sides["base"].model, sides["aligned"].model)
    dims = probes.model_dims(sides["base"].model)
    matrices = select_matrices(dims.model_type, config.matrices, label=pair.label)
    provenance, origins, timings = _pair_provenance(pair, sides, dims, matrices, progress)
    return _PairRun(
        pair, config, device, progress, sides, dims, matrices, provenance, origins, timings, notes
    )


def _construction_roles(run: _PairRun) -> _Roles:
    """A pretraining pair's base is an initialisation: its constructions come from the trained
    side. A mixture-of-experts pair's routing shares need a pass over the construction side."""
    pretrain = run.pair.phase == "pretrain"
    sources = TRAINED_SIDE_SOURCE if pretrain else ACTIVATION_SOURCE
    side = "aligned" if pretrain else "base"
    roles = sorted({sources[c] for c in run.config.constructions if c in sources})
    if run.dims.n_experts > 1 and side not in roles:  # the routing shares need a forward pass
        roles = sorted({*roles, side})
    return _Roles(sources, side, roles)


def _prediction_bases(run: _PairRun, side: str) -> dict:
    """The unembedding constructions' bases, once per pair from the construction `side` (timed:
    ``prediction_bases``); ``{}`` when no construction is one."""
    constructions, pair_bases = run.config.constructions, {}
    clock = time.perf_counter()
    if any(c.startswith("unembed") for c in constructions):
        opened = run.sides[side]
        with opened.parts(*opened.prediction_prefixes()) as model:
            pair_bases = probes.prediction_subspaces(model)
            if "unembed_folded" in constructions and probes.final_norm_gain(model) is None:
                run.notes.append("the final norm has no gain: unembed_folded equals unembed")
    run.timings["prediction_bases"] = time.perf_counter() - clock
    return pair_bases


def _layer_job(run: _PairRun, roles: _Roles, pair_bases: dict, corpus: Corpus) -> LayerJob:
    """The pair's per-layer work: its grid (random bases seeded by the base's weights hash) and,
    with a bootstrap, the replicate weights drawn once for every layer."""
    config, base_hash = run.config, run.provenance["base_hash"]
    grid = Grid(config, run.dims.d_model, base_hash, pair_bases, roles.sources)
    grid.eigh_device = _eigh_device(run.device)
    resampled = [c for c in config.constructions if c in roles.sources]
    weights_b = (
        _resampling_weights(config, corpus, bool(roles.roles), base_hash)
        if config.replicates
        else None
    )
    job = LayerJob(
        run.pair, config, run.device, run.matrices, grid, weights_b, resampled, roles.side
    )
    job.sides = run.sides
    return job


def _statistics_pass(run: _PairRun, roles: _Roles, corpus: Corpus, cache) -> StatisticsPass:
    """The pass over the sides whose activations the constructions read, keyed per side by its
    weights: a LoRA side's activations are those of the base with the adapter merged (both
    hashes); a hub revision's resolved commit is part of the key beside its weights hash."""
    provenance, origins = run.provenance, run.origins
    hashes = {
        role: (
            provenance[f"{role}_hash"]
            if run.sides[role].adapter is None
            else f"{provenance['base_hash']}+{provenance[f'{role}_hash']}"
        )
        + (f"@{origins[role].commit}" if origins[role].commit else "")
        for role in roles.roles
    }
    return StatisticsPass(
        models={role: run.sides[role] for role in roles.roles},
        hashes=hashes,
        corpus=corpus,
        sites=sorted({probes.SITE_OF[m] for m in run.matrices}),
        config=run.config,
        cache=cache,
        label=run.pair.label,
        n_layers=run.dims.n_layers,
        progress=run.progress,
    )


def _sweep_layers(
    run: _PairRun, statistics: StatisticsPass, layers: LocalLayers | LayerBlocks, found: _Collected
) -> None:
    """Each layer's statistics (timed: ``statistics``), then its job, here or as a layer block
    (:class:`LocalLayers`, :class:`LayerBlocks`; timed: ``grid``), kept in `found`."""
    timings = run.timings
    timings["statistics"] = timings["grid"] = 0.0
    bar = tqdm(
        total=run.dims.n_layers, desc=f"layers {run.pair.label}", disable=not run.progress,
        leave=False,
    )  # fmt: skip
    stream, started = iter(statistics), time.perf_counter()
    while True:
        clock = time.perf_counter()
        try:
            layer, stats = next(stream)
        except StopIteration:
            break
        timings["statistics"] += time.perf_counter() - clock
        clock = time.perf_counter()
        layers.submit(layer, stats)
        del stats
        for done, out in layers.ready():
            _advance(bar, found, done, out, time.perf_counter() - started)
        timings["grid"] += time.perf_counter() - clock
    clock = time.perf_counter()
    for done, out in layers.rest():
        _advance(bar, found, done, out, time.perf_counter() - started)
    timings["grid"] += time.perf_counter() - clock
    if found.boot is not None:
        timings["bootstrap"] = found.bootstrap_seconds  # part of "grid"
    bar.close()


def _advance(bar, found: _Collected, layer: int, out: dict, elapsed: float) -> None:
    """Keep one layer's outputs and move the layers bar on; where the bootstrap takes most of
    the time so far, the bar says so, with its estimated seconds per replicate for the pair."""
    found.keep(layer, out)
    bar.update(1)
    seconds, layers = found.bootstrap_seconds, found.layers_done
    if seconds > 0.5 * elapsed and layers:
        per_replicate = seconds / layers * found.k.shape[0] / len(found.weights_b)
        bar.set_postfix_str(
            f"bootstrap {seconds / elapsed:.0%} of the time, ~{per_replicate:.2g} s a replicate",
            refresh=False,
        )


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
    """One pair's per-layer outputs (:meth:`LayerJob.run`), gathered in layer order."""

    def __init__(self, run: _PairRun, weights_b):
        config, n_matrices = run.config, len(run.matrices)
        n_layers, d, n_experts = run.dims.n_layers, run.dims.d_model, run.dims.n_experts
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
        self.replicates, self.weights_b = config.replicates, weights_b
        self.zero: list[str] = []
        self.bootstrap_seconds, self.layers_done = 0.0, 0

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
            self.bootstrap_seconds += out["bootstrap_seconds"]
        self.zero.extend(out["zero"])
        self.layers_done += 1

    def result(self, run: _PairRun, passes: int) -> PairResult:
        """The pair's result; `passes`: the statistics passes a forward pass ran (0: cached)."""
        bootstrap = None
        if self.boot is not None:
            n = self.replicates
            bootstrap = {"replicates": self.boot[:n], "jackknife": self.boot[n:],
                         "weights": self.weights_b}  # fmt: skip
        return PairResult(
            run.pair.label, run.matrices, self.rsf, self.k, self.delta_fro, self.purity,
            run.provenance, self.spectra, self.mechanical, passes, run.notes, bootstrap,
            run.timings, self.storage, self.rounding_floor, self.top_share, self.experts,
        )  # fmt: skip


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
