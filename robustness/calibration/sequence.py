"""Calibration of the sequence bootstrap: coverage of its BCa and percentile intervals.

The sweep's sequence bootstrap (:mod:`robustness.measure.resampling`) resamples at most
32 chunks of consecutive sequences by reweighting per-chunk sums. Here, per
simulated corpus: every layer has a read and a write site with population
covariance ``Σ`` (a power-law spectrum with distinct eigenvalues, so every
top-k subspace is defined, in random directions); chunk ``c`` draws its samples from
``A_c Σ A_cᵀ`` with ``A_c = I + η G_c`` (``G_c`` Gaussian with variance
``1/d``): **chunk-level variation** of size η (0: none), whose mixture has
covariance ``Σ + η² (tr Σ / d) I``, with Σ's eigenvectors. The deltas are
fixed; the asymmetry on ``act_cov`` (log2 isotropic ratio) is estimated from
the 32 chunks' sums (packed as the sweep packs them, :class:`probes.ChunkStatistics`),
and its truth is the same asymmetry on the population covariance's basis and
spectrum (fixed and spectral cutoffs alike). Each study is bootstrapped with
1000 replicates (the first 100 of them give the 100-replicate intervals, the
demo's count), and the coverage of the truth by BCa (jackknife acceleration
over chunks) and percentile intervals is counted.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from statsmodels.stats.proportion import proportion_confint

import probes
from robustness.measure.resampling import (
    bca_interval,
    bootstrap_weights,
    jackknife_weights,
    percentile_interval,
)

__all__ = ["SEQ_CUTOFFS", "SEQ_METHODS", "SEQ_REPLICATES", "sequence_coverage"]

SEQ_METHODS = ("BCa", "percentile")
SEQ_CUTOFFS = ("k=8", "var=0.9", "pr")
SEQ_REPLICATES = (100, 1000)
CHUNK_EFFECTS = (0.0, 0.3)
N_CHUNKS, PER_CHUNK, N_LAYERS = 32, 16, 4
COVERAGE_TARGET = (0.93, 0.97)


def SPECTRUM(d: int) -> np.ndarray:  # noqa: N802  (a fixed law, named like a constant)
    """The sites' population spectrum: ``0.5 + 20 (j + 1)^−1.2``, a power law above a floor."""
    return 0.5 + 20.0 * (np.arange(d) + 1.0) ** -1.2


def _cutoffs(spectra: np.ndarray, d: int) -> np.ndarray:
    """``[B, cutoff]``: the k of each cutoff for each row of descending ``spectra [B, d]``.

    The row-wise form of :func:`probes.resolve_cutoff` for ``k=8``, ``var=0.9``
    and ``pr`` (the same rules; checked against it in the tests).
    """
    lam = np.clip(spectra, 0.0, None)
    share = np.cumsum(lam, axis=1) / lam.sum(axis=1, keepdims=True)
    var = np.minimum(d, np.sum(share < 0.9 - 1e-12, axis=1) + 1)
    pr = np.minimum(d, np.maximum(1, np.round(lam.sum(axis=1) ** 2 / np.sum(lam**2, axis=1))))
    return np.stack([np.full(len(lam), 8), var, pr], axis=1).astype(np.int64)


def _site_values(covariances: np.ndarray, grams: list[np.ndarray], d: int) -> np.ndarray:
    """``[B, cutoff]``: mean over the site's deltas of log2 F(k)/(k/d), for each covariance row.

    One batched eigendecomposition; ``F(k)`` as the cumulative ``diag(Uᵀ G U)/tr G``
    of :func:`probes.fraction_profile`.
    """
    values, vectors = np.linalg.eigh(0.5 * (covariances + np.swapaxes(covariances, 1, 2)))
    values, vectors = values[:, ::-1], vectors[:, :, ::-1]
    ks = _cutoffs(values, d)
    out = []
    for gram in grams:
        energy = np.sum(vectors * (gram @ vectors), axis=1) / np.trace(gram)  # diag(Uᵀ G U)
        profile = np.cumsum(energy, axis=1)
        fraction = np.take_along_axis(profile, ks - 1, axis=1)
        out.append(np.log2(fraction / (ks / d)))
    return np.mean(out, axis=0)


