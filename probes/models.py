"""Loading models and pairing them: both sides of a delta loaded the same way.

``trust_remote_code`` is off unless the caller turns it on. A mismatched pair
(model type, layer count, widths, vocabulary) is refused before any heavy work.
"""

from __future__ import annotations

import hashlib
import warnings

import torch
from transformers import AutoModelForCausalLM

from .adapters import MATRICES, canonical_weights, family_of, model_dims

__all__ = ["check_pair", "extract_deltas", "load_model", "weights_hash"]

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype | None = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """Load a causal LM from a directory written by ``save_pretrained`` or a hub id.

    The model is put in eval mode and its adapter is checked at once, so an
    unsupported architecture fails before anything else happens.
    """
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose from {', '.join(_DTYPES)}")
        dtype = _DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, trust_remote_code=trust_remote_code
    )
    family_of(model)
    return model.to(device).eval()


def check_pair(base, aligned) -> None:
    """Raise ValueError unless `base` and `aligned` share architecture and every width."""
    family_of(base)
    family_of(aligned)
    a, b = model_dims(base), model_dims(aligned)
    if a.comparable() != b.comparable():
        differences = [
            f"{name}: {getattr(a, name)} vs {getattr(b, name)}"
            for name in (
                "model_type",
                "n_layers",
                "d_model",
                "n_heads",
                "n_kv_heads",
                "head_dim",
                "vocab_size",
                "matrix_shapes",
            )
            if getattr(a, name) != getattr(b, name)
        ]
        raise ValueError("mismatched pair (base vs aligned): " + "; ".join(differences))


def extract_deltas(base_model, aligned_model, *, matrices=None, layers=None):
    """``{(layer, matrix): ΔW}`` with ``ΔW = W_aligned − W_base`` in Linear layout.

    Deltas are float32 on the CPU (bf16/fp16 weights are upcast exactly before
    subtracting). An all-zero delta is kept, with a warning: its subspace
    fractions are NaN.
    """
    check_pair(base_model, aligned_model)
    matrices = tuple(matrices or MATRICES)
    from_w = canonical_weights(base_model, matrices=matrices, layers=layers)
    to_w = canonical_weights(aligned_model, matrices=matrices, layers=layers)
    deltas = {}
    zero = []
    for key, w_from in from_w.items():
        delta = to_w[key].detach().to("cpu", torch.float32) - w_from.detach().to(
            "cpu", torch.float32
        )
        if not torch.any(delta):
            zero.append(key)
        deltas[key] = delta
    if zero:
        shown = ", ".join(f"layer {layer} {name}" for layer, name in zero[:6])
        more = f" and {len(zero) - 6} more" if len(zero) > 6 else ""
        warnings.warn(
            f"all-zero delta for {shown}{more}: their fractions are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    return deltas


def weights_hash(model) -> str:
    """SHA-256 of every parameter (name, dtype, shape, bytes); tied tensors counted once."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()
