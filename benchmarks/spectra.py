"""Seconds per eigendecomposition of a bootstrap replicate, by solver: where `probes.spectra`'s policy comes from.

    python -m benchmarks.spectra [--dims 576,768,2048,4096] [--ks 8,64,256] [--budget 3]
    python -m benchmarks.spectra --replicates 4 [--spectrum massive|flat] [--layers 12]

(The second: seconds per bootstrap replicate of GPT-2-small shapes through the
sweep's own replicate path, complete bases against partial spectra,
:func:`replicate_seconds`.)

For each width ``d`` one replicate's activation covariance is built the way
the sweep builds it (``robustness.measure.resampling``: 32 chunks of consecutive
tokens, multinomial chunk counts): Gaussian activations with two massive
directions over a ``1/j`` power-law spectrum, ``8d`` tokens (``2d`` at
``d ≥ 4096``), only the upper triangle kept. The full-sample covariance's
eigenvectors are LOBPCG's warm start. Every solver returns what a replicate's
fractions read, and each is timed

- ``1 thr``: CPU seconds of the calling thread, one BLAS and torch thread: a
  solve's cost in the sweep's :func:`robustness.measure.grid.worker_pool` (two
  one-thread solves side by side), and robust to other processes on the
  machine, which wall time is not;
- ``2 thr``: wall seconds of one solve on two BLAS and torch threads.

A measurement repeats while its total stays under ``--budget`` seconds (at
least once) and reports the fastest. Beside each solver, ``|ΔF|`` is the largest
difference of its fractions at ``k`` from ``numpy.linalg.eigh``'s for a random
delta. ``m`` is the number of eigenvectors (columns) asked for.

Measured on two shared cores (milliseconds, ``1 thr``; the others' load made
``2 thr`` wall times 3–7 times the one-thread ones, so none is recorded):

=====  ====  =====  ========  ======  =====  ================  ===========  ======
d      m     eigh   eigvalsh  dsytrd  evr m  eigvalsh + evr m  tridiagonal  lobpcg
=====  ====  =====  ========  ======  =====  ================  ===========  ======
576    8     33     14        9       13     27                15           17
576    64                             24     37                23           189
576    256                            60     73                33
768    8     71     27        19–23   30     55                29           17
768    64                             40     68                41           198
768    256                            98     139               67
2048   8     1529   622       506     537    1303              744          180
2048   64                             446    842               785          617
2048   256                            784    1332              904
4096   8     10959  6862      6053    6636                     7035
4096   64                             6437                     6545
4096   256                            6983                     7052
=====  ====  =====  ========  ======  =====  ================  ===========  ======

``tridiagonal`` here gives the whole spectrum too (``evr m`` and ``lobpcg``
give the top m only); every ``|ΔF|`` was below 1e-12. The break-even points
against ``eigh`` (``--crossover``) are :data:`probes.spectra.CROSSOVER`.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import probes  # noqa: E402
from probes import lapack, spectra  # noqa: E402

CHUNKS = 32


def replicate_matrices(d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(full-sample covariance, one replicate's covariance with only its upper triangle)``.

    Float32 products of the activations summed in float64, as the statistics
    pass forms them (:mod:`probes.activations`).
    """
    rng = np.random.default_rng(seed)
    tokens = (8 if d < 4096 else 2) * d
    spectrum = 1.0 / np.arange(1, d + 1)
    spectrum[:2] = [50.0, 10.0]  # massive activations
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
    x = (rng.standard_normal((tokens, d)) * np.sqrt(spectrum)) @ rotation.T + rng.standard_normal(d)
    x = x.astype(np.float32)
    counts = rng.multinomial(CHUNKS, np.full(CHUNKS, 1 / CHUNKS)).astype(np.float64)
    row_weights = np.repeat(counts, -(-tokens // CHUNKS))[:tokens]

    def covariance(weights):
        n = weights.sum()
        sum_xx = (x.T @ (x * weights[:, None].astype(np.float32))).astype(np.float64)
        mean = (weights @ x.astype(np.float64)) / n
        return sum_xx / n - np.outer(mean, mean)

    full = covariance(np.ones(tokens))
    return 0.5 * (full + full.T), np.triu(covariance(row_weights))


def seconds(task, budget: float, *, clock=time.perf_counter) -> float:
    """The fastest of repeated runs of `task` by `clock`, repeated while under `budget` (≤ 5 runs)."""
    times, spent = [], 0.0
    while not times or (spent < budget and len(times) < 5):
        wall, start = time.perf_counter(), clock()
        task()
        times.append(clock() - start)
        spent += time.perf_counter() - wall
    return min(times)


def solvers(d: int, m: int, matrix, start) -> dict:
    """``{name: callable}`` for `m` top columns of `matrix` (upper triangle), each returning its head."""
    ks = [f"k={m}"]
    spectrum = [f"k={m}", "var=0.5"]  # a spectrum cutoff at k = 1 (the massive directions)
    tokens = (8 if d < 4096 else 2) * d

    def torch_eigh():
        return torch.linalg.eigh(torch.from_numpy(matrix.T))[1].numpy()[:, ::-1][:, :m]

    def values_and_subset():
        np.linalg.eigvalsh(matrix.T)
        return spectra.partial_eigh(matrix, ks, method="subset").head

    out = {
        "eigh (numpy, full)": lambda: np.linalg.eigh(matrix.T)[1][:, ::-1][:, :m],
        "torch eigh (full)": torch_eigh,
        "eigvalsh (values only)": lambda: np.linalg.eigvalsh(matrix.T),
        "torch eigvalsh": lambda: torch.linalg.eigvalsh(torch.from_numpy(matrix.T)),
        "subset evr (top m, no spectrum)": lambda: (
            spectra.partial_eigh(matrix, ks, method="subset").head
        ),
        "eigvalsh + subset evr": values_and_subset,
        "tridiagonal (top m, no spectrum)": lambda: (
            spectra.partial_eigh(matrix, ks, method="tridiagonal").head
        ),
        "tridiagonal (spectrum + top m)": lambda: spectra.partial_eigh(
            matrix, spectrum, n_samples=tokens, method="tridiagonal"
        ).head[:, :m],
        "lobpcg warm (top m)": lambda: spectra.lobpcg_top(matrix, start, m, maxiter=200)[1],
    }
    return out


def components(matrix, m: int) -> dict:
    """The tridiagonal solver's stages alone: reduction, spectrum, m vectors of T, Q applied to them."""
    d = matrix.shape[0]
    reduction = spectra.reduce_tridiagonal(matrix)
    diagonal, off = reduction.diagonal, reduction.off
    vectors = scipy.linalg.eigh_tridiagonal(
        diagonal, off, select="i", select_range=(d - m, d - 1), lapack_driver="stemr"
    )[1]
    return {
        "  dsytrd (reduction)": partial(spectra.reduce_tridiagonal, matrix),
        "  dsterf (all values of T)": reduction.values,
        "  dstemr, m vectors of T": partial(
            scipy.linalg.eigh_tridiagonal,
            diagonal,
            off,
            select="i",
            select_range=(d - m, d - 1),
            lapack_driver="stemr",
        ),  # fmt: skip
        "  dstebz + dstein, m vectors of T": partial(
            scipy.linalg.eigh_tridiagonal,
            diagonal,
            off,
            select="i",
            select_range=(d - m, d - 1),
            lapack_driver="stebz",
        ),  # fmt: skip
        "  dstemr, all d vectors of T": partial(
            scipy.linalg.eigh_tridiagonal, diagonal, off, lapack_driver="stemr"
        ),
        "  dstevd, all d vectors of T and the spectrum": partial(lapack.dstevd, diagonal, off),
        "  dormtr, Q on m columns": partial(reduction.back, vectors),
    }


def fraction_error(matrix, head, m: int, reference) -> float:
    """``|F_head(m) − F_reference(m)|`` for a random delta's residual factor."""
    rng = np.random.default_rng(1)
    d = matrix.shape[0]
    factor = probes.residual_factor(rng.standard_normal((d, d)), pathway="read")
    if head.shape[1] < m:
        return float("nan")
    mine = probes.fractions_at_many([factor], head[:, :m], [m])[0, 0]
    theirs = probes.fractions_at_many([factor], reference[:, :m], [m])[0, 0]
    return abs(float(mine - theirs))


SKIP_LARGE = ("torch", "lobpcg", "eigvalsh + subset")  # beyond d = 2048: minutes, or lost below


def measure(d: int, ks, budget: float, lobpcg_k: int, two_max_d: int) -> list[dict]:
    """Rows ``{d, m, solver, one_thread, two_threads, error}`` for one width."""
    full, matrix = replicate_matrices(d)
    start = np.linalg.eigh(full)[1][:, ::-1]
    reference = np.linalg.eigh(matrix.T)[1][:, ::-1]
    rows, done = [], set()
    for m in ks:
        tasks = solvers(d, m, matrix, start) | components(matrix, m)
        for name, task in tasks.items():
            k_free = "full" in name or "values" in name or "torch eigvalsh" in name
            if (name, None) in done or (d > 2048 and name.startswith(SKIP_LARGE)):
                continue
            if "lobpcg" in name and (m > lobpcg_k or d > 2048):
                continue
            done.add((name, None) if k_free else (name, m))
            row = {"d": d, "m": None if k_free else m, "solver": name}
            with threadpool_limits(limits=1, user_api="blas"):
                torch.set_num_threads(1)
                row["one_thread"] = seconds(task, budget, clock=time.thread_time)
                head = task()
            row["two_threads"] = float("nan")
            if d <= two_max_d:
                with threadpool_limits(limits=2, user_api="blas"):
                    torch.set_num_threads(2)
                    row["two_threads"] = seconds(task, budget)
            error = float("nan")
            if isinstance(head, np.ndarray) and head.ndim == 2 and not name.startswith("  "):
                error = fraction_error(matrix, head, m, reference)
            row["error"] = error
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    m = "all" if row["m"] is None else str(row["m"])
    error = "" if np.isnan(row["error"]) else f"{row['error']:9.1e}"
    return (
        f"{row['d']:5d} {m:>4s}  {row['solver']:36s} {row['one_thread'] * 1e3:10.1f}"
        f" {row['two_threads'] * 1e3:10.1f} {error:>9s}"
    )


def tridiagonal_top(matrix, m: int):
    """The tridiagonal solver for the spectrum and exactly `m` top columns (no cutoff rule)."""
    reduction, d = spectra.reduce_tridiagonal(matrix), matrix.shape[0]
    if m > spectra.ALL_VECTORS_SHARE * d:  # as partial_eigh with a hint of m columns
        values, vectors = reduction.divide_and_conquer()
        return values, reduction.columns_of(vectors, m, d)
    return reduction.values(), reduction.columns(m, d)


def crossover(d: int, budget: float, shares=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)) -> list[str]:
    """The tridiagonal solver (spectrum + m top columns) against ``eigh`` at m = share · d,
    one thread, measured alternately (the fastest of each)."""
    _, matrix = replicate_matrices(d)
    lines = []
    with threadpool_limits(limits=1, user_api="blas"):
        for share in shares:
            m = max(1, round(share * d))
            tri = seconds(partial(tridiagonal_top, matrix, m), budget / 2, clock=time.thread_time)
            full = seconds(lambda: np.linalg.eigh(matrix.T), budget / 2, clock=time.thread_time)
            lines.append(f"{d:5d} m/d={share:.1f}  tridiagonal {tri * 1e3:8.1f} ms"
                         f"  eigh {full * 1e3:8.1f} ms  ratio {tri / full:5.2f}")  # fmt: skip
            print(lines[-1], flush=True)
    return lines


GPT2_SMALL = {"q": (768, 768), "k": (768, 768), "v": (768, 768), "o": (768, 768),
              "up": (3072, 768), "down": (768, 3072)}  # fmt: skip
REPLICATE_CUTOFFS = ("k=8", "k=16", "k=32", "k=64", "var=0.9", "pr")


# The activations' spectrum: "massive", :func:`replicate_matrices`' (var=0.9 and pr at k of a
# few: the cutoffs read the top 64 columns); "flat", ``j^-0.7`` with no massive direction
# (var=0.9 near k = 520, pr near 155: about what the README's GPT-2-small-shaped random model
# asks, 279–574 and 156–304).
SPECTRA = {"massive": 1.0, "flat": 0.7}


def site_chunks(d: int, seed: int, spectrum: str = "massive") -> probes.ChunkStatistics:
    """One site's chunk statistics, as the statistics pass keeps them (float32 packed
    triangles), of activations with the :data:`SPECTRA` `spectrum` in :data:`CHUNKS` chunks."""
    rng = np.random.default_rng(seed)
    tokens = 8 * d
    spectrum, massive = np.arange(1, d + 1) ** -SPECTRA[spectrum], spectrum == "massive"
    if massive:
        spectrum[:2] = [50.0, 10.0]
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
    x = (rng.standard_normal((tokens, d)) * np.sqrt(spectrum)) @ rotation.T + rng.standard_normal(d)
    chunks = np.array_split(x.astype(np.float32), CHUNKS)
    upper = np.triu_indices(d)
    return probes.ChunkStatistics(
        np.array([len(chunk) for chunk in chunks]),
        np.stack([chunk.astype(np.float64).sum(axis=0) for chunk in chunks]),
        np.stack([(chunk.T @ chunk)[upper] for chunk in chunks]),
    )


def replicate_seconds(layers: int, replicates: int, rounds: int, spectrum: str) -> list[str]:
    """Wall seconds per bootstrap replicate of GPT-2-small shapes (d = 768, 3 sites per
    layer, act_cov, :data:`REPLICATE_CUTOFFS`, the default normalisations) through
    :func:`robustness.measure.grid.fill_replicates`, by replicate solver: ``full`` (every
    column) and ``auto`` (partial spectra), alternately, the fastest of `rounds` each by
    CPU seconds of the process (wall seconds beside them);
    activations with the :data:`SPECTRA` `spectrum`."""
    from robustness.measure.grid import Grid, fill_replicates
    from robustness.settings.config import PairSpec, SweepConfig

    d, rng = 768, np.random.default_rng(0)
    config = SweepConfig(pairs=(PairSpec("p", "base", "aligned"),), constructions=("act_cov",),
                         cutoffs=REPLICATE_CUTOFFS)  # fmt: skip
    grid = Grid(config, d, "key", {})
    names = tuple(GPT2_SMALL)
    deltas, bases = ([rng.standard_normal(GPT2_SMALL[m]) for m in names] for _ in range(2))
    prepared = grid.prepare(names, deltas, bases)  # W_from too: base_relative is a default
    chunks = {site: site_chunks(d, seed, spectrum) for seed, site in enumerate(probes.SITES)}
    full_sites = {site: chunk.reweighted(np.ones(CHUNKS)) for site, chunk in chunks.items()}
    weights = rng.multinomial(CHUNKS, np.full(CHUNKS, 1 / CHUNKS), size=replicates).astype(float)
    shape = (len(names), 1, len(REPLICATE_CUTOFFS), len(config.normalisations))
    layer_stats, full_ks = [], []
    for layer in range(layers):  # the full sample's bases and ks: before the clock starts
        layer_stats.append({"base": probes.ActivationStatistics(
            sites={(layer, s): full_sites[s] for s in chunks},
            chunks={(layer, s): chunks[s] for s in chunks})})  # fmt: skip
        full_ks.append(np.empty(shape[:3], dtype=np.int64))
        grid.fill(layer, prepared, layer_stats[-1], np.empty(shape), full_ks[-1])
    ks = full_ks[0][0, 0]
    lo, hi = spectra.needed_columns(ks, d)
    lines = [f"{spectrum}: full-sample ks {dict(zip(REPLICATE_CUTOFFS, ks.tolist(), strict=True))}, "
             f"{lo + d - hi} columns of {d}"]  # fmt: skip
    print(lines[-1], flush=True)
    best = {}
    for _ in range(rounds):
        for solver in ("full", "auto"):
            grid.replicate_solver = solver
            start, cpu = time.perf_counter(), time.process_time()
            for layer in range(layers):
                out = np.empty((replicates, *shape))
                fill_replicates(grid, layer, prepared, layer_stats[layer], weights, out,
                                ("act_cov",), full_ks=full_ks[layer])  # fmt: skip
            spent = (time.perf_counter() - start) / replicates
            cpu = (time.process_time() - cpu) / replicates  # both threads: robust to others' load
            best[solver] = min(best.get(solver, np.inf), cpu)
            lines.append(f"round: {solver:4s} {spent:7.3f} s wall, {cpu:7.3f} s CPU per replicate"
                         f" ({layers} layers)")  # fmt: skip
            print(lines[-1], flush=True)
    lines.append(f"fastest: full {best['full']:.3f} s, auto {best['auto']:.3f} s CPU per replicate;"
                 f" auto / full = {best['auto'] / best['full']:.2f}")  # fmt: skip
    print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="576,768,2048,4096")
    parser.add_argument("--ks", default="8,64,256")
    parser.add_argument(
        "--budget", type=float, default=3.0, help="seconds per measurement, at most"
    )
    parser.add_argument("--lobpcg-k", type=int, default=64, help="LOBPCG only up to this m")
    parser.add_argument("--two-max-d", type=int, default=4096, help="2-thread timing up to this d")
    parser.add_argument("--crossover", action="store_true", help="also m/d = 0.1 … 0.6")
    parser.add_argument("--replicates", type=int, default=0,
                        help="instead: seconds per bootstrap replicate of GPT-2-small shapes "
                        "by replicate solver (full, auto), this many replicates a round")  # fmt: skip
    parser.add_argument("--spectrum", choices=tuple(SPECTRA), default="massive",
                        help="activations' spectrum (with --replicates)")  # fmt: skip
    parser.add_argument("--layers", type=int, default=12, help="layers (with --replicates)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (with --replicates)")
    args = parser.parse_args(argv)
    if args.replicates:
        replicate_seconds(args.layers, args.replicates, args.rounds, args.spectrum)
        return 0
    dims = [int(x) for x in args.dims.split(",")]
    ks = [int(x) for x in args.ks.split(",")]
    print(f"{'d':>5s} {'m':>4s}  {'solver':36s} {'1 thr ms':>10s} {'2 thr ms':>10s} {'|ΔF|':>9s}")
    for d in dims:
        measure(d, [k for k in ks if k < d], args.budget, args.lobpcg_k, args.two_max_d)
    if args.crossover:
        for d in dims:
            crossover(d, args.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
