"""The grid maths of one layer: bases, then energy profiles, then every cutoff and normalisation.

For one layer of one pair, :class:`Grid` computes each basis once (one per
(site, construction) for the activation constructions, one per pair for the
unembedding ones, one per matrix for ``weight_svd`` and ``random``), reads
every cutoff off one energy profile per basis (computed only up to the
largest k any cutoff selects, the rest read from the tail of a complete
basis), and applies every normalisation. :func:`fill_replicates` redoes the
activation constructions for bootstrap replicates from reweighted chunk
statistics, in blocks. :func:`eigen_all` runs independent
eigendecompositions side by side. One layer's job is
:mod:`robustness.measure.layer_job`; the orchestration (models, statistics
passes, pairs) is in :mod:`robustness.measure.engine`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

import probes
from probes.spectra import needed_columns
from robustness.settings.config import SweepConfig

__all__ = [
    "ACTIVATION_SOURCE",
    "TRAINED_SIDE_SOURCE",
    "REPLICATE_BLOCK",
    "REPLICATE_BLOCK_BYTES",
    "REPLICATE_SOLVERS",
    "REPLICATE_SOLVER",
    "Grid",
    "as_numpy",
    "eigen_all",
    "fill_replicates",
    "mechanical_reference",
    "replicate_block",
    "replicate_hints",
    "worker_pool",
]

REPLICATE_BLOCK = 8  # bootstrap replicates reweighted and decomposed together, at most
REPLICATE_BLOCK_BYTES = 1 << 30  # and no more than their d × d matrices and bases fit in this
# How a replicate's activation bases are found on the CPU (probes.spectra.partial_eigh's
# methods): "auto" computes each cutoff's k and only the eigenvectors the fractions read;
# "full" is numpy.linalg.eigh of every column (the same numbers bit for bit as before partial
# spectra); "tridiagonal" forces the partial solver at any width (the tests' tiny models).
REPLICATE_SOLVERS = ("auto", "full", "tridiagonal")
REPLICATE_SOLVER = "auto"  # each Grid's `replicate_solver` at construction


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


@contextmanager
def worker_pool():
    """Two threads, one BLAS thread each: what :func:`eigen_all` and the replicates run on.

    LAPACK's tridiagonal reduction barely uses a second core, so two
    single-threaded eigendecompositions side by side finish sooner than the
    same two in sequence with two threads each. With every BLAS call of a
    replicate block on these threads no library's idle worker threads spin
    against them.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def eigen_all(subspace_tasks: dict, pool=None) -> dict:
    """Run independent eigendecompositions two at a time (on `pool`, or a :func:`worker_pool`).

    The results do not depend on how the work is scheduled.
    """
    if pool is None:
        if len(subspace_tasks) < 2:
            return {key: task() for key, task in subspace_tasks.items()}
        with worker_pool() as pool:
            return eigen_all(subspace_tasks, pool)
    futures = {key: pool.submit(task) for key, task in subspace_tasks.items()}
    return {key: future.result() for key, future in futures.items()}


@dataclass
class _Matrix:
    """One matrix of one layer, with everything every basis reuses.

    Its deltas enter only through residual factors (:func:`probes.residual_factor`):
    the delta and ``W_from`` themselves are not kept.
    """

    name: str
    pathway: str
    factor: probes.ResidualFactor
    factor_w: probes.ResidualFactor | None  # for base_relative
    gram_w: np.ndarray | None  # for the weight_svd basis
    purity: float | None
    spectrum: np.ndarray | None = None  # g = eig(G)/tr G, descending: the exact Haar reference


