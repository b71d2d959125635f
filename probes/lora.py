"""LoRA adapters as the aligned side: ``ΔW = s · B A`` per targeted module, no second model.

PEFT writes an adapter as ``adapter_config.json`` and ``adapter_model.safetensors``
holding, for each targeted module at path ``P`` of the base causal LM,
``base_model.model.P.lora_A.weight [r, n_in]`` and ``….lora_B.weight [n_out, r]``.
Merged into the base (what PEFT's ``merge_and_unload`` does), the module's weight
in Linear layout becomes ``W + s · B A`` with ``s = lora_alpha / r``, or
``lora_alpha / √r`` with ``use_rslora``; ``rank_pattern`` and ``alpha_pattern``
override ``r`` and ``lora_alpha`` for the modules whose path ends with a key
(PEFT's own matching rule). GPT-2's Conv1D modules store ``W`` transposed
(``fan_in_fan_out``); in Linear layout their delta is still ``B A``.

The delta is read from the adapter alone (two small tensors per module),
never by building and subtracting a merged model. What a weight delta cannot
show is refused or said: DoRA's magnitude vectors make the merged weight
depend on ``W`` (refused); ``modules_to_save`` (fully trained copies) and
trained biases are not LoRA deltas (named in :attr:`LoraAdapter.ignored`).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch

from .checkpoints import ADAPTER_WEIGHTS, Checkpoint

__all__ = ["ADAPTER_CONFIG", "LoraAdapter", "is_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."


def is_adapter(spec: str | os.PathLike) -> bool:
    """Whether `spec` is a PEFT adapter directory (an ``adapter_config.json``, no ``config.json``)."""
    path = Path(os.path.expanduser(str(spec)))
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def _pattern_value(patterns: dict, module: str, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


class LoraAdapter:
    """One PEFT LoRA adapter: its targeted modules and their exact deltas.

    Parameters
    ----------
    source : path
        The adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).
    """

    def __init__(self, source: str | os.PathLike):
        self.source = str(source)
        root = Path(os.path.expanduser(self.source))
        try:
            self.config = json.loads((root / ADAPTER_CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{source}: cannot read {ADAPTER_CONFIG}: {error}") from None
        kind = self.config.get("peft_type", "LORA")
        if kind != "LORA":
            raise ValueError(f"{source} is a {kind} adapter: only LoRA adapters are supported")
        if self.config.get("use_dora"):
            raise ValueError(
                f"{source} is a DoRA adapter: its merged weight rescales W, so it has no "
                "weight-independent delta; merge it (peft merge_and_unload) and pass the merged model"
            )
        if not (root / ADAPTER_WEIGHTS).is_file():
            raise ValueError(f"{source} has no {ADAPTER_WEIGHTS}")
        self.checkpoint = Checkpoint(root)
        self.modules: dict[str, tuple[str, str]] = {}
        for name in self.checkpoint.names():
            if name.endswith(".lora_A.weight"):
                module = name.removeprefix(_PREFIX).removesuffix(".lora_A.weight")
                partner = name.replace(".lora_A.weight", ".lora_B.weight")
                if partner not in self.checkpoint:
                    raise ValueError(f"{source}: {name} has no lora_B partner")
                self.modules[module] = (name, partner)
        if not self.modules:
            raise ValueError(f"{source} holds no lora_A / lora_B weights")
        self.ignored = sorted(
            {n.removeprefix(_PREFIX) for n in self.checkpoint.names() if ".lora_" not in n}
        )
        self.base_model = self.config.get("base_model_name_or_path")

    def scale(self, module: str) -> float:
        """``lora_alpha / r`` (``/ √r`` with rsLoRA) for `module`, patterns applied."""
        r = _pattern_value(self.config.get("rank_pattern"), module, self.config.get("r", 8))
        alpha = _pattern_value(
            self.config.get("alpha_pattern"), module, self.config.get("lora_alpha", 8)
        )
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def shape(self, module: str) -> tuple[int, int]:
        """``(n_out, n_in)`` of the targeted module's delta, from the stored shapes."""
        a, b = self.modules[module]
        return self.checkpoint.shape(b)[0], self.checkpoint.shape(a)[1]

    def delta(self, module: str) -> torch.Tensor | None:
        """``s · B A`` in Linear layout ``[n_out, n_in]``, float32; ``None`` if `module` is not targeted."""
        if module not in self.modules:
            return None
        a, b = self.modules[module]
        lora_a = self.checkpoint.get(a).to(torch.float32)
        lora_b = self.checkpoint.get(b).to(torch.float32)
        return self.scale(module) * (lora_b @ lora_a)
