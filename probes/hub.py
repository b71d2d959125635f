"""Hub ids and their revisions: ``org/name@rev`` resolved to a local snapshot and its commit.

A model is named by a local path (a ``save_pretrained`` folder, a GGUF file)
or a hub id, optionally at a revision: ``org/name@step1000`` (a branch),
``org/name@v1.0`` (a tag) or ``org/name@<40-hex commit>``, mergekit's
``repo@revision`` syntax. :func:`resolve_source` turns a hub id into the local
snapshot folder ``huggingface_hub`` keeps (``models--org--name/snapshots/<sha>``),
downloading what is missing, or, offline (``HF_HUB_OFFLINE=1``), reading the
cache's ``refs/<revision>`` alone. The snapshot folder's name *is* the
resolved commit, which the datasets record per side (``base_revision``,
``base_commit``, …). Everything downstream reads the local folder, so a
revision is resolved once and every later read sees the same commit.

Trajectories given as revisions (``rsf revisions``, ``--checkpoints
org/name@step1000,…``) are ordered by the training step parsed from the
revision's name (:func:`revision_step`): Pythia's ``step1000``, OLMo-2's
``stage1-step140000-tokens294B``, SmolLM's ``step-001000-2BT``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "Source",
    "list_revisions",
    "local_path",
    "resolve_source",
    "revision_step",
    "split_revision",
]

# What a model's snapshot needs: configs, tokenizers (json, sentencepiece, merges, tiktoken) and
# weights (safetensors; pickles only when a revision has no safetensors). Never Python files.
CONFIG_FILES = ("*.json",)
MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken")
PICKLE_FILES = ("*.json", "*.bin", "*.model", "*.txt", "*.tiktoken")

# The step in a revision's name: the number after "step" (optionally "step-", zero-padded).
STEP_PATTERN = re.compile(r"(?:^|[^a-z])step[-_]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    """Where a model named `spec` lives: a local `path`, and for a hub id its repo and commit."""

    spec: str
    path: Path
    repo: str | None = None
    revision: str | None = None
    commit: str | None = None

    def provenance(self, role: str) -> dict[str, str]:
        """``{role}_revision`` and ``{role}_commit`` ("" for a local folder)."""
        return {f"{role}_revision": self.revision or "", f"{role}_commit": self.commit or ""}


def looks_like_path(spec: str) -> bool:
    """Whether `spec` is written as a path (so a missing one is a missing folder, not a hub id)."""
    return spec.startswith(("/", "./", "../", "~")) or spec.endswith("/") or spec.count("/") > 1


def split_revision(spec: str) -> tuple[str, str | None]:
    """``("org/name", "rev")`` for ``org/name@rev``; ``(spec, None)`` for anything else.

    A local path is never split, even one whose name holds an ``@``.
    """
    text = str(spec)
    if "@" not in text or os.path.exists(os.path.expanduser(text)):
        return text, None
    name, _, revision = text.rpartition("@")
    if not name or not revision or looks_like_path(name):
        return text, None
    return name, revision


def resolve_source(spec: str | os.PathLike, *, weights: bool = True) -> Source:
    """`spec`'s local folder (or file) and, for a hub id, its resolved commit.

    With ``weights=False`` only the configs and tokenizer files of a hub
    revision are fetched (enough to check a pair before anything heavy).
    """
    text = str(spec)
    local = Path(os.path.expanduser(text))
    if local.exists():
        return Source(text, local)
    name, revision = split_revision(text)
    if looks_like_path(name):
        raise FileNotFoundError(f"model directory not found: {text}")
    path = _snapshot(name, revision, weights)
    return Source(text, path, name, revision, path.name)


def local_path(spec: str | os.PathLike, *, weights: bool = True) -> str:
    """:func:`resolve_source`'s path as a string (`spec` itself for a local path)."""
    source = resolve_source(spec, weights=weights)
    return str(spec) if source.repo is None else str(source.path)


@lru_cache(maxsize=256)
def _snapshot(repo: str, revision: str | None, weights: bool) -> Path:
    from huggingface_hub import constants, snapshot_download

    at = f" at revision {revision!r}" if revision else ""
    try:
        if not weights:
            return Path(snapshot_download(repo, revision=revision, allow_patterns=CONFIG_FILES))
        root = Path(snapshot_download(repo, revision=revision, allow_patterns=MODEL_FILES))
        if not any(root.glob("*.safetensors")):
            root = Path(snapshot_download(repo, revision=revision, allow_patterns=PICKLE_FILES))
        return root
    except Exception as error:  # the hub client raises many types; all mean "not reachable"
        if constants.HF_HUB_OFFLINE:
            raise ValueError(
                f"{repo}{at} is not in the local hub cache and HF_HUB_OFFLINE is set: download it "
                f"first (huggingface-cli download {repo}"
                f"{f' --revision {revision}' if revision else ''}), unset HF_HUB_OFFLINE, or pass "
                "a local directory written by save_pretrained"
            ) from None
        raise ValueError(
            f"cannot read hub id {repo!r}{at} ({type(error).__name__}): no network, no such "
            "model or no such revision; pass a local directory written by save_pretrained"
        ) from None


def revision_step(revision: str) -> int | None:
    """The training step in a revision's name (``step1000``, ``stage1-step140000-tokens294B``,
    ``step-001000-2BT``), or ``None`` when the name holds none."""
    found = STEP_PATTERN.search(revision)
    return int(found.group(1)) if found else None


def _training_order(name: str) -> tuple:
    # Natural sort: the step where the name has one, then the name's runs of digits as numbers.
    step = revision_step(name)
    natural = tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
    return (step is None, step if step is not None else 0, natural)


def list_revisions(repo: str, *, match: str | None = None) -> tuple[list[str], str]:
    """`repo`'s branches in training order, filtered by the glob `match`, and where they came from.

    Online from the hub (``list_repo_refs``); offline (``HF_HUB_OFFLINE=1``)
    from the local cache's ``refs/`` folder, which holds only the revisions
    downloaded before.
    """
    from huggingface_hub import constants, list_repo_refs

    if constants.HF_HUB_OFFLINE:
        refs = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs"
        if not refs.is_dir():
            raise ValueError(
                f"{repo} is not in the local hub cache and HF_HUB_OFFLINE is set: nothing to list"
            )
        names = [str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file()]
        origin = "the local hub cache (HF_HUB_OFFLINE is set)"
    else:
        try:
            names = [branch.name for branch in list_repo_refs(repo).branches]
        except Exception as error:  # the hub client raises many types; all mean "not reachable"
            raise ValueError(
                f"cannot list the revisions of {repo!r} ({type(error).__name__}): no network or "
                "no such model"
            ) from None
        origin = "the hub"
    if match is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, match)]
    return sorted(names, key=_training_order), origin