class Grid:
    """The per-layer work of one pair: bases, then profiles, then every cutoff and normalisation."""

    def __init__(
        self, config: SweepConfig, d: int, key: str, pair_bases: dict, sources=ACTIVATION_SOURCE
    ):
        # `key` seeds the random control: the base's weights hash, never the pair's label, so a
        # relabelled pair, or a LoRA adapter and its merged model, get the same random bases.
        self.config, self.d, self.key, self.pair_bases = config, d, key, pair_bases
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
        # Where they run on the CPU: how each replicate's bases are found (REPLICATE_SOLVERS).
        self.replicate_solver: str = REPLICATE_SOLVER

    def prepare(self, matrices, deltas, weights) -> list[_Matrix]:
        prepared = []
        for name, delta, w_from in zip(matrices, deltas, weights, strict=True):
            pathway = probes.PATHWAY[name]
            # Σ g² (Haar moments, null_z, the random control's reference): one small Gram.
            if 2 * (delta.shape[0] if pathway == "read" else delta.shape[1]) <= self.d:
                factor = probes.residual_factor(delta, pathway=pathway)
                purity = probes.gram_purity(delta)
                spectrum = probes.gram_spectrum(delta)
            else:  # the residual-side Gram is the small one; its Cholesky factor is kept
                gram = probes.residual_gram(delta, pathway=pathway)
                factor = probes.residual_factor(delta, pathway=pathway, gram=gram)
                purity = probes.gram_purity(gram=gram)
                spectrum = probes.gram_spectrum(gram=gram)
                del gram
            factor_w = gram_w = None
            if "base_relative" in self.config.normalisations:
                factor_w = probes.residual_factor(w_from, pathway=pathway)
            if "weight_svd" in self.config.constructions:
                gram_w = probes.residual_gram(w_from, pathway=pathway)
            prepared.append(_Matrix(name, pathway, factor, factor_w, gram_w, purity, spectrum))
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

    def replicate_tasks(self, layer, prepared, stats, constructions, hints=None) -> dict:
        """:meth:`basis_tasks` of a bootstrap replicate on the CPU, by :attr:`replicate_solver`.

        ``full``: the same tasks. Otherwise each activation construction's task is a
        :class:`probes.PartialSpectrum` of the same matrix (each cutoff's k and only the
        eigenvectors its fractions read, every cutoff at once); `hints` ``{(site,
        construction): columns}`` (:func:`replicate_hints`) steer ``auto``'s choice of solver.
        """
        if self.replicate_solver not in REPLICATE_SOLVERS:
            raise ValueError(f"`replicate_solver` must be one of {REPLICATE_SOLVERS}, "
                             f"got {self.replicate_solver!r}")  # fmt: skip
        tasks = self.basis_tasks(layer, prepared, stats, constructions)
        if self.replicate_solver == "full":
            return tasks
        for site, construction in tasks:
            site_stats = stats[self.sources[construction]].sites[(layer, site)]
            tasks[(site, construction)] = partial(
                site_stats.partial_spectrum,
                self.config.cutoffs,
                centred=construction != "act_moment",
                method=self.replicate_solver,
                hint=(hints or {}).get((site, construction)),
            )
        return tasks

    def cutoff_ks(self, subspace) -> np.ndarray:
        """Each cutoff's k on a basis: a replicate's partial spectrum has them already."""
        if isinstance(subspace, probes.PartialSpectrum):
            return subspace.ks
        return np.array([
            probes.resolve_cutoff(c, d=self.d, spectrum=subspace.spectrum, n_samples=subspace.n_samples)
            for c in self.config.cutoffs
        ])  # fmt: skip

    def _subspace(self, bases, layer, matrix: str, construction: str):
        if construction in self.sources:
            return bases[(probes.SITE_OF[matrix], construction)]
        if construction in self.pair_bases:
            return self.pair_bases[construction]
        if construction == "weight_svd":
            return bases[(matrix, construction)]
        if self.random_k < 1:  # only spectrum cutoffs: nothing a random basis can define
            return None
        rng = probes.construction_rng(self.config.seed, self.key, layer, matrix)
        return probes.random_subspace(self.d, rng=rng, k=self.random_k)

    def fill(
        self,
        layer,
        prepared,
        stats,
        rsf,
        ks,
        *,
        constructions=None,
        bases=None,
        mechanical=None,
        top_share=None,
    ) -> None:
        """Fill ``rsf[matrix, construction, cutoff, normalisation]`` and ``ks`` for one layer.

        ``constructions`` limits the work to some constructions (their indices in
        the config are kept): a bootstrap replicate redoes only the activation ones.
        ``bases`` are the results of :meth:`basis_tasks` (or a replicate's
        :meth:`replicate_tasks`: partial spectra, their ks already resolved) when
        already computed.
        ``mechanical[matrix, construction, cutoff]``, when given, receives the
        mechanical reference of each read matrix on each activation construction
        (:func:`mechanical_reference`). ``top_share``, when given, receives
        ``{site: λ₁ / tr}`` of each site's covariance (from the ``act_cov`` basis:
        the share of the variance in its top direction).
        """
        d, normalisations = self.d, self.config.normalisations
        chosen = constructions or self.config.constructions
        if bases is None:
            bases = eigen_all(self.basis_tasks(layer, prepared, stats, chosen))
        base_relative = "base_relative" in normalisations
        for construction in chosen:
            ci = self.config.constructions.index(construction)
            # The matrices measured on one basis (a site's, the pair's): its columns are
            # selected once for all of them (and their W_from) in one call.
            groups: dict[int, tuple] = {}
            for mi, matrix in enumerate(prepared):
                subspace = self._subspace(bases, layer, matrix.name, construction)
                if subspace is not None:
                    groups.setdefault(id(subspace), (subspace, []))[1].append(mi)
            for subspace, members in groups.values():
                k = self.cutoff_ks(subspace)
                ks[members, ci] = k
                if top_share is not None and construction == "act_cov":
                    site = probes.SITE_OF[prepared[members[0]].name]
                    spectrum = np.clip(subspace.spectrum, 0.0, None)
                    top_share[site] = float(spectrum[0] / spectrum.sum())
                if k.max() < 1:
                    continue
                if mechanical is not None and construction in self.sources:
                    reference = mechanical_reference(subspace.spectrum, k, d)
                    for mi in members:
                        if prepared[mi].pathway == "read":
                            mechanical[mi, ci] = reference
                # W on its own singular basis (weight_svd) has a closed form.
                with_w = base_relative and construction != "weight_svd"
                factors = [prepared[mi].factor for mi in members]
                factors += [prepared[mi].factor_w for mi in members] if with_w else []
                # Zero deltas are noted once per pair by the engine (and replicates fill
                # side by side: no warnings filters here).
                fractions = probes.fractions_at_many(factors, subspace.basis, k, warn=False)
                for row, mi in enumerate(members):
                    base_fraction = None
                    if with_w:
                        base_fraction = fractions[len(members) + row]
                    elif base_relative:
                        share = np.cumsum(subspace.spectrum) / subspace.spectrum.sum()
                        base_fraction = np.where(k >= 1, share[np.clip(k, 1, None) - 1], np.nan)
                    for ni, name in enumerate(normalisations):
                        rsf[mi, ci, :, ni] = probes.normalise(
                            name,
                            fractions[row],
                            k,
                            d,
                            base_fraction=base_fraction,
                            purity=prepared[mi].purity,
                        )


