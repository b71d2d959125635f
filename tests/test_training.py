"""Training code: preference pairs, log-probabilities, the DPO and graded losses, the loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import VOCAB, char_tokenizer, tiny_config
from transformers import AutoModelForCausalLM

from robustness.preferences import (
    PreferencePairs,
    continuation_logprobs,
    dpo_loss,
    objective_loss,
    preference_margin,
    preference_pairs,
)
from robustness.training import align, pretrain


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread is as fast, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fresh_model(seed: int = 0, model_type: str = "llama"):
    """A tiny model with the library's own initialisation, seeded without touching global state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()


def progressions(n: int, seq_len: int, seed: int) -> np.ndarray:
    """Sequences ``(a + i·b) mod V``: the continuation is a function of the prompt."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, VOCAB, size=(n, 1))
    b = rng.integers(1, 4, size=(n, 1))
    return ((a + b * np.arange(seq_len)) % VOCAB).astype(np.int64)


def state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


# ---------------------------------------------------------------------------- preference pairs


def test_preference_pairs_chosen_is_the_true_continuation_and_rejected_differs():
    ids = progressions(40, 12, seed=1)
    pairs = preference_pairs(ids, prompt_len=5, rng=np.random.default_rng(0))
    assert pairs.prompt.dtype == np.int64 and pairs.prompt.shape == (40, 5)
    np.testing.assert_array_equal(pairs.prompt, ids[:, :5])
    np.testing.assert_array_equal(pairs.chosen, ids[:, 5:])
    assert pairs.rejected.shape == pairs.chosen.shape
    assert not (pairs.rejected == pairs.chosen).all(axis=1).any()
    # Each rejected row is a shuffle of its own continuation or another sequence's continuation.
    kinds = set()
    for i in range(len(pairs)):
        own = np.array_equal(np.sort(pairs.rejected[i]), np.sort(pairs.chosen[i]))
        other = [
            j for j in range(len(pairs)) if j != i and np.array_equal(pairs.rejected[i], ids[j, 5:])
        ]
        assert own or other
        kinds.add("shuffle" if own and not other else "swap")
    assert kinds == {"shuffle", "swap"}  # "mixed" uses both


@pytest.mark.parametrize("corruption", ["shuffle", "swap"])
def test_preference_pairs_single_corruption(corruption):
    ids = progressions(10, 9, seed=2)
    pairs = preference_pairs(ids, prompt_len=3, rng=np.random.default_rng(1), corruption=corruption)
    for i in range(len(pairs)):
        if corruption == "shuffle":
            np.testing.assert_array_equal(np.sort(pairs.rejected[i]), np.sort(pairs.chosen[i]))
        else:
            assert any(np.array_equal(pairs.rejected[i], ids[j, 3:]) for j in range(10) if j != i)


def test_preference_pairs_deterministic_from_rng_and_falls_back_from_a_constant_shuffle():
    ids = progressions(20, 10, seed=3)
    one = preference_pairs(ids, prompt_len=4, rng=np.random.default_rng(7))
    two = preference_pairs(ids, prompt_len=4, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(one.rejected, two.rejected)
    constant = np.repeat(np.arange(3)[:, None], 8, axis=1)  # a shuffle cannot change these
    pairs = preference_pairs(
        constant, prompt_len=2, rng=np.random.default_rng(0), corruption="shuffle"
    )
    assert not (pairs.rejected == pairs.chosen).all(axis=1).any()


def test_preference_pairs_errors():
    ids = progressions(4, 6, seed=0)
    with pytest.raises(ValueError, match="prompt_len"):
        preference_pairs(ids, prompt_len=6, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="corruption"):
        preference_pairs(ids, prompt_len=2, rng=np.random.default_rng(0), corruption="noise")
    with pytest.raises(ValueError, match="equal to the chosen"):
        preference_pairs(np.zeros((3, 6), dtype=int), prompt_len=2, rng=np.random.default_rng(0))


# ---------------------------------------------------------------------------- losses


def test_dpo_loss_matches_a_hand_computation():
    pc, pr = torch.tensor([-3.0, -10.0]), torch.tensor([-5.0, -4.0])
    rc, rr = torch.tensor([-4.0, -9.0]), torch.tensor([-4.5, -6.0])
    beta = 0.5
    # pair 0: ((-3+4) - (-5+4.5)) = 1.5 → 0.75; pair 1: ((-10+9) - (-4+6)) = -3 → -1.5
    expected = (math.log1p(math.exp(-0.75)) + math.log1p(math.exp(1.5))) / 2
    assert float(dpo_loss(pc, pr, rc, rr, beta=beta)) == pytest.approx(expected, rel=1e-6)
    # no preference learnt yet (policy = reference): log 2
    assert float(dpo_loss(pc, pr, pc, pr, beta=0.1)) == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, rc, rr, beta=0.0)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_continuation_logprobs_against_a_token_by_token_loop(model_type):
    model = fresh_model(1, model_type)
    ids = torch.as_tensor(progressions(3, 9, seed=4))
    prompt, continuation = ids[:, :4], ids[:, 4:]
    got = continuation_logprobs(model, prompt, continuation)
    with torch.no_grad():
        expected = torch.zeros(3)
        for t in range(continuation.shape[1]):
            context = torch.cat([prompt, continuation[:, :t]], dim=1)
            logp = torch.log_softmax(model(input_ids=context).logits[:, -1].float(), dim=-1)
            expected += logp.gather(1, continuation[:, t : t + 1]).squeeze(1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.requires_grad


def test_objective_loss_grades_between_cross_entropy_and_dpo():
    policy, reference = fresh_model(2), fresh_model(3)
    ids = progressions(6, 10, seed=5)
    pairs = preference_pairs(ids, prompt_len=4, rng=np.random.default_rng(0))
    prompt, chosen, rejected = (
        torch.as_tensor(a) for a in (pairs.prompt, pairs.chosen, pairs.rejected)
    )
    with torch.no_grad():
        # λ = 0 is HF's own cross-entropy with the prompt masked out of the labels.
        labels = torch.cat([torch.full_like(prompt, -100), chosen], dim=1)
        hf = policy(input_ids=torch.cat([prompt, chosen], dim=1), labels=labels).loss
        ce = objective_loss(policy, None, prompt, chosen, rejected, lam=0.0, beta=0.1)
        torch.testing.assert_close(ce, hf, rtol=1e-5, atol=1e-6)
        dpo = objective_loss(policy, reference, prompt, chosen, rejected, lam=1.0, beta=0.1)
        expected = dpo_loss(
            continuation_logprobs(policy, prompt, chosen),
            continuation_logprobs(policy, prompt, rejected),
            continuation_logprobs(reference, prompt, chosen),
            continuation_logprobs(reference, prompt, rejected),
            beta=0.1,
        )
        torch.testing.assert_close(dpo, expected)
        mid = objective_loss(policy, reference, prompt, chosen, rejected, lam=0.25, beta=0.1)
        torch.testing.assert_close(mid, 0.75 * ce + 0.25 * dpo, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reference"):
        objective_loss(policy, None, prompt, chosen, rejected, lam=0.5, beta=0.1)
    with pytest.raises(ValueError, match="lam"):
        objective_loss(policy, reference, prompt, chosen, rejected, lam=1.5, beta=0.1)


def test_preference_margin_is_zero_for_identical_models_and_restores_modes():
    policy, reference = fresh_model(4), fresh_model(4)
    policy.train()
    pairs = preference_pairs(progressions(7, 8, seed=6), prompt_len=3, rng=np.random.default_rng(0))
    margin = preference_margin(policy, reference, pairs, beta=0.1, batch_size=3)
    assert margin.shape == (7,) and margin.dtype == np.float64
    np.testing.assert_allclose(margin, 0.0, atol=1e-6)
    assert policy.training and not reference.training


# ---------------------------------------------------------------------------- loops


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


def test_preference_pairs_dataclass_checks_shapes():
    with pytest.raises(ValueError, match="must both be"):
        PreferencePairs(np.zeros((2, 3), int), np.zeros((2, 4), int), np.zeros((2, 5), int))