def _one(rng, eta: float, d: int, replicates: int, seed: int, index) -> tuple:
    """One simulated corpus: (estimate, truth, replicates [B, cutoff], jackknife [C, cutoff])."""
    weights = np.vstack([bootstrap_weights(N_CHUNKS, replicates, seed, "seqcal", *index),
                         jackknife_weights(N_CHUNKS), np.ones((1, N_CHUNKS))])  # fmt: skip
    rows, cols = np.triu_indices(d)
    rows_all = np.zeros((len(weights), len(SEQ_CUTOFFS)))
    truth = np.zeros(len(SEQ_CUTOFFS))
    for _layer in range(N_LAYERS):
        for side, sign in (("read", 1.0), ("write", -1.0)):
            # A decaying spectrum with distinct eigenvalues: every top-k subspace is well defined.
            q, _ = np.linalg.qr(rng.standard_normal((d, d)))
            sigma = (q * SPECTRUM(d)) @ q.T
            population = sigma + eta**2 * np.trace(sigma) / d * np.eye(d)
            root = np.linalg.cholesky(sigma)
            n, sum_x, packed = [], [], []
            for _c in range(N_CHUNKS):
                a = np.eye(d) + eta * rng.standard_normal((d, d)) / math.sqrt(d)
                x = rng.standard_normal((PER_CHUNK, d)) @ (a @ root).T
                n.append(PER_CHUNK)
                sum_x.append(x.sum(axis=0))
                packed.append((x.T @ x)[rows, cols].astype(np.float32))
            # The sweep's own chunk statistics: packed float32 triangles, reweighted together.
            chunks = probes.ChunkStatistics(np.asarray(n), np.stack(sum_x), np.stack(packed))
            covariances = np.stack([site.covariance() for site in chunks.reweighted_many(weights)])
            deltas = [
                rng.standard_normal((2 * d, d)).T @ rng.standard_normal((2 * d, d))
                for _m in range(2)
            ]
            grams = [probes.residual_gram(delta, pathway=side) for delta in deltas]
            rows_all += sign * _site_values(covariances, grams, d) / N_LAYERS
            truth += sign * _site_values(population[None], grams, d)[0] / N_LAYERS
    return rows_all[-1], truth, rows_all[:replicates], rows_all[replicates:-1]


def sequence_coverage(rng, settings, *, progress: bool = False) -> xr.Dataset:
    """``seq_coverage(seq_method, chunk_effect, seq_replicates, seq_cutoff)`` with Clopper–Pearson intervals."""
    from tqdm.auto import tqdm

    shape = (len(SEQ_METHODS), len(CHUNK_EFFECTS), len(SEQ_REPLICATES), len(SEQ_CUTOFFS))
    hits = np.zeros(shape)
    trials = np.zeros(shape)
    level = settings.confidence_level
    for e, eta in enumerate(CHUNK_EFFECTS):
        for index in tqdm(range(settings.n_sequence), desc=f"sequence bootstrap η={eta:g}",
                          disable=not progress, leave=False):  # fmt: skip
            estimate, truth, boot, jack = _one(rng, eta, settings.d, max(SEQ_REPLICATES),
                                               settings.seed, (e, index))  # fmt: skip
            for r, count in enumerate(SEQ_REPLICATES):
                low_b, high_b = bca_interval(boot[:count], jack, estimate, level)
                low_p, high_p = percentile_interval(boot[:count], level)
                for m, (low, high) in enumerate(((low_b, high_b), (low_p, high_p))):
                    ok = np.isfinite(low) & np.isfinite(high)
                    hits[m, e, r] += ok & (low <= truth) & (truth <= high)
                    trials[m, e, r] += ok
    rate = np.where(trials > 0, hits / np.maximum(trials, 1), np.nan)
    low = np.full(shape, np.nan)
    high = np.full(shape, np.nan)
    for index in np.ndindex(shape):
        if trials[index] > 0:
            low[index], high[index] = proportion_confint(
                hits[index], trials[index], alpha=0.05, method="beta"
            )
    misses = [
        f"sequence-bootstrap coverage of {SEQ_METHODS[m]}, η={CHUNK_EFFECTS[e]:g}, {SEQ_REPLICATES[r]} replicates, "
        f"{SEQ_CUTOFFS[c]}: {rate[m, e, r, c]:.3f}"
        for m, e, r, c in np.ndindex(shape)
        if np.isfinite(rate[m, e, r, c])
        and not COVERAGE_TARGET[0] <= rate[m, e, r, c] <= COVERAGE_TARGET[1]
    ]
    dims = ("seq_method", "chunk_effect", "seq_replicates", "seq_cutoff")
    dataset = xr.Dataset(
        {
            "seq_coverage": (dims, rate),
            "seq_coverage_ci_low": (dims, low),
            "seq_coverage_ci_high": (dims, high),
        },
        coords={
            "seq_method": np.asarray(SEQ_METHODS, dtype=object),
            "chunk_effect": np.asarray(CHUNK_EFFECTS),
            "seq_replicates": np.asarray(SEQ_REPLICATES, dtype=np.int64),
            "seq_cutoff": np.asarray(SEQ_CUTOFFS, dtype=object),
        },
    )
    dataset.attrs["misses_list"] = misses
    dataset.attrs["description"] = (
        f"{settings.n_sequence} simulated corpora per chunk effect: {N_CHUNKS} chunks of {PER_CHUNK} samples, "
        f"{N_LAYERS} layers, d = {settings.d}, act_cov, log2 isotropic ratio; chunk effect η ∈ {list(CHUNK_EFFECTS)}"
    )
    return dataset
