"""One layer of one pair: its deltas, bases, fractions and bootstrap replicates, here or on Dask.

:class:`LayerJob` is a pair's per-layer work besides the statistics pass
(:mod:`robustness.measure.statistics_pass`): it streams the layer's deltas
from both checkpoints, measures every construction × cutoff × normalisation
on them (:class:`robustness.measure.grid.Grid`) and recomputes the activation
constructions for each bootstrap replicate (:func:`robustness.measure.grid.
fill_replicates`, on the grid's two-thread replicate pool). :class:`LocalLayers`
runs each layer here as it comes; :class:`LayerBlocks` sends each to a Dask
cluster as a task with the client's thread counts, so both give the same
numbers. The pair's orchestration is :mod:`robustness.measure.engine`.
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
from robustness.measure.experts import collapse, routing_shares, rows_mean
from robustness.measure.grid import Grid, as_numpy, fill_replicates
from robustness.measure.models import open_layerwise
from robustness.settings.config import PairSpec, SweepConfig

__all__ = [
    "LayerBlocks",
    "LayerJob",
    "LocalLayers",
    "blas_threads",
    "open_pair",
    "run_layer_job",
    "thread_limits",
]


def open_pair(pair: PairSpec, config: SweepConfig, device, progress, notes) -> dict:
    """``{"base", "aligned"}``: each side a skeleton over its checkpoint (a LoRA side: the base
    with the adapter merged); what opening one says is appended to `notes`."""
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
class _LayerDeltas:
    """One layer's deltas, ready for the grid: a row per matrix, or per expert of a
    mixture-of-experts MLP matrix (:mod:`robustness.measure.experts`)."""

    prepared: list  # the grid's prepared rows (residual factors only)
    rows: list[tuple[int, int]]  # (matrix index, expert) of each row
    delta_fro: list  # ‖ΔW‖_F per matrix
    zero: list[str]  # "layer L matrix" of each all-zero delta
    precision: dict  # matrix → both sides' storage and the delta's rounding floor


@dataclass
class LayerJob:
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
    # The replicates' reweighting blocks, reused from layer to layer (grid.fill_replicates);
    # not carried by portable().
    buffers: dict = field(default_factory=dict)

    def portable(self) -> LayerJob:
        return LayerJob(
            self.pair, self.config, self.device, self.matrices, self.grid, self.weights_b,
            self.resampled, self.load_role,
        )  # fmt: skip

    def run(self, layer: int, stats: dict, *, progress: bool = False) -> dict:
        """The layer's outputs (per matrix; per expert too for a mixture-of-experts layer) from
        its statistics ``{role: LayerStatistics}``, gathered by the engine in layer order."""
        if self.sides is None:
            self.sides = open_pair(self.pair, self.config, self.device, False, [])
        deltas = self._read_deltas(layer)
        per_row, top_share = self._measure(layer, deltas.prepared, stats)
        matrices, precision = self.matrices, deltas.precision
        out = {
            "delta_fro": deltas.delta_fro,
            "zero": deltas.zero,
            "storage": [[precision[m].base, precision[m].aligned] for m in matrices],
            "floor": [precision[m].floor for m in matrices],
            "top_share": [top_share.get(site, np.nan) for site in probes.SITES],
        }
        shares = None
        if len(deltas.rows) == len(matrices):  # no experts: a row is a matrix
            out.update(per_row)
        else:
            shares = routing_shares(stats[self.load_role].expert_load[layer])
            out.update({name: np.empty((len(matrices), *v.shape[1:]), v.dtype)
                        for name, v in per_row.items()})  # fmt: skip
            out["experts"] = collapse(deltas.rows, len(matrices), shares, out, per_row)
            out["expert_load"] = shares
        if self.weights_b is not None:
            clock = time.perf_counter()
            out["boot"] = self._replicates(layer, deltas, stats, per_row, shares, progress)
            out["bootstrap_seconds"] = time.perf_counter() - clock
        return out

    def _read_deltas(self, layer: int) -> _LayerDeltas:
        """Stream the layer's deltas (and base weights, where the grid needs them) from both
        checkpoints and prepare them, one float64 delta at a time."""
        base, aligned = self.sides["base"], self.sides["aligned"]
        grid, matrices = self.grid, self.matrices
        deltas, base_weights = probes.layer_deltas(
            base, aligned, layer, matrices, with_base=grid.need_w
        )
        precision = probes.layer_precision(base, aligned, layer, matrices)
        zero = []
        if aligned.adapter is None:  # an adapter's untargeted matrices are said in its note
            zero = [f"layer {layer} {m}" for m in matrices if not torch.any(deltas[m])]
        prepared, delta_fro, rows = [], [], []
        for mi, matrix in enumerate(matrices):
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
        return _LayerDeltas(prepared, rows, delta_fro, zero, precision)

    def _measure(self, layer: int, prepared: list, stats: dict) -> tuple[dict, dict]:
        """``(per_row, top_share)``: every construction × cutoff × normalisation of each row
        (``rsf``, ``k``, ``mechanical``), its Gram ``spectrum`` and ``purity``; each site's
        top-direction share."""
        config, grid = self.config, self.grid
        shape = (len(prepared), len(config.constructions), len(config.cutoffs))
        per_row = {
            "rsf": np.full((*shape, len(config.normalisations)), np.nan),
            "k": np.full(shape, UNDEFINED, dtype=np.int64),
            "mechanical": np.full(shape, np.nan),
            "spectrum": np.zeros((len(prepared), grid.d)),
            "purity": np.asarray([matrix.purity for matrix in prepared], dtype=np.float64),
        }
        top_share = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # zero deltas: noted once
            grid.fill(layer, prepared, stats, per_row["rsf"], per_row["k"],
                      mechanical=per_row["mechanical"], top_share=top_share)  # fmt: skip
        for row, matrix in enumerate(prepared):
            per_row["spectrum"][row, : matrix.spectrum.size] = matrix.spectrum  # NaN: a zero delta
        return per_row, top_share

    def _replicates(self, layer, deltas: _LayerDeltas, stats, per_row, shares, progress):
        """``[B (+ C), matrix, …]``: the corpus-independent constructions keep their values
        (``per_row["rsf"]``); the activation ones are recomputed from reweighted chunk
        statistics (the full sample's ``per_row["k"]`` saying how many eigenvectors to expect)."""
        rsf = per_row["rsf"]
        boot = np.broadcast_to(rsf, (len(self.weights_b), *rsf.shape)).copy()
        if self.resampled:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fill_replicates(
                    self.grid, layer, deltas.prepared, stats, self.weights_b, boot,
                    self.resampled, full_ks=per_row["k"], progress=progress,
                    label=f"bootstrap {self.pair.label} layer {layer}", buffers=self.buffers,
                )  # fmt: skip
        if shares is not None:  # each replicate's expert mean, with the corpus's shares
            n_matrices = len(self.matrices)
            boot = np.stack([rows_mean(b, deltas.rows, n_matrices, shares) for b in boot])
        return boot


def blas_threads() -> int | None:
    """This process's BLAS thread count (None without threadpoolctl or a BLAS pool)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return None
    counts = [pool["num_threads"] for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return max(counts) if counts else None


def thread_limits() -> tuple[int, int | None]:
    """``(torch threads, BLAS threads)`` here: a Dask task runs with the client's, for identical
    results."""
    return torch.get_num_threads(), blas_threads()


def run_layer_job(job: LayerJob, layer: int, stats: dict, threads: int, blas_limit):
    """A Dask worker's layer block, with the client's thread counts (for identical results)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    with threadpool_limits(limits=blas_limit, user_api="blas"):
        return job.run(layer, stats)


class LocalLayers:
    """Each layer's job run here, as its statistics arrive."""

    def __init__(self, job: LayerJob, progress: bool):
        self.job, self.progress, self.done = job, progress, []

    def submit(self, layer: int, stats: dict) -> None:
        self.done.append((layer, self.job.run(layer, stats, progress=self.progress)))

    def ready(self):
        """``(layer, outputs)`` of each layer finished since the last call."""
        while self.done:
            yield self.done.pop(0)

    def rest(self):
        """Every layer not yet returned, in layer order (here: none)."""
        yield from self.ready()


class LayerBlocks:
    """Each layer's job a task on a Dask cluster; at most two per worker in flight.

    Sent straight to the workers (not through the scheduler in the task graph):
    the job once (its pair bases), each layer's statistics where its task runs.
    """

    def __init__(self, job: LayerJob, client):
        self.job, self.client = job, client
        self.portable = None
        self.pending: dict = {}

    def submit(self, layer: int, stats: dict) -> None:
        client = self.client
        if self.portable is None:
            self.portable = client.scatter(self.job.portable(), broadcast=True, hash=False)
        (scattered,) = client.scatter([stats], hash=False)  # a list: one future, no dict keys
        self.pending[layer] = client.submit(
            run_layer_job, self.portable, layer, scattered, *thread_limits(), pure=False
        )

    def ready(self):
        """``(layer, outputs)`` of the earliest layers, waited for while too many are in flight."""
        while len(self.pending) > 2 * max(1, len(self.client.scheduler_info()["workers"])):
            done = min(self.pending)
            yield done, self.pending.pop(done).result()

    def rest(self):
        """``(layer, outputs)`` of every layer still in flight, in layer order."""
        for layer in sorted(self.pending):
            yield layer, self.pending.pop(layer).result()
