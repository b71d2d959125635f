"""Architecture adapters: one table row per model type, no per-architecture code.

Every supported causal LM is seen through the same canonical matrices
``q, k, v, o, up, gate, down`` in Linear layout ``[n_out, n_in]`` (``y = W x``):

- GPT-2's ``Conv1D`` stores ``[in, out]`` and is transposed;
- fused matrices are split by **rows** of the Linear-layout weight. GPT-2's
  ``c_attn`` and Phi-3's ``qkv_proj`` are contiguous ``q | k | v`` blocks (with
  GQA sizes for Phi-3); GPT-NeoX's ``query_key_value`` interleaves them per head
  (``view(H, 3, hd, d)``); Phi-3's ``gate_up_proj`` is ``gate | up``.

Because a split is a set of rows, the same index selects a fused bias and the
matching slice of a fused module's output, which is how the tests check it.

**Mixture-of-experts** (Mixtral, OLMoE, Qwen3-MoE): each expert's up, gate and
down live in transformers' fused 3-D tensors (``gate_up_proj [E, 2I, d]``,
gate then up; ``down_proj [E, d, I]``), so their canonical weight is the stack
``[E, n_out, n_in]`` of the experts' Linear-layout matrices, split by rows
along its second axis; the router ``[E, d]`` is its own read matrix. All
experts and the router read one input, the MLP's (``mlp_in``).

Read matrices (q, k, v, up, gate) read the residual stream through the tensor
entering their module, which the adapter hooks directly: llama-like attention
receives ``hidden_states`` as a keyword, and OLMo-2 reads the raw residual (it
has no pre-norms), so hooking the projection is the one site that is right for
all of them. Write matrices (o, down) are measured against the residual stream
right after their layer (for the last layer, before the final norm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.pytorch_utils import Conv1D

from .names import MATRICES, PATHWAY, SITE_OF, SITES

__all__ = [
    "FAMILIES",
    "MATRICES",
    "PATHWAY",
    "SITE_OF",
    "SITES",
    "SUPPORTED_MODEL_TYPES",
    "Family",
    "ModelDims",
    "canonical_biases",
    "canonical_weights",
    "describe",
    "family_of",
    "final_norm_gain",
    "layer_modules",
    "linear_weight",
    "matrix_rows",
    "model_dims",
    "n_experts",
    "select_rows",
    "site_modules",
    "tied_embeddings",
    "unembedding",
]


@dataclass(frozen=True)
class Source:
    """Where a canonical matrix lives inside one layer."""

    module: str
    fused: str | None = None  # "qkv", "qkv_interleaved" or "gate_up"
    parameter: str = "weight"  # the module's parameter holding it
    experts: bool = False  # a stack [E, n_out, n_in] of the experts' matrices


@dataclass(frozen=True)
class Family:
    """One row of the adapter table.

    ``norm_gain`` says how the final norm scales the residual: ``"weight"``
    (LayerNorm / RMSNorm gain ``w``), ``"one_plus_weight"`` (Gemma stores
    ``w`` and multiplies by ``1 + w``) or ``"none"`` (OLMo-1's LayerNorm has no
    parameters). ``parallel`` marks attention and MLP reading the same residual.
    """

    layers: str
    matrices: dict[str, Source]
    final_norm: str
    norm_gain: str = "weight"
    parallel: bool = False
    unembed_projection: str | None = None  # OPT's optional project_out
    notes: str = ""
    experts: str | None = None  # the config's expert count (a mixture-of-experts family)


def _llama_like(**kw) -> Family:
    attn, mlp = "self_attn", "mlp"
    return Family(
        layers="model.layers",
        matrices={
            "q": Source(f"{attn}.q_proj"),
            "k": Source(f"{attn}.k_proj"),
            "v": Source(f"{attn}.v_proj"),
            "o": Source(f"{attn}.o_proj"),
            "gate": Source(f"{mlp}.gate_proj"),
            "up": Source(f"{mlp}.up_proj"),
            "down": Source(f"{mlp}.down_proj"),
        },
        final_norm="model.norm",
        **kw,
    )


def _mixture_of_experts(experts: str, **kw) -> Family:
    attn, mlp = "self_attn", "mlp"
    return Family(
        layers="model.layers",
        matrices={
            "q": Source(f"{attn}.q_proj"),
            "k": Source(f"{attn}.k_proj"),
            "v": Source(f"{attn}.v_proj"),
            "o": Source(f"{attn}.o_proj"),
            "gate": Source(f"{mlp}.experts", "gate_up", "gate_up_proj", experts=True),
            "up": Source(f"{mlp}.experts", "gate_up", "gate_up_proj", experts=True),
            "down": Source(f"{mlp}.experts", None, "down_proj", experts=True),
            "router": Source(f"{mlp}.gate"),
        },
        final_norm="model.norm",
        experts=experts,
        **kw,
    )


FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        layers="transformer.h",
        matrices={
            "q": Source("attn.c_attn", "qkv"),
            "k": Source("attn.c_attn", "qkv"),
            "v": Source("attn.c_attn", "qkv"),
            "o": Source("attn.c_proj"),
            "up": Source("mlp.c_fc"),
            "down": Source("mlp.c_proj"),
        },
        final_norm="transformer.ln_f",
        notes="Conv1D weights stored [in, out]; c_attn holds q|k|v column blocks",
    ),
    "gpt_neo": Family(
        layers="transformer.h",
        matrices={
            "q": Source("attn.attention.q_proj"),
            "k": Source("attn.attention.k_proj"),
            "v": Source("attn.attention.v_proj"),
            "o": Source("attn.attention.out_proj"),
            "up": Source("mlp.c_fc"),
            "down": Source("mlp.c_proj"),
        },
        final_norm="transformer.ln_f",
    ),
    "gpt_neox": Family(
        layers="gpt_neox.layers",
        matrices={
            "q": Source("attention.query_key_value", "qkv_interleaved"),
            "k": Source("attention.query_key_value", "qkv_interleaved"),
            "v": Source("attention.query_key_value", "qkv_interleaved"),
            "o": Source("attention.dense"),
            "up": Source("mlp.dense_h_to_4h"),
            "down": Source("mlp.dense_4h_to_h"),
        },
        final_norm="gpt_neox.final_layer_norm",
        parallel=True,
        notes="query_key_value interleaved per head: view(H, 3, hd, d)",
    ),
    "opt": Family(
        layers="model.decoder.layers",
        matrices={
            "q": Source("self_attn.q_proj"),
            "k": Source("self_attn.k_proj"),
            "v": Source("self_attn.v_proj"),
            "o": Source("self_attn.out_proj"),
            "up": Source("fc1"),
            "down": Source("fc2"),
        },
        final_norm="model.decoder.final_layer_norm",
        unembed_projection="model.decoder.project_out",
    ),
    "llama": _llama_like(),
    "mistral": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "olmo": _llama_like(norm_gain="none", notes="non-parametric LayerNorm"),
    "olmo2": _llama_like(notes="no pre-norms: q, k, v read the raw residual"),
    "gemma": _llama_like(norm_gain="one_plus_weight", notes="RMSNorm gain is 1 + w"),
    "gemma2": _llama_like(norm_gain="one_plus_weight", notes="RMSNorm gain is 1 + w"),
    "gemma3_text": _llama_like(
        norm_gain="one_plus_weight",
        notes="RMSNorm gain is 1 + w; q and k are normed per head; sliding and global layers",
    ),
    "phi": Family(
        layers="model.layers",
        matrices={
            "q": Source("self_attn.q_proj"),
            "k": Source("self_attn.k_proj"),
            "v": Source("self_attn.v_proj"),
            "o": Source("self_attn.dense"),
            "up": Source("mlp.fc1"),
            "down": Source("mlp.fc2"),
        },
        final_norm="model.final_layernorm",
        parallel=True,
        notes="attention and MLP read one LayerNorm in parallel; lm_head's bias is not part of W_U",
    ),
    "mixtral": _mixture_of_experts("num_local_experts", notes="experts fused as gate_up | down"),
    "olmoe": _mixture_of_experts("num_experts", notes="experts fused; q and k normed"),
    "qwen3_moe": _mixture_of_experts("num_experts", notes="experts fused; q and k normed per head"),
    "phi3": Family(
        layers="model.layers",
        matrices={
            "q": Source("self_attn.qkv_proj", "qkv"),
            "k": Source("self_attn.qkv_proj", "qkv"),
            "v": Source("self_attn.qkv_proj", "qkv"),
            "o": Source("self_attn.o_proj"),
            "gate": Source("mlp.gate_up_proj", "gate_up"),
            "up": Source("mlp.gate_up_proj", "gate_up"),
            "down": Source("mlp.down_proj"),
        },
        final_norm="model.norm",
        notes="qkv_proj is q|k|v with GQA sizes; gate_up_proj is gate|up",
    ),
}
SUPPORTED_MODEL_TYPES = tuple(sorted(FAMILIES))


@dataclass(frozen=True)
class ModelDims:
    """The widths an adapter needs; derived from the config and the weights."""

    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    matrix_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    n_experts: int = 1

    def comparable(self) -> tuple:
        return (
            self.n_experts,
            self.model_type,
            self.n_layers,
            self.d_model,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.vocab_size,
            tuple(sorted(self.matrix_shapes.items())),
        )


def family_of(model) -> Family:
    """The adapter row for `model`, or a ValueError listing the supported types."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported model type {model_type!r}: supported are "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return FAMILIES[model_type]


