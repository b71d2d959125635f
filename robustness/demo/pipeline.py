"""The demo as one function: its pair (trained or cached) → sweep → statistics → gradients → claims.

:func:`demo_datasets` computes every dataset ``rsf demo`` writes and returns
them; nothing is written but the caches (the pair, the statistics and, for
the real model, its outputs). The command line writes the datasets and the
report (:func:`robustness.api.run_demo` is the public name). With ``full``,
the trajectory, contrastive and rank-1 experiments run too: they are the
API's own functions, handed in as `experiments`, since this floor of the
package cannot call the one above it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import xarray as xr

from robustness.claims.paper import paper_claims

# Through the module, not its names: the tests swap the toy pair's settings for smaller ones.
from robustness.demo import pair as toy
from robustness.demo.real import (
    RealGrid,
    RealSettings,
    real_gradients,
    real_is_cached,
    real_model_file,
    real_outputs,
    real_pair,
    real_probe_corpus,
    real_sweep_config,
)
from robustness.io.datasets import open_dataset, write_dataset
from robustness.measure.cache import default_cache_dir
from robustness.measure.results import sweep_dataset
from robustness.stats.statistics import compute_stats

__all__ = ["EXPERIMENTS", "FULL_GRADIENT_REPLICATES", "DemoRequest", "DemoRun", "demo_datasets"]

# The experiments' datasets of the demo (gradients always; the others with `full`), and the
# command each is equivalent to on the demo pair.
EXPERIMENTS = {
    "gradients": ("gradients", "--demo", "--phase", "both"),
    "trajectory": ("experiment", "trajectory", "--demo", "--phase", "align"),
    "contrastive": ("experiment", "contrastive", "--demo"),
    "rank1": ("experiment", "rank1"),  # the demo's base unless --model
}
FULL_GRADIENT_REPLICATES = 200


@dataclass(frozen=True)
class DemoRequest:
    """What to run: the toy pair (``DemoSettings``/``DemoGrid``) or the real one (``Real…``)."""

    settings: toy.DemoSettings | RealSettings | None = None
    grid: toy.DemoGrid | RealGrid | None = None
    cache_root: str | Path | None = None
    retrain: bool = False
    full: bool = False
    progress: bool = True
    real: bool = False


@dataclass
class DemoRun:
    """The demo's datasets, in the order they were made, and the seconds each stage took."""

    pair: toy.DemoPair
    results: xr.Dataset
    stats: xr.Dataset
    claims: xr.Dataset
    extras: dict[str, xr.Dataset]  # kind → dataset, in EXPERIMENTS' order
    timings: dict[str, float] = field(default_factory=dict)


def _quiet(_: str) -> None:
    """The default stage callback: say nothing."""


def _pair_stage(request: DemoRequest, settings, grid, cache_root: Path, stage):
    """The pair (trained, or from the cache), its sweep config and corpus, and the thread limit."""
    if request.real:
        gguf = real_model_file()
        cached = not request.retrain and real_is_cached(settings, gguf, cache_root)
        stage("real pairs: cached" if cached else "real pairs: dequantising, initialising and "
              "running DPO from the real model")  # fmt: skip
        pair = real_pair(settings, gguf, cache_root=cache_root, retrain=request.retrain,
                         progress=request.progress)  # fmt: skip
        # d = 576: the real model's matrices use both threads
        return (
            pair,
            real_sweep_config(pair, grid),
            real_probe_corpus(pair, grid),
            contextlib.nullcontext(),
        )
    cached = not request.retrain and toy.demo_is_cached(settings, cache_root)
    stage("demo pair: cached" if cached else "demo pair: training (cross-entropy, then DPO)")
    pair = toy.demo_pair(
        settings, cache_root=cache_root, retrain=request.retrain, progress=request.progress
    )
    # small matrices: a second thread only adds waiting on a busy machine
    return (
        pair,
        toy.demo_sweep_config(pair, grid),
        toy.demo_probe_corpus(pair, grid),
        toy.single_threaded(),
    )


def _manifest_attr(pair: toy.DemoPair) -> str:
    """The pair's manifest as the results' ``demo_manifest`` attribute (without the loss curves)."""
    phases = [phase for phase in ("pretrain", "align") if phase in pair.manifest]
    kept = {k: v for k, v in pair.manifest.items() if k not in phases} | {
        phase: {k: v for k, v in pair.manifest[phase].items() if k != "losses"} for phase in phases
    }
    return json.dumps(kept, sort_keys=True)


