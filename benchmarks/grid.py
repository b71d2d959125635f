"""The grid's figures: ``profile_speedup`` (all-k profiles against a per-k loop) and
``grid_overhead`` (a whole sweep against its statistics passes); see :mod:`benchmarks.run`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from scipy import stats

import probes

from .common import gpt2_small, token_ids

GRID_CUTOFFS = ("k=8", "k=64", "frac=0.05", "var=0.9", "pr", "mp")


def naive_profile(delta: np.ndarray, basis: np.ndarray, pathway: str) -> np.ndarray:
    """F(k) = ‖P_k ΔW‖² / ‖ΔW‖², re-projecting onto the top-k basis for every k."""
    total = np.sum(delta**2)
    out = np.empty(basis.shape[1])
    for k in range(1, basis.shape[1] + 1):
        top = basis[:, :k]
        projected = delta @ top if pathway == "read" else top.T @ delta
        out[k - 1] = np.sum(projected**2) / total
    return out


def profile_speedup(seed: int = 0) -> dict:
    d, d_ff = 768, 3072
    rng = np.random.default_rng(seed)
    shapes = {
        "q": (d, d),
        "k": (d, d),
        "v": (d, d),
        "o": (d, d),
        "up": (d_ff, d),
        "gate": (d_ff, d),
        "down": (d, d_ff),
    }
    deltas = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    basis = stats.ortho_group.rvs(d, random_state=rng)
    start = time.perf_counter()
    fast = {
        m: probes.fraction_profile(x, basis, pathway=probes.PATHWAY[m]) for m, x in deltas.items()
    }
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = {m: naive_profile(x, basis, probes.PATHWAY[m]) for m, x in deltas.items()}
    slow_s = time.perf_counter() - start
    max_diff = max(float(np.max(np.abs(fast[m] - slow[m]))) for m in deltas)
    return {
        "value": slow_s / fast_s,
        "naive_seconds": slow_s,
        "all_k_seconds": fast_s,
        "max_abs_difference": max_diff,
        "identical_to_1e-10": max_diff <= 1e-10,
    }


def grid_overhead(tmp: Path, n_tokens: int) -> dict:
    from robustness.io.datasets import write_dataset
    from robustness.measure.corpus import Corpus
    from robustness.measure.results import build_dataset
    from robustness.measure.runner import run_sweep
    from robustness.settings.config import PairSpec, SweepConfig

    base_dir, aligned_dir = tmp / "grid-base", tmp / "grid-aligned"
    gpt2_small(base_dir, aligned_dir)
    corpus = Corpus(token_ids(n_tokens, seed=1), "benchmark")
    config = SweepConfig(
        pairs=(PairSpec("bench", str(base_dir), str(aligned_dir)),),
        constructions=probes.CONSTRUCTIONS,
        cutoffs=GRID_CUTOFFS,
        normalisations=probes.NORMALISATIONS,
        device="cpu",
    )
    # The statistics passes alone: both models, the sweep's sites and batch size.
    sites = sorted({probes.SITE_OF[m] for m in probes.MATRICES})
    start = time.perf_counter()
    for path in (base_dir, aligned_dir):
        model = probes.load_model(str(path))
        probes.collect_statistics(model, corpus.ids, sites=sites, batch_size=config.batch_size)
        del model
    statistics_s = time.perf_counter() - start
    start = time.perf_counter()
    results = run_sweep(config, corpus, cache_root=None, progress=False)
    write_dataset(build_dataset(results, config, corpus), tmp / "grid.nc")
    sweep_s = time.perf_counter() - start
    return {
        "value": sweep_s / statistics_s,
        "sweep_seconds": sweep_s,
        "statistics_seconds": statistics_s,
        "tokens": corpus.n_tokens,
        "grid": f"{len(config.constructions)} constructions x {len(config.cutoffs)} cutoffs x "
        f"{len(config.normalisations)} normalisations x 12 layers x 6 matrices",
    }
