"""Per-head granularity: the probe on each attention head's block of a matrix.

q's rows come in ``n_heads`` blocks of ``head_dim``; k's and v's in
``n_kv_heads`` blocks (grouped-query attention shares each k/v head among
``n_heads / n_kv_heads`` query heads); o's *columns* come in ``n_heads``
blocks. The residual side is untouched by the split, so every head's profile
is measured in the same residual basis as the whole matrix.
"""

from __future__ import annotations

import numpy as np

from .adapters import PATHWAY
from .fraction import as_float64, fraction_profile

__all__ = ["HEAD_MATRICES", "head_blocks", "head_fraction_profiles"]

HEAD_MATRICES = ("q", "k", "v", "o")


def head_blocks(
    delta, matrix: str, *, n_heads: int, n_kv_heads: int | None = None
) -> list[np.ndarray]:
    """Split a q/k/v/o delta into its per-head blocks (float64 copies)."""
    if matrix not in HEAD_MATRICES:
        raise ValueError(f"per-head granularity applies to {HEAD_MATRICES}, not {matrix!r}")
    delta = as_float64(delta)
    n_kv_heads = n_kv_heads or n_heads
    count = n_kv_heads if matrix in ("k", "v") else n_heads
    axis = 1 if matrix == "o" else 0
    if delta.shape[axis] % count:
        raise ValueError(
            f"`{matrix}` has {delta.shape[axis]} head-side units, not divisible by {count} heads"
        )
    return np.split(delta, count, axis=axis)


def head_fraction_profiles(
    delta, basis, matrix: str, *, n_heads: int, n_kv_heads: int | None = None
) -> np.ndarray:
    """``[n_heads_of_matrix, r]``: F(k) of each head's block on one residual basis."""
    blocks = head_blocks(delta, matrix, n_heads=n_heads, n_kv_heads=n_kv_heads)
    return np.stack([fraction_profile(b, basis, pathway=PATHWAY[matrix]) for b in blocks])
