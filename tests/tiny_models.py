"""Tiny models, tokenizers and data for the tests, built in code: nothing is downloaded.

Each model is built from a config with its parameters drawn at random (norm
gains and biases included, so a wrong split or a missed norm cannot hide
behind an identity initialisation). Imported by the test modules
(``from tiny_models import random_model``) and by ``conftest.py``'s fixtures;
``tests/`` is on the path (``pythonpath`` in ``pyproject.toml``).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

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
    "gemma": dict(_GQA, head_dim=8),
    "gemma2": dict(_GQA, head_dim=8),
    # one sliding-window layer and one global one, the window shorter than the test sequences
    "gemma3_text": dict(
        _GQA, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"]
    ),
    "phi": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        partial_rotary_factor=0.5,
    ),
    "phi3": dict(_GQA, pad_token_id=0),
    # mixture-of-experts: 4 experts, 2 per token, every layer sparse
    "mixtral": dict(_GQA, num_local_experts=4, num_experts_per_tok=2),
    "olmoe": dict(_GQA, num_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(
        _GQA,
        head_dim=8,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=40,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    ),  # fmt: skip
}
MIXTURE_OF_EXPERTS = ("mixtral", "olmoe", "qwen3_moe")
FAMILY_NAMES = tuple(TINY_CONFIGS)
ONE_PLUS_WEIGHT = ("gemma", "gemma2", "gemma3_text")  # norms store w and scale by 1 + w


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
                    and model_type not in ONE_PLUS_WEIGHT
                    else 0.0
                )
            )
    return model.eval()


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
    """A detached copy of every tensor in the model's state dict."""
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


@contextlib.contextmanager
def single_torch_thread():
    """One torch thread inside the block: tiny models gain nothing from intra-op threads,
    and on a busy machine they only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
