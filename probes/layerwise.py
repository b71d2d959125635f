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

**The layer-sequential statistics pass** (:func:`layerwise_statistics`) is
what GPTQ-style calibration does: the corpus is run through the embedding
stage once, the hidden states of every token are kept at the current layer
boundary (``[sequences, seq_len, d]`` in the model's dtype; in a temporary
file when larger than :data:`HIDDEN_IN_MEMORY`), and one decoder layer at a
time is run over them, accumulating that layer's sites with the same hooks
and the same batches as the hooked full pass (:func:`probes.collect_statistics`),
so the sums are the same numbers. The arguments each layer receives besides
its hidden states (attention masks, rotary embeddings, cache positions) do
not depend on the tokens, only on the batch's shape: they are captured once
per shape from one run of the model's own forward, layer 0 computed and
every later layer passed through, so families whose layers differ (sliding
and global attention) get each layer's own.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from .activations import (
    Accumulator,
    ActivationStatistics,
    expert_load_hooks,
    site_hooks,
    statistics_batches,
)
from .adapters import (
    MATRICES,
    _linear_weight,
    _select,
    canonical_weights,
    family_of,
    layer_modules,
    matrix_rows,
)
from .checkpoints import Checkpoint
from .precision import REDUCED_STORAGE, float_step, storage_of_dtype

__all__ = [
    "HIDDEN_IN_MEMORY",
    "LayerwiseModel",
    "NotStreamable",
    "layer_deltas",
    "layer_precision",
    "layerwise_statistics",
]

HIDDEN_IN_MEMORY = 1 << 30  # bytes of hidden states kept in memory; beyond, a temporary file


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
            expected = tuple(_linear_shape(self.model.get_submodule(module)))
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


def _linear_shape(module) -> tuple[int, int]:
    """A module's weight shape in Linear layout (the adapters' own view; meta weights too)."""
    return tuple(_linear_weight(module).shape)


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
        if aligned.adapter is not None:  # exactly s·BA, split like the weight; zero if untargeted
            full = aligned.adapter.delta(prefix.removesuffix("."))
            for matrix in names:
                module, rows, _ = matrix_rows(base.model, layer, matrix)
                if full is None:
                    full_zero = torch.zeros(_linear_shape(module), dtype=torch.float32)
                    deltas[matrix] = _select(full_zero, rows).clone()
                else:
                    deltas[matrix] = _select(full, rows).clone()
            if with_base:
                with base.parts(prefix) as model:
                    found = canonical_weights(model, matrices=names, layers=[layer])
                    for matrix in names:
                        weights[matrix] = found[(layer, matrix)].to("cpu", torch.float32, copy=True)
            continue
        sides = []
        for side in (base, aligned):
            with side.parts(prefix) as model:
                found = canonical_weights(model, matrices=names, layers=[layer])
                sides.append(
                    {m: found[(layer, m)].to("cpu", torch.float32, copy=True) for m in names}
                )
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
                total += float(_select(linear, rows).sum())
            out[matrix] = Precision(storages[0], storages[1], float(np.sqrt(total)))
        del variances
    return out


class HiddenStates:
    """The residual stream of every token at one layer boundary, ``[sequences, seq_len, d]``.

    In memory up to :data:`HIDDEN_IN_MEMORY` bytes, else in a memory-mapped
    temporary file (removed on :meth:`close`).
    """

    def __init__(self, shape: tuple[int, int, int], dtype: torch.dtype, limit: int):
        size = int(np.prod(shape))
        nbytes = size * torch.empty((), dtype=dtype).element_size()
        self._directory = None
        if nbytes > limit:
            self._directory = tempfile.TemporaryDirectory(prefix="rsf-hidden-")
            path = os.path.join(self._directory.name, "hidden.bin")
            flat = torch.from_file(path, shared=True, size=size, dtype=dtype)
            self.tensor = flat.view(shape)
        else:
            self.tensor = torch.empty(shape, dtype=dtype)
        self.on_disk = self._directory is not None

    def close(self) -> None:
        self.tensor = None
        if self._directory is not None:
            self._directory.cleanup()


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