def mechanical_reference(spectrum, k, d: int) -> np.ndarray:
    """``log2(S(k)/(k/d))``: the level the outer-product mechanism alone predicts, per cutoff's k.

    ``S(k) = Σ_{j≤k} λ_j / Σ_j λ_j`` is the top-k share of the spectrum the
    activation construction is built from (the covariance, or the second
    moment, of the activations a read matrix reads). An update
    ``ΔW = Σ_t δ_t a_tᵀ`` whose ``δ_t`` are isotropic and independent of
    ``a_t`` has ``E[ΔWᵀΔW] ∝ Σ_t a_t a_tᵀ``, so its fraction on that basis is
    this share, whatever the objective (``docs/design.md`` §1). NaN where k is
    undefined.
    """
    spectrum = np.clip(np.asarray(spectrum, dtype=np.float64), 0.0, None)
    share = np.cumsum(spectrum) / spectrum.sum()
    k = np.asarray(k)
    with np.errstate(divide="ignore"):
        value = np.log2(share[np.clip(k, 1, spectrum.size) - 1] / (k / d))
    return np.where(k >= 1, value, np.nan)


def replicate_hints(grid, prepared, full_ks, constructions) -> dict:
    """``{(site, construction): columns}``: how many eigenvectors the full sample's cutoffs read
    there (``lo + d − hi``, :func:`probes.spectra.needed_columns` of its ks ``[matrix,
    construction, cutoff]``), what a replicate's will be near: ``auto``'s choice of solver."""
    hints = {}
    for mi, matrix in enumerate(prepared):
        for construction in constructions:
            key = (probes.SITE_OF[matrix.name], construction)
            ci = grid.config.constructions.index(construction)
            if construction in grid.sources and key not in hints:
                lo, hi = needed_columns(full_ks[mi, ci], grid.d)
                hints[key] = lo + grid.d - hi
    return hints


