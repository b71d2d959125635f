"""The training loops (robustness.training.loops): pretraining and alignment, seeded and checkpointed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import char_tokenizer, fresh_model, progressions, state
from transformers import AutoModelForCausalLM

from robustness.training.loops import align, pretrain
from robustness.training.preferences import preference_margin, preference_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pretrain_is_deterministic_from_the_seed_and_lowers_the_loss():
    ids = progressions(64, 16, seed=7)
    runs = []
    for seed in (0, 0, 1):
        history: list = []
        model = pretrain(fresh_model(5), ids, steps=12, lr=3e-3, batch_size=8, seed=seed,
                         progress=False, history=history)  # fmt: skip
        runs.append((state(model), history))
    (a, history_a), (b, _), (c, _) = runs
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert any(not torch.equal(a[name], c[name]) for name in a)  # another seed, another order
    assert len(history_a) == 12 and history_a[0]["step"] == 1
    assert np.mean([h["loss"] for h in history_a[-3:]]) < history_a[0]["loss"]


def test_pretrain_leaves_the_global_rng_untouched():
    before = torch.random.get_rng_state()
    pretrain(
        fresh_model(5, "gpt2"),
        progressions(16, 8, seed=0),
        steps=2,
        lr=1e-3,
        batch_size=4,
        seed=3,
        progress=False,
    )  # GPT-2 has dropout
    assert torch.equal(before, torch.random.get_rng_state())


def test_align_raises_the_margin_keeps_the_reference_frozen_and_writes_checkpoints(tmp_path):
    train_ids, held_ids = progressions(96, 12, seed=8), progressions(48, 12, seed=9)
    base = pretrain(
        fresh_model(6), train_ids, steps=60, lr=3e-3, batch_size=16, seed=0, progress=False
    )
    reference = fresh_model(6)
    reference.load_state_dict(base.state_dict())
    reference.train()
    frozen = state(reference)
    rng = np.random.default_rng(0)
    train_pairs = preference_pairs(train_ids, prompt_len=6, rng=rng)
    held_pairs = preference_pairs(held_ids, prompt_len=6, rng=rng)
    before = preference_margin(base, reference, held_pairs, beta=0.1)
    np.testing.assert_allclose(before, 0.0, atol=1e-5)
    history: list = []
    policy = align(base, reference, train_pairs, beta=0.1, steps=60, lr=3e-3, batch_size=16,
                   seed=0, checkpoint_dir=tmp_path / "align", every=15, tokenizer=char_tokenizer(),
                   progress=False, history=history)  # fmt: skip
    assert all(torch.equal(frozen[name], reference.state_dict()[name]) for name in frozen)
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    train = preference_margin(policy, reference, train_pairs, beta=0.1)
    assert train.mean() > 1.0 and (train > 0).all()
    # The held-out margin was 0 before alignment: the preference generalises.
    held = preference_margin(policy, reference, held_pairs, beta=0.1)
    assert held.mean() > 0.2 and (held > 0).mean() > 0.7
    assert history[-1]["loss"] < math.log(2) < history[0]["loss"] + 1e-3
    steps = sorted(p.name for p in (tmp_path / "align").iterdir())
    assert steps == ["step-00000", "step-00015", "step-00030", "step-00045", "step-00060"]
    last = AutoModelForCausalLM.from_pretrained(tmp_path / "align" / "step-00060")
    assert all(torch.equal(v, last.state_dict()[k]) for k, v in policy.state_dict().items())
    assert (tmp_path / "align" / "step-00060" / "tokenizer.json").is_file()


def test_align_with_lam_zero_needs_no_reference_and_rejects_a_shared_reference():
    ids = progressions(16, 8, seed=10)
    pairs = preference_pairs(ids, prompt_len=3, rng=np.random.default_rng(0))
    model = fresh_model(7)
    before = state(model)
    align(model, None, pairs, lam=0.0, steps=3, lr=1e-3, batch_size=4, seed=0, progress=False)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="separate"):
        align(model, model, pairs, steps=1, lr=1e-3, batch_size=4, seed=0, progress=False)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        align(model, None, pairs, lam=0.0, steps=1, lr=1e-3, batch_size=4, seed=0, every=1)
