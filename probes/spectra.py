"""Partial eigendecompositions: the spectrum and the eigenvectors a replicate's cutoffs read.

A bootstrap replicate of an activation construction (``docs/design.md`` §1, §2)
needs, of its ``d × d`` moment ``C``, only

- the k each cutoff chooses: nothing for ``k=N`` and ``frac=x``, ``tr C`` and
  ``‖C‖_F²`` for ``pr`` (``Σλ = tr C``, ``Σλ² = ‖C‖_F²``), the whole spectrum
  for ``var`` (its cumulative sum) and ``mp`` (its median, then a count);
- the basis columns :func:`probes.fractions_at_many` reads at those k: the top
  ``lo`` and the bottom ``d − hi`` eigenvectors, ``[lo, hi)`` being the widest
  run no cutoff falls inside (``F(k) = 1 − Σ_{j>k} e_j`` beyond it).

Every direct method starts from the reduction ``T = QᵀCQ`` to tridiagonal form
(LAPACK ``dsytrd``, ``4/3 d³`` flops, half of them matrix–vector products: the
floor). From ``T`` the whole spectrum costs ``dsterf`` (``O(d²)``), a few
eigenvectors ``dstemr`` (MRRR; ``O(d)`` each), many of them divide and conquer
(``dstevd``: every eigenpair of T, the spectrum with them), and bringing them back to C's
coordinates applies ``Q`` to those columns only (``dormtr``, ``2d²m`` flops),
where a full solver applies it to all ``d`` after divide and conquer on T
(``numpy.linalg.eigh``: ``dsyevd``, 3.5 times the reduction at d = 576 and
768, 3 at 2048, 1.8 at 4096, where the reduction's matrix–vector half no
longer runs from cache). Hence :func:`partial_eigh`'s ``tridiagonal`` solver:
one reduction for the values and the vectors. The other solvers are ``full``
(``numpy.linalg.eigh``, the sweep's own, and the fallback when the columns are
a large share of ``d``: :data:`CROSSOVER`), ``subset`` (``scipy.linalg.eigh``
with ``subset_by_index``, ``driver="evr"``: the top columns and their values
only; it ties with ``tridiagonal`` at a few columns and loses at hundreds) and
``lobpcg`` (warm-started from a given basis, such as the full-sample
eigenvectors; top columns only, and no certificate of its accuracy; it won
only at 8 columns from d = 768 up, when no cutoff needs the spectrum). The
policy chooses between ``tridiagonal`` and ``full`` only. The measurements:
``python -m benchmarks.spectra``. The tridiagonal solver's LAPACK calls release
the GIL (:mod:`probes.lapack`), so the sweep's two threads run two of them at once.

**Exactness.** Any two backward-stable solvers agree on a top-k subspace to
about ``ε‖C‖/(λ_k − λ_{k+1})`` and on ``F(k)`` to that times ``‖G‖/tr G``, so
the fractions here equal the full solver's to 1e-10 whenever the gap at each
cutoff exceeds about ``1e-5‖C‖`` (the full solver's own answer is no more
determined below that). With ``λ_k = λ_{k+1}`` exactly, the top-k subspace is
not unique and neither solver's F(k) is a function of C: each lies between the
extreme energies of ``G`` on the degenerate eigenspace.

Conventions: each matrix is symmetric and only its **upper triangle** is read
(the bootstrap's reweighted sums keep only that one); eigenvalues descending
and clipped at 0, as :func:`probes.covariance_subspace` gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from . import lapack
from .cutoffs import UNDEFINED, parse_cutoff, resolve_cutoff
from .fraction import as_float64, fractions_at_many, needed_columns

__all__ = [
    "SOLVERS",
    "ALL_VECTORS_SHARE",
    "CROSSOVER",
    "PartialSpectrum",
    "Reduction",
    "choose_solver",
    "lobpcg_top",
    "needed_columns",
    "needs_spectrum",
    "partial_eigh",
    "partial_eighs",
    "reduce_tridiagonal",
    "resolve_ks",
    "tridiagonal_share",
    "upper_moments",
]

SOLVERS = ("auto", "full", "tridiagonal", "subset", "lobpcg")

# (d, the share m/d of basis columns, m = lo + d − hi, at which the tridiagonal solver
# (spectrum and m eigenvectors from one reduction) breaks even with numpy.linalg.eigh),
# measured by `python -m benchmarks.spectra --crossover`: one thread, CPU seconds (the sweep's
# pool runs two one-thread solves side by side), a replicate's covariance with two massive
# directions over a 1/j spectrum, on an otherwise idle two-core machine. Ratios tridiagonal /
# eigh at m/d = 0.1, 0.2, 0.4, 0.6, 0.8, 1.0: d = 128: 1.7 throughout (the calls' overheads);
# 256: 0.79, 1.02, 0.74, 0.77, 0.84, 0.89; 576: 0.70, 0.71, 0.83, 0.86, 0.90, 1.00;
# 768: 0.65, 0.66, 0.71, 0.80, 0.87, 0.93; 2048: 0.46, 0.53, 0.62, 0.86, 1.32, 1.67 (there
# applying Q to most columns costs more than dsyevd's own back-transformation); 4096 (with
# MRRR for every column, before divide and conquer was used): 0.55, 0.66, 0.81, 0.88, –, 0.95.
# Repeated runs moved single ratios by ±5%; near the break-even point the two solvers cost the
# same, so the choice there costs nothing either way. Linear in d between the measured widths,
# constant beyond.
CROSSOVER = ((128, 0.0), (256, 1.0), (576, 0.9), (768, 1.0), (2048, 0.65), (4096, 1.0))
# T's eigenvectors: for a few, dstemr on an index range (bisection for their eigenvalues,
# O(d) per eigenvalue and step, after dsterf for the spectrum: 8 ms at d = 768, 50 at 2048);
# beyond this share of d, divide and conquer (dstevd, as dsyevd runs it) for the spectrum and
# every vector of T at once is the cheaper (measured: dstemr 0.22 ms a vector at d = 768
# against 27 ms for dstevd, 0.65 against 291 at 2048: 0.11–0.16 of d and 0.18–0.22).
ALL_VECTORS_SHARE = 0.15


def needs_spectrum(cutoffs) -> bool:
    """Whether any cutoff needs the whole spectrum (``var``: its cumulative sum; ``mp``: its median)."""
    return any(parse_cutoff(c).rule in ("var", "mp") for c in cutoffs)


def resolve_ks(cutoffs, d: int, *, values=None, moments=None, n_samples=None) -> np.ndarray:
    """The k of each cutoff, as :func:`probes.resolve_cutoff` resolves it on the full spectrum.

    `values` (descending) when known: exactly ``resolve_cutoff``. Without them
    ``pr`` is read from ``moments = (tr C, ‖C‖_F²)``, equal up to round-off
    (``(Σλ)²/Σλ²`` with ``Σλ² = ‖C‖_F²``), and ``var``/``mp`` are an error.
    """
    ks = []
    for cutoff in map(parse_cutoff, cutoffs):
        if values is not None or cutoff.rule in ("k", "frac"):
            ks.append(resolve_cutoff(cutoff, d=d, spectrum=values, n_samples=n_samples))
        elif cutoff.rule == "pr" and moments is not None:
            trace, square = moments
            defined = np.isfinite(trace) and trace > 0 and square > 0
            ks.append(min(d, max(1, round(trace**2 / square))) if defined else UNDEFINED)
        else:
            raise ValueError(f"cutoff `{cutoff.label}` needs the spectrum")
    return np.asarray(ks, dtype=np.int64)


@dataclass(frozen=True)
class PartialSpectrum:
    """What a replicate's cutoffs read of one matrix's eigendecomposition.

    Attributes
    ----------
    ks : ndarray ``[n_cutoffs]``
        Each cutoff's k (``-1`` undefined), as on the full spectrum.
    head : ndarray ``[d, lo]``
        The top ``lo`` eigenvectors, descending.
    tail : ndarray ``[d, d − hi]``
        The bottom ones: columns ``hi .. d−1`` of the descending basis.
    values : ndarray ``[d]`` or None
        The whole spectrum, descending, clipped at 0, when computed.
    method : str
        The solver that ran.
    """

    ks: np.ndarray
    head: np.ndarray
    tail: np.ndarray
    values: np.ndarray | None
    method: str

    @property
    def d(self) -> int:
        return self.head.shape[0]

    @property
    def lo(self) -> int:
        return self.head.shape[1]

    @property
    def hi(self) -> int:
        return self.d - self.tail.shape[1]

    @property
    def basis(self) -> np.ndarray:
        """A ``[d, d]`` descending basis with the known columns, the others NaN, as a
        :class:`probes.Subspace`'s (which :func:`probes.fractions_at_many` reads only there)."""
        out = np.full((self.d, self.d), np.nan)
        out[:, : self.lo] = self.head
        out[:, self.hi :] = self.tail
        return out

    def fractions(self, factors, *, warn: bool = False) -> np.ndarray:
        """:func:`probes.fractions_at_many` of `factors` at :attr:`ks`, on these columns."""
        return fractions_at_many(factors, self.basis, self.ks, warn=warn)


