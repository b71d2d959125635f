"""The grid maths of one layer: bases, then energy profiles, then every cutoff and normalisation.

For one layer of one pair, :class:`Grid` computes each basis once (one per
(site, construction) for the activation constructions, one per pair for the
unembedding ones, one per matrix for ``weight_svd`` and ``random``), reads
every cutoff off one energy profile per basis (computed only up to the
largest k any cutoff selects, the rest read from the tail of a complete
basis), and applies every normalisation. :func:`fill_replicates` redoes the
activation constructions for bootstrap replicates from reweighted chunk
statistics, in blocks. :func:`eigen_all` runs independent
eigendecompositions side by side. The orchestration (models, statistics
passes, pairs) is in :mod:`robustness.engine`.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

import probes

from .config import SweepConfig

__all__ = [
    "ACTIVATION_SOURCE",
    "TRAINED_SIDE_SOURCE",
    "REPLICATE_BLOCK",
    "REPLICATE_BLOCK_BYTES",
    "Grid",
    "as_numpy",
    "eigen_all",
    "fill_replicates",
    "replicate_block",
]

REPLICATE_BLOCK = 8  # bootstrap replicates reweighted and decomposed together, at most
REPLICATE_BLOCK_BYTES = 1 << 30  # and no more than their d × d matrices and bases fit in this


def replicate_block(n_sites: int, d: int) -> int:
    """Replicates per block: :data:`REPLICATE_BLOCK`, fewer when their matrices would be large.

    A block holds, per replicate and site, the reweighted ``d × d`` statistics
    and their eigenbasis (two float64 ``d × d`` arrays): at d = 768 eight
    replicates of 3 sites are 113 MB, at d = 4096 one replicate is 805 MB.
    """
    per_replicate = n_sites * 2 * d * d * 8
    return max(1, min(REPLICATE_BLOCK, REPLICATE_BLOCK_BYTES // per_replicate))


# Which model's activations each activation construction reads. A pretraining pair (its base
# an initialisation with no structure) takes its constructions from the trained side.
ACTIVATION_SOURCE = {"act_cov": "base", "act_moment": "base", "act_cov_aligned": "aligned"}
TRAINED_SIDE_SOURCE = {"act_cov": "aligned", "act_moment": "aligned", "act_cov_aligned": "aligned"}


def as_numpy(tensor) -> np.ndarray:
    """A float64 NumPy copy of a tensor on the CPU."""
    return tensor.detach().to("cpu", torch.float64).numpy()


def eigen_all(subspace_tasks: dict) -> dict:
    """Run independent eigendecompositions two at a time, one BLAS thread each.

    LAPACK's tridiagonal reduction barely uses a second core, so two
    single-threaded eigendecompositions side by side finish sooner than the
    same two in sequence with two threads each. The results do not depend on
    how the work is scheduled.
    """
    if len(subspace_tasks) < 2:
        return {key: task() for key, task in subspace_tasks.items()}
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(task) for key, task in subspace_tasks.items()}
        return {key: future.result() for key, future in futures.items()}


@dataclass
class _Matrix:
    """One matrix of one layer, with everything every basis reuses."""

    name: str
    pathway: str
    delta: np.ndarray
    w_from: np.ndarray | None
    gram_w: np.ndarray | None
    gram_delta: np.ndarray | None  # only for wide matrices, where it is the cheaper route
    purity: float | None


class Grid:
    """The per-layer work of one pair: bases, then profiles, then every cutoff and normalisation."""

    def __init__(
        self, config: SweepConfig, d: int, label: str, pair_bases: dict, sources=ACTIVATION_SOURCE
    ):
        self.config, self.d, self.label, self.pair_bases = config, d, label, pair_bases
        self.sources = (
            sources  # construction → the role ("base", "aligned") whose statistics it reads
        )
        self.need_w = (
            "weight_svd" in config.constructions or "base_relative" in config.normalisations
        )
        # Fixed cutoffs are all a basis without a spectrum (random) can define.
        fixed = [
            probes.resolve_cutoff(c, d=d)
            for c in config.cutoffs
            if probes.parse_cutoff(c).rule in ("k", "frac")
        ]
        self.random_k = max(fixed, default=0)
        # Where the bootstrap's eigendecompositions run batched (torch.linalg.eigh): the
        # statistics' GPU; None keeps NumPy's, two at a time on the CPU (as fast there).
        self.eigh_device: str | None = None

    def prepare(self, matrices, deltas, weights) -> list[_Matrix]:
        prepared = []
        for name, delta, w_from in zip(matrices, deltas, weights, strict=True):
            pathway = probes.PATHWAY[name]
            # Wide matrices (the MLP's 4d side) are cheaper through their d×d Gram.
            wide = (delta.shape[0] if pathway == "read" else delta.shape[1]) > self.d
            gram_delta = probes.residual_gram(delta, pathway=pathway) if wide else None
            # Σ g² (Haar moments, null_z, the random control's reference): one small Gram.
            purity = probes.gram_purity(delta if gram_delta is None else None, gram=gram_delta)
            gram_w = probes.residual_gram(w_from, pathway=pathway) if self.need_w else None
            prepared.append(_Matrix(name, pathway, delta, w_from, gram_w, gram_delta, purity))
        return prepared

    def basis_tasks(self, layer, prepared, stats, constructions) -> dict:
        """The eigendecompositions one layer needs, as ``{key: callable}`` for :func:`eigen_all`."""
        tasks = {}
        for matrix in prepared:
            site = probes.SITE_OF[matrix.name]
            for construction in constructions:
                if construction in self.sources and (site, construction) not in tasks:
                    site_stats = stats[self.sources[construction]].sites[(layer, site)]
                    tasks[(site, construction)] = partial(
                        site_stats.subspace,
                        centred=construction != "act_moment",
                        construction=construction,
                    )
                elif construction == "weight_svd":
                    tasks[(matrix.name, construction)] = partial(
                        probes.gram_subspace, matrix.gram_w, "weight_svd"
                    )
        return tasks

    def _subspace(self, bases, layer, matrix: str, construction: str):
        if construction in self.sources:
            return bases[(probes.SITE_OF[matrix], construction)]
        if construction in self.pair_bases:
            return self.pair_bases[construction]
        if construction == "weight_svd":
            return bases[(matrix, construction)]
        if self.random_k < 1:  # only spectrum cutoffs: nothing a random basis can define
            return None
        rng = probes.construction_rng(self.config.seed, self.label, layer, matrix)
        return probes.random_subspace(self.d, rng=rng, k=self.random_k)

    def fill(self, layer, prepared, stats, rsf, ks, *, constructions=None, bases=None) -> None:
        """Fill ``rsf[matrix, construction, cutoff, normalisation]`` and ``ks`` for one layer.

        ``constructions`` limits the work to some constructions (their indices in
        the config are kept): a bootstrap replicate redoes only the activation ones.
        ``bases`` are the results of :meth:`basis_tasks` when already computed.
        """
        d, cutoffs, normalisations = self.d, self.config.cutoffs, self.config.normalisations
        chosen = constructions or self.config.constructions
        if bases is None:
            bases = eigen_all(self.basis_tasks(layer, prepared, stats, chosen))
        for mi, matrix in enumerate(prepared):
            for construction in chosen:
                ci = self.config.constructions.index(construction)
                subspace = self._subspace(bases, layer, matrix.name, construction)
                if subspace is None:
                    continue
                k = np.array([
                    probes.resolve_cutoff(c, d=d, spectrum=subspace.spectrum, n_samples=subspace.n_samples)
                    for c in cutoffs
                ])  # fmt: skip
                ks[mi, ci] = k
                if k.max() < 1:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter(
                        "ignore", RuntimeWarning
                    )  # zero deltas: noted once per pair
                    fraction = probes.fractions_at(
                        matrix.delta,
                        subspace.basis,
                        k,
                        pathway=matrix.pathway,
                        gram=matrix.gram_delta,
                    )
                base_fraction = None
                if "base_relative" in normalisations:
                    if construction == "weight_svd":  # W on its own singular basis: closed form
                        share = np.cumsum(subspace.spectrum) / subspace.spectrum.sum()
                        base_fraction = np.where(k >= 1, share[np.clip(k, 1, None) - 1], np.nan)
                    else:
                        gram = matrix.gram_w if matrix.gram_delta is not None else None
                        base_fraction = probes.fractions_at(
                            matrix.w_from, subspace.basis, k, pathway=matrix.pathway, gram=gram
                        )
                for ni, name in enumerate(normalisations):
                    rsf[mi, ci, :, ni] = probes.normalise(
                        name, fraction, k, d, base_fraction=base_fraction, purity=matrix.purity
                    )


def fill_replicates(
    grid, layer, prepared, stats, weights, out, constructions, *, progress=False, label="bootstrap"
) -> None:
    """Fill ``out[b]`` for each row of ``weights``, in blocks of :func:`replicate_block` replicates.

    A block's reweighted statistics come from one pass over the chunks per site,
    and its eigendecompositions (sites × replicates) share the two-thread pool,
    so no worker idles while the last site of a replicate finishes.
    """
    sites = sorted({(layer, probes.SITE_OF[m.name]) for m in prepared})
    scratch = np.empty(out.shape[1:4], dtype=np.int64)  # ks of one replicate: not kept
    size = replicate_block(len(sites) * len(stats), grid.d)
    starts = range(0, len(weights), size)
    for start in tqdm(starts, desc=label, disable=not progress or len(starts) < 2, leave=False):
        block = weights[start : start + size]
        replicates = [
            {role: probes.ActivationStatistics(sites={}) for role in stats} for _ in block
        ]
        for role, role_stats in stats.items():
            for key in sites:
                for b, site in enumerate(role_stats.chunks[key].reweighted_many(block)):
                    replicates[b][role].sites[key] = site
        tasks = {
            (b, key): task
            for b, replicate in enumerate(replicates)
            for key, task in grid.basis_tasks(layer, prepared, replicate, constructions).items()
        }
        if grid.eigh_device is None:
            bases = eigen_all(tasks)
        else:  # every task is an activation construction's covariance: one batched call
            keys = list(tasks)
            moments = []
            for b, (site, construction) in keys:
                statistics = replicates[b][grid.sources[construction]].sites[(layer, site)]
                moments.append((statistics.sum_x, statistics.sum_xx, statistics.n,
                                construction != "act_moment", construction))  # fmt: skip
            found = probes.covariance_subspaces(moments, device=grid.eigh_device)
            del moments
            bases = dict(zip(keys, found, strict=True))
        del tasks, replicates
        for b in range(len(block)):
            mine = {key: basis for (owner, key), basis in bases.items() if owner == b}
            grid.fill(
                layer,
                prepared,
                None,
                out[start + b],
                scratch,
                constructions=constructions,
                bases=mine,
            )
