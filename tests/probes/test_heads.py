"""Per-head granularity, GQA-aware (probes.heads)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import probes


def test_blocks_follow_heads_and_kv_heads():
    rng = np.random.default_rng(0)
    q, k, o = (
        rng.standard_normal((32, 16)),
        rng.standard_normal((8, 16)),
        rng.standard_normal((16, 32)),
    )
    q_blocks = probes.head_blocks(q, "q", n_heads=8, n_kv_heads=2)
    k_blocks = probes.head_blocks(k, "k", n_heads=8, n_kv_heads=2)
    o_blocks = probes.head_blocks(o, "o", n_heads=8, n_kv_heads=2)
    assert len(q_blocks) == 8 and q_blocks[3].shape == (4, 16)
    assert np.array_equal(q_blocks[3], q[12:16])
    assert len(k_blocks) == 2 and np.array_equal(k_blocks[1], k[4:8])  # GQA: one block per kv head
    assert len(o_blocks) == 8 and np.array_equal(o_blocks[2], o[:, 8:12])  # o: column blocks


@pytest.mark.parametrize("matrix", ["q", "k", "o"])
def test_energy_weighted_heads_recombine_to_the_whole_matrix(matrix):
    rng = np.random.default_rng(1)
    shape = {"q": (24, 12), "k": (12, 12), "o": (12, 24)}[matrix]
    delta = rng.standard_normal(shape)
    basis = stats.ortho_group.rvs(12, random_state=rng)
    heads = probes.head_fraction_profiles(delta, basis, matrix, n_heads=6, n_kv_heads=3)
    energy = np.array(
        [np.sum(b**2) for b in probes.head_blocks(delta, matrix, n_heads=6, n_kv_heads=3)]
    )
    whole = probes.fraction_profile(delta, basis, pathway=probes.PATHWAY[matrix])
    np.testing.assert_allclose(energy @ heads / energy.sum(), whole, rtol=1e-10)


def test_mlp_matrices_and_indivisible_widths_are_refused():
    with pytest.raises(ValueError, match="per-head granularity applies to"):
        probes.head_blocks(np.ones((4, 4)), "up", n_heads=2)
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        probes.head_blocks(np.ones((4, 4)), "q", n_heads=3)
