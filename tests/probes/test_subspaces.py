"""Subspace constructions (probes.subspaces) against direct NumPy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import random_model

import probes


def assert_orthonormal(basis):
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-10)


def test_covariance_and_moment_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6)) * [3, 2, 1, 1, 0.5, 0.1] + [0, 0, 0, 0, 0, 10]
    cov = probes.covariance_subspace(x.sum(0), x.T @ x, len(x), centred=True)
    assert cov.construction == "act_cov" and cov.n_samples == 500
    np.testing.assert_allclose(
        cov.spectrum, np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1], rtol=1e-9
    )
    assert_orthonormal(cov.basis)
    moment = probes.covariance_subspace(x.sum(0), x.T @ x, len(x), centred=False)
    np.testing.assert_allclose(
        moment.spectrum, np.linalg.eigvalsh(x.T @ x / len(x))[::-1], rtol=1e-9
    )
    # The uncentred moment keeps the mean direction (e6, mean 10, sd 0.1) on top; the
    # covariance ranks it last and puts the widest direction (e1, sd 3) first.
    assert abs(moment.basis[5, 0]) > 0.99
    assert abs(cov.basis[0, 0]) > 0.99 and abs(cov.basis[5, -1]) > 0.99
    assert np.all(np.diff(cov.spectrum) <= 1e-12)


def test_unembedding_constructions():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((40, 8)) + 5.0 * rng.standard_normal(8)  # a large shared mean row
    plain = probes.unembedding_subspace(w)
    s = np.linalg.svd(w, compute_uv=False)
    np.testing.assert_allclose(plain.spectrum, s**2)
    np.testing.assert_allclose(np.sum((w @ plain.basis) ** 2, axis=0), s**2, rtol=1e-9)
    centred = probes.unembedding_subspace(w, centred=True)
    assert centred.construction == "unembed_centered"
    np.testing.assert_allclose(
        centred.spectrum, np.linalg.svd(w - w.mean(0), compute_uv=False) ** 2
    )
    gain = rng.uniform(0.5, 2.0, 8)
    folded = probes.unembedding_subspace(w, gain=gain)
    assert folded.construction == "unembed_folded"
    np.testing.assert_allclose(folded.spectrum, np.linalg.svd(w * gain, compute_uv=False) ** 2)
    for subspace in (plain, centred, folded):
        assert_orthonormal(subspace.basis)


def test_small_vocabulary_still_gives_a_complete_basis():
    w = np.random.default_rng(2).standard_normal((3, 8))
    subspace = probes.unembedding_subspace(w)
    assert subspace.basis.shape == (8, 8)
    assert_orthonormal(subspace.basis)
    assert np.count_nonzero(subspace.spectrum > 1e-12) == 3


@pytest.mark.parametrize("pathway", ["read", "write"])
def test_weight_svd_uses_the_residual_side(pathway):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 9)) if pathway == "read" else rng.standard_normal((9, 5))
    subspace = probes.weight_subspace(w, pathway=pathway)
    assert subspace.basis.shape == (9, 9)
    # W on its own singular basis: F(rank) = 1 and the energy profile is s² / Σs².
    profile = probes.fraction_profile(w, subspace.basis, pathway=pathway)
    s2 = np.linalg.svd(w, compute_uv=False) ** 2
    np.testing.assert_allclose(profile[:5], np.cumsum(s2) / s2.sum(), rtol=1e-10)
    assert profile[4] == pytest.approx(1.0)


def test_random_basis_is_haar_orthonormal_and_seeded_per_label():
    a = probes.random_subspace(16, rng=probes.construction_rng(0, "demo", 3, "q"))
    b = probes.random_subspace(16, rng=probes.construction_rng(0, "demo", 3, "q"))
    c = probes.random_subspace(16, rng=probes.construction_rng(0, "demo", 3, "k"))
    d = probes.random_subspace(16, rng=probes.construction_rng(1, "demo", 3, "q"))
    assert_orthonormal(a.basis)
    assert a.spectrum is None
    assert np.array_equal(a.basis, b.basis)
    assert not np.allclose(a.basis, c.basis) and not np.allclose(a.basis, d.basis)


def test_constructions_from_a_real_model():
    model = random_model("gemma2")
    gain = probes.final_norm_gain(model)
    folded = probes.unembedding_subspace(probes.unembedding(model), gain=gain)
    expected = np.linalg.svd(
        (model.lm_head.weight.detach() * (1 + model.model.norm.weight.detach())).double().numpy(),
        compute_uv=False,
    )
    np.testing.assert_allclose(folded.spectrum[: expected.size], expected**2, rtol=1e-6)
    assert torch.is_tensor(gain)


def test_random_frames_are_prefixes_of_the_full_haar_basis():
    full = probes.random_subspace(12, rng=probes.construction_rng(3, "p", 0, "q"))
    part = probes.random_subspace(12, rng=probes.construction_rng(3, "p", 0, "q"), k=4)
    assert part.basis.shape == (12, 4)
    np.testing.assert_allclose(part.basis, full.basis[:, :4], atol=1e-12)
    with pytest.raises(ValueError, match="`k` must lie in"):
        probes.random_subspace(12, rng=np.random.default_rng(0), k=13)


def test_random_subspaces_have_the_haar_mean_and_variance():
    """F(k) over `random_subspace` draws against E[F] = k/d and the variance of docs/design.md."""
    rng = np.random.default_rng(42)
    d, k, draws = 10, 3, 4000
    delta = rng.standard_normal((4, d)) * np.geomspace(1, 0.1, d)
    values = np.array(
        [
            probes.fraction_profile(
                delta, probes.random_subspace(d, rng=rng, k=k).basis, pathway="read"
            )[-1]
            for _ in range(draws)
        ]
    )
    var = probes.haar_variance(k, d, probes.gram_spectrum(delta))
    assert abs(values.mean() - k / d) < 4.5 * np.sqrt(var / draws)
    assert values.var(ddof=1) == pytest.approx(var, rel=0.1)
