"""The relative-subspace fraction of a weight delta, for every rank cutoff at once.

For a delta ``ΔW`` in Linear layout ``[n_out, n_in]`` the residual side is the
input side for the **read** pathway (q, k, v, up, gate) and the output side for
the **write** pathway (o, down). With the residual-side Gram matrix

    G = ΔWᵀ ΔW  (read)        G = ΔW ΔWᵀ  (write),        tr G = ‖ΔW‖_F²

and an ordered orthonormal basis ``U = [u_1 … u_r]`` of (part of) the residual
space, the energy profile and the fraction captured by the top-k directions are

    e_j = u_jᵀ G u_j / tr G,        F(k) = Σ_{j≤k} e_j = ‖P_k ΔW‖_F² / ‖ΔW‖_F².

``diag(Uᵀ G U)`` is the column (read) or row (write) energy of the single
product ``ΔW U`` (``Uᵀ ΔW``), so one matrix product gives every cutoff and a
cumulative sum turns it into F(k) for k = 1..r; nothing loops over k. Any
**residual factor** ``R`` with ``RᵀR = G`` gives the same energies as
``‖R u_j‖²``: G's Cholesky factor is triangular, so a delta measured on many
bases (every construction, every bootstrap replicate) costs half a general
product per basis (:func:`residual_factor`, :func:`fractions_at_many`).

What F does under a Haar-random subspace (its moments and the Haar reference
of its log ratio) is :mod:`probes.haar`; the normalised Gram spectrum it needs
is :func:`gram_spectrum`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import scipy.linalg.lapack
import torch
from scipy.linalg import blas

from .names import PATHWAYS

__all__ = [
    "PATHWAYS",
    "ResidualFactor",
    "as_float64",
    "energy_profile",
    "fraction_profile",
    "fractions_at",
    "fractions_at_many",
    "gram_purity",
    "gram_spectrum",
    "needed_columns",
    "residual_factor",
    "residual_gram",
]

Pathway = Literal["read", "write"]


def as_float64(x) -> np.ndarray:
    """A float64 NumPy copy of a tensor or array (no copy when already float64)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _pathway_iv(pathway) -> str:
    if pathway not in PATHWAYS:
        raise ValueError(f"`pathway` must be one of {PATHWAYS}, got {pathway!r}")
    return pathway


def _delta_basis_iv(delta, basis, pathway):
    pathway = _pathway_iv(pathway)
    delta = as_float64(delta)
    basis = as_float64(basis)
    if delta.ndim != 2:
        raise ValueError(f"`delta` must be a matrix [n_out, n_in], got shape {delta.shape}")
    if basis.ndim != 2:
        raise ValueError(f"`basis` must be a matrix [d, r] of column vectors, got {basis.shape}")
    d = delta.shape[1] if pathway == "read" else delta.shape[0]
    if basis.shape[0] != d:
        side = "n_in" if pathway == "read" else "n_out"
        raise ValueError(
            f"`basis` has {basis.shape[0]} rows but the residual side ({side}) of a "
            f"{pathway} delta of shape {delta.shape} has {d}"
        )
    if basis.shape[1] > d:
        raise ValueError(f"`basis` has {basis.shape[1]} columns, more than its dimension {d}")
    return delta, basis, pathway


def residual_gram(delta, *, pathway: Pathway) -> np.ndarray:
    """Residual-side Gram matrix ``G`` of a delta (float64, ``[d, d]``)."""
    pathway = _pathway_iv(pathway)
    delta = as_float64(delta)
    return delta.T @ delta if pathway == "read" else delta @ delta.T


def energy_profile(delta, basis, *, pathway: Pathway) -> np.ndarray:
    """``e_j = u_jᵀ G u_j / tr G`` for each column of `basis`, float64.

    Computed as the column (read) or row (write) energy of ``ΔW U``: the
    definition, one product. A delta measured on many bases is cheaper through
    its :func:`residual_factor` (what :func:`fractions_at` uses). An all-zero
    delta has no direction: the profile is NaN and a ``RuntimeWarning`` says so.
    """
    delta, basis, pathway = _delta_basis_iv(delta, basis, pathway)
    total = float(np.einsum("ij,ij->", delta, delta))
    if total == 0.0:
        warnings.warn(
            "all-zero delta: the subspace fraction is undefined (NaN)", RuntimeWarning, stacklevel=2
        )
        return np.full(basis.shape[1], np.nan)
    if pathway == "read":
        projected = delta @ basis
        return np.einsum("ij,ij->j", projected, projected) / total
    projected = basis.T @ delta
    return np.einsum("ij,ij->i", projected, projected) / total


