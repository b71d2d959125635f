"""Loading models and pairing them: both sides of a delta loaded the same way.

``trust_remote_code`` is off unless the caller turns it on. A mismatched pair
(model type, layer count, widths, vocabulary) is refused before any heavy work.
The weights hash is defined over a checkpoint's stored tensors
(:func:`probes.checkpoints.weights_hash`), not over a loaded model.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from .adapters import (
    MATRICES,
    canonical_weights,
    family_of,
    final_norm_gain,
    model_dims,
    unembedding,
)
from .gguf import pretrained_arguments
from .names import DTYPE_NAMES
from .subspaces import Subspace, unembedding_subspaces

__all__ = [
    "DTYPES",
    "check_pair",
    "dequantised",
    "extract_deltas",
    "load_model",
    "prediction_subspaces",
    "quantisation_method",
]

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype | None = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """Load a causal LM from a ``save_pretrained`` directory, a hub id or a GGUF file.

    The model is put in eval mode and its adapter is checked at once, so an
    unsupported architecture fails before anything else happens. A checkpoint
    whose tensors do not cover the model its config builds (a tensor missing,
    or a tensor the model has no place for, such as a layer beyond the
    config's count) is refused: nothing is initialised at random in its place.
    A GGUF file is dequantised by transformers' GGUF loader; a directory whose
    config carries a ``quantization_config`` is loaded by transformers'
    quantizer for it and dequantised (:func:`dequantised`).
    """
    if isinstance(dtype, str) and dtype != "auto":  # auto: the checkpoint's stored dtype
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: choose from {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    path, extra = pretrained_arguments(str(name_or_path))
    method = quantisation_method(path) if not extra else None
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **extra,
        )
    except RuntimeError as error:
        if method is not None:
            raise _cannot_dequantise(name_or_path, method, error) from None
        # transformers' report of stored tensors whose shapes disagree
        raise ValueError(
            f"cannot load {name_or_path}: the shapes of its stored tensors do not fit the model "
            "its config.json builds"
        ) from None
    except (ImportError, ValueError, OSError) as error:
        if method is None:
            raise
        raise _cannot_dequantise(name_or_path, method, error) from None
    if method is not None:
        model = dequantised(model, name_or_path, method)
    if extra:
        # transformers' GGUF loader leaves a quantizer on a model whose weights it already
        # dequantised to float, and refuses to save it: what was loaded is a plain float model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    for kind, what in (
        ("missing_keys", "lacks"),
        ("unexpected_keys", "holds tensors the model has no place for, such as"),
    ):
        keys = sorted(info.get(kind) or ())
        if keys:
            raise ValueError(
                f"{name_or_path} {what} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''} "
                f"({len(keys)} in all): its weights and its config.json disagree"
            )
    family_of(model)
    return model.to(device).eval()


def quantisation_method(path: str) -> str | None:
    """The ``quant_method`` of a local directory's ``quantization_config`` (``None`` without one)."""
    config_file = Path(os.path.expanduser(path)) / "config.json"
    if not config_file.is_file():
        return None
    try:
        document = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # the config's own check says what is wrong with it
    quantisation = document.get("quantization_config") if isinstance(document, dict) else None
    if not isinstance(quantisation, dict):
        return None
    return str(quantisation.get("quant_method", "unnamed"))


def _cannot_dequantise(spec, method: str, error: BaseException) -> ValueError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ValueError(
        f"{spec} is quantised with {method}, which transformers cannot load and dequantise with "
        f"the installed packages: {first}"
    )


def dequantised(model, spec, method: str):
    """`model` (loaded through transformers' quantizer for `method`) with float weights.

    transformers' own ``dequantize`` (each quantizer's inverse); a quantizer
    without one is a one-line error naming the method. A model transformers
    already dequantised while loading (FP8 without a GPU) is returned as is.
    """
    if not getattr(model, "is_quantized", False):
        return model
    try:
        model = model.dequantize()
    except (NotImplementedError, ValueError, AttributeError, RuntimeError, ImportError) as error:
        raise _cannot_dequantise(spec, method, error) from None
    return model


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


def prediction_subspaces(model) -> dict[str, Subspace]:
    """``unembed``, ``unembed_centered`` and ``unembed_folded`` of `model`'s unembedding.

    A final norm without a gain (OLMo-1) folds in nothing: ``unembed_folded``
    is then the ``unembed`` basis itself (callers that report it say so).
    """
    subspaces = unembedding_subspaces(unembedding(model), gain=final_norm_gain(model))
    if "unembed_folded" not in subspaces:
        plain = subspaces["unembed"]
        subspaces["unembed_folded"] = Subspace("unembed_folded", plain.basis, plain.spectrum)
    return subspaces
