"""Streaming statistics (probes.activations) against the activations themselves, captured in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import random_model

import probes


@pytest.fixture(scope="module")
def model():
    return random_model("llama", seed=4)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(5).integers(0, 61, size=(7, 11))


def captured_sums(model, ids):
    """Naive reference: keep every site tensor, then sum in float64."""
    keys = [(layer, site) for layer in range(2) for site in probes.SITES]
    seen: dict = {key: [] for key in keys}
    with torch.no_grad(), probes.site_hooks(model, keys, lambda k, t: seen[k].append(t.double())):
        model(torch.as_tensor(ids))
    out = {}
    for key, tensors in seen.items():
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors]).numpy()
        out[key] = (len(x), x.sum(0), x.T @ x)
    return out


def test_streaming_sums_match_the_stored_activations(model, ids):
    stats = probes.collect_statistics(model, ids, batch_size=3)
    reference = captured_sums(model, ids)
    assert stats.n_tokens == ids.size and stats.n_sequences == 7
    for key, (n, sum_x, sum_xx) in reference.items():
        site = stats.sites[key]
        assert site.n == n == ids.size  # every position of every sequence counts
        assert site.sum_x.dtype == np.float64 and site.sum_xx.dtype == np.float64
        np.testing.assert_allclose(site.sum_x, sum_x, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(site.sum_xx, sum_xx, rtol=1e-5, atol=1e-3)
        mean = sum_x / n
        np.testing.assert_allclose(
            site.covariance(), sum_xx / n - np.outer(mean, mean), rtol=1e-5, atol=1e-5
        )


def test_batch_size_does_not_change_the_answer(model, ids):
    one = probes.collect_statistics(model, ids, batch_size=1, sites=["mlp_in"])
    all_at_once = probes.collect_statistics(model, ids, batch_size=7, sites=["mlp_in"])
    for key in one.sites:
        np.testing.assert_allclose(
            one.sites[key].sum_xx, all_at_once.sites[key].sum_xx, rtol=1e-5, atol=1e-4
        )


def test_chunks_partition_the_corpus(model, ids):
    chunked = probes.collect_statistics(model, ids, batch_size=2, chunk_size=3, sites=["attn_in"])
    assert chunked.chunk_sequences == [(0, 3), (3, 6), (6, 7)]
    for key, site in chunked.sites.items():
        chunks = chunked.chunks[key]
        assert chunks.n.tolist() == [33, 33, 11]
        assert chunks.sum_xx_packed.dtype == np.float32  # compact: a float32 upper triangle
        assert chunks.sum_xx_packed.shape == (3, 32 * 33 // 2)
        np.testing.assert_allclose(chunks.sum_xx(), site.sum_xx, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(chunks.sum_x.sum(0), site.sum_x, rtol=1e-9)
    # One chunk, reweighted alone, is the statistics of its own sequences.
    alone = probes.collect_statistics(model, ids[3:6], batch_size=2, sites=["attn_in"])
    for key in alone.sites:
        only = chunked.chunks[key].reweighted([0, 1, 0])
        assert only.n == alone.sites[key].n
        np.testing.assert_allclose(only.sum_xx, alone.sites[key].sum_xx, rtol=1e-5, atol=1e-3)


def test_reweighted_chunks_are_the_weighted_sums_and_their_upper_triangle_suffices():
    # Exact arithmetic on small integers: the reweighted sums equal a brute-force Σ_c w_c X_cᵀX_c,
    # the upper-triangle-only form keeps exactly those entries (the lower ones zero), and the
    # eigenbasis read from it is bit for bit the one read from the full symmetric matrix.
    rng = np.random.default_rng(0)
    d, chunks = 7, 5
    xs = [rng.integers(-3, 4, size=(6, d)).astype(np.float32) for _ in range(chunks)]
    upper = np.triu_indices(d)
    statistics = probes.ChunkStatistics(
        np.full(chunks, 6), np.stack([x.sum(0) for x in xs]).astype(np.float64),
        np.stack([(x.T @ x)[upper] for x in xs]),
    )  # fmt: skip
    weights = rng.integers(0, 3, size=(4, chunks)).astype(np.float64)
    brute = np.einsum("bc,cij->bij", weights, np.stack([x.T @ x for x in xs]).astype(np.float64))
    full = statistics.sum_xx_many(weights)
    triangle = statistics.sum_xx_many(weights, upper_only=True)
    assert np.array_equal(full, brute)
    assert np.array_equal(triangle, np.triu(brute))
    # A block reused for other weights (as the bootstrap reuses it) holds exactly their sums.
    block = np.zeros((4, d, d))
    statistics.sum_xx_many(weights[::-1], upper_only=True, out=block)
    assert statistics.sum_xx_many(weights, upper_only=True, out=block) is block
    assert np.array_equal(block, triangle)
    assert np.array_equal(statistics.sum_xx_many(weights, out=np.full((4, d, d), 7.0)), full)
    with pytest.raises(ValueError, match="`out` must have shape"):
        statistics.sum_xx_many(weights, out=np.zeros((3, d, d)))
    for whole, half in zip(
        statistics.reweighted_many(weights),
        statistics.reweighted_many(weights, upper_only=True),
        strict=True,
    ):
        for centred in (True, False):
            a, b = whole.subspace(centred=centred), half.subspace(centred=centred)
            assert np.array_equal(a.basis, b.basis) and np.array_equal(a.spectrum, b.spectrum)
        with pytest.raises(ValueError, match="upper triangle"):
            half.covariance()


def test_the_unembedding_is_never_run(model, ids):
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        probes.collect_statistics(model, ids)
    finally:
        handle.remove()
    assert calls == []


def test_low_precision_models_are_upcast():
    model = random_model("gpt2", seed=1).to(torch.bfloat16)
    ids = np.random.default_rng(0).integers(0, 61, size=(2, 5))
    stats = probes.collect_statistics(model, ids, sites=[(1, "resid_post")])
    site = stats.sites[(1, "resid_post")]
    assert site.sum_xx.dtype == np.float64 and np.isfinite(site.sum_xx).all() and site.n == 10


def test_statistics_give_the_activation_subspaces(model, ids):
    stats = probes.collect_statistics(model, ids, sites=[(0, "attn_in")])
    _, sum_x, sum_xx = captured_sums(model, ids)[(0, "attn_in")]
    subspace = stats.sites[(0, "attn_in")].subspace(centred=True)
    x_cov = sum_xx / ids.size - np.outer(sum_x, sum_x) / ids.size**2
    np.testing.assert_allclose(
        subspace.spectrum, np.linalg.eigvalsh(x_cov)[::-1], rtol=1e-4, atol=1e-6
    )


def test_bad_arguments_are_clear_errors(model):
    with pytest.raises(ValueError, match="input_ids"):
        probes.collect_statistics(model, np.zeros((0, 4), dtype=int))
    with pytest.raises(ValueError, match="batch_size"):
        probes.collect_statistics(model, np.zeros((1, 4), dtype=int), batch_size=0)
    with pytest.raises(ValueError, match="unknown site 'logits'"):
        probes.collect_statistics(model, np.zeros((1, 4), dtype=int), sites=[(0, "logits")])
