"""One layer's weight deltas of a streamed pair, and the rounding floor under them.

Both sides are :class:`probes.LayerwiseModel` skeletons over their checkpoints
(or wrapped loaded models); one module of one model is materialised at a
time. A fused module is read once for all the canonical matrices it holds,
which are split by the adapter table's rows (:func:`probes.matrix_rows`), as
for a loaded model. When the aligned side carries a LoRA adapter its delta is
the adapter's own product ``s · B A``, never a difference of merged weights,
and it has no rounding floor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from transformers.pytorch_utils import Conv1D

from .adapters import MATRICES, canonical_weights, matrix_rows, select_rows
from .layerwise import LayerwiseModel, linear_shape

__all__ = [
    "Precision",
    "layer_deltas",
    "layer_precision",
]


def _module_weights(
    side: LayerwiseModel, layer: int, prefix: str, names: list[str]
) -> dict[str, torch.Tensor]:
    """``{matrix: W}`` of the canonical matrices `names` held by one module (`prefix`).

    The module is materialised for the read only, and each matrix upcast
    exactly to a float32 copy on the CPU, so nothing refers to the released
    parameters.
    """
    with side.parts(prefix) as model:
        found = canonical_weights(model, matrices=names, layers=[layer])
        return {m: found[(layer, m)].to("cpu", torch.float32, copy=True) for m in names}


def _adapter_deltas(
    base: LayerwiseModel, adapter, layer: int, prefix: str, names: list[str]
) -> dict[str, torch.Tensor]:
    """``{matrix: ΔW}`` of one module under `adapter` (a :class:`probes.LoraAdapter`): its ``s · B A``.

    The module's delta is split into its matrices by the same rows as the
    weight (a fused module's); zero where the adapter does not target the module.
    """
    full = adapter.delta(prefix.removesuffix("."))
    deltas = {}
    for matrix in names:
        module, rows, _ = matrix_rows(base.model, layer, matrix)
        if full is None:
            full_zero = torch.zeros(linear_shape(module), dtype=torch.float32)
            deltas[matrix] = select_rows(full_zero, rows).clone()
        else:
            deltas[matrix] = select_rows(full, rows).clone()
    return deltas


def layer_deltas(
    base: LayerwiseModel,
    aligned: LayerwiseModel,
    layer: int,
    matrices: Iterable[str] = MATRICES,
    *,
    with_base: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``({matrix: ΔW}, {matrix: W_base})`` of one layer, float32 on the CPU, Linear layout.

    One module of one model is materialised at a time (a fused module once
    for all its matrices), upcast exactly to float32, and released before the
    next; ``W_base`` is kept only with ``with_base``. When `aligned` carries a
    LoRA adapter the delta is the adapter's own ``s · B A`` (zero for the
    modules it does not target), never a difference of merged weights.
    """
    wanted = [m for m in matrices if m in base.family.matrices]
    by_module: dict[str, list[str]] = {}
    for matrix in wanted:
        by_module.setdefault(base.module_prefix(layer, matrix), []).append(matrix)
    deltas, weights = {}, {}
    for prefix, names in by_module.items():
        if aligned.adapter is not None:
            deltas.update(_adapter_deltas(base, aligned.adapter, layer, prefix, names))
            if with_base:
                weights.update(_module_weights(base, layer, prefix, names))
            continue
        sides = [_module_weights(side, layer, prefix, names) for side in (base, aligned)]
        for matrix in names:
            deltas[matrix] = sides[1][matrix] - sides[0][matrix]
            if with_base:
                weights[matrix] = sides[0][matrix]
        del sides
    return deltas, weights


@dataclass(frozen=True)
class Precision:
    """How one canonical matrix is stored on each side, and its delta's rounding floor.

    ``floor`` is ``sqrt(Σ step²/12)`` over the matrix's elements, both sides
    together (:mod:`probes.precision`): NaN where a side's type has no linear
    grid, 0 for a LoRA adapter's delta (its own product ``s·BA``, no
    difference of rounded weights).
    """

    base: str
    aligned: str
    floor: float


def layer_precision(
    base: LayerwiseModel, aligned: LayerwiseModel, layer: int, matrices: Iterable[str] = MATRICES
) -> dict[str, Precision]:
    """``{matrix: Precision}`` of one layer: each side's storage type and the delta's rounding floor.

    Reads each module's stored tensor (a fused one once for all its matrices);
    the steps are selected by the same rows as the canonical matrices.
    """
    wanted = [m for m in matrices if m in base.family.matrices]
    if aligned.adapter is not None:
        return {
            m: Precision(base.storage(base.parameter_name(layer, m)), "LoRA", 0.0) for m in wanted
        }
    by_module: dict[str, list[str]] = {}
    for matrix in wanted:
        by_module.setdefault(base.parameter_name(layer, matrix), []).append(matrix)
    out = {}
    for name, names in by_module.items():
        storages = [side.storage(name) for side in (base, aligned)]
        variances = [side.rounding_variance(name) for side in (base, aligned)]
        for matrix in names:
            module, rows, _ = matrix_rows(base.model, layer, matrix)
            total = 0.0
            for per_element in variances:
                if per_element is None:
                    total = float("nan")
                    break
                linear = torch.from_numpy(per_element)
                linear = linear.T if isinstance(module, Conv1D) else linear  # Conv1D: [in, out]
                total += float(select_rows(linear, rows).sum())
            out[matrix] = Precision(storages[0], storages[1], float(np.sqrt(total)))
        del variances
    return out