def fraction_profile(delta, basis, *, pathway: Pathway) -> np.ndarray:
    """F(k) for k = 1..r from one basis ``[d, r]``: the cumulative energy profile.

    Parameters
    ----------
    delta : array or tensor, shape ``[n_out, n_in]``
        The weight delta in Linear layout (``y = W x``).
    basis : array or tensor, shape ``[d, r]``
        Orthonormal columns, ordered; ``d`` is the residual width.
    pathway : {"read", "write"}
        Read matrices' residual side is their input, write matrices' their output.

    Returns
    -------
    numpy.ndarray, float64, shape ``[r]``
        ``F[k-1] = ‖P_k ΔW‖_F² / ‖ΔW‖_F²``; with a complete basis ``F[-1] = 1``.
    """
    profile = np.cumsum(energy_profile(delta, basis, pathway=pathway))
    # Round-off can push the cumulative sum a hair past 1 for a complete basis.
    return np.minimum(profile, 1.0)


@dataclass(frozen=True)
class ResidualFactor:
    """``R [r, d]`` with ``RᵀR = G``, a delta's residual-side Gram: all its energies need.

    ``e_j = ‖R u_j‖² / ‖R‖_F²``. ``triangular`` when ``R`` is G's upper Cholesky
    factor (``r = d``, Fortran order): its product with a basis is one BLAS
    ``trmm``, half the flops of a general product.
    """

    matrix: np.ndarray
    triangular: bool

    @property
    def d(self) -> int:
        return self.matrix.shape[1]

    @cached_property
    def total(self) -> float:
        """``tr G = ‖R‖_F²``."""
        return float(np.einsum("ij,ij->", self.matrix, self.matrix))

    def energies(self, columns: np.ndarray) -> np.ndarray:
        """``‖R u_j‖²`` for the columns ``[d, c]`` of a basis (unnormalised)."""
        if self.triangular:
            product = blas.dtrmm(1.0, self.matrix, np.asfortranarray(columns), lower=0)
        else:
            product = self.matrix @ columns
        return np.einsum("ij,ij->j", product, product)


def residual_factor(delta=None, *, pathway: Pathway, gram=None) -> ResidualFactor:
    """The cheapest :class:`ResidualFactor` of a delta (or of its residual-side `gram`).

    A delta whose other side ``n`` is at most ``d/2`` is its own factor (``ΔW``
    read, ``ΔWᵀ`` write: ``2nd`` flops per basis column, no more than a
    triangle's ``d²``). Otherwise ``R`` is the Cholesky factor of ``G``. A
    singular ``G`` (a low-rank delta, such as a LoRA adapter's) has none: its
    factor is the delta itself when that is at hand and no taller than wide,
    else the ``rank × d`` rows of LAPACK's pivoted Cholesky (``dpstrf``,
    ``O(d² rank)``, its default tolerance), which numpy does not offer. A zero
    delta's factor has no rows.
    """
    pathway = _pathway_iv(pathway)
    if delta is None and gram is None:
        raise ValueError("give `delta` or `gram`")
    oriented = None
    if delta is not None:
        delta = as_float64(delta)
        oriented = delta if pathway == "read" else delta.T
        if 2 * oriented.shape[0] <= oriented.shape[1]:
            return ResidualFactor(np.ascontiguousarray(oriented), triangular=False)
    gram = residual_gram(delta, pathway=pathway) if gram is None else as_float64(gram)
    d = gram.shape[0]
    if not np.any(gram):
        return ResidualFactor(np.zeros((0, d)), triangular=False)
    try:
        lower = np.linalg.cholesky(gram)
        return ResidualFactor(lower.T, triangular=True)  # C-order L: Lᵀ is Fortran order
    except np.linalg.LinAlgError:
        pass
    if oriented is not None and oriented.shape[0] <= oriented.shape[1]:
        return ResidualFactor(np.ascontiguousarray(oriented), triangular=False)
    upper, pivots, rank, _ = scipy.linalg.lapack.dpstrf(gram, lower=0)
    rows = np.zeros((rank, d))  # PᵀGP = UᵀU, so G = RᵀR with R = U Pᵀ
    rows[:, pivots - 1] = np.triu(upper[:rank])
    return ResidualFactor(rows, triangular=False)


def needed_columns(ks, d: int) -> tuple[int, int]:
    """``(lo, hi)``: the columns ``[0, lo)`` and ``[hi, d)`` of a complete basis give F at every k.

    With a complete basis the energies sum to one, so ``F(k) = 1 − Σ_{j>k} e_j``:
    the widest run of columns no defined cutoff falls inside is skipped. No
    defined k: ``(0, d)``, no columns.
    """
    ks = np.asarray(ks, dtype=np.int64)
    defined = ks[ks >= 1]
    if defined.size == 0:
        return 0, d
    points = np.unique(np.concatenate([[0], defined, [d]]))
    gap = int(np.argmax(np.diff(points)))
    return int(points[gap]), int(points[gap + 1])


