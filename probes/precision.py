"""Storage types and the rounding floor of a delta: how much of ``ΔW`` rounding alone could make.

Every stored weight sits on a grid: a float type's (the spacing of
representable numbers at that value: its unit in the last place) or a
block-quantised type's (GGUF's ``Q8_0``, ``Q4_1``, ``Q4_K``…: within each block
or sub-block the values are ``step · q + offset`` with integer codes ``q``; the
step is the block's scale, stored in the block). Rounding a weight to its
grid moves it by at most half a step; under the standard model of rounding
error (uniform on ``[−step/2, step/2]``, independent between elements) its
variance is ``step²/12``.

**The rounding floor** of one side of a delta is ``sqrt(Σ step²/12)`` over the
matrix's elements, with the step of the coarser of the stored type and the
dtype the model is run in. Between two checkpoints rounded independently
from float weights, the delta carries both sides' rounding, so the floor of
``ΔW`` is ``sqrt(floor_base² + floor_aligned²)``; the sweep stores it as a
ratio to ``‖ΔW‖_F`` (``quantisation_floor``). A delta between a dequantised
checkpoint and a float model fine-tuned *from it* is exact (the quantised
grid is its starting point), which the floor cannot know: the report says so
where one side is quantised and the other is not.

The block layouts below are GGUF's (ggml's ``block_q8_0``, ``block_q4_K``…):
the step of each block is read from the block's own scale fields. Types
without a linear grid (the ``IQ`` codebooks, ternary ``TQ``, ``MXFP4``) have no
step of this kind: their floor is NaN and the report says it was not
estimated.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "FLOAT_STORAGE",
    "REDUCED_STORAGE",
    "float_step",
    "gguf_steps",
    "storage_of_dtype",
]

# Storage type names: safetensors' for float types (F32, F16, BF16), GGUF's for the rest.
_DTYPE_STORAGE = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
}
FLOAT_STORAGE = frozenset(_DTYPE_STORAGE.values())
REDUCED_STORAGE = frozenset({"F16", "BF16"})  # float types coarser than float32


def storage_of_dtype(dtype: torch.dtype) -> str:
    """The storage name of a torch dtype (``torch.float32`` → ``F32``)."""
    return _DTYPE_STORAGE.get(dtype, str(dtype).removeprefix("torch.").upper())


# Mantissa bits below float32's 23 (float16: 10, bfloat16: 7); float16's exponent range is
# narrower too, which np.spacing on float16 values handles itself.
def float_step(values: np.ndarray, storage: str) -> np.ndarray:
    """The spacing of `storage`'s representable numbers at each of `values` (float32 out)."""
    values = np.asarray(values)
    if storage == "F64":
        return np.spacing(values.astype(np.float64)).astype(np.float32)
    if storage == "F32":
        return np.abs(np.spacing(values.astype(np.float32)))
    if storage == "F16":
        return np.abs(np.spacing(values.astype(np.float16))).astype(np.float32)
    if storage == "BF16":
        # bfloat16 is float32 with 16 fewer mantissa bits: its spacing is float32's × 2^16
        # (NumPy has no bfloat16 type to ask).
        rounded = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        rounded = rounded.to(torch.bfloat16).to(torch.float32).numpy()
        return np.abs(np.spacing(rounded)) * np.float32(2**16)
    raise ValueError(f"{storage} is not a float storage type")


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian float16 fields (two bytes each, last axis) as float32."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)[..., 0]


def _blocks(raw: np.ndarray, type_size: int) -> np.ndarray:
    return np.ascontiguousarray(raw).reshape(-1, type_size)


def _simple(type_size: int, block: int):
    """Legacy formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): the scale ``d`` opens every block."""

    def steps(raw):
        d = np.abs(_f16(_blocks(raw, type_size)[:, :2]))
        return np.repeat(d[:, None], block, axis=1)

    return steps


def _k_quant_scales(scales: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 8 six-bit sub-block scales, packed in 12 bytes (mins not needed for the step)."""
    from gguf.quants import Q4_K

    return Q4_K.get_scale_min(scales)[0].astype(np.float32)


def _q4_k(type_size: int):
    # block_q4_K / block_q5_K: d (f16), dmin (f16), scales[12], …; 8 sub-blocks of 32.
    def steps(raw):
        blocks = _blocks(raw, type_size)
        d = _f16(blocks[:, :2])
        step = np.abs(d[:, None] * _k_quant_scales(blocks[:, 4:16]))
        return np.repeat(step, 32, axis=1)

    return steps


def _q6_k(raw):
    # block_q6_K: ql[128], qh[64], scales[16] (int8), d (f16); 16 sub-blocks of 16.
    blocks = _blocks(raw, 210)
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32)
    step = np.abs(_f16(blocks[:, 208:210])[:, None] * scales)
    return np.repeat(step, 16, axis=1)


def _q2_k(raw):
    # block_q2_K: scales[16] (low nibble: scale, high: min), qs[64], d (f16), dmin (f16).
    blocks = _blocks(raw, 84)
    scales = (blocks[:, :16] & 0x0F).astype(np.float32)
    step = np.abs(_f16(blocks[:, 80:82])[:, None] * scales)
    return np.repeat(step, 16, axis=1)


_GGUF_STEPS = {
    "Q4_0": _simple(18, 32),
    "Q4_1": _simple(20, 32),
    "Q5_0": _simple(22, 32),
    "Q5_1": _simple(24, 32),
    "Q8_0": _simple(34, 32),
    "Q2_K": _q2_k,
    "Q4_K": _q4_k(144),
    "Q5_K": _q4_k(176),
    "Q6_K": _q6_k,
}


def gguf_steps(raw: np.ndarray, storage: str, values: np.ndarray) -> np.ndarray | None:
    """Each element's grid step for a GGUF tensor (its raw blocks, row-major), shaped as `values`.

    `values` are the dequantised values (for the float types' spacing).
    ``None`` for a type without a linear grid (see the module docstring).
    """
    if storage in FLOAT_STORAGE:
        return float_step(values, storage)
    steps = _GGUF_STEPS.get(storage)
    if steps is None:
        return None
    return steps(raw).reshape(values.shape)