@dataclass(frozen=True)
class Reduction:
    """``C = Q T Qᵀ``, T tridiagonal (``diagonal``, ``off``), Q as ``dsytrd``'s reflectors."""

    diagonal: np.ndarray
    off: np.ndarray
    reflectors: np.ndarray  # [d, d] Fortran order, below the subdiagonal (lower storage)
    tau: np.ndarray

    @property
    def d(self) -> int:
        return self.diagonal.size

    @property
    def moments(self) -> tuple[float, float]:
        """``(tr C, ‖C‖_F²)`` from T (an orthogonal similarity keeps both)."""
        return float(self.diagonal.sum()), float(
            self.diagonal @ self.diagonal + 2 * self.off @ self.off
        )

    def values(self) -> np.ndarray:
        """Every eigenvalue, descending, clipped at 0 (``dsterf``: no vectors)."""
        return np.clip(lapack.dsterf(self.diagonal, self.off)[::-1], 0.0, None)

    def tridiagonal_vectors(self, ranges) -> list[np.ndarray]:
        """Eigenvectors of T for each ascending index range ``(first, last)`` (inclusive)."""
        wanted = sum(last - first + 1 for first, last in ranges)
        if wanted > ALL_VECTORS_SHARE * self.d:
            _, vectors = self.divide_and_conquer()
            return [vectors[:, first : last + 1] for first, last in ranges]
        return [lapack.dstemr(self.diagonal, self.off, first, last) for first, last in ranges]

    def divide_and_conquer(self) -> tuple[np.ndarray, np.ndarray]:
        """``(values, vectors)`` of T, ascending: every eigenpair (``dstevd``, as ``dsyevd`` does)."""
        if self.d == 1:
            return self.diagonal.copy(), np.ones((1, 1))
        return lapack.dstevd(self.diagonal, self.off)

    def eigenpairs(self, *, many: bool, spectrum: bool):
        """``(values, vectors)``: T's spectrum (descending, clipped at 0) when `spectrum`, and
        with `many` (many columns expected) every eigenvector of T (ascending) by divide and
        conquer, which gives the spectrum too (no ``dsterf`` first); else None for either."""
        if many:
            ascending, vectors = self.divide_and_conquer()
            return np.clip(ascending[::-1], 0.0, None), vectors
        return (self.values() if spectrum else None), None

    def partial(self, cutoffs, values, vectors, n_samples) -> PartialSpectrum:
        """Each cutoff's k and the columns its fractions read, from :meth:`eigenpairs`."""
        ks = resolve_ks(cutoffs, self.d, values=values, moments=self.moments, n_samples=n_samples)
        lo, hi = needed_columns(ks, self.d)
        head, tail = self.columns(lo, hi) if vectors is None else self.columns_of(vectors, lo, hi)
        return PartialSpectrum(ks, head, tail, values, "tridiagonal")

    def columns_of(self, vectors: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``(head, tail)`` as :meth:`columns`, from every eigenvector of T (ascending)."""
        d = self.d
        found = np.hstack([vectors[:, d - lo :][:, ::-1], vectors[:, : d - hi][:, ::-1]])
        columns = self.back(found) if found.shape[1] else np.zeros((d, 0))
        return np.ascontiguousarray(columns[:, :lo]), np.ascontiguousarray(columns[:, lo:])

    def columns(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``(head, tail)``: C's top `lo` eigenvectors and its bottom ``d − hi``, descending."""
        d = self.d
        # Ascending indices: the top lo are [d − lo, d − 1], the bottom d − hi are [0, d − hi − 1].
        ranges = [(d - lo, d - 1)] if lo else []
        ranges += [(0, d - hi - 1)] if hi < d else []
        found = [vectors[:, ::-1] for vectors in self.tridiagonal_vectors(ranges)]
        # Q applied once to the head and the tail together (one pass over the reflectors).
        columns = self.back(np.hstack(found)) if found else np.zeros((d, 0))
        return np.ascontiguousarray(columns[:, :lo]), np.ascontiguousarray(columns[:, lo:])

    def back(self, vectors: np.ndarray) -> np.ndarray:
        """``Q z`` for the columns `vectors` of T's eigenvectors: C's eigenvectors."""
        if vectors.shape[1] == 0 or self.d == 1:
            return np.array(vectors, dtype=np.float64, order="F")
        return lapack.dormtr(self.reflectors, self.tau, vectors)


def reduce_tridiagonal(matrix: np.ndarray) -> Reduction:
    """``dsytrd`` of the upper triangle of `matrix` (blocked; the matrix is not modified)."""
    # The transpose of a C-order array is Fortran order: its lower triangle is our upper one.
    reflectors, diagonal, off, tau = lapack.dsytrd(matrix.T)
    return Reduction(diagonal, off, reflectors, tau)


def upper_moments(matrix: np.ndarray) -> tuple[float, float]:
    """``(tr C, ‖C‖_F²)`` from the upper triangle of `matrix` (``O(d²)``, no decomposition)."""
    upper = np.triu(matrix, 1)
    diagonal = np.diag(matrix)
    return float(diagonal.sum()), float(
        diagonal @ diagonal + 2 * np.einsum("ij,ij->", upper, upper)
    )


def tridiagonal_share(d: int) -> float:
    """The share of d columns up to which ``tridiagonal`` beats ``full`` (:data:`CROSSOVER`)."""
    widths, shares = zip(*CROSSOVER, strict=True)
    return float(np.interp(d, widths, shares))


def choose_solver(d: int, columns: int | None, *, spectrum: bool) -> str:
    """The solver :func:`partial_eigh` uses for `columns` eigenvectors of a ``d × d`` matrix.

    ``tridiagonal`` up to :func:`tridiagonal_share` of d, ``full`` beyond.
    `columns` None (not known before the spectrum is): ``tridiagonal`` wherever
    it wins at all (its worst case measured 1.3 times ``full``'s, at d = 576
    with every column needed; its best 2–3 times under, with few). The
    crossover is measured with the spectrum; without it ``tridiagonal`` also
    saves ``dsterf`` (4 ms at d = 576, 6 at 768, 43 at 2048: a little more
    room, which `spectrum` is there to take when measured; not yet used).
    """
    del spectrum
    share = tridiagonal_share(d)
    if columns is None:
        return "tridiagonal" if share > 0 else "full"
    return "tridiagonal" if columns <= share * d else "full"


def _full(matrix: np.ndarray, cutoffs, n_samples) -> PartialSpectrum:
    # As probes.covariance_subspace(upper_only=True) calls it: the same numbers, bit for bit.
    values, vectors = np.linalg.eigh(matrix.T)
    values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]
    ks = resolve_ks(cutoffs, matrix.shape[0], values=values, n_samples=n_samples)
    lo, hi = needed_columns(ks, matrix.shape[0])
    head, tail = np.ascontiguousarray(vectors[:, :lo]), np.ascontiguousarray(vectors[:, hi:])
    return PartialSpectrum(ks, head, tail, values, "full")


