"""Hypothesis strategies shared by the property tests: bounded floats, dependent shapes."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from scipy import stats


@st.composite
def delta_and_basis(draw, max_d: int = 12, max_other: int = 10):
    """A delta, its pathway, a complete orthonormal residual basis and a cutoff k ≤ d."""
    pathway = draw(st.sampled_from(["read", "write"]))
    d = draw(st.integers(2, max_d))
    other = draw(st.integers(1, max_other))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False))
    rng = np.random.default_rng(seed)
    shape = (other, d) if pathway == "read" else (d, other)
    # Anisotropic columns so the profile is far from flat.
    delta = rng.standard_normal(shape) * scale
    delta *= (
        np.geomspace(1, 0.05, d)[None, :]
        if pathway == "read"
        else np.geomspace(1, 0.05, d)[:, None]
    )
    basis = stats.ortho_group.rvs(d, random_state=rng) if d > 1 else np.ones((1, 1))
    k = draw(st.integers(1, d))
    return delta, basis, pathway, k, rng
