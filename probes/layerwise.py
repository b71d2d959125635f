"""One layer at a time: a checkpoint measured without ever holding the model whole.

A :class:`LayerwiseModel` is the model's skeleton, built from its config
alone with every parameter on PyTorch's ``meta`` device (accelerate's
``init_empty_weights``: shapes, no storage), over the checkpoint's stored
tensors (:class:`probes.Checkpoint`). A part of the model is materialised
from the checkpoint when it is needed and released after, so memory holds
one part at a time. Canonical matrices come from the materialised modules
through the adapter table (:func:`probes.canonical_weights`), so fused
matrices are split by the same rules as for a loaded model. A model already
in memory can be wrapped too (``LayerwiseModel.loaded``); then nothing is
materialised or released.

What is measured over the skeleton lives beside it: one layer's deltas and
their rounding floor in :mod:`probes.streamed_deltas`, the layer-sequential
statistics pass in :mod:`probes.sequential_pass`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextlib import contextmanager

import numpy as np
import torch
from transformers.pytorch_utils import Conv1D

from .adapters import family_of, layer_modules, linear_weight
from .checkpoints import Checkpoint
from .precision import REDUCED_STORAGE, float_step, storage_of_dtype

__all__ = [
    "LayerwiseModel",
    "NotStreamable",
    "linear_shape",
]


class NotStreamable(ValueError):
    """The checkpoint's tensors do not match the model its config builds (names or shapes)."""


def _dtype_of(config, dtype) -> torch.dtype:
    from .models import DTYPES

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        stored = getattr(config, "dtype", None)  # transformers ≥ 4.56 (torch_dtype before)
        if isinstance(stored, str):
            stored = DTYPES.get(stored)
        return stored if isinstance(stored, torch.dtype) else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose from auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


