"""GGUF checkpoints (llama.cpp's one-file format), read one tensor at a time.

A GGUF file holds a model's config (as metadata), its tokenizer and every
tensor, each in its own storage type (``F32``, ``F16``, ``BF16``, ``Q8_0``,
``Q4_1``, ``Q4_K``…). :class:`GGUFFile` opens it with the ``gguf`` package's
reader (memory-mapped: a tensor's bytes are read when it is used), and gives
each tensor

- under the parameter name transformers gives it (``blk.0.attn_q.weight`` is
  ``model.layers.0.self_attn.q_proj.weight``): transformers' own GGUF name map,
  built on a skeleton of the model on the meta device;
- dequantised by the ``gguf`` package's dequantiser for its type (what
  transformers' GGUF loader runs), to float32;
- in Hugging Face layout: transformers' tensor processor for the
  architecture undoes what llama.cpp's converter did (llama's q/k rows are
  permuted back per head; Gemma's norms are stored as ``1 + w``).

The config and the tokenizer are transformers' readings of the same file
(``from_pretrained(folder, gguf_file=name)``). Nothing here holds more than
one tensor.

Each tensor's grid step (for the rounding floor, :mod:`probes.precision`) is
carried into Hugging Face layout by the same processor, applied to an array
of element indices: a permutation or a transpose moves each element's step
with it, and a processor that changes values rather than positions (Gemma's
norm offset) shows as indices that are no longer a permutation, for which no
step is given.
"""

from __future__ import annotations

import functools
from functools import cached_property
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from .precision import gguf_steps

__all__ = ["GGUFFile", "find_gguf", "open_gguf", "pretrained_arguments"]

