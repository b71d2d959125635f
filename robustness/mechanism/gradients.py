"""`rsf gradients`: how anisotropic are the gradients that build a weight delta?

An update of a matrix is a sum of outer products ``Σ_t δ_t a_tᵀ``. The paper
explains its read/write asymmetry by where that sum is anisotropic: read
matrices see their input ``a_t`` (the residual stream, strongly anisotropic),
write matrices their output gradient ``δ_t`` (the residual-stream gradient).
This module measures both for a model, a corpus and an objective
(:mod:`probes.gradients` does the hooks and the streaming sums):

- covariance spectra at the read sites (``attn_in``, ``mlp_in``: ``a_t``) and
  the write sites (``o_out``, ``down_out``: ``δ_t``);
- effective ranks: participation ratio ``(Σλ)²/Σλ²`` and entropy effective
  rank ``exp H(λ/Σλ)``;
- the fraction of the vectors' energy (uncentred second moment, the quantity a
  delta's residual-side Gram accumulates) in the top-k prediction subspace
  (the unembedding's right singular vectors), and its ratio to ``k/d``;
- percentile bootstrap intervals over chunks of consecutive sequences, by
  reweighting per-chunk sums (as the sweep's sequence bootstrap does). Every
  objective is measured on the same sequences and resampled with the same
  chunk weights, so differences between objectives get paired intervals.

Objectives (``--objective``):

``ce``
    next-token cross-entropy on the corpus sequences, every position;
``dpo``
    DPO (:func:`robustness.training.preferences.dpo_loss`) on preference pairs made from
    the same sequences (prompt: the first ``prompt_len`` tokens; chosen: the
    true rest; rejected: a corrupted one);
``lam=x`` (``mixed`` takes ``x`` from ``--lam``)
    the graded objective ``(1 − λ)·CE(chosen) + λ·DPO`` on those pairs.

Losses are scaled to a sum over sequences (or pairs), so every batch's
``δ_t`` is on the same scale. The DPO reference defaults to the model itself
(the gradient at the start of alignment, where the margin is zero).
:mod:`robustness.mechanism.gradient_dataset` runs this at every checkpoint of a
trajectory and assembles ``gradients.nc``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

import probes
from robustness.measure.resampling import sequence_chunks
from robustness.settings.options import GradientSettings, parse_objectives
from robustness.training.preferences import objective_loss

__all__ = [
    "SITE_KIND",
    "SITE_ORDER",
    "GradientSettings",
    "measure_objective",
    "parse_objectives",
    "summarise_statistics",
]

SITE_ORDER = ("attn_in", "mlp_in", "o_out", "down_out")
SITE_KIND = {
    "attn_in": "activation",
    "mlp_in": "activation",
    "o_out": "gradient",
    "down_out": "gradient",
}


def _batches(n: int, chunks, batch_size: int) -> tuple[list[slice], list[int]]:
    """Batches of at most `batch_size` that never straddle a chunk, and each one's chunk."""
    batches, chunk_of = [], []
    for c, (lo, hi) in enumerate(chunks):
        for start in range(lo, hi, batch_size):
            batches.append(slice(start, min(start + batch_size, hi)))
            chunk_of.append(c)
    return batches, chunk_of


def measure_objective(
    model,
    ids: np.ndarray,
    *,
    lam: float | None,
    pairs=None,
    reference=None,
    beta: float = 0.1,
    batch_size: int = 8,
    chunks=None,
    keep_chunks: bool = True,
    progress: bool = False,
    description: str = "gradients",
) -> probes.GradientStatistics:
    """Gradient and input statistics of one objective on `model`.

    ``lam=None`` is next-token cross-entropy on `ids` ``[n_seq, seq_len]``;
    otherwise ``L_λ`` on `pairs` (one pair per sequence, so `chunks` index
    both), with `reference` (default `model` itself) for the DPO term. Batches
    never straddle a chunk; each chunk's own sums are kept only with `keep_chunks`
    (a bootstrap needs them; each holds every layer's and site's d × d sums).
    """
    device = next(model.parameters()).device
    n = len(ids) if lam is None else len(pairs)
    chunks = chunks if chunks is not None else sequence_chunks(n)
    slices, chunk_of = _batches(n, chunks, batch_size)
    if lam is None:
        data = torch.as_tensor(np.asarray(ids), dtype=torch.long)

        def loss_fn(policy, index):
            batch = data[index].to(device)
            # The mean over tokens times the batch's sequences: every sequence counts alike.
            return policy(input_ids=batch, labels=batch, use_cache=False).loss * batch.shape[0]

    else:
        tensors = [
            torch.as_tensor(array, dtype=torch.long)
            for array in (pairs.prompt, pairs.chosen, pairs.rejected)
        ]
        ref = model if reference is None else reference

        def loss_fn(policy, index):
            prompt, chosen, rejected = (t[index].to(device) for t in tensors)
            loss = objective_loss(policy, ref, prompt, chosen, rejected, lam=lam, beta=beta)
            return loss * prompt.shape[0]

    return probes.collect_gradient_statistics(
        model,
        slices,
        loss_fn,
        sites=SITE_ORDER,
        chunk_of=chunk_of if keep_chunks else None,
        progress=progress,
        description=description,
    )