def _tridiagonal(matrix: np.ndarray, cutoffs, n_samples, spectrum: bool, hint) -> PartialSpectrum:
    reduction = reduce_tridiagonal(matrix)
    many = hint is not None and hint > ALL_VECTORS_SHARE * reduction.d
    values, vectors = reduction.eigenpairs(many=many, spectrum=spectrum)
    return reduction.partial(cutoffs, values, vectors, n_samples)


def _subset(matrix: np.ndarray, cutoffs, n_samples) -> PartialSpectrum:
    d = matrix.shape[0]
    ks = resolve_ks(cutoffs, d, moments=upper_moments(matrix), n_samples=n_samples)
    lo, hi = needed_columns(ks, d)
    if hi < d:
        raise ValueError("the subset solver gives top columns only; a cutoff needs the bottom ones")
    head = np.zeros((d, 0))
    if lo:
        _, vectors = scipy.linalg.eigh(
            matrix, lower=False, subset_by_index=[d - lo, d - 1], driver="evr", check_finite=False
        )
        head = np.ascontiguousarray(vectors[:, ::-1])
    return PartialSpectrum(ks, head, np.zeros((d, 0)), None, "subset")


def lobpcg_top(matrix: np.ndarray, start, m: int, *, tol=1e-13, maxiter=500):
    """``(values, vectors)``: the top `m` eigenpairs by LOBPCG from the columns of `start`.

    `start` ``[d, r]`` (the full-sample eigenvectors, say) seeds the block; when
    ``r < m`` seeded Gaussian columns fill it up. `tol` is relative to ``tr C``.
    Iterative: accurate to its tolerance, with no certificate on the subspace
    (its error is the residual over the gap at the cutoff, unknown here), hence
    never chosen by :func:`choose_solver`.
    """
    from scipy.sparse.linalg import lobpcg

    symmetric = np.triu(matrix) + np.triu(matrix, 1).T
    block = as_float64(start)[:, :m]
    if block.shape[1] < m:
        fill = np.random.default_rng(0).standard_normal((len(block), m - block.shape[1]))
        block = np.hstack([block, fill])
    scale = max(float(np.trace(symmetric)), np.finfo(float).tiny)
    values, vectors = lobpcg(symmetric, block, largest=True, tol=tol * scale, maxiter=maxiter)
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def _lobpcg(matrix: np.ndarray, cutoffs, n_samples, start) -> PartialSpectrum:
    d = matrix.shape[0]
    if start is None:
        raise ValueError("the lobpcg solver needs a `start` basis")
    ks = resolve_ks(cutoffs, d, moments=upper_moments(matrix), n_samples=n_samples)
    lo, hi = needed_columns(ks, d)
    if hi < d:
        raise ValueError("the lobpcg solver gives top columns only; a cutoff needs the bottom ones")
    head = lobpcg_top(matrix, start, lo)[1] if lo else np.zeros((d, 0))
    return PartialSpectrum(ks, head, np.zeros((d, 0)), None, "lobpcg")