SUFFIX = ".gguf"
# GGUF's float types, returned in the dtype they are stored in (every value exact).
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def find_gguf(spec: str | Path) -> Path | None:
    """The GGUF file `spec` names: the file itself, or the one ``.gguf`` in a folder without a config.

    ``None`` when `spec` is not a GGUF input (a ``save_pretrained`` folder, a
    hub id). A folder holding several GGUF files and no ``config.json`` is a
    one-line error asking for one of them.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path if path.suffix.lower() == SUFFIX else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:4]) + (" …" if len(found) > 4 else "")
        raise ValueError(f"{spec} holds {len(found)} GGUF files ({names}): give one of them")
    return found[0] if found else None


def pretrained_arguments(spec: str) -> tuple[str, dict]:
    """``(path or id, keyword arguments)`` for transformers' ``from_pretrained`` on `spec`.

    A GGUF input is its folder with ``gguf_file``; a hub id (at a revision) is
    its local snapshot (:func:`probes.hub.local_path`); a local folder passes
    unchanged.
    """
    from .hub import local_path

    spec = local_path(spec)
    gguf = find_gguf(spec) if Path(spec).expanduser().exists() else None
    if gguf is None:
        return spec, {}
    return str(gguf.parent), {"gguf_file": gguf.name}


def _reading(path: Path):
    """The reader for `path`, with a corrupt or truncated file as one line."""
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError, TypeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path} is not a readable GGUF file: {first}") from None


_OPEN: dict[tuple, GGUFFile] = {}


def open_gguf(path: str | Path, *, trust_remote_code: bool = False) -> GGUFFile:
    """:class:`GGUFFile` for `path`, opened once per process (keyed by path, size and mtime).

    Reading a GGUF's metadata (a tokenizer of 50 000 tokens and merges) takes
    seconds; a sweep asks for it from its preflight, its models and its corpus.
    """
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, trust_remote_code)
    if key not in _OPEN:
        _OPEN[key] = GGUFFile(path, trust_remote_code=trust_remote_code)
    return _OPEN[key]


class GGUFFile:
    """One GGUF file's tensors under transformers' parameter names, one at a time."""

    def __init__(self, path: str | Path, *, trust_remote_code: bool = False):
        self.path = Path(path)
        self.trust_remote_code = trust_remote_code
        self.reader = _reading(self.path)
        self._by_gguf = {tensor.name: tensor for tensor in self.reader.tensors}

    @cached_property
    def config(self):
        """transformers' config from the file's metadata (``AutoConfig`` with ``gguf_file``)."""
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(
                self.path.parent, gguf_file=self.path.name, trust_remote_code=self.trust_remote_code
            )
        except (ValueError, KeyError, OSError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"{self.path}: transformers cannot read its config: {first}") from None

    @cached_property
    def architecture(self) -> str:
        field = self.reader.get_field("general.architecture")
        return str(field.contents()) if field is not None else ""

    @cached_property
    def _processor(self):
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        return TENSOR_PROCESSORS.get(self.architecture, TensorProcessor)(
            config=self.config.to_dict()
        )

    @cached_property
    def names(self) -> dict[str, str]:
        """``{parameter name: GGUF tensor name}`` by transformers' own GGUF name map."""
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(
                self.config, trust_remote_code=self.trust_remote_code
            )
        # transformers rebuilds gguf's name table (~13 ms) for every submodule it recurses into
        # (397 times for a 30-layer llama: 5 s); the table depends only on (architecture,
        # layers), so one is built and shared for this call.
        import gguf

        shared = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
        with mock.patch.object(gguf, "get_tensor_name_map", shared):
            to_hf = get_gguf_hf_weights_map(skeleton, self._processor)
        return {to_hf[name]: name for name in self._by_gguf if name in to_hf}

    def _tensor(self, name: str):
        return self._by_gguf[self.names[name]]

    def storage(self, name: str) -> str:
        """The tensor's stored type (``Q4_1``, ``Q8_0``, ``F32``…)."""
        return self._tensor(name).tensor_type.name

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape in Hugging Face layout (no data read: a zero-stride stand-in)."""
        tensor = self._tensor(name)
        stored = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # GGUF: innermost first
        return tuple(self._process(np.broadcast_to(np.float32(0), stored), tensor.name).shape)

    def _process(self, values: np.ndarray, gguf_name: str) -> np.ndarray:
        scratch = {"tensors": {}}
        result = self._processor.process(
            weights=values, name=gguf_name, tensor_key_mapping={}, parsed_parameters=scratch
        )
        if result.name is None and scratch["tensors"]:  # stored aside by the processor
            return np.asarray(next(iter(scratch["tensors"].values())))
        return np.asarray(result.weights)

    def _values(self, tensor) -> np.ndarray:
        from gguf import dequantize

        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        try:
            values = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise ValueError(
                f"{self.path}: {tensor.name} is stored as {tensor.tensor_type.name}, which the "
                "installed gguf package cannot dequantise"
            ) from None
        return np.asarray(values, dtype=np.float32).reshape(shape)

    def get(self, name: str) -> torch.Tensor:
        """One tensor in Hugging Face layout: a float type as stored, a quantised one as float32."""
        tensor = self._tensor(name)
        values = self._process(self._values(tensor), tensor.name)
        out = torch.from_numpy(np.array(values, dtype=np.float32, copy=True))
        return out.to(FLOAT_DTYPES.get(tensor.tensor_type.name, torch.float32))  # exact

    def steps(self, name: str) -> np.ndarray | None:
        """Each element's grid step in Hugging Face layout, or ``None`` (see the module docstring)."""
        tensor = self._tensor(name)
        values = self._values(tensor)
        steps = gguf_steps(np.asarray(tensor.data), tensor.tensor_type.name, values)
        if steps is None:
            return None
        index = np.arange(values.size, dtype=np.float64).reshape(values.shape)
        moved = self._process(index, tensor.name)
        flat = moved.ravel()
        if moved.size != values.size or not np.array_equal(np.sort(flat), index.ravel()):
            return None  # the processor changed values, not positions
        return steps.ravel()[flat.astype(np.int64)].reshape(moved.shape)
