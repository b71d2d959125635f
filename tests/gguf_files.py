"""Tiny GGUF files for the tests, written with the ``gguf`` package's own writer (nothing downloaded).

:func:`write_gguf` turns a tiny llama (``tiny_models.random_model``) into the
file llama.cpp's converter would make of it: llama metadata, a byte-level
BPE tokenizer over the tiny vocabulary, tensors under GGUF's names (from
``gguf.get_tensor_name_map``), q and k rows permuted per head the way the
converter does for rotary pairs, and each tensor quantised to the type asked
for by the ``gguf`` package's own quantiser.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# Widths every GGUF block type divides: Q8_0 and Q4_1 blocks hold 32 values of a row.
GGUF_WIDTHS = dict(
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=3,
)


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary-pair permutation of q or k rows (what transformers' processor undoes):
    per head, rows ``[x0 x1 … | y0 y1 …]`` become ``[x0 y0 x1 y1 …]``."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def byte_level(text: str) -> str:
    """GPT-2's byte-to-unicode map of `text` (the form a byte-level BPE vocabulary is written in)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode())


def write_gguf(
    model, path: Path, types: dict[str, str] | None = None, default: str = "F32"
) -> Path:
    """Write `model` (a tiny llama) as a GGUF file at `path`.

    `types` maps a parameter name's suffix (``"q_proj.weight"``, ``"embed_tokens.weight"``) to the
    GGUF type it is stored in (``F32``, ``F16``, ``BF16``, ``Q8_0``, ``Q4_0``, ``Q4_1``, …); 1-D
    tensors (norms) stay ``F32`` as llama.cpp keeps them.
    """
    import gguf
    from tiny_models import CHARS

    config = model.config
    types = types or {}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or 10000.0))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = ["[UNK]", "<eos>", *(byte_level(c) for c in CHARS)]
    tokens += [f"[PAD{i}]" for i in range(config.vocab_size - len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.NORMAL] * (len(tokens) - 2)
    )
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(0)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, param in model.state_dict().items():
        module, suffix = name.rsplit(".", 1)
        gguf_name = names.get_name(module)
        assert gguf_name is not None, name
        values = param.detach().to(torch.float32).numpy()
        if name.endswith("q_proj.weight"):
            values = llama_cpp_permute(values, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            values = llama_cpp_permute(values, config.num_key_value_heads)
        kind = next((t for key, t in types.items() if name.endswith(key)), default)
        if values.ndim == 1:
            kind = "F32"
        qtype = gguf.GGMLQuantizationType[kind]
        data = gguf.quantize(np.ascontiguousarray(values), qtype)
        writer.add_tensor(f"{gguf_name}.{suffix}", data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
