"""Subspace constructions: an ordered orthonormal basis of the residual space.

Names are a contract (``docs/design.md`` §1):

======================  =======================================================
``act_cov``             eigenvectors of the centred activation covariance on the
                        matrix's residual side, base model, descending
``act_moment``          same, uncentred second moment (keeps the mean direction)
``act_cov_aligned``     ``act_cov`` from the aligned (``to``) model
``unembed``             right singular vectors of ``W_U [V, d]`` as stored
``unembed_centered``    same after subtracting the mean row (softmax-invariant)
``unembed_folded``      ``W_U · diag(γ)``, γ the final norm's effective gain
``weight_svd``          residual-side singular vectors of ``W_from`` itself
``random``              Haar-random, seeded per (pair, layer, matrix): the null
======================  =======================================================

Every basis is complete (``d`` columns, float64) so that every cutoff reads off
the same profile; directions beyond a matrix's rank carry zero spectrum.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .fraction import PATHWAYS, as_float64
from .names import ACTIVATION_CONSTRUCTIONS, CONSTRUCTIONS

UNEMBEDDING_BLOCK = 8192  # rows of W_U upcast to float64 at a time

__all__ = [
    "ACTIVATION_CONSTRUCTIONS",
    "CONSTRUCTIONS",
    "Subspace",
    "construction_rng",
    "covariance_moment",
    "covariance_subspace",
    "covariance_subspaces",
    "gram_subspace",
    "random_subspace",
    "unembedding_subspace",
    "unembedding_subspaces",
    "weight_subspace",
]


@dataclass(frozen=True)
class Subspace:
    """An ordered orthonormal basis (columns) and, where one exists, its spectrum.

    Attributes
    ----------
    basis : ndarray ``[d, d]``, float64
    spectrum : ndarray ``[d]`` descending, or None (``random``)
    n_samples : int or None
        Tokens behind an activation construction (for the ``mp`` cutoff).
    """

    construction: str
    basis: np.ndarray
    spectrum: np.ndarray | None = None
    n_samples: int | None = None

    @property
    def d(self) -> int:
        return self.basis.shape[0]


def _descending_eigh(
    matrix: np.ndarray, *, upper_only: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    if upper_only:
        # Exactly symmetric, upper triangle given: LAPACK reads the lower triangle of the
        # transpose, the same numbers the symmetrised full matrix would give it.
        values, vectors = np.linalg.eigh(matrix.T)
    else:
        # Symmetrise float64 accumulation round-off. In place where it can be: at d = 4096
        # each d × d temporary is 134 MB, and two eigendecompositions run side by side.
        symmetric = matrix + matrix.T
        symmetric *= 0.5
        values, vectors = np.linalg.eigh(symmetric)
        del symmetric
    return np.clip(values[::-1], 0.0, None), np.ascontiguousarray(vectors[:, ::-1])


def covariance_moment(sum_x, sum_xx, n: int, centred: bool) -> np.ndarray:
    """``Σxxᵀ/n − μμᵀ`` (``centred``) or ``Σxxᵀ/n``, a new float64 array: the matrix
    :func:`covariance_subspace` decomposes (as given: symmetrised, or its upper triangle read)."""
    if n < 1:
        raise ValueError(f"`n` must be positive, got {n}: no activations were collected")
    moment = as_float64(sum_xx) / n
    if centred:
        mean = as_float64(sum_x) / n
        moment -= np.outer(mean, mean)
    return moment


def covariance_subspace(
    sum_x, sum_xx, n: int, *, centred: bool = True, construction: str | None = None,
    upper_only: bool = False,
) -> Subspace:  # fmt: skip
    """Eigenbasis of activation statistics ``(Σx, Σxxᵀ, n)`` (float64).

    ``centred=True`` gives the covariance ``Σxxᵀ/n − μμᵀ`` (``act_cov``);
    ``False`` the second moment ``Σxxᵀ/n`` (``act_moment``). ``upper_only``:
    ``Σxxᵀ`` is exactly symmetric and only its upper triangle is read.
    """
    moment = covariance_moment(sum_x, sum_xx, n, centred)
    values, vectors = _descending_eigh(moment, upper_only=upper_only)
    del moment
    name = construction or ("act_cov" if centred else "act_moment")
    return Subspace(name, vectors, values, int(n))


def covariance_subspaces(statistics, *, device="cpu") -> list[Subspace]:
    """:func:`covariance_subspace` of many ``(Σx, Σxxᵀ, n, centred, construction, upper_only)``.

    One batched ``torch.linalg.eigh`` in float64 on `device` (a GPU when the
    statistics live there): the bootstrap's eigendecompositions of a block of
    replicates and sites in one call. The moments are formed exactly as
    :func:`covariance_subspace` forms them.
    """
    if not statistics:
        return []
    moments, names, counts = [], [], []
    for sum_x, sum_xx, n, centred, construction, upper_only in statistics:
        moment = covariance_moment(sum_x, sum_xx, n, centred)
        # torch.linalg.eigh reads the lower triangle: the transpose of an upper-only moment.
        moments.append(moment.T if upper_only else 0.5 * (moment + moment.T))
        names.append(construction or ("act_cov" if centred else "act_moment"))
        counts.append(int(n))
    batch = torch.from_numpy(np.stack(moments)).to(device)
    del moments
    values, vectors = torch.linalg.eigh(batch)
    del batch
    values = values.flip(-1).clamp(min=0.0).cpu().numpy()
    vectors = vectors.flip(-1).cpu().numpy()
    return [
        Subspace(name, np.ascontiguousarray(vectors[i]), values[i].copy(), counts[i])
        for i, name in enumerate(names)
    ]


def gram_subspace(gram, construction: str, *, n_samples: int | None = None) -> Subspace:
    """Descending eigenbasis of a symmetric positive semi-definite ``[d, d]`` matrix.

    The residual-side singular vectors of a matrix ``A`` are the eigenvectors of
    ``AᵀA`` with the squared singular values as eigenvalues; with ``d`` the small
    side this is much cheaper than an SVD of ``A`` and gives a complete basis.
    """
    values, vectors = _descending_eigh(as_float64(gram))
    return Subspace(construction, vectors, values, n_samples)


def unembedding_subspaces(unembedding, *, gain=None) -> dict[str, Subspace]:
    """``unembed``, ``unembed_centered`` and (with `gain`) ``unembed_folded`` from one Gram.

    With ``W_U [V, d]``, ``M = W_UᵀW_U`` and mean row ``μ``: centring gives
    ``M − V μμᵀ`` and folding the final norm's gain γ gives ``diag(γ) M diag(γ)``,
    so one ``V × d`` pass serves all three.
    """
    if unembedding.ndim != 2:
        raise ValueError(f"`unembedding` must be [V, d], got shape {tuple(unembedding.shape)}")
    # In blocks of rows: a float64 copy of a 128K-token vocabulary would be 4 GB at d = 4096.
    n_rows, d = unembedding.shape
    gram, total = np.zeros((d, d)), np.zeros(d)
    for start in range(0, n_rows, UNEMBEDDING_BLOCK):
        block = as_float64(unembedding[start : start + UNEMBEDDING_BLOCK])
        gram += block.T @ block
        total += block.sum(axis=0)
        del block
    mean = total / n_rows
    out = {
        "unembed": gram_subspace(gram, "unembed"),
        "unembed_centered": gram_subspace(gram - n_rows * np.outer(mean, mean), "unembed_centered"),
    }
    if gain is not None:
        gamma = as_float64(gain)
        out["unembed_folded"] = gram_subspace(gram * np.outer(gamma, gamma), "unembed_folded")
    return out


def unembedding_subspace(unembedding, *, centred: bool = False, gain=None) -> Subspace:
    """Right singular vectors of the unembedding ``W_U [V, d]``, descending.

    ``centred`` subtracts the mean row (the direction every logit shares, to
    which the softmax is blind): ``unembed_centered``. ``gain`` folds the final
    norm's effective gain in as ``W_U · diag(γ)``: ``unembed_folded``.
    """
    if centred and gain is not None:
        raise ValueError(
            "choose one of `centred` and `gain`: the contract has no centred-folded basis"
        )
    subspaces = unembedding_subspaces(unembedding, gain=gain)
    if gain is not None:
        return subspaces["unembed_folded"]
    return subspaces["unembed_centered" if centred else "unembed"]


def weight_subspace(weight, *, pathway: str) -> Subspace:
    """Residual-side singular vectors of ``W_from``: does ΔW merely follow W?"""
    if pathway not in PATHWAYS:
        raise ValueError(f"`pathway` must be one of {PATHWAYS}, got {pathway!r}")
    w = as_float64(weight)
    # The residual side of a read matrix is its input, of a write matrix its output.
    return gram_subspace(w.T @ w if pathway == "read" else w @ w.T, "weight_svd")


def construction_rng(seed: int, *keys) -> np.random.Generator:
    """A generator seeded by `seed` and labels such as (pair, layer, matrix).

    Uses a cryptographic digest of the labels, not Python's salted ``hash``, so
    the same labels give the same stream in every process and run.
    """
    digest = hashlib.sha256(repr((int(seed), *map(str, keys))).encode()).digest()
    words = np.frombuffer(digest, dtype=np.uint32)
    return np.random.default_rng(np.random.SeedSequence(words.tolist()))


def random_subspace(d: int, *, rng: np.random.Generator, k: int | None = None) -> Subspace:
    """A Haar-random orthonormal frame of ``R^d``: ``k`` columns (default all ``d``).

    QR of a standard Gaussian ``d × k`` matrix with the signs fixed by ``R``'s
    diagonal is Haar distributed (Mezzadri 2007; what ``scipy.stats.ortho_group``
    does for ``k = d``). The Gaussian is drawn column by column, and QR's first
    ``j`` columns depend only on the first ``j`` Gaussian columns, so a frame of
    ``k`` columns is the prefix of the full basis from the same generator: only
    the columns a cutoff needs are ever computed.
    """
    k = d if k is None else int(k)
    if not 1 <= k <= d:
        raise ValueError(f"`k` must lie in [1, {d}], got {k}")
    gaussian = rng.standard_normal((k, d)).T
    q, r = np.linalg.qr(gaussian)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    return Subspace("random", q * signs, None)