def partial_eigh(
    matrix, cutoffs, *, n_samples: int | None = None, method: str = "auto",
    hint: int | None = None, start=None,
) -> PartialSpectrum:  # fmt: skip
    """The k of each cutoff and the eigenvectors its fractions read, of one symmetric matrix.

    Parameters
    ----------
    matrix : array or tensor ``[d, d]``
        Symmetric positive semi-definite; only its upper triangle is read.
    cutoffs : labels or :class:`probes.Cutoff`
        The sweep's cutoffs; ``n_samples`` is what ``mp`` needs.
    method : {"auto", "full", "tridiagonal", "subset", "lobpcg"}
        ``auto``: :func:`choose_solver` on the number of columns, known before
        any decomposition when no cutoff needs the spectrum (``pr`` from
        ``tr C`` and ``‖C‖_F²``), else taken from `hint` (the full sample's
        ``lo + d − hi``, say) and, without one, ``tridiagonal``, which stays
        exact whatever the replicate's columns turn out to be.
    start : array ``[d, ≥ lo]``, optional
        The warm start of ``lobpcg``.

    Every method gives the same ``ks`` (up to round-off at a tie) and the same
    fractions to within the conditioning of the top-k subspaces (see the
    module's docstring); ``full`` gives exactly :func:`probes.covariance_subspace`'s
    numbers.
    """
    if method not in SOLVERS:
        raise ValueError(f"`method` must be one of {SOLVERS}, got {method!r}")
    matrix = as_float64(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"`matrix` must be square [d, d], got shape {matrix.shape}")
    d = matrix.shape[0]
    spectrum = needs_spectrum(cutoffs)
    if method == "auto":
        columns = hint
        if columns is None and not spectrum:
            lo, hi = needed_columns(resolve_ks(cutoffs, d, moments=upper_moments(matrix)), d)
            columns = lo + d - hi
        method = choose_solver(d, columns, spectrum=spectrum)
    if method == "full":
        return _full(matrix, cutoffs, n_samples)
    if method == "tridiagonal":
        return _tridiagonal(matrix, cutoffs, n_samples, spectrum, hint)
    if spectrum:
        raise ValueError(f"the {method} solver gives no spectrum, which a cutoff needs")
    if method == "subset":
        return _subset(matrix, cutoffs, n_samples)
    return _lobpcg(matrix, cutoffs, n_samples, start)