class LayerwiseModel:
    """A model's skeleton over its checkpoint, materialised one part at a time.

    Build with :meth:`from_checkpoint` (streamed) or :meth:`loaded` (a model
    already in memory). ``model`` is the skeleton (or the loaded model):
    every adapter function works on it, on the parts that are materialised.
    """

    def __init__(
        self, model, checkpoint: Checkpoint | None, names: dict[str, str], device, adapter=None
    ):
        self.model = model.eval()
        self.checkpoint = checkpoint
        self.adapter = adapter  # a probes.LoraAdapter merged into every part as it is read
        self._names = names  # parameter name → checkpoint tensor name
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self.family = family_of(model)
        self.quantisation: str | None = None  # a loaded model dequantised from this method

    @classmethod
    def loaded(cls, model, *, quantisation: str | None = None) -> LayerwiseModel:
        """Wrap a model already in memory: nothing is read or released.

        `quantisation` names the method its weights were dequantised from
        (transformers' ``quant_method``), for :meth:`storage`.
        """
        wrapped = cls(model, None, {}, next(model.parameters()).device)
        wrapped.quantisation = quantisation
        return wrapped

    @classmethod
    def from_checkpoint(
        cls,
        source: str,
        *,
        dtype: str | torch.dtype = "auto",
        device: str = "cpu",
        trust_remote_code: bool = False,
        adapter=None,
    ) -> LayerwiseModel:
        """The skeleton of `source` (a directory or hub id) from its config; no weights read.

        With `adapter` (a :class:`probes.LoraAdapter` on this base) every part
        is materialised merged, ``W + s·BA`` (the adapter's targeted modules must
        exist in the model with the adapter's shapes).

        Raises :class:`NotStreamable` when a parameter of the skeleton has no
        stored tensor of the same shape (legacy names, say): the caller then
        loads the model whole.
        """
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        checkpoint = Checkpoint(source, trust_remote_code=trust_remote_code)
        config = checkpoint.config()
        quantisation = getattr(config, "quantization_config", None)
        if quantisation and checkpoint.format != "gguf":
            method = (
                quantisation.get("quant_method", "unnamed")
                if isinstance(quantisation, dict)
                else getattr(quantisation, "quant_method", "unnamed")
            )
            # Its stored tensors are codes and scales only transformers' quantizer can read.
            raise NotStreamable(f"{checkpoint.source} is quantised with {method}")
        torch_dtype = _dtype_of(config, dtype)
        with init_empty_weights():  # parameters on meta, buffers (rotary tables) real
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
        family_of(model)
        for module in model.modules():  # buffers (rotary tables) live where the weights will
            for key, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[key] = buffer.to(device)
        _check_layer_count(model, checkpoint)
        stored = _stored_names(model, checkpoint)  # model's parameter name → stored name
        names = {}
        for name, param in model.named_parameters():
            found = stored.get(name)
            if found is None:
                if _tied_output(model, name):
                    continue  # the output embedding shares the input embedding's tensor
                raise NotStreamable(f"{checkpoint.source} has no tensor for parameter {name!r}")
            shape = checkpoint.shape(found)
            if shape != tuple(param.shape):
                raise NotStreamable(
                    f"{checkpoint.source}: {found!r} is stored {shape}, the model has {tuple(param.shape)}"
                )
            names[name] = found
        layerwise = cls(model, checkpoint, names, device, adapter)
        layerwise.dtype = torch_dtype
        if adapter is not None:
            layerwise._check_adapter()
        return layerwise

    def _check_adapter(self) -> None:
        for module in self.adapter.modules:
            if f"{module}.weight" not in self._names:
                raise ValueError(
                    f"adapter {self.adapter.source} targets {module!r}, which "
                    f"{self.checkpoint.source} does not have"
                )
            expected = tuple(linear_shape(self.model.get_submodule(module)))
            if self.adapter.shape(module) != expected:
                raise ValueError(
                    f"adapter {self.adapter.source}: {module} is {self.adapter.shape(module)}, "
                    f"the base's is {expected}"
                )

    def _merged(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """`value` with the adapter's delta added, when `name` is a targeted module's weight."""
        module = name.removesuffix(".weight")
        if (
            self.adapter is None
            or not name.endswith(".weight")
            or module not in self.adapter.modules
        ):
            return value.to(self.dtype)
        delta = self.adapter.delta(module)
        if isinstance(self.model.get_submodule(module), Conv1D):
            delta = delta.T  # stored [in, out]
        return (value.to(torch.float32) + delta).to(self.dtype)

    @property
    def streamed(self) -> bool:
        return self.checkpoint is not None

    def storage(self, name: str) -> str:
        """How parameter `name` is stored: its checkpoint's type, or a loaded model's dtype."""
        if not self.streamed:
            return self.quantisation or storage_of_dtype(self.model.get_parameter(name).dtype)
        return self.checkpoint.storage(self._names[name])

    def rounding_variance(self, name: str) -> np.ndarray | None:
        """``step²/12`` for each element of parameter `name` (:mod:`probes.precision`).

        The step is the coarser of the stored grid's and the run dtype's (a
        float32 checkpoint run in bfloat16 is rounded again when it is read).
        ``None`` where the storage type has no linear grid.
        """
        if self.quantisation is not None:
            return None  # dequantised by transformers: its grid is the method's own
        if not self.streamed:
            values = self.model.get_parameter(name).detach().to("cpu", torch.float32).numpy()
            steps = float_step(values, storage_of_dtype(self.dtype))
        else:
            stored = self._names[name]
            steps = self.checkpoint.steps(stored)
            run = storage_of_dtype(self.dtype)
            if steps is not None and run in REDUCED_STORAGE:
                values = self.checkpoint.get(stored).to(torch.float32).numpy()
                steps = np.maximum(steps, float_step(values, run))
        return None if steps is None else steps.astype(np.float64) ** 2 / 12

    def _params(self, prefixes: Iterable[str]) -> list[str]:
        prefixes = tuple(prefixes)
        return [name for name in self._names if name.startswith(prefixes)]

    def materialise(self, *prefixes: str) -> None:
        """Read every parameter under `prefixes` (module paths ending in ``.``) from the checkpoint."""
        if not self.streamed:
            return
        from accelerate.utils import set_module_tensor_to_device

        for name in self._params(prefixes):
            value = self._merged(name, self.checkpoint.get(self._names[name]))
            set_module_tensor_to_device(self.model, name, self.device, value=value)
            del value
        if self.model.config.tie_word_embeddings:
            self.model.tie_weights()

    def release(self, *prefixes: str) -> None:
        """Return every parameter under `prefixes` to the meta device (its memory freed)."""
        if not self.streamed:
            return
        from accelerate.utils import set_module_tensor_to_device

        for name in self._params(prefixes):
            set_module_tensor_to_device(self.model, name, "meta")

    @contextmanager
    def parts(self, *prefixes: str):
        """Materialise `prefixes` for the ``with`` block, release them after."""
        self.materialise(*prefixes)
        try:
            yield self.model
        finally:
            self.release(*prefixes)

    def layer_prefix(self, layer: int) -> str:
        return f"{self.family.layers}.{layer}."

    def stage_prefixes(self) -> list[str]:
        """The base transformer's parameters outside its decoder layers (embeddings, final norm).

        The unembedding is not among them: the statistics pass never computes logits.
        """
        body, inside = f"{self.model.base_model_prefix}.", f"{self.family.layers}."
        return [n for n in self._names if n.startswith(body) and not n.startswith(inside)]

    def prediction_prefixes(self) -> list[str]:
        """The unembedding, its projection (OPT) and the final norm: what the prediction bases read."""
        output = _parameter_name(self.model, self.model.get_output_embeddings().weight)
        wanted = [output, f"{self.family.final_norm}."]
        if self.family.unembed_projection is not None:
            wanted.append(f"{self.family.unembed_projection}.")
        if output not in self._names:  # tied: the input embedding's stored tensor
            wanted.append(_parameter_name(self.model, self.model.get_input_embeddings().weight))
        return [w for w in wanted if w is not None]

    def module_prefix(self, layer: int, matrix: str) -> str:
        return f"{self.layer_prefix(layer)}{self.family.matrices[matrix].module}."

    def parameter_name(self, layer: int, matrix: str) -> str:
        """The parameter holding `matrix` of `layer` (``….weight``; experts: ``….gate_up_proj``)."""
        return f"{self.module_prefix(layer, matrix)}{self.family.matrices[matrix].parameter}"


def _check_layer_count(model, checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint holding more decoder layers than its config builds (never sweep fewer)."""
    n_layers = len(layer_modules(model))
    container = family_of(model).layers.rsplit(".", 1)[-1]
    pattern = re.compile(rf"(?:^|\.){re.escape(container)}\.(\d+)\.")
    stored = {int(m.group(1)) for name in checkpoint.names() if (m := pattern.search(name))}
    if stored and max(stored) >= n_layers:
        raise ValueError(
            f"{checkpoint.source} holds weights of {max(stored) + 1} layers where its config.json "
            f"builds {n_layers}: the config and the checkpoint disagree"
        )


def linear_shape(module) -> tuple[int, int]:
    """A module's weight shape in Linear layout (the adapters' own view; meta weights too)."""
    return tuple(linear_weight(module).shape)


def _stored_names(model, checkpoint: Checkpoint) -> dict[str, str]:
    """``{parameter name: stored tensor name}``, by transformers' own renaming rules.

    ``from_pretrained`` renames some stored keys (GPT-NeoX's ``embed_out`` is
    the model's ``lm_head``, legacy checkpoints lack the base-model prefix);
    the same rules are applied here, so a checkpoint streams exactly when it
    loads. Tensors that transformers would merge or split on loading are not
    renamed, and the parameters they make are then reported missing.
    """
    meta = dict(model.state_dict())
    prefix = model.base_model_prefix
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]

        def rename(key):
            return rename_source_key(key, renamings, [], prefix, meta)[0]
    except (ImportError, TypeError, AttributeError):  # other transformers versions: prefixes only

        def rename(key):
            if key in meta:
                return key
            if f"{prefix}.{key}" in meta:
                return f"{prefix}.{key}"
            return key.removeprefix(f"{prefix}.")

    return {rename(key): key for key in checkpoint.names()}


def _tied_output(model, name: str) -> bool:
    output = model.get_output_embeddings()
    return (
        bool(getattr(model.config, "tie_word_embeddings", False))
        and output is not None
        and name == _parameter_name(model, output.weight)
    )


def _parameter_name(model, parameter) -> str | None:
    for name, param in model.named_parameters(remove_duplicate=False):
        if param is parameter:
            return name
    return None
