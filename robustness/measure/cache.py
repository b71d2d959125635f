"""On-disk cache of activation statistics.

A statistics pass is the only expensive step of a sweep (and of ``rsf
gradients``: :class:`probes.GradientStatistics` are kept alike), so its result is kept,
keyed by the model's weight hash, the corpus hash and every setting that can
change the numbers. Re-running a sweep with other constructions, cutoffs or
normalisations then does no forward pass, and an interrupted sweep resumes
from what it had finished.

Entries are ``.npz`` files written atomically, with a SHA-256 of their arrays
stored inside; an entry that fails to load or to verify is reported, removed
and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

import probes
from robustness.io.files import atomic_output

__all__ = ["StatisticsCache", "default_cache_dir"]

FORMAT = 2  # bump when the stored layout or the statistics' definition changes


def default_cache_dir() -> Path:
    """``$RSF_CACHE_DIR``, else ``$XDG_CACHE_HOME/rsf-robustness``, else ``~/.cache/rsf-robustness``."""
    if os.environ.get("RSF_CACHE_DIR"):
        return Path(os.environ["RSF_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rsf-robustness"


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _totals(stats) -> dict:
    """The scalar fields of a statistics pass, by its kind."""
    if isinstance(stats, probes.GradientStatistics):
        return {"kind": "gradients", "n_batches": stats.n_batches, "loss": stats.loss}
    return {
        "kind": "activations",
        "n_tokens": stats.n_tokens,
        "n_sequences": stats.n_sequences,
        "chunk_sequences": [list(b) for b in stats.chunk_sequences],
    }


def _to_arrays(stats) -> dict[str, np.ndarray]:
    keys = sorted(stats.sites)
    meta = {
        "keys": [list(key) for key in keys],
        "chunked": [key in stats.chunks for key in keys],
        **_totals(stats),
    }
    arrays: dict[str, np.ndarray] = {"meta": np.asarray(json.dumps(meta))}
    for layer, load in getattr(stats, "expert_load", {}).items():
        arrays[f"load_{layer}"] = np.asarray(load, dtype=np.float64)
    for i, key in enumerate(keys):
        site = stats.sites[key]
        arrays[f"n_{i}"] = np.asarray(site.n, dtype=np.int64)
        arrays[f"x_{i}"] = site.sum_x
        arrays[f"xx_{i}"] = site.sum_xx
        if key in stats.chunks:
            chunks = stats.chunks[key]
            arrays[f"cn_{i}"], arrays[f"cx_{i}"], arrays[f"cxx_{i}"] = (
                chunks.n,
                chunks.sum_x,
                chunks.sum_xx_packed,
            )
    return arrays


def _from_arrays(arrays):
    meta = json.loads(str(arrays["meta"]))
    sites, chunks = {}, {}
    for i, (key, chunked) in enumerate(zip(meta["keys"], meta["chunked"], strict=True)):
        key = (int(key[0]), str(key[1]))
        sites[key] = probes.SiteStatistics(
            int(arrays[f"n_{i}"]), arrays[f"x_{i}"], arrays[f"xx_{i}"]
        )
        if chunked:
            chunks[key] = probes.ChunkStatistics(
                arrays[f"cn_{i}"], arrays[f"cx_{i}"], arrays[f"cxx_{i}"]
            )
    if meta["kind"] == "gradients":
        return probes.GradientStatistics(
            sites=sites, chunks=chunks, n_batches=meta["n_batches"], loss=meta["loss"]
        )
    return probes.ActivationStatistics(
        sites=sites,
        chunks=chunks,
        n_tokens=meta["n_tokens"],
        n_sequences=meta["n_sequences"],
        chunk_sequences=[tuple(b) for b in meta["chunk_sequences"]],
        expert_load={
            int(name.removeprefix("load_")): arrays[name]
            for name in arrays
            if name.startswith("load_")
        },
    )


class StatisticsCache:
    """Statistics keyed by (weights hash, corpus hash, settings); ``root=None`` disables it."""

    def __init__(self, root: str | Path | None):
        self.root = None if root is None else Path(root)

    @staticmethod
    def key(*, weights_hash: str, corpus_hash: str, settings: dict) -> str:
        payload = json.dumps(
            {
                "format": FORMAT,
                "weights": weights_hash,
                "corpus": corpus_hash,
                "settings": settings,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / "statistics" / f"{key}.npz"

    def contains(self, key: str) -> bool:
        """Whether an entry for `key` exists (not whether it verifies: :meth:`load` checks that)."""
        return self.root is not None and self._path(key).exists()

    def load(self, key: str):
        """The stored statistics (activations or gradients) of `key`, or ``None``."""
        if self.root is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            checksum = str(arrays.pop("checksum"))
            if checksum != _checksum(arrays):
                raise ValueError("checksum mismatch")
            return _from_arrays(arrays)
        except (
            OSError,
            ValueError,
            KeyError,
            EOFError,
            zipfile.BadZipFile,
            json.JSONDecodeError,
        ) as error:
            warnings.warn(
                f"corrupt statistics cache entry {path.name} ({error}); recomputing",
                RuntimeWarning,
                stacklevel=2,
            )
            path.unlink(missing_ok=True)
            return None

    def store(self, key: str, stats) -> None:
        if self.root is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = _to_arrays(stats)
        arrays["checksum"] = np.asarray(_checksum(arrays))
        with atomic_output(path) as temporary:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