def layer_modules(model) -> list[torch.nn.Module]:
    return list(model.get_submodule(family_of(model).layers))


def _heads(config) -> tuple[int, int]:
    n_heads = int(config.num_attention_heads)
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    return n_heads, int(n_kv)


def linear_weight(module: torch.nn.Module, parameter: str = "weight") -> torch.Tensor:
    """The module's weight in Linear layout ``[out, in]`` (``[E, out, in]`` for experts; a view)."""
    weight = getattr(module, parameter).detach()
    return weight.T if isinstance(module, Conv1D) else weight


def n_experts(model) -> int:
    """The experts of each MLP (1 for a dense family)."""
    attribute = family_of(model).experts
    return int(getattr(model.config, attribute)) if attribute else 1


def _rows(source: Source, name: str, fused_rows: int, config) -> slice | torch.Tensor:
    """Rows of the Linear-layout fused weight (and output) that belong to `name`."""
    if source.fused is None:
        return slice(None)
    if source.fused == "gate_up":
        half = fused_rows // 2
        return slice(0, half) if name == "gate" else slice(half, fused_rows)
    n_heads, n_kv = _heads(config)
    part = ("q", "k", "v").index(name)
    if source.fused == "qkv":
        head_dim = fused_rows // (n_heads + 2 * n_kv)
        sizes = (n_heads * head_dim, n_kv * head_dim, n_kv * head_dim)
        start = sum(sizes[:part])
        return slice(start, start + sizes[part])
    if source.fused == "qkv_interleaved":
        head_dim = fused_rows // (3 * n_heads)
        rows = np.arange(n_heads)[:, None] * 3 * head_dim + part * head_dim + np.arange(head_dim)
        return torch.as_tensor(rows.ravel())
    raise AssertionError(source.fused)  # the table admits nothing else


