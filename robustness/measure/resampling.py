"""The sequence bootstrap, one home for every command: chunks, chunk weights, intervals.

A corpus of ``n`` sequences is cut into at most :data:`BOOTSTRAP_CHUNKS` runs
of consecutive sequences (the resampled units: neighbouring sequences of one
document are not independent). Statistics are kept per chunk, so a replicate
is a reweighting: chunk ``c`` counted ``w_c`` times, with ``w`` multinomial
``(C; 1/C, …, 1/C)``; the jackknife leaves one chunk out (``w = 1 − e_c``),
for BCa's acceleration. Sweeps, gradients and experiments all draw their
weights here, from a generator seeded by the seed and the labels of what is
resampled, so the same seed gives the same replicates everywhere.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

import probes

__all__ = [
    "BOOTSTRAP_CHUNKS",
    "bca_interval",
    "bootstrap_chunk_size",
    "bootstrap_weights",
    "jackknife_weights",
    "percentile_interval",
    "sequence_chunks",
]

BOOTSTRAP_CHUNKS = 32


def bootstrap_chunk_size(n_sequences: int) -> int:
    """Sequences per bootstrap chunk: at most :data:`BOOTSTRAP_CHUNKS` chunks of whole sequences."""
    if n_sequences < 1:
        raise ValueError("no sequences to resample")
    return math.ceil(n_sequences / min(n_sequences, BOOTSTRAP_CHUNKS))


def sequence_chunks(n_sequences: int) -> list[tuple[int, int]]:
    """The bootstrap units ``[(start, stop), …]``: runs of :func:`bootstrap_chunk_size` sequences."""
    span = bootstrap_chunk_size(n_sequences)
    return [(lo, min(lo + span, n_sequences)) for lo in range(0, n_sequences, span)]


def bootstrap_weights(n_chunks: int, replicates: int, seed: int, *labels) -> np.ndarray:
    """Multinomial chunk counts ``[replicates, n_chunks]`` from a generator seeded by `seed` and `labels`."""
    if n_chunks < 1 or replicates < 0:
        raise ValueError("`n_chunks` must be positive and `replicates` non-negative")
    rng = probes.construction_rng(seed, *labels, "bootstrap")
    counts = rng.multinomial(n_chunks, np.full(n_chunks, 1.0 / n_chunks), size=replicates)
    return counts.astype(np.float64)


def jackknife_weights(n_chunks: int) -> np.ndarray:
    """``[n_chunks, n_chunks]``: row ``c`` counts every chunk once except chunk ``c``."""
    return 1.0 - np.eye(n_chunks)


def percentile_interval(replicates, confidence_level: float, axis: int = 0):
    """Percentile interval along `axis`; NaN where any replicate is NaN."""
    tail = 100 * (1 - confidence_level) / 2
    with np.errstate(invalid="ignore"):
        low, high = np.percentile(np.asarray(replicates), [tail, 100 - tail], axis=axis)
    return low, high


def bca_interval(
    replicates: np.ndarray,
    jackknife: np.ndarray,
    observed: np.ndarray,
    confidence_level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected and accelerated interval from precomputed replicates (Efron 1987).

    ``replicates [B, J]`` are bootstrap values of the statistic, ``jackknife
    [C, J]`` its leave-one-unit-out values, ``observed [J]`` the full-sample
    value. scipy computes BCa only when it does the resampling itself; here the
    replicates come from reweighting chunk statistics, so the same formulas
    (and scipy's linear percentile rule) are applied to them directly.
    """
    replicates, jackknife, observed = map(np.asarray, (replicates, jackknife, observed))
    tail = (1 - confidence_level) / 2
    n = replicates.shape[0]
    below = (
        np.sum(replicates < observed, axis=0) + 0.5 * np.sum(replicates == observed, axis=0)
    ) / n
    z0 = special.ndtri(below)
    spread = jackknife.mean(axis=0) - jackknife
    with np.errstate(divide="ignore", invalid="ignore"):
        accel = np.sum(spread**3, axis=0) / (6 * np.sum(spread**2, axis=0) ** 1.5)
    z = special.ndtri(np.array([tail, 1 - tail]))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = special.ndtr(z0 + (z0 + z) / (1 - accel * (z0 + z)))
    low, high = np.full(observed.shape, np.nan), np.full(observed.shape, np.nan)
    for j in range(observed.size):
        if np.all(np.isfinite(levels[:, j])) and np.isfinite(replicates[:, j]).all():
            low[j], high[j] = np.percentile(replicates[:, j], 100 * levels[:, j])
    return low, high
