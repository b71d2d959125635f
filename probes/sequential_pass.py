"""The layer-sequential statistics pass: activation statistics one decoder layer at a time.

This is what GPTQ-style calibration does: the corpus is run through the
embedding stage once, the hidden states of every token are kept at the
current layer boundary (``[sequences, seq_len, d]`` in the model's dtype; in
a temporary file when larger than :data:`HIDDEN_IN_MEMORY`), and one decoder
layer at a time is run over them, accumulating that layer's sites with the
same hooks and the same batches as the hooked full pass
(:func:`probes.collect_statistics`), so the sums are the same numbers. The
arguments each layer receives besides its hidden states (attention masks,
rotary embeddings, cache positions) do not depend on the tokens, only on the
batch's shape: they are captured once per shape from one run of the model's
own forward, layer 0 computed and every later layer passed through, so
families whose layers differ (sliding and global attention) get each layer's
own. Each model is a :class:`probes.LayerwiseModel`, so memory holds one
layer of one model at a time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .activations import (
    Accumulator,
    ActivationStatistics,
    accumulator_results,
    expert_load_hooks,
    site_hooks,
    statistics_batches,
    token_ids,
)
from .adapters import layer_modules
from .layerwise import LayerwiseModel

__all__ = [
    "HIDDEN_IN_MEMORY",
    "layerwise_statistics",
]

HIDDEN_IN_MEMORY = 1 << 30  # bytes of hidden states kept in memory; beyond, a temporary file


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
    ids = token_ids(input_ids)
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
    site_stats, chunk_stats = accumulator_results(accumulators)
    return ActivationStatistics(
        sites=site_stats,
        chunks=chunk_stats,
        expert_load={k: load.numpy() for k, load in loads.items()},
    )
