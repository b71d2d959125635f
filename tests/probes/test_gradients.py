"""Gradient statistics (probes.gradients): effective ranks, the prediction fraction, streaming sums.

References: effective ranks against closed forms (flat, spiked and two-level
spectra; Roy & Vetterli 2007 for the entropy rank); streaming sums against the
residual-stream gradients captured directly with autograd on a float64 model;
the prediction fraction against probes.fraction_profile on the equivalent delta.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import VOCAB, random_model

import probes

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- effective ranks


@pytest.mark.parametrize("d", [1, 5, 64])
def test_flat_spectrum_has_full_effective_rank(d):
    spectrum = np.full(d, 2.5)
    assert probes.participation_ratio(spectrum) == pytest.approx(d, rel=1e-12)
    assert probes.entropy_effective_rank(spectrum) == pytest.approx(d, rel=1e-12)


def test_single_spike_has_effective_rank_one():
    spectrum = np.r_[3.0, np.zeros(9)]
    assert probes.effective_ranks(spectrum) == pytest.approx((1.0, 1.0))


def test_two_level_spectrum_closed_forms():
    # λ = (3, 1): PR = 16/10; p = (3/4, 1/4), exp H = 4 / 3^(3/4).
    pr, er = probes.effective_ranks([3.0, 1.0, 0.0])
    assert pr == pytest.approx(1.6, rel=1e-12)
    assert er == pytest.approx(4 / 3**0.75, rel=1e-12)
    # Both are scale invariant and lie between 1 and the number of non-zero eigenvalues.
    assert probes.effective_ranks([300.0, 100.0]) == pytest.approx((pr, er), rel=1e-12)


def test_entropy_rank_of_zero_spectrum_is_nan():
    assert math.isnan(probes.entropy_effective_rank(np.zeros(4)))


def test_prediction_fraction_matches_the_probe_on_the_equivalent_delta():
    rng = np.random.default_rng(0)
    d = 12
    delta = rng.standard_normal((d, 30))  # a write delta: residual side is its output
    basis = probes.random_subspace(d, rng=rng).basis
    ks = np.array([1, 4, 12])
    expected = probes.fraction_profile(delta, basis, pathway="write")[ks - 1]
    got = probes.subspace_energy_fraction(delta @ delta.T, basis, ks)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # Isotropic energy puts k/d in any k directions.
    np.testing.assert_allclose(probes.subspace_energy_fraction(np.eye(d), basis, ks), ks / d)


# ---------------------------------------------------------------------------- streaming sums


def _naive_residual_gradients(model, ids):
    """Residual-stream tensors captured at the norms that read them; their autograd gradients.

    For a pre-norm block ``h_mid = h + o(...)`` and ``h_out = h_mid + down(...)``,
    so ∂L/∂(o output) = ∂L/∂h_mid and ∂L/∂(down output) = ∂L/∂h_out. h_mid is
    the input of the block's second norm, h_out the input of the next block's
    first norm (the final norm after the last block).
    """
    family = probes.family_of(model)
    names = {
        "llama": ("input_layernorm", "post_attention_layernorm"),
        "gpt2": ("ln_1", "ln_2"),
    }[model.config.model_type]
    blocks = probes.adapters.layer_modules(model)
    final_norm = model.get_submodule(family.final_norm)
    captured = {}

    def grab(key, inputs=True):
        def hook(module, args, *rest):
            captured[key] = args[0] if inputs else rest[0]

        return hook

    handles = []
    for layer, block in enumerate(blocks):
        first, second = (block.get_submodule(name) for name in names)
        handles.append(second.register_forward_pre_hook(grab((layer, "h_mid"))))
        handles.append(first.register_forward_hook(grab((layer, "attn_in"), inputs=False)))
        handles.append(second.register_forward_hook(grab((layer, "mlp_in"), inputs=False)))
        target = (
            blocks[layer + 1].get_submodule(names[0]) if layer + 1 < len(blocks) else final_norm
        )
        handles.append(target.register_forward_pre_hook(grab((layer, "h_out"))))
    try:
        batch = torch.as_tensor(ids)
        loss = model(input_ids=batch, labels=batch).loss * batch.shape[0]
        keys = [(layer, name) for layer in range(len(blocks)) for name in ("h_mid", "h_out")]
        grads = torch.autograd.grad(loss, [captured[key] for key in keys])
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for (layer, name), grad in zip(keys, grads, strict=True):
        out[(layer, {"h_mid": "o_out", "h_out": "down_out"}[name])] = grad.reshape(
            -1, grad.shape[-1]
        )
    for layer in range(len(blocks)):
        for site in ("attn_in", "mlp_in"):
            x = captured[(layer, site)].detach()
            out[(layer, site)] = x.reshape(-1, x.shape[-1])
    return {key: value.double().numpy() for key, value in out.items()}


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_streaming_sums_equal_autograd_residual_gradients(model_type):
    model = random_model(model_type).double()
    ids = np.random.default_rng(1).integers(0, VOCAB, (5, 9))
    corpus_batches = [slice(0, 2), slice(2, 5)]
    data = torch.as_tensor(ids)

    def loss_fn(policy, index):
        batch = data[index]
        return policy(input_ids=batch, labels=batch).loss * batch.shape[0]

    stats = probes.collect_gradient_statistics(model, corpus_batches, loss_fn, chunk_of=[0, 1])
    naive = {}
    for index in corpus_batches:
        for key, value in _naive_residual_gradients(model, ids[index]).items():
            naive.setdefault(key, []).append(value)
    assert set(stats.sites) == set(naive)
    for key, parts in naive.items():
        x = np.concatenate(parts)
        site = stats.sites[key]
        assert site.n == x.shape[0] == ids.size
        scale = np.abs(x.T @ x).max()
        np.testing.assert_allclose(
            site.sum_xx, x.T @ x, rtol=0, atol=1e-8 * scale, err_msg=str(key)
        )
        np.testing.assert_allclose(site.sum_x, x.sum(axis=0), rtol=0, atol=1e-8 * np.abs(x).sum())
        covariance = np.cov(x.T, bias=True)
        np.testing.assert_allclose(
            site.covariance(), covariance, rtol=0, atol=1e-8 * scale / x.shape[0]
        )
        # The chunk sums add up to the totals.
        chunks = stats.chunks[key]
        np.testing.assert_array_equal(chunks.n, [2 * 9, 3 * 9])
        np.testing.assert_allclose(
            chunks.sum_x.sum(axis=0), site.sum_x, atol=1e-10 * np.abs(x).sum()
        )
    # Gradients are taken on the hooked outputs only: no parameter's .grad is written.
    assert all(p.grad is None for p in model.parameters())