def _columns_needed(ks: np.ndarray, r: int, d: int) -> tuple[int, int]:
    """``(lo, hi)`` of a basis of `r` columns: :func:`needed_columns` of a complete one; a
    partial frame has no tail to read from: its columns up to the largest k."""
    return needed_columns(ks, d) if r == d else (int(ks.max()), r)


def fractions_at_many(factors, basis, ks, *, warn: bool = True) -> np.ndarray:
    """``[len(factors), len(ks)]``: F(k) of several deltas on one basis, at the cutoffs only.

    The basis columns are selected once for all the deltas (see
    :func:`fractions_at`). ``k < 1`` (undefined) gives NaN; a zero delta gives
    NaN at every k, with a ``RuntimeWarning`` unless ``warn=False`` (for callers
    that say so themselves; the warnings filters are not thread-safe).
    """
    basis = as_float64(basis)
    ks = np.asarray(ks, dtype=np.int64)
    out = np.full((len(factors), len(ks)), np.nan)
    defined = ks >= 1
    if not defined.any() or not factors:
        return out
    d, r = basis.shape
    if ks[defined].max() > r:
        raise ValueError(f"a cutoff of {ks[defined].max()} exceeds the basis' {r} columns")
    for factor in factors:
        if factor.d != d:
            raise ValueError(f"`basis` has {d} rows but a delta's residual side has {factor.d}")
    lo, hi = _columns_needed(ks[defined], r, d)
    # One Fortran-order copy of the needed columns, shared by every delta (trmm reads it so).
    columns = np.empty((d, lo + r - hi), order="F")
    columns[:, :lo] = basis[:, :lo]
    columns[:, lo:] = basis[:, hi:]
    for row, factor in enumerate(factors):
        total = factor.total
        if total == 0.0:
            if not warn:
                continue
            warnings.warn(
                "all-zero delta: the subspace fraction is undefined (NaN)",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        energy = factor.energies(columns) / total
        head = np.cumsum(energy[:lo])
        # Σ_{j>k} e_j for k ≥ hi: the sum of the tail's energies from k − hi on.
        beyond = np.r_[np.cumsum(energy[lo:][::-1])[::-1], 0.0]
        for i in np.flatnonzero(defined):
            k = int(ks[i])
            out[row, i] = head[k - 1] if k <= lo else 1.0 - beyond[k - hi]
    return np.clip(out, 0.0, 1.0)


def fractions_at(delta, basis, ks, *, pathway: Pathway, gram=None) -> np.ndarray:
    """F(k) at the given cutoffs only, computing no more basis columns than needed.

    With a complete basis the energies sum to one, so ``F(k) = 1 − Σ_{j>k} e_j``:
    the largest run of columns that no cutoff falls inside is skipped, and the
    cutoffs beyond it are read from the tail. ``k < 1`` (undefined) gives NaN.
    Equal to ``fraction_profile(...)[k − 1]`` up to round-off. With `gram` (the
    residual-side Gram, cheaper to keep for a wide matrix) `delta` may be None.
    """
    if delta is not None:
        _delta_basis_iv(delta, basis, pathway)
    factor = residual_factor(delta, pathway=pathway, gram=gram)
    return fractions_at_many([factor], basis, ks)[0]


def gram_spectrum(delta=None, *, gram=None) -> np.ndarray:
    """``g = eig(G)/tr G``, descending: the squared singular values of the delta, normalised.

    The same on both sides (``ΔWᵀΔW`` and ``ΔWΔWᵀ`` share their non-zero
    eigenvalues), so no pathway is needed; pass `gram` (either side's) when it
    is already at hand. An all-zero delta gives NaN.
    """
    if (delta is None) == (gram is None):
        raise ValueError("give exactly one of `delta` and `gram`")
    if gram is not None:
        from scipy.linalg import eigvalsh

        s = np.clip(eigvalsh(as_float64(gram), check_finite=False)[::-1], 0.0, None)
    else:
        s = np.linalg.svd(as_float64(delta), compute_uv=False) ** 2
    total = s.sum()
    return s / total if total > 0 else np.full_like(s, np.nan)


def gram_purity(delta=None, *, gram=None) -> float:
    """``Σ g_i²`` for the normalised Gram spectrum, without an eigendecomposition.

    ``Σ eig(G)² = ‖G‖_F²``, and the smaller of ``ΔWᵀΔW`` and ``ΔWΔWᵀ`` has the
    same non-zero spectrum, so this costs one small Gram matrix; pass `gram`
    (either side's) when it is already at hand.
    """
    if (delta is None) == (gram is None):
        raise ValueError("give exactly one of `delta` and `gram`")
    if gram is not None:
        small = as_float64(gram)
    else:
        delta = as_float64(delta)
        small = delta @ delta.T if delta.shape[0] <= delta.shape[1] else delta.T @ delta
    trace = float(np.trace(small))
    return float(np.sum(small * small)) / trace**2 if trace > 0 else math.nan
