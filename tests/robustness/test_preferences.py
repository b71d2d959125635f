"""Preference data and losses (robustness.training.preferences): preference pairs, log-probabilities of
continuations, the DPO and graded losses, the preference margin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import fresh_model, progressions

from robustness.training.preferences import (
    PreferencePairs,
    continuation_logprobs,
    dpo_loss,
    objective_loss,
    preference_margin,
    preference_pairs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_preference_pairs_dataclass_checks_shapes():
    with pytest.raises(ValueError, match="must both be"):
        PreferencePairs(np.zeros((2, 3), int), np.zeros((2, 4), int), np.zeros((2, 5), int))


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


def test_prompts_go_inside_the_chat_template_where_the_tokenizer_has_one():
    """Null: framing changes the prompts only, by the template's own tokens before and after the
    user's text (rendered here by the template itself), the same for every pair; a tokenizer
    without a template leaves the pairs as they are."""
    from tiny_models import char_tokenizer

    from robustness.training.preferences import chat_frame, framed

    tokenizer = char_tokenizer()
    ids = np.asarray([tokenizer("abcdefgh")["input_ids"], tokenizer("ijklmnop")["input_ids"]])
    pairs = preference_pairs(ids, prompt_len=4, rng=np.random.default_rng(0), corruption="swap")
    assert chat_frame(tokenizer) is None and framed(pairs, None) is pairs
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    before, after = chat_frame(tokenizer)
    assert before.tolist() == tokenizer("<user>", add_special_tokens=False)["input_ids"]
    assert after.tolist() == tokenizer("<assistant>", add_special_tokens=False)["input_ids"]
    chat = framed(pairs, (before, after))
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "abcd"}], add_generation_prompt=True, tokenize=False
    )
    assert chat.prompt[0].tolist() == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    np.testing.assert_array_equal(chat.chosen, pairs.chosen)
    np.testing.assert_array_equal(chat.rejected, pairs.rejected)
