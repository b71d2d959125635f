"""Where a bootstrap replicate's seconds go, stage by stage (``replicate_breakdown``; reported only).

One replicate of GPT-2-small shapes (d = 768, 12 layers × 3 sites), each stage
timed alone with the library's own functions, on the sweep's pool
(:func:`robustness.measure.grid.worker_pool`: two tasks at a time, one BLAS
thread each), one task per site, the median of a few runs:

- ``reweighting``: the replicate's statistics from the chunk statistics
  (:meth:`probes.ChunkStatistics.reweighted_many`, upper triangle only, a block
  of :data:`~robustness.measure.grid.REPLICATE_BLOCK` replicates in one pass,
  as the sweep does: the block's seconds over its size) and their centred
  covariance;
- ``eigenvalues``: the tridiagonal reduction and the whole spectrum
  (:func:`probes.spectra.reduce_tridiagonal`,
  :meth:`~probes.spectra.Reduction.eigenpairs`: ``dsterf``, or divide and
  conquer for every vector of T where the full sample's cutoffs read many
  columns, the sweep's hint);
- ``eigenvectors``: each cutoff's k and the columns it reads
  (:meth:`~probes.spectra.Reduction.partial`: MRRR for a few, and the
  reduction's reflectors applied to those columns only);
- ``fractions``: every delta and ``W_from`` of the layer measured there
  (:func:`probes.fractions_at_many`: GPT-2's q, k, v on ``attn_in``, up on
  ``mlp_in``, o and down on ``resid_post``, 144 in all);

and, for comparison, ``full_eigh``: one ``numpy.linalg.eigh`` per site instead
of the two eigen stages. The chunk statistics are a statistics pass of the
random GPT-2-small model over the sweep's 32 chunks; the deltas' residual
factors are Cholesky triangles of random Grams.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

import probes
from probes import spectra

from .common import BATCH, BOOTSTRAP_CUTOFFS, gpt2_small, token_ids

# Deltas measured on each site's basis per layer: each matrix's delta and its W_from.
FACTORS_PER_SITE = {"attn_in": 2 * 3, "mlp_in": 2 * 1, "resid_post": 2 * 2}


def chunk_statistics(tmp: Path, n_tokens: int) -> dict:
    """``{(layer, site): ChunkStatistics}`` of the random GPT-2-small model, as the bootstrap keeps them."""
    from robustness.measure.resampling import BOOTSTRAP_CHUNKS

    model_dir = tmp / "breakdown-model"
    gpt2_small(model_dir)
    model = probes.load_model(str(model_dir))
    ids = token_ids(n_tokens, seed=4)
    stats = probes.collect_statistics(
        model, ids, batch_size=BATCH, chunk_size=len(ids) // BOOTSTRAP_CHUNKS, progress=False
    )
    return stats.chunks


def stage_seconds(pool, task, inputs: list, repeats: int) -> tuple[float, list]:
    """The median seconds of `task` over every input on `pool`, and the last run's results."""
    times, out = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        out = list(pool.map(task, inputs))
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def replicate_breakdown(tmp: Path, n_tokens: int = 8192, repeats: int = 3) -> dict:
    """Seconds per replicate in each stage (module docstring), summed over the 36 sites."""
    from robustness.measure.grid import REPLICATE_BLOCK, worker_pool

    chunks = chunk_statistics(tmp, n_tokens)
    keys = sorted(chunks)
    n_chunks = len(chunks[keys[0]].n)
    # A block of replicates is reweighted in one pass over the chunks, as the sweep does.
    block = np.random.default_rng(0).multinomial(
        n_chunks, np.full(n_chunks, 1 / n_chunks), size=REPLICATE_BLOCK
    )
    d = chunks[keys[0]].d
    rng = np.random.default_rng(1)
    factors = {}
    for key in keys:
        grams = [x.T @ x for x in rng.standard_normal((FACTORS_PER_SITE[key[1]], 2 * d, d))]
        factors[key] = [probes.residual_factor(gram=g, pathway="read") for g in grams]

    def covariance(site):
        mean = site.sum_x / site.n
        return site.sum_xx / site.n - np.outer(mean, mean), site.n  # the upper triangle is read

    def reweight(key):
        return covariance(chunks[key].reweighted_many(block, upper_only=True)[0])

    # The sweep's hint: the columns the full sample's cutoffs read (untimed).
    hints = {}
    for key in keys:
        whole = covariance(chunks[key].reweighted_many(np.ones((1, n_chunks)), upper_only=True)[0])
        found = spectra.partial_eigh(whole[0], BOOTSTRAP_CUTOFFS, n_samples=whole[1], method="full")
        hints[key] = found.lo + d - found.hi

    def eigenvalues(item):
        key, (matrix, n) = item
        reduction = spectra.reduce_tridiagonal(matrix)
        many = hints[key] > spectra.ALL_VECTORS_SHARE * d
        return reduction, reduction.eigenpairs(many=many, spectrum=True), n

    def eigenvectors(found):
        reduction, (values, vectors), n = found
        return reduction.partial(BOOTSTRAP_CUTOFFS, values, vectors, n)

    def full_eigh(covariance):
        values, vectors = np.linalg.eigh(covariance[0], UPLO="U")
        values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]
        ks = spectra.resolve_ks(BOOTSTRAP_CUTOFFS, d, values=values, n_samples=covariance[1])
        lo, hi = spectra.needed_columns(ks, d)
        return spectra.PartialSpectrum(ks, vectors[:, :lo], vectors[:, hi:], values, "full")

    def fractions(pair):
        key, partial = pair
        return partial.fractions(factors[key])

    with worker_pool() as pool:
        seconds = {}
        seconds["reweighting"], covariances = stage_seconds(pool, reweight, keys, repeats)
        seconds["reweighting"] /= len(block)  # one pass reweights the whole block
        seconds["eigenvalues"], reductions = stage_seconds(
            pool, eigenvalues, list(zip(keys, covariances, strict=True)), repeats
        )
        seconds["eigenvectors"], partials = stage_seconds(pool, eigenvectors, reductions, repeats)
        seconds["fractions"], found = stage_seconds(
            pool, fractions, list(zip(keys, partials, strict=True)), repeats
        )
        seconds["full_eigh"], full = stage_seconds(pool, full_eigh, covariances, repeats)
    exact = [fractions(pair) for pair in zip(keys, full, strict=True)]  # untimed: a check
    difference = max(float(np.nanmax(np.abs(a - b))) for a, b in zip(found, exact, strict=True))
    partial_total = sum(
        seconds[s] for s in ("reweighting", "eigenvalues", "eigenvectors", "fractions")
    )
    full_total = seconds["reweighting"] + seconds["full_eigh"] + seconds["fractions"]
    widths = [p.lo + p.d - p.hi for p in partials]
    return {
        "value": partial_total,
        "seconds_per_replicate": {k: v for k, v in seconds.items() if k != "full_eigh"},
        "seconds_per_replicate_with_full_eigh": {
            "reweighting": seconds["reweighting"],
            "full_eigh": seconds["full_eigh"],
            "fractions": seconds["fractions"],
        },
        "total_seconds": partial_total,
        "total_seconds_with_full_eigh": full_total,
        "partial_vs_full": partial_total / full_total,
        "columns_computed": [min(widths), max(widths)],
        "max_abs_fraction_difference_vs_full_eigh": difference,
        "sites": len(keys),
        "chunks": n_chunks,
        "tokens": n_tokens,
        "repeats": repeats,
        "replicates_reweighted_together": len(block),
        "pool": "two tasks at a time, one BLAS thread each (the sweep's worker_pool)",
    }
