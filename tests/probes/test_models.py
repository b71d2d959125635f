"""Model access (probes.models): loading without remote code, and pairs checked before any delta."""

from __future__ import annotations

import pytest
from tiny_models import random_model
from transformers import AutoModelForCausalLM

import probes


def test_mismatched_pair_is_refused_before_any_delta():
    with pytest.raises(ValueError, match="mismatched pair.*n_layers: 2 vs 3"):
        probes.extract_deltas(random_model("llama"), random_model("llama", num_hidden_layers=3))
    with pytest.raises(ValueError, match="model_type: llama vs mistral"):
        probes.check_pair(random_model("llama"), random_model("mistral"))
    with pytest.raises(ValueError, match="vocab_size: 61 vs 67"):
        probes.check_pair(random_model("gpt2"), random_model("gpt2", vocab_size=67))


def test_trust_remote_code_is_off_by_default(saved_models, monkeypatch):
    seen = {}
    original = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    probes.load_model(saved_models("gpt2"))
    assert seen["trust_remote_code"] is False