def matrix_rows(
    model, layer: int, matrix: str
) -> tuple[torch.nn.Module, slice | torch.Tensor, int]:
    """Where canonical `matrix` of `layer` lives: ``(module, rows, fused_rows)``.

    ``rows`` selects the matrix's rows of the module's Linear-layout weight and
    of its output (all of them unless the module is fused); ``fused_rows`` is
    the module's output width. GPT-2's Conv1D output is already in Linear order.
    """
    family = family_of(model)
    if matrix not in family.matrices:
        raise ValueError(f"{model.config.model_type} has no matrix {matrix!r}")
    source = family.matrices[matrix]
    module = layer_modules(model)[layer].get_submodule(source.module)
    fused_rows = linear_weight(module, source.parameter).shape[-2]
    return module, _rows(source, matrix, fused_rows, model.config), fused_rows


def select_rows(tensor: torch.Tensor, rows) -> torch.Tensor:
    """Rows of a Linear-layout weight (or output), along the second-last axis (experts' stacks)."""
    if isinstance(rows, slice):
        return tensor[..., rows, :] if tensor.ndim == 3 else tensor[rows]
    return tensor.index_select(tensor.ndim - 2 if tensor.ndim == 3 else 0, rows.to(tensor.device))


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    if tensor.is_meta:  # shapes only (e.g. `rsf inspect`): nothing to check
        return
    if not torch.isfinite(tensor).all():
        raise ValueError(f"weight `{name}` contains NaN or Inf")


def _canonical(model, attribute: str, matrices, layers) -> dict[tuple[int, str], torch.Tensor]:
    family = family_of(model)
    wanted = [m for m in (matrices or MATRICES) if m in family.matrices]
    unknown = set(matrices or ()) - set(MATRICES)
    if unknown:
        raise ValueError(f"unknown matrices {sorted(unknown)}: choose from {', '.join(MATRICES)}")
    out: dict[tuple[int, str], torch.Tensor] = {}
    all_layers = layer_modules(model)
    for index in range(len(all_layers)) if layers is None else layers:
        layer = all_layers[index]
        for name in wanted:
            source = family.matrices[name]
            module = layer.get_submodule(source.module)
            if attribute == "weight":
                full = linear_weight(module, source.parameter)
                _check_finite(full, f"{family.layers}.{index}.{source.module}.{source.parameter}")
            else:
                full = getattr(module, "bias", None) if not source.experts else None
                if full is None:
                    continue
                full = full.detach()
            rows = _rows(source, name, full.shape[-2] if full.ndim == 3 else full.shape[0],
                         model.config)  # fmt: skip
            out[(index, name)] = select_rows(full, rows)
    return out


