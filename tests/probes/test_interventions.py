"""Rank-1 interventions (probes.interventions): the update, and the hook against the same update
written into the weights, on fused, split and Conv1D layouts."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import VOCAB, random_model

import probes
from probes import rank1_hook, rank1_update

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rank1_update_is_rank_one_with_the_requested_norm_and_directions():
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal(7), rng.standard_normal(5)
    delta = rank1_update(u, v, 0.37).numpy()
    assert np.linalg.matrix_rank(delta, tol=1e-12) == 1
    assert np.linalg.norm(delta) == pytest.approx(0.37, rel=1e-12)
    left, singular, right = np.linalg.svd(delta)
    assert singular[0] == pytest.approx(0.37, rel=1e-12)
    assert abs(left[:, 0] @ u / np.linalg.norm(u)) == pytest.approx(1, rel=1e-12)
    assert abs(right[0] @ v / np.linalg.norm(v)) == pytest.approx(1, rel=1e-12)
    with pytest.raises(ValueError, match="non-zero"):
        rank1_update(np.zeros(3), v, 1.0)


@pytest.mark.parametrize(
    ("model_type", "matrix"),
    [("llama", "q"), ("llama", "o"), ("gpt2", "k"), ("gpt2", "o"), ("gpt_neox", "v")],
)
def test_rank1_hook_equals_the_update_written_into_the_weights(model_type, matrix):
    model = random_model(model_type).double()
    layer = 1
    w = probes.canonical_weights(model, matrices=[matrix], layers=[layer])[(layer, matrix)]
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal(w.shape[0]), rng.standard_normal(w.shape[1])
    ids = torch.as_tensor(rng.integers(0, VOCAB, (2, 7)))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with rank1_hook(model, layer, matrix, u, v, 0.8):
            hooked = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        edited = copy.deepcopy(model)
        update = rank1_update(u, v, 0.8)
        if model_type == "gpt_neox":  # interleaved q|k|v per head: view(H, 3, hd, d)
            fused = edited.gpt_neox.layers[layer].attention.query_key_value.weight
            heads = edited.config.num_attention_heads
            fused.view(heads, 3, -1, fused.shape[1])[:, 2] += update.view(heads, -1, fused.shape[1])
        else:  # contiguous splits and Conv1D transposes are views into the weights
            probes.canonical_weights(edited, matrices=[matrix], layers=[layer])[
                (layer, matrix)
            ] += update
        expected = edited(input_ids=ids).logits
    torch.testing.assert_close(hooked, expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(hooked, base)
    torch.testing.assert_close(after, base, rtol=0, atol=0)  # the hook is gone