def _site_summary(site: probes.SiteStatistics, basis: np.ndarray, ks: np.ndarray):
    """Covariance spectrum, effective ranks and prediction-subspace energy fractions."""
    covariance = site.covariance()
    spectrum = np.clip(np.linalg.eigvalsh(0.5 * (covariance + covariance.T))[::-1], 0.0, None)
    pr, er = probes.effective_ranks(spectrum)
    fraction = probes.subspace_energy_fraction(site.second_moment(), basis, ks)
    return spectrum, pr, er, fraction


def _ranks(spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Participation ratio and entropy effective rank of each row of ``spectra [B, d]``.

    The row-wise forms of :func:`probes.participation_ratio` and
    :func:`probes.entropy_effective_rank` (same definitions; NaN for a zero row).
    """
    lam = np.clip(spectra, 0.0, None)
    total = lam.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pr = total**2 / np.sum(lam**2, axis=1)
        p = lam / total[:, None]
        entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    er = np.where(total > 0, np.exp(entropy), np.nan)
    return np.where(total > 0, pr, np.nan), er


@functools.lru_cache(maxsize=8)
def _unpacking(d: int) -> np.ndarray:
    """Indices that take a row-major upper triangle (``np.triu_indices`` order) to the full ``d × d``."""
    rows, cols = np.triu_indices(d)
    full = np.empty((d, d), dtype=np.intp)
    full[rows, cols] = np.arange(len(rows))
    full[cols, rows] = np.arange(len(rows))
    return full.ravel()


def _replicate_summaries(chunks: probes.ChunkStatistics, weights, basis, ks):
    """Effective ranks and prediction fractions for every bootstrap replicate at once.

    Replicate ``b`` counts chunk ``c`` ``weights[b, c]`` times; the reweighted
    sums, covariances and eigenvalues are formed for all replicates together,
    in place, so the batched eigendecomposition is nearly all the cost.
    """
    d = chunks.d
    w = np.asarray(weights, dtype=np.float64)
    packed = w @ chunks.sum_xx_packed.astype(np.float64)  # [B, d(d+1)/2]
    n = w @ chunks.n.astype(np.float64)
    mean = (w @ chunks.sum_x) / n[:, None]
    second = np.take(packed, _unpacking(d), axis=1).reshape(len(w), d, d)
    second /= n[:, None, None]
    width = int(ks.max())
    top = basis[:, :width]
    energy = np.einsum("dj,bdj->bj", top, second @ top)
    trace = np.trace(second, axis1=1, axis2=2)
    covariance = second  # the second moments are not needed again: centre in place
    covariance -= mean[:, :, None] * mean[:, None, :]
    spectra = np.clip(np.linalg.eigvalsh(covariance)[:, ::-1], 0.0, None)
    pr, er = _ranks(spectra)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.cumsum(energy, axis=1)[:, ks - 1] / trace[:, None]
    return pr, er, np.clip(fraction, 0.0, 1.0)


def summarise_statistics(
    stats: probes.GradientStatistics,
    *,
    n_layers: int,
    basis: np.ndarray,
    ks: np.ndarray,
    weights: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Arrays ``[layer, site, …]`` (and ``[replicate, layer, site, …]`` with `weights`)."""
    d = basis.shape[0]
    n_sites = len(SITE_ORDER)
    out = {
        "spectrum": np.full((n_layers, n_sites, d), np.nan),
        "participation_ratio": np.full((n_layers, n_sites), np.nan),
        "entropy_rank": np.full((n_layers, n_sites), np.nan),
        "prediction_fraction": np.full((n_layers, n_sites, len(ks)), np.nan),
        "n": np.zeros((n_layers, n_sites), dtype=np.int64),
    }
    n_boot = 0 if weights is None else len(weights)
    if n_boot:
        out["participation_ratio_boot"] = np.full((n_boot, n_layers, n_sites), np.nan)
        out["entropy_rank_boot"] = np.full((n_boot, n_layers, n_sites), np.nan)
        out["prediction_fraction_boot"] = np.full((n_boot, n_layers, n_sites, len(ks)), np.nan)
    for (layer, site), site_stats in stats.sites.items():
        s = SITE_ORDER.index(site)
        spectrum, pr, er, fraction = _site_summary(site_stats, basis, ks)
        out["spectrum"][layer, s] = spectrum
        out["participation_ratio"][layer, s] = pr
        out["entropy_rank"][layer, s] = er
        out["prediction_fraction"][layer, s] = fraction
        out["n"][layer, s] = site_stats.n
        if n_boot:
            pr, er, fraction = _replicate_summaries(stats.chunks[(layer, site)], weights, basis, ks)
            out["participation_ratio_boot"][:, layer, s] = pr
            out["entropy_rank_boot"][:, layer, s] = er
            out["prediction_fraction_boot"][:, layer, s] = fraction
    return out
