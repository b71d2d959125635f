"""The bootstrap's figures: its seconds per replicate, their floors, Dask layer blocks, the
reduced-basis shortcut (see :mod:`benchmarks.run` for what each figure is)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import probes

from .common import (
    BATCH,
    BOOTSTRAP_CUTOFFS,
    SEQ_LEN,
    bootstrap_setup,
    gpt2_small,
    peak_rss_bytes,
)


def bootstrap_probe(base_dir: str, aligned_dir: str, cache: str, n_tokens: int, replicates: int):
    """Run in a fresh process: one bootstrapped sweep (statistics cached), print its peak RSS.

    This is the peak a user's ``rsf sweep --bootstrap`` process reaches, loading
    included; in the timing process the heap left by earlier sweeps adds to it.
    """
    from robustness.measure.runner import run_sweep

    config, corpus = bootstrap_setup(base_dir, aligned_dir, n_tokens, replicates)
    run_sweep(config, corpus, cache_root=cache, progress=False)
    print(json.dumps({"peak_rss": peak_rss_bytes()}))


def fresh_bootstrap_peak(base_dir, aligned_dir, cache, n_tokens: int, replicates: int) -> int:
    """Peak RSS of a fresh process running the bootstrapped sweep (:func:`bootstrap_probe`)."""
    probe = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--bootstrap-probe", str(base_dir),
         str(aligned_dir), str(cache), str(n_tokens), str(replicates)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(probe.stdout.strip().splitlines()[-1])["peak_rss"]


def bootstrap_seconds(tmp: Path, n_tokens: int, replicates: int, *, fresh: bool = True) -> dict:
    """The ``bootstrap_seconds`` figure (module docstring); ``fresh=False`` skips the fresh
    process's peak (the quick mode), leaving the timing process's."""
    from robustness.measure.grid import REPLICATE_BLOCK, REPLICATE_SOLVER
    from robustness.measure.runner import run_sweep

    base_dir, aligned_dir = tmp / "boot-base", tmp / "boot-aligned"
    gpt2_small(base_dir, aligned_dir)
    config, corpus = bootstrap_setup(base_dir, aligned_dir, n_tokens, replicates)
    cache = tmp / "boot-cache"
    # Two runs that differ only in the number of replicates; both read the same
    # cached chunk statistics, so the difference is the replicates' cost alone.
    few = config.with_options(replicates=2)
    run_sweep(few, corpus, cache_root=cache, progress=False)  # fills the cache
    floor_before = eigh_floor(768, 12 * 3)
    start = time.perf_counter()
    run_sweep(few, corpus, cache_root=cache, progress=False)
    baseline = time.perf_counter() - start
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    (result,) = run_sweep(config, corpus, cache_root=cache, progress=False)
    with_replicates = time.perf_counter() - start
    in_process_peak = peak_rss_bytes()
    full_solver = full_solver_bootstrap(config, corpus, cache)
    spectral_k = {
        cutoff: [int(result.k[..., 0, i].min()), int(result.k[..., 0, i].max())]
        for i, cutoff in enumerate(BOOTSTRAP_CUTOFFS)
        if not cutoff.startswith("k=")
    }
    per_replicate = max(with_replicates - baseline, 0.0) / (replicates - 2)
    # The floor is timed before and after the sweeps (a median of three each), and the
    # two averaged: this machine's speed drifts over a run.
    floor = (floor_before + eigh_floor(768, 12 * 3)) / 2
    fractions = fraction_floor(result.k, BOOTSTRAP_CUTOFFS)
    fresh_peak = (
        fresh_bootstrap_peak(base_dir, aligned_dir, cache, n_tokens, replicates) if fresh else None
    )
    return {
        "value": per_replicate * 1000,
        "vs_eigh_floor": per_replicate / floor,
        "eigh_floor_seconds_per_replicate": floor,
        # What else a replicate cannot avoid: its fractions' triangular products.
        "fraction_floor_seconds_per_replicate": fractions,
        "vs_eigh_and_fraction_floor": per_replicate / (floor + fractions),
        "measured_replicates": replicates,
        "seconds_per_replicate": per_replicate,
        # The sweeps' own bootstrap seconds (timings["bootstrap"]), every replicate and
        # jackknife row: partial spectra ("auto") against complete bases ("full"), same run.
        "bootstrap_stage_seconds": {"auto": result.timings["bootstrap"], "full": full_solver},
        "auto_vs_full_solver": result.timings["bootstrap"] / full_solver,
        "sweep_seconds_2_replicates": baseline,
        f"sweep_seconds_{replicates}_replicates": with_replicates,
        # A fresh process running the bootstrapped sweep, as `rsf sweep --bootstrap` does.
        "peak_rss_mb": None if fresh_peak is None else fresh_peak / 2**20,
        # The timing process after two earlier sweeps (their freed heap is still resident).
        "peak_rss_in_timing_process_mb": in_process_peak / 2**20,
        "memory_target_mb": 4096,
        "memory_meets_target": None if fresh_peak is None else bool(fresh_peak / 2**20 <= 4096),
        "tokens": corpus.n_tokens,
        "k_range_of_spectral_cutoffs": spectral_k,
        "method": "exact: per replicate, layer and site each cutoff's k and the eigenvectors "
        f"its fractions read ({REPLICATE_SOLVER!r} solver, probes.spectra.partial_eigh); "
        f"replicates reweighted and decomposed in blocks of {REPLICATE_BLOCK}",
    }


def full_solver_bootstrap(config, corpus, cache) -> float:
    """The bootstrap seconds of the same sweep with complete bases per replicate
    (``REPLICATE_SOLVER = "full"``: ``numpy.linalg.eigh`` of every column, as before partial
    spectra)."""
    from robustness.measure import grid
    from robustness.measure.runner import run_sweep

    chosen, grid.REPLICATE_SOLVER = grid.REPLICATE_SOLVER, "full"
    try:
        (result,) = run_sweep(config, corpus, cache_root=cache, progress=False)
    finally:
        grid.REPLICATE_SOLVER = chosen
    return result.timings["bootstrap"]


def dask_layer_speedup(tmp: Path, n_tokens: int = 16384, replicates: int = 8) -> dict:
    """Serial seconds ÷ seconds on a 2-worker local cluster, one GPT-2-small pair with bootstrap."""
    from robustness.measure.runner import run_sweep

    base_dir, aligned_dir = tmp / "dask-base", tmp / "dask-aligned"
    gpt2_small(base_dir, aligned_dir)
    config, corpus = bootstrap_setup(base_dir, aligned_dir, n_tokens, replicates)
    start = time.perf_counter()
    (serial,) = run_sweep(config, corpus, cache_root=None, progress=False)
    serial_s = time.perf_counter() - start
    start = time.perf_counter()
    (parallel,) = run_sweep(config, corpus, cache_root=None, progress=False, workers=2)
    dask_s = time.perf_counter() - start
    same = np.array_equal(serial.rsf, parallel.rsf, equal_nan=True) and np.array_equal(
        serial.bootstrap["replicates"], parallel.bootstrap["replicates"], equal_nan=True
    )
    return {
        "value": serial_s / dask_s,
        "serial_seconds": serial_s,
        "dask_seconds": dask_s,
        "workers": 2,
        "replicates": replicates,
        "tokens": corpus.n_tokens,
        "identical_to_serial": bool(same),
    }


def fraction_floor(ks: np.ndarray, cutoffs, repeats: int = 3) -> float:
    """Seconds for one replicate's fraction products alone, as the sweep forms them.

    Per layer and site, one triangular product (BLAS ``trmm``) of a d × d
    factor by the basis columns the cutoffs need (``d`` less the largest gap
    between consecutive cutoffs, read from the sweep's own k), for each delta
    and each ``W_from`` measured there (GPT-2: q, k, v on ``attn_in``, up on
    ``mlp_in``, o and down on ``resid_post``), through the same pool.
    """
    from scipy.linalg import blas

    from robustness.measure.grid import worker_pool

    d = 768
    rng = np.random.default_rng(0)
    factor = np.asfortranarray(np.triu(rng.standard_normal((d, d))))
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    spectral = [i for i, c in enumerate(cutoffs) if not c.startswith("k=")]
    fixed = [int(c[2:]) for c in cutoffs if c.startswith("k=")]
    tasks = []
    for layer in range(ks.shape[0]):
        for matrices, first in ((3, 0), (1, 4), (2, 3)):  # sites: their matrices, one of them
            points = np.unique([0, d, *fixed, *ks[layer, first, 0, spectral]])
            columns = np.asfortranarray(basis[:, : d - int(np.diff(points).max())])
            tasks += [columns] * (2 * matrices)  # each delta and its W_from
    times = []
    with worker_pool() as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda c: blas.dtrmm(1.0, factor, c, lower=0), tasks))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def eigh_floor(d: int, count: int, repeats: int = 3) -> float:
    """Seconds for one replicate's eigendecompositions alone: `count` of d × d, as the sweep runs them.

    Random covariance matrices (Wishart, d × 4d samples), ``numpy.linalg.eigh``
    and nothing else (no symmetrising, no reordering), through the same pool
    (:func:`robustness.measure.grid.eigen_all`: two at a time, one BLAS thread each).
    """
    from robustness.measure.grid import eigen_all

    rng = np.random.default_rng(0)
    matrices = []
    for _ in range(count):
        x = rng.standard_normal((4 * d, d))
        matrices.append(x.T @ x / (4 * d))
    times = []
    for _ in range(repeats):
        tasks = {i: partial(np.linalg.eigh, m) for i, m in enumerate(matrices)}
        start = time.perf_counter()
        eigen_all(tasks)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reduced_basis_error(tmp: Path, n_tokens: int = 16384, replicates: int = 50) -> dict:
    from robustness.measure.resampling import BOOTSTRAP_CHUNKS

    model_dir = tmp / "reduced-basis"
    config = GPT2Config(n_embd=256, n_layer=4, n_head=4, n_positions=SEQ_LEN, vocab_size=4096)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    model = probes.load_model(str(model_dir))
    ids = np.random.default_rng(3).integers(0, 4096, size=(n_tokens // SEQ_LEN, SEQ_LEN))
    stats = probes.collect_statistics(
        model, ids, batch_size=BATCH, chunk_size=len(ids) // BOOTSTRAP_CHUNKS, progress=False
    )
    rng = np.random.default_rng(0)
    ks, width = np.array([8, 16, 32, 64]), 128
    errors, spreads = [], []
    for key, chunks in stats.chunks.items():
        d = chunks.d
        delta = rng.standard_normal((d, d)) * np.sqrt(
            np.linspace(2.0, 0.5, d)
        )  # mildly anisotropic
        full = stats.sites[key].subspace()
        reduced = full.basis[:, :width]
        # Chunk statistics kept in the reduced basis: Qᵀ Σxxᵀ_c Q and Qᵀ Σx_c.
        sum_xx = reduced.T @ chunks.sum_xx_many(np.eye(len(chunks.n))) @ reduced
        sum_x = chunks.sum_x @ reduced
        counts = rng.multinomial(
            len(chunks.n), np.full(len(chunks.n), 1 / len(chunks.n)), replicates
        )
        exact, approx = [], []
        for w, site in zip(counts, chunks.reweighted_many(counts), strict=True):
            exact.append(probes.fractions_at(delta, site.subspace().basis, ks, pathway="read"))
            ritz = probes.covariance_subspace(
                np.tensordot(w, sum_x, 1), np.tensordot(w, sum_xx, 1), site.n
            )
            approx.append(probes.fractions_at(delta, reduced @ ritz.basis, ks, pathway="read"))
        exact, approx = np.array(exact), np.array(approx)
        errors.append(np.max(np.abs(approx - exact) / exact))
        spreads.append(np.min(exact.std(axis=0) / exact.mean(axis=0)))
    return {
        "value": float(max(errors)),
        "replicate_relative_spread_min": float(min(spreads)),
        "sites": len(errors),
        "replicates": replicates,
        "model": "GPT-2-shaped random, d=256, 4 layers",
        "reduced_basis": f"full-sample top-{width} eigenvectors, Rayleigh-Ritz per replicate",
        "cutoffs": [f"k={k}" for k in ks],
    }


def eigh_floor_figure(figure: dict) -> dict:
    """``bootstrap_vs_eigh_floor``, read from the ``bootstrap_seconds`` run that measured it."""
    return {
        "value": figure["vs_eigh_floor"],
        "seconds_per_replicate": figure["seconds_per_replicate"],
        "eigh_floor_seconds_per_replicate": figure["eigh_floor_seconds_per_replicate"],
        "floor": "36 numpy eigh of 768 x 768 (12 layers x 3 sites), two at a time, one thread each",
        "fraction_floor_seconds_per_replicate": figure["fraction_floor_seconds_per_replicate"],
        "vs_eigh_and_fraction_floor": figure["vs_eigh_and_fraction_floor"],
        "auto_vs_full_solver": figure["auto_vs_full_solver"],
        "measured_replicates": figure["measured_replicates"],
        "tokens": figure["tokens"],
    }
