"""Shared fixtures: tiny random models of every supported family, saved and reloaded.

Nothing is downloaded: each model is built from a config, its parameters are
drawn at random (norm gains and biases included, so a wrong split or a missed
norm cannot hide behind an identity initialisation), written with
``save_pretrained`` and loaded back the way a user's model would be.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from transformers import AutoConfig, AutoModelForCausalLM

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

VOCAB = 61
_GQA = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
)
TINY_CONFIGS: dict[str, dict] = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "gpt_neo": dict(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=64,
        attention_types=[[["global", "local"], 1]],
        window_size=8,
    ),
    "gpt_neox": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        rotary_pct=0.5,
    ),
    "opt": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=48,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
    ),
    "llama": dict(_GQA),
    "mistral": dict(_GQA),
    "qwen2": dict(_GQA),
    "qwen3": dict(_GQA, head_dim=12),
    "olmo": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48),
    "olmo2": dict(_GQA),
    "gemma2": dict(_GQA, head_dim=8),
    "phi3": dict(_GQA, pad_token_id=0),
}
FAMILY_NAMES = tuple(TINY_CONFIGS)


def tiny_config(model_type: str, **overrides):
    kwargs = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0, **TINY_CONFIGS[model_type]}
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def random_model(model_type: str, seed: int = 0, **overrides):
    """A tiny model with every parameter drawn from N(0, 0.3²) (norm gains around 1)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.3
            is_gain = "norm" in name or ".ln_" in name or name.endswith("ln_f.weight")
            param.copy_(
                noise
                + (
                    1.0
                    if is_gain
                    and param.ndim == 1
                    and name.endswith("weight")
                    and model_type != "gemma2"
                    else 0.0
                )
            )
    return model.eval()


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """``saved_models(model_type, seed=0)`` → directory of a saved tiny model (cached)."""
    root = tmp_path_factory.mktemp("models")
    cache: dict[tuple, str] = {}

    def get(model_type: str, seed: int = 0, **overrides) -> str:
        key = (model_type, seed, tuple(sorted(overrides.items())))
        if key not in cache:
            path = root / f"{model_type}-{seed}-{len(cache)}"
            random_model(model_type, seed, **overrides).save_pretrained(path)
            cache[key] = str(path)
        return cache[key]

    return get


CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,:;()'\"-_=+*/\n[]{}<>#!?")[: VOCAB - 2]


def char_tokenizer():
    """A character-level fast tokenizer with the tiny models' vocabulary (no download)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", eos_token="<eos>")


def aligned_copy(model, seed: int, scale: float = 0.05):
    """`model` plus a small random delta on every parameter: a stand-in for an aligned model."""
    import copy

    aligned = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in aligned.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return aligned


@pytest.fixture(scope="session")
def saved_pair(tmp_path_factory):
    """``saved_pair(model_type, **overrides)`` → (base_dir, aligned_dir), both with a tokenizer."""
    root = tmp_path_factory.mktemp("pairs")
    cache: dict[tuple, tuple[str, str]] = {}

    def get(model_type: str = "llama", seed: int = 0, **overrides) -> tuple[str, str]:
        key = (model_type, seed, tuple(sorted(overrides.items())))
        if key not in cache:
            base = random_model(model_type, seed, **overrides)
            aligned = aligned_copy(base, seed + 1000)
            dirs = []
            for role, model in (("base", base), ("aligned", aligned)):
                path = root / f"{model_type}-{seed}-{len(cache)}-{role}"
                model.save_pretrained(path)
                char_tokenizer().save_pretrained(path)
                dirs.append(str(path))
            cache[key] = tuple(dirs)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: tiny models gain nothing from intra-op threads,
    and on a busy machine they only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