def canonical_weights(model, *, matrices=None, layers=None) -> dict[tuple[int, str], torch.Tensor]:
    """``{(layer, matrix): W}`` in Linear layout ``[n_out, n_in]`` (``[E, n_out, n_in]`` for the
    experts of a mixture-of-experts MLP).

    Tensors share storage with the model where they can (transposes and
    contiguous splits are views); a NaN or Inf is a ValueError naming the tensor.
    Matrices a family lacks (``gate`` outside gated MLPs) are absent.
    """
    return _canonical(model, "weight", matrices, layers)


def canonical_biases(model, *, matrices=None, layers=None) -> dict[tuple[int, str], torch.Tensor]:
    """``{(layer, matrix): b}`` for the matrices that have a bias, split like the weights."""
    return _canonical(model, "bias", matrices, layers)


def unembedding(model) -> torch.Tensor:
    """The unembedding ``W_U [V, d]`` as it acts on the residual stream.

    Tied embeddings are one tensor (``lm_head.weight is wte.weight``) and are
    counted once. OPT models with ``project_out`` map the residual to a smaller
    width first; the effective unembedding folds that projection in.
    """
    family = family_of(model)
    weight = model.get_output_embeddings().weight.detach()
    if family.unembed_projection is not None:
        try:
            projection = model.get_submodule(family.unembed_projection)
        except AttributeError:
            projection = None
        if projection is not None:
            weight = weight.float() @ projection.weight.detach().float()
    _check_finite(weight, "unembedding")
    return weight


def final_norm_gain(model) -> torch.Tensor | None:
    """The final norm's effective per-coordinate gain γ, or None if it has none."""
    family = family_of(model)
    if family.norm_gain == "none":
        return None
    try:
        norm = model.get_submodule(family.final_norm)
    except AttributeError:
        return None
    weight = getattr(norm, "weight", None)
    if weight is None:
        return None
    weight = weight.detach().float()
    return 1.0 + weight if family.norm_gain == "one_plus_weight" else weight


def tied_embeddings(model) -> bool:
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def site_modules(model, layer: int) -> dict[str, tuple[torch.nn.Module, str]]:
    """``{site: (module, "input" | "output")}`` for one layer's activation sites."""
    family = family_of(model)
    block = layer_modules(model)[layer]
    return {
        "attn_in": (block.get_submodule(family.matrices["q"].module), "input"),
        "mlp_in": (block.get_submodule(family.matrices["up"].module), "input"),
        "resid_post": (block, "output"),
    }


def model_dims(model) -> ModelDims:
    """Widths from the config, cross-checked against the weights of layer 0."""
    config = model.config
    family = family_of(model)
    n_heads, n_kv = _heads(config)
    weights = canonical_weights(model, layers=[0])
    shapes = {name: tuple(w.shape) for (_, name), w in weights.items()}
    d_model = shapes["q"][1]
    head_dim = shapes["q"][0] // n_heads
    return ModelDims(
        model_type=config.model_type,
        n_layers=len(model.get_submodule(family.layers)),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        matrix_shapes=shapes,
        n_experts=n_experts(model),
    )


def describe(model) -> dict:
    """The adapter's view of a model: widths, canonical matrices, sites, norms, tying."""
    family = family_of(model)
    dims = model_dims(model)
    layer_path = f"{family.layers}.{{i}}"
    matrices = [
        {
            "matrix": name,
            "module": f"{layer_path}.{source.module}"
            + ("" if source.parameter == "weight" else f".{source.parameter}"),
            "fused": source.fused or "",
            "shape": list(dims.matrix_shapes[name]),
            "pathway": PATHWAY[name],
            "site": SITE_OF[name],
        }
        for name, source in sorted(
            family.matrices.items(), key=lambda item: MATRICES.index(item[0])
        )
    ]
    sites = {
        "attn_in": f"input of {layer_path}.{family.matrices['q'].module}",
        "mlp_in": f"input of {layer_path}.{family.matrices['up'].module}",
        "resid_post": f"output of {layer_path} (last layer: before {family.final_norm})",
    }
    return {
        "model_type": dims.model_type,
        "n_layers": dims.n_layers,
        "d_model": dims.d_model,
        "n_heads": dims.n_heads,
        "n_kv_heads": dims.n_kv_heads,
        "head_dim": dims.head_dim,
        "vocab_size": dims.vocab_size,
        "n_experts": dims.n_experts,
        "tied_embeddings": tied_embeddings(model),
        "parallel_attention_mlp": family.parallel,
        "final_norm": family.final_norm,
        "final_norm_gain": {"weight": "w", "one_plus_weight": "1 + w", "none": "none"}[
            family.norm_gain
        ],
        "matrices": matrices,
        "sites": sites,
        "notes": family.notes,
    }