def partial_eighs(
    matrices, cutoffs, *, n_samples=None, method: str = "auto", hints=None, starts=None,
    pool=None, device=None,
) -> list[PartialSpectrum]:  # fmt: skip
    """:func:`partial_eigh` of each matrix of a batch ``[B, d, d]`` (arrays, tensors, a list).

    `n_samples` and `hints`: one for all, or a sequence with one per matrix;
    `starts`: one array for all, or a list. On `pool` (an executor, such as
    the sweep's two-thread pool) the matrices are decomposed side by side; the
    results do not depend on the scheduling. With a torch `device` the batch
    is decomposed there by one batched float64 ``torch.linalg.eigh``
    (``full``: no partial solver runs on a GPU), as
    :func:`probes.covariance_subspaces` does.
    """
    count = len(matrices)
    n_samples, hints = (list(x) if np.ndim(x) == 1 else [x] * count for x in (n_samples, hints))
    starts = list(starts) if isinstance(starts, (list, tuple)) else [starts] * count
    if device is not None:
        return _device_full(matrices, cutoffs, n_samples, device)

    def one(i):
        return partial_eigh(matrices[i], cutoffs, n_samples=n_samples[i], method=method,
                            hint=hints[i], start=starts[i])  # fmt: skip

    if pool is None:
        return [one(i) for i in range(count)]
    return list(pool.map(one, range(count)))


def _device_full(batch, cutoffs, n_samples, device) -> list[PartialSpectrum]:
    """``full`` for a batch on `device`: one batched float64 eigh of the upper triangles."""
    if not isinstance(batch, torch.Tensor):
        batch = torch.from_numpy(np.stack([as_float64(matrix) for matrix in batch]))
    batch = batch.to(device=device, dtype=torch.float64)
    # torch reads the lower triangle: the transpose's is our upper one (as covariance_subspaces).
    values, vectors = torch.linalg.eigh(batch.transpose(-2, -1))
    values = values.flip(-1).clamp(min=0.0).cpu().numpy()
    vectors = vectors.flip(-1).cpu().numpy()
    out = []
    for i in range(len(values)):
        d = values.shape[1]
        ks = resolve_ks(cutoffs, d, values=values[i], n_samples=n_samples[i])
        lo, hi = needed_columns(ks, d)
        out.append(PartialSpectrum(ks, np.ascontiguousarray(vectors[i, :, :lo]),
                                   np.ascontiguousarray(vectors[i, :, hi:]), values[i].copy(),
                                   "full"))  # fmt: skip
    return out