def _sweep_stage(pair, config, corpus, threads, stored, cache_root, progress, stage) -> xr.Dataset:
    """The sweep with its bootstrap (the real model's from its stored outputs when there)."""
    if stored is not None and (stored / "results.nc").is_file():
        stage("sweep: the same grid on the same pairs, from the cache")
        results = open_dataset(stored / "results.nc").load()
    else:
        with threads:
            results = sweep_dataset(config, corpus, cache_root=cache_root, progress=progress)
    results.attrs["demo_manifest"] = _manifest_attr(pair)
    if stored is not None and not (stored / "results.nc").is_file():
        stored.mkdir(parents=True, exist_ok=True)
        write_dataset(results, stored / "results.nc")
    return results


def _gradient_stage(pair, grid, stored, request: DemoRequest, cache_root, stage) -> xr.Dataset:
    """δ_t under CE and DPO at the grid's checkpoints of each phase."""
    where = ("every checkpoint" if grid.gradient_checkpoints is None
             else f"{grid.gradient_checkpoints} checkpoints")  # fmt: skip
    stage(f"gradients: δ_t under CE and DPO at {where} of each phase")
    if stored is not None and (stored / "gradients.nc").is_file():
        return open_dataset(stored / "gradients.nc").load()
    if request.real:
        gradients = real_gradients(pair, grid, cache_root=cache_root, progress=request.progress)
        stored.mkdir(parents=True, exist_ok=True)
        write_dataset(gradients, stored / "gradients.nc")
        return gradients
    with toy.single_threaded():
        return toy.demo_gradients(pair, grid, cache_root=cache_root, progress=request.progress)


def demo_datasets(
    request: DemoRequest,
    *,
    experiments: Callable[[str, object, Path, bool], xr.Dataset] | None = None,
    stage: Callable[[str], None] = _quiet,
) -> DemoRun:
    """Every dataset of the demo (see the module docstring); `stage` hears each stage's name.

    `experiments(kind, checkpoints, cache_root, progress)` makes the dataset of
    one of EXPERIMENTS' kinds on the demo's checkpoints (needed with ``full``).
    """
    if request.full and experiments is None:
        raise ValueError("the full demo needs `experiments`: use robustness.api.run_demo")
    kind = RealSettings if request.real else toy.DemoSettings
    if request.real:
        real_model_file()  # first: without the package, nothing else is done
    settings = request.settings or kind()
    grid = request.grid or (RealGrid() if request.real else toy.DemoGrid())
    cache_root = Path(request.cache_root) if request.cache_root is not None else default_cache_dir()
    started = time.perf_counter()
    pair, config, corpus, threads = _pair_stage(request, settings, grid, cache_root, stage)
    timings = {"pair": time.perf_counter() - started}
    stage(f"{'real pairs' if request.real else 'demo pair'}: {pair.root}")
    stored = real_outputs(pair, grid) if request.real else None
    mark = time.perf_counter()
    results = _sweep_stage(
        pair, config, corpus, threads, stored, cache_root, request.progress, stage
    )
    timings["sweep"], mark = time.perf_counter() - mark, time.perf_counter()
    stats = compute_stats(
        results, n_resamples=grid.n_resamples, seed=grid.seed, progress=request.progress
    )
    timings["stats"], mark = time.perf_counter() - mark, time.perf_counter()
    if request.full:
        grid = replace(
            grid, gradient_checkpoints=None, gradient_replicates=FULL_GRADIENT_REPLICATES
        )
    extras = {"gradients": _gradient_stage(pair, grid, stored, request, cache_root, stage)}
    timings["gradients"] = time.perf_counter() - mark
    if request.full:
        checkpoints = toy.demo_checkpoints(cache_root=cache_root, progress=request.progress)
        for name, command in EXPERIMENTS.items():
            if name != "gradients":
                mark = time.perf_counter()
                stage(f"{name}: rsf {' '.join(command)}")  # what it is equivalent to
                extras[name] = experiments(name, checkpoints, cache_root, request.progress)
                timings[name] = time.perf_counter() - mark
    mark = time.perf_counter()
    stage("claims: testing the paper's claims")
    claims = paper_claims(results, stats=stats, extras=list(extras.values()),
                          n_resamples=grid.n_resamples, seed=grid.seed)  # fmt: skip
    timings["claims"] = time.perf_counter() - mark
    return DemoRun(pair, results, stats, claims, extras, timings)
