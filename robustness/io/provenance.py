"""Provenance, the same on every dataset: kind, version, creation time, seed, settings, inputs.

Every dataset the project writes (``results``, ``stats``, ``calibration``,
``gradients``, ``trajectory``, ``contrastive``, ``rank1``, …) starts its
attributes from :func:`provenance_attrs`, so a reader finds the same keys
everywhere: ``kind`` (what wrote it; the report dispatches on it),
``rsf_version``, ``rsf_commit`` (``git describe --always --dirty`` of the
checkout the tool runs from; ``"not a checkout"`` for an installed package),
``created`` (UTC), ``package_versions``, ``torch_build`` (torch's version,
the CUDA it was built for and the accelerator it sees), ``threads`` (torch's
intra-op thread count), ``command_line`` (the ``rsf`` command that wrote it,
or ``"python"`` when the library was called from Python), and where they
apply ``seed``, ``settings`` (JSON), ``inputs`` (JSON: what it was made from,
by hash) and the corpus (``corpus_hash``, ``corpus_source``, ``n_tokens``,
``seq_len``; for a ``datasets`` corpus ``corpus_revision`` (hub datasets),
``corpus_split`` and ``corpus_column``; for conversations ``chat_template``,
which tokenizer's template rendered them).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from robustness import __version__

__all__ = [
    "PACKAGES",
    "environment",
    "package_versions",
    "provenance_attrs",
    "recording_command",
    "source_commit",
]

PACKAGES = (
    "torch",
    "transformers",
    "safetensors",
    "numpy",
    "scipy",
    "xarray",
    "netCDF4",
    "dask",
    "statsmodels",
    "pingouin",
)


def package_versions() -> dict[str, str]:
    versions = {"rsf-robustness": __version__}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


@lru_cache(maxsize=1)
def source_commit() -> str:
    """``git describe --always --dirty`` of the checkout this package runs from.

    Only the project's own checkout counts: an installed package (or one that
    lies inside some other repository) is ``"not a checkout"``; a checkout
    without git on the path is ``"unknown"``.
    """
    # The folder holding the top package: as many levels up as this module's dotted name is deep.
    root = Path(__file__).resolve().parents[len(__name__.split(".")) - 1]
    if not (root / ".git").exists():
        return "not a checkout"
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


_COMMAND: ContextVar[str | None] = ContextVar("rsf_command_line", default=None)


@contextmanager
def recording_command(argv: list[str]):
    """Record ``rsf ARGV`` as the command line of every dataset written inside the block.

    The outermost command wins: a command that runs others (``rsf demo``)
    records itself on all they write.
    """
    if _COMMAND.get() is not None:
        yield
        return
    token = _COMMAND.set(shlex.join(["rsf", *argv]))
    try:
        yield
    finally:
        _COMMAND.reset(token)


def environment() -> dict:
    """``rsf_commit``, ``torch_build``, ``threads`` and ``command_line`` (module docstring)."""
    import torch

    cuda = torch.version.cuda
    seen = torch.cuda.get_device_name(0) if cuda and torch.cuda.is_available() else "none"
    return {
        "rsf_commit": source_commit(),
        "torch_build": f"torch {torch.__version__}; CUDA {cuda or 'none'}; accelerator {seen}",
        "threads": int(torch.get_num_threads()),
        "command_line": _COMMAND.get() or "python",
    }


def provenance_attrs(
    kind: str,
    *,
    title: str,
    corpus=None,
    seed: int | None = None,
    settings: dict | str | None = None,
    inputs: dict | None = None,
) -> dict:
    """The provenance attributes of a dataset of `kind` (see the module docstring)."""
    attrs: dict = {
        "kind": kind,
        "title": title,
        "rsf_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_versions": json.dumps(package_versions(), sort_keys=True),
        **environment(),
    }
    if seed is not None:
        attrs["seed"] = int(seed)
    if settings is not None:
        attrs["settings"] = (
            settings if isinstance(settings, str) else json.dumps(settings, sort_keys=True)
        )
    if inputs is not None:
        attrs["inputs"] = json.dumps(inputs, sort_keys=True)
    if corpus is not None:
        attrs.update(
            corpus_hash=corpus.hash,
            corpus_source=corpus.source,
            n_tokens=corpus.n_tokens,
            seq_len=corpus.seq_len,
        )
        attrs.update(corpus_origin(corpus))
    return attrs


def corpus_origin(corpus) -> dict:
    """A ``datasets`` corpus's revision, split and column, and the chat template (else nothing)."""
    origin = getattr(corpus, "origin", None) or {}
    return {f"corpus_{k}" if k != "chat_template" else k: v for k, v in origin.items()}