def fill_replicates(
    grid, layer, prepared, stats, weights, out, constructions, *, full_ks=None, progress=False,
    label="bootstrap", buffers=None,
) -> None:  # fmt: skip
    """Fill ``out[b]`` for each row of ``weights``, in blocks of :func:`replicate_block` replicates.

    ``full_ks`` ``[matrix, construction, cutoff]``, the full sample's ks, give
    :func:`replicate_hints` (without them ``auto`` decides from each replicate alone).

    Everything runs on one :func:`worker_pool`: a block's reweighted statistics
    (one pass over the chunks per site), its eigendecompositions (sites ×
    replicates) and its fractions (one task per replicate), the next block's
    reweighting beside this block's fractions, so no worker idles while the
    last task of a stage finishes.

    `buffers`: a dict the caller keeps from layer to layer, where each site's block of
    reweighted sums is allocated once and rewritten block after block (a new one each time
    costs page faults; :meth:`probes.ChunkStatistics.sum_xx_many`). A block's sums are read
    only by its eigendecompositions, which finish before the next block is reweighted.
    """
    sites = sorted({(layer, probes.SITE_OF[m.name]) for m in prepared})
    size = replicate_block(len(sites) * len(stats), grid.d)
    hints = None if full_ks is None else replicate_hints(grid, prepared, full_ks, constructions)
    blocks = [weights[start : start + size] for start in range(0, len(weights), size)]

    buffers = {} if buffers is None else buffers

    def reweight(block):  # {(role, site): future of the block's statistics there}
        return {
            (role, key): pool.submit(
                # Only an eigendecomposition reads a replicate's sums: their upper triangle.
                role_stats.chunks[key].reweighted_many,
                block,
                upper_only=True,
                out=block_buffer(buffers, (role, key[1]), size, grid.d)[: len(block)],
            )
            for role, role_stats in stats.items()
            for key in sites
        }

    def fill(b, offset, bases):
        scratch = np.empty(out.shape[1:4], dtype=np.int64)  # ks of one replicate: not kept
        mine = {key: basis for (owner, key), basis in bases.items() if owner == b}
        grid.fill(layer, prepared, None, out[offset + b], scratch,
                  constructions=constructions, bases=mine)  # fmt: skip

    bar = tqdm(total=len(blocks), desc=label, disable=not progress or len(blocks) < 2, leave=False)
    with worker_pool() as pool, bar:
        pending, offset = reweight(blocks[0]), 0
        for index, block in enumerate(blocks):
            replicates = [
                {role: probes.ActivationStatistics(sites={}) for role in stats} for _ in block
            ]
            for (role, key), future in pending.items():
                for b, site in enumerate(future.result()):
                    replicates[b][role].sites[key] = site
            bases = _replicate_bases(grid, layer, prepared, replicates, constructions, pool, hints)
            del replicates
            pending = reweight(blocks[index + 1]) if index + 1 < len(blocks) else {}
            for future in [pool.submit(fill, b, offset, bases) for b in range(len(block))]:
                future.result()
            offset += len(block)
            del bases
            bar.update()


def block_buffer(buffers: dict, key, size: int, d: int) -> np.ndarray:
    """``buffers[key]``, a zeroed float64 ``[size, d, d]`` allocated on first use."""
    if key not in buffers or buffers[key].shape != (size, d, d):
        buffers[key] = np.zeros((size, d, d))
    return buffers[key]


def _replicate_bases(grid, layer, prepared, replicates, constructions, pool, hints) -> dict:
    """``{(b, key): Subspace or PartialSpectrum}``: a block's activation bases, on the pool
    (:meth:`Grid.replicate_tasks`) or batched on the device (complete bases)."""
    if grid.eigh_device is None:
        return eigen_all({
            (b, key): task
            for b, replicate in enumerate(replicates)
            for key, task in grid.replicate_tasks(layer, prepared, replicate, constructions,
                                                  hints).items()
        }, pool)  # fmt: skip
    tasks = {
        (b, key): task
        for b, replicate in enumerate(replicates)
        for key, task in grid.basis_tasks(layer, prepared, replicate, constructions).items()
    }
    # Every task is an activation construction's covariance: one batched call.
    keys = list(tasks)
    moments = []
    for b, (site, construction) in keys:
        statistics = replicates[b][grid.sources[construction]].sites[(layer, site)]
        moments.append((statistics.sum_x, statistics.sum_xx, statistics.n,
                        construction != "act_moment", construction,
                        statistics.upper_only))  # fmt: skip
    found = probes.covariance_subspaces(moments, device=grid.eigh_device)
    return dict(zip(keys, found, strict=True))
