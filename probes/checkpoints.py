"""A checkpoint's stored tensors, read one at a time, and the one weights hash over them.

A checkpoint is a directory written by ``save_pretrained`` (or a hub id at
a revision, resolved to its local snapshot by :mod:`probes.hub`), or a GGUF file (or a folder holding one:
:mod:`probes.gguf`). A folder's tensors live in safetensors files
(``model.safetensors``, or shards listed by ``model.safetensors.index.json``)
or, in older checkpoints, PyTorch pickles (``pytorch_model.bin`` and its
index). :class:`Checkpoint` maps every tensor name to its file and reads one
tensor at a time (``safetensors.safe_open``; memory-mapped ``torch.load`` for
pickles; GGUF tensors dequantised to float32 one at a time), in the dtype it
was stored in, so nothing above it ever holds a whole model (the pattern of
mergekit's lazy tensor loader). Each tensor's storage type (``F32``, ``BF16``,
``Q4_1``…) and grid steps (:mod:`probes.precision`) are read beside it.

**The weights hash** is defined over the stored tensors only: for every
tensor ``sha256(name | stored dtype | shape | bytes as saved)``, and for the
checkpoint ``sha256`` of the sorted ``name:digest`` lines. It does not depend
on the dtype a model is later loaded in, nor on the order tensors are read
in, so it can be computed while streaming (:meth:`Checkpoint.tensor_digest`
as each tensor passes) and two datasets made from the same checkpoint at
different dtypes carry the same hash. A GGUF file's tensors are hashed as
stored too: its own tensor names, storage type, shape and quantised bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from .gguf import FLOAT_DTYPES, find_gguf, open_gguf
from .hub import looks_like_path, resolve_source
from .precision import float_step, storage_of_dtype

__all__ = ["Checkpoint", "looks_like_path", "resolve_checkpoint", "tensor_digest", "weights_hash"]

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # a PEFT adapter's tensors (probes.lora)


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """The local folder holding `spec`'s files: the directory itself, or a hub id's snapshot at its
    revision (``org/name@rev``; :func:`probes.hub.resolve_source`)."""
    source = resolve_source(spec)
    if not source.path.is_dir():
        raise ValueError(f"{spec} is not a checkpoint directory")
    return source.path


@contextmanager
def reading(path: Path):
    """A weights file's read errors as one ``ValueError`` line naming the file and what is wrong.

    A truncated or garbage safetensors file, a corrupt PyTorch archive, and a
    pickle that ``torch.load(weights_only=True)`` refuses (it would run code to
    load: never done here) each say so, instead of the reader's traceback.
    """
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as error:
        raise ValueError(
            f"{path} is not a readable safetensors file ({error}): truncated or corrupt"
        ) from None
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path} is a pickle that only loads by running code it contains (PyTorch's "
            "weights_only loader refused it); it is never loaded that way here: convert it to "
            "safetensors where you trust it"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {first}") from None


def tensor_digest(name: str, tensor: torch.Tensor) -> str:
    """``sha256(name | dtype | shape | bytes)`` of one tensor as stored (row-major, little-endian)."""
    digest = hashlib.sha256(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(flat.view(torch.uint8).numpy())  # the buffer itself: no copy of a 1 GB embedding
    return digest.hexdigest()


def gguf_digests(file) -> dict[str, str]:
    """Every tensor's digest in a GGUF `file` (:class:`probes.gguf.GGUFFile`), under its parameter
    name (the file's own name where it has none).

    A float tensor's is :func:`tensor_digest` of its values in
    Hugging Face layout (a GGUF F32 file and its safetensors twin hash alike); a
    quantised one's is ``sha256(name | type | shape | bytes as stored)``.
    """
    to_hf = {stored: hf for hf, stored in file.names.items()}
    out = {}
    for tensor in file.reader.tensors:
        name = to_hf.get(tensor.name, tensor.name)
        if name in file.names and tensor.tensor_type.name in FLOAT_DTYPES:
            out[name] = tensor_digest(name, file.get(name))
            continue
        digest = hashlib.sha256(
            f"{name}|{tensor.tensor_type.name}|{tuple(tensor.shape.tolist())}|".encode()
        )
        digest.update(np.ascontiguousarray(tensor.data).view(np.uint8))
        out[name] = digest.hexdigest()
    return out


def combine_digests(digests: dict[str, str]) -> str:
    """The checkpoint hash from its per-tensor digests (any order: the names are sorted)."""
    lines = "\n".join(f"{name}:{digests[name]}" for name in sorted(digests))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


class Checkpoint:
    """The stored tensors of one checkpoint, by name, read one at a time.

    Parameters
    ----------
    source : str or path
        A ``save_pretrained`` directory or a hub id.
    """

    def __init__(self, source: str | os.PathLike, *, trust_remote_code: bool = False):
        self.source = str(source)
        path = find_gguf(source) if os.path.exists(os.path.expanduser(str(source))) else None
        self.gguf = open_gguf(path, trust_remote_code=trust_remote_code) if path else None
        self.root = path.parent if path else resolve_checkpoint(source)
        self.trust_remote_code = trust_remote_code
        self._pickles: dict[Path, dict] = {}

    def config(self):
        """transformers' config of the model (from ``config.json``, or the GGUF file's metadata)."""
        if self.gguf is not None:
            return self.gguf.config
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.root, trust_remote_code=self.trust_remote_code)

    @cached_property
    def _layout(self) -> tuple[str, dict[str, Path]]:
        if self.gguf is not None:
            return "gguf", dict.fromkeys(self.gguf.names, self.gguf.path)
        for index, single, kind in (
            (SAFETENSORS_INDEX, SAFETENSORS_SINGLE, "safetensors"),
            (PICKLE_INDEX, PICKLE_SINGLE, "pickle"),
            (None, ADAPTER_WEIGHTS, "safetensors"),
        ):
            if index is not None and (self.root / index).is_file():
                try:
                    weight_map = json.loads((self.root / index).read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as error:
                    raise ValueError(f"{self.root / index} is not a valid index: {error}") from None
                return kind, {name: self._shard(index, shard) for name, shard in weight_map.items()}
            if (self.root / single).is_file():
                return kind, {
                    name: self.root / single for name in self._names_in(self.root / single)
                }
        raise ValueError(
            f"{self.source} holds no weights (no {SAFETENSORS_SINGLE}, {PICKLE_SINGLE} or their index)"
        )

    def _shard(self, index: str, shard) -> Path:
        """A shard the index names: a file inside the checkpoint's folder, nowhere else."""
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise ValueError(f"{self.root / index} names a shard outside its folder: {shard!r}")
        return self.root / shard

    @property
    def format(self) -> str:
        """``"safetensors"``, ``"pickle"`` (PyTorch's ``pytorch_model.bin``) or ``"gguf"``."""
        return self._layout[0]

    @property
    def files(self) -> dict[str, Path]:
        """``{tensor name: file}`` from the index (sharded) or the single file's own header."""
        return self._layout[1]

    def _names_in(self, path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with reading(path), safe_open(path, framework="pt") as handle:
                return list(handle.keys())
        return list(self._pickle(path))

    def _pickle(self, path: Path) -> dict:
        if path not in self._pickles:
            # Memory-mapped: a tensor's pages are read only when it is used.
            with reading(path):
                loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            if not isinstance(loaded, dict) or not all(
                isinstance(v, torch.Tensor) for v in loaded.values()
            ):
                raise ValueError(f"{path} is not a state dict of tensors")
            self._pickles[path] = loaded
        return self._pickles[path]

    def names(self) -> list[str]:
        return sorted(self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def get(self, name: str) -> torch.Tensor:
        """One tensor, in its stored dtype, on the CPU."""
        if name not in self.files:
            raise KeyError(f"{self.source} has no tensor {name!r}")
        if self.gguf is not None:
            return self.gguf.get(name)
        path = self.files[name]
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with reading(path), safe_open(path, framework="pt") as handle:
                return handle.get_tensor(name)
        return self._pickle(path)[name]

    def storage(self, name: str) -> str:
        """How a tensor is stored: ``F32``, ``F16``, ``BF16`` or a GGUF type (``Q4_1``, ``Q8_0``…)."""
        if self.gguf is not None:
            return self.gguf.storage(name)
        path = self.files[name]
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with reading(path), safe_open(path, framework="pt") as handle:
                return str(handle.get_slice(name).get_dtype())
        return storage_of_dtype(self._pickle(path)[name].dtype)

    def steps(self, name: str) -> np.ndarray | None:
        """Each element's grid step as stored (:mod:`probes.precision`), shaped as :meth:`get`'s.

        ``None`` where the storage type has no linear grid (GGUF's codebook types).
        """
        if self.gguf is not None:
            return self.gguf.steps(name)
        tensor = self.get(name)
        return float_step(tensor.detach().to(torch.float32).numpy(), self.storage(name))

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's stored shape, read from the file's header (no data for safetensors)."""
        if self.gguf is not None:
            return self.gguf.shape(name)
        path = self.files[name]
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with reading(path), safe_open(path, framework="pt") as handle:
                return tuple(handle.get_slice(name).get_shape())
        return tuple(self._pickle(path)[name].shape)

    def weights_hash(self, *, progress: bool = False) -> str:
        """The checkpoint's weights hash (see the module docstring), one tensor in memory at a time."""
        from tqdm.auto import tqdm

        if self.gguf is not None:  # as stored: the quantised bytes under the file's own names
            return combine_digests(gguf_digests(self.gguf))
        names = tqdm(
            self.names(),
            desc=f"hashing {self.source}",
            unit="tensor",
            disable=not progress,
            leave=False,
        )
        return combine_digests({name: tensor_digest(name, self.get(name)) for name in names})


_HASHES: dict[tuple, str] = {}


def weights_hash(source: str | os.PathLike, *, progress: bool = False) -> str:
    """The weights hash of a checkpoint (a ``save_pretrained`` directory or a hub id).

    Defined over the stored tensors (name, stored dtype, shape, bytes as
    saved): the same whatever dtype the model is loaded in. Remembered for
    the process, keyed by the weight files' paths, sizes and modification
    times, so a checkpoint shared by several pairs is read once.
    """
    checkpoint = Checkpoint(source)
    files = sorted(set(checkpoint.files.values()))
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASHES:
        _HASHES[key] = checkpoint.weights_hash(progress=progress)
    return _HASHES[key]