@dataclass
class _Call:
    """How a layer was called: its hidden states' position, and every other argument."""

    hidden_at: int | str  # 0 (first positional) or a keyword
    args: tuple
    kwargs: dict

    def run(self, layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_at == 0:
            out = layer(hidden, *self.args, **dict(self.kwargs))
        else:
            out = layer(*self.args, **{**self.kwargs, self.hidden_at: hidden})
        return out[0] if isinstance(out, tuple) else out


def _record(args, kwargs) -> tuple[torch.Tensor, _Call]:
    if args:
        return args[0], _Call(0, tuple(args[1:]), dict(kwargs))
    key = (
        "hidden_states"
        if "hidden_states" in kwargs
        else next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    )
    rest = {k: v for k, v in kwargs.items() if k != key}
    return kwargs[key], _Call(key, (), rest)


def _layer_zero_input(model, batch: torch.Tensor) -> torch.Tensor:
    """The embedding stage's output for `batch` (the input of layer 0)."""
    captured = {}

    def hook(module, args, kwargs):
        captured["hidden"], _ = _record(args, kwargs)
        raise _Stop

    layers = layer_modules(model)
    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        getattr(model, model.base_model_prefix)(input_ids=batch, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["hidden"]


def _layer_calls(model, batch: torch.Tensor) -> list[_Call]:
    """Each layer's call for a batch of `batch`'s shape: layer 0 computed, the rest passed through.

    Needs the embedding stage and layer 0 materialised; later layers may be on meta.
    """
    layers = layer_modules(model)
    calls: list[_Call | None] = [None] * len(layers)
    returns_tuple = {}

    def pre_hook(index):
        def hook(module, args, kwargs):
            _, calls[index] = _record(args, kwargs)

        return hook

    def first_output(module, args, output):
        returns_tuple["value"] = isinstance(output, tuple)

    def passthrough(*args, **kwargs):
        hidden, _ = _record(args, kwargs)
        return (hidden,) if returns_tuple["value"] else hidden

    handles = [
        layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    handles.append(layers[0].register_forward_hook(first_output))
    for layer in layers[1:]:
        layer.forward = passthrough
    body = getattr(model, model.base_model_prefix)
    try:
        body(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers[1:]:
            del layer.forward
    return calls


def layerwise_statistics(
    models: dict[str, LayerwiseModel],
    input_ids,
    *,
    sites: Iterable[str],
    batch_size: int = 8,
    chunk_size: int | None = None,
    progress: bool = False,
    description: str = "statistics",
    hidden_in_memory: int = HIDDEN_IN_MEMORY,
) -> Iterator[tuple[int, dict[str, ActivationStatistics]]]:
    """Yield ``(layer, {role: statistics of that layer's sites})``, one layer at a time.

    The models (``{"base": …, "aligned": …}``, any subset) advance in lockstep:
    at each layer, one model's layer is materialised, run over its hidden
    states and released before the next model's. The statistics equal
    :func:`probes.collect_statistics`' for the same batches and chunks.
    """
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    if ids.ndim != 2 or ids.numel() == 0:
        raise ValueError(
            f"`input_ids` must be a non-empty [n_seq, seq_len] array, got {tuple(ids.shape)}"
        )
    chunks = statistics_batches(ids.shape[0], batch_size, chunk_size)
    batches = [batch for chunk in chunks for batch in chunk]
    sites = list(sites)
    states, calls, n_layers = {}, {}, None
    try:
        for role, lw in models.items():
            model = lw.model
            n_layers = len(layer_modules(model))
            with torch.inference_mode(), lw.parts(*lw.stage_prefixes(), lw.layer_prefix(0)):
                calls[role] = {}
                for lo, hi in batches:
                    shape = (hi - lo, ids.shape[1])
                    if shape not in calls[role]:
                        calls[role][shape] = _layer_calls(model, ids[lo:hi].to(lw.device))
                first = _layer_zero_input(model, ids[:1].to(lw.device))
                states[role] = HiddenStates(
                    (ids.shape[0], ids.shape[1], first.shape[-1]), first.dtype, hidden_in_memory
                )
                for lo, hi in tqdm(
                    batches,
                    desc=f"{description} {role}: embedding",
                    disable=not progress,
                    leave=False,
                ):
                    states[role].tensor[lo:hi] = _layer_zero_input(
                        model, ids[lo:hi].to(lw.device)
                    ).cpu()
        bar = tqdm(
            total=n_layers, desc=description, unit="layer", disable=not progress, leave=False
        )
        for layer in range(n_layers):
            out = {}
            for role, lw in models.items():
                out[role] = _run_layer(
                    lw, layer, states[role], calls[role], chunks, sites, chunk_size is not None
                )
                out[role].n_tokens, out[role].n_sequences = int(ids.numel()), int(ids.shape[0])
                if chunk_size is not None:
                    out[role].chunk_sequences = [(c[0][0], c[-1][1]) for c in chunks]
            bar.update(1)
            yield layer, out
        bar.close()
    finally:
        for state in states.values():
            state.close()


def _run_layer(lw: LayerwiseModel, layer: int, state: HiddenStates, calls, chunks, sites, chunked):
    """Run one layer over the stored hidden states (replaced by its output); its statistics."""
    keys = [(layer, site) for site in sites]
    d = state.tensor.shape[-1]
    accumulators = {key: Accumulator(d, lw.device, chunked) for key in keys}

    def accumulate(key, tensor):
        accumulators[key].add(tensor)

    loads: dict[int, torch.Tensor] = {}
    with torch.inference_mode(), lw.parts(lw.layer_prefix(layer)) as model:
        block = layer_modules(model)[layer]
        with site_hooks(model, keys, accumulate), expert_load_hooks(model, [layer], loads):
            for chunk in chunks:
                for lo, hi in chunk:
                    hidden = state.tensor[lo:hi].to(lw.device)
                    call = calls[(hi - lo, state.tensor.shape[1])][layer]
                    state.tensor[lo:hi] = call.run(block, hidden).to("cpu", state.tensor.dtype)
                for accumulator in accumulators.values():
                    accumulator.end_chunk()
    statistics = ActivationStatistics(
        sites={}, expert_load={k: load.numpy() for k, load in loads.items()}
    )
    for key, accumulator in accumulators.items():
        statistics.sites[key], chunk_stats = accumulator.result()
        if chunk_stats is not None:
            statistics.chunks[key] = chunk_stats
    return statistics
