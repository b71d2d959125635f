"""The demo pair: its settings, where it is cached, and what the demo runs on it.

The pair is trained here (:mod:`robustness.demo.training`: a tokenizer and a
small Llama-style model on Python's help topics, cross-entropy then DPO) and
written with ``save_pretrained`` under ``<cache>/demo/<settings-hash>/``::

    base/  aligned/                       the pair, each with the tokenizer
    checkpoints/pretrain/step-XXXXX/      from initialisation to base
    checkpoints/align/step-XXXXX/         from base to aligned
    demo.json                             manifest: seed, settings, versions,
                                          losses, held-out preference metrics

The folder is built under a temporary name and renamed, so a half-built pair
is never used. A second call with the same settings reuses it;
``retrain=True`` rebuilds it.

:func:`demo_sweep_config` is the sweep the demo runs on its pair (its
:class:`DemoGrid`); ``rsf demo`` then sweeps it with a sequence bootstrap,
tests the read/write asymmetry and writes the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from robustness.demo.training import build_tokenizer, single_threaded, split_documents, train_pair
from robustness.io.files import atomic_output
from robustness.measure.cache import default_cache_dir
from robustness.measure.corpus import (
    Corpus,
    builtin_documents,
    evenly_spaced,
    load_tokenizer,
    tokenize,
)
from robustness.mechanism.gradient_dataset import gradient_dataset, phase_checkpoints
from robustness.mechanism.gradients import GradientSettings
from robustness.settings.config import CorpusSpec, PairSpec, SweepConfig

__all__ = [
    "DemoCheckpoints",
    "DemoGrid",
    "DemoPair",
    "DemoSettings",
    "build_tokenizer",
    "checkpoints_of",
    "demo_checkpoints",
    "demo_gradients",
    "demo_contrastive_inputs",
    "demo_held_out_corpus",
    "demo_initialisation",
    "demo_is_cached",
    "demo_pair",
    "demo_probe_corpus",
    "recipe_gradients",
    "demo_sweep_config",
    "demo_held_out_inputs",
    "demo_token_windows",
    "single_threaded",
    "split_documents",
    "train_demo_pair",
]

FORMAT = 2  # bump when the training recipe changes: cached pairs are then rebuilt
MANIFEST = "demo.json"


@dataclass(frozen=True)
class DemoSettings:
    """Everything that determines the demo pair; its hash names the cache folder.

    Sizes are chosen so that training, sweep, bootstrap, statistics and report
    together take a few minutes on two CPU cores; 8 layers so that an exact
    sign-flip test over layers can reach p < 0.01.
    """

    seed: int = 0
    vocab_size: int = 2048
    d_model: int = 128
    n_layers: int = 8
    n_heads: int = 4
    intermediate_size: int = 352
    # pretraining (cross-entropy)
    seq_len: int = 128
    pretrain_steps: int = 200
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 16
    pretrain_every: int = 40
    # alignment (DPO on corrupted continuations)
    prompt_len: int = 32
    continuation_len: int = 32
    align_steps: int = 80
    align_lr: float = 5e-4
    align_batch: int = 16
    align_every: int = 20
    beta: float = 0.1
    held_out_every: int = 10  # every 10th document is held out of both phases

    @classmethod
    def tiny(cls, **changes) -> DemoSettings:
        """A seconds-long configuration for tests; same recipe, tiny sizes."""
        values = dict(
            vocab_size=300,
            d_model=32,
            n_layers=4,
            n_heads=2,
            intermediate_size=64,
            seq_len=32,
            pretrain_steps=6,
            pretrain_batch=4,
            pretrain_every=3,
            prompt_len=8,
            continuation_len=8,
            align_steps=4,
            align_batch=4,
            align_every=2,
            held_out_every=4,
        )
        values.update(changes)
        return cls(**values)

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name in ("seed",):
                continue
            if not value > 0:
                raise ValueError(f"`{name}` must be positive, got {value}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"`d_model` ({self.d_model}) must be a multiple of `n_heads` ({self.n_heads})"
            )
        if self.vocab_size < 257:
            raise ValueError(f"`vocab_size` must exceed the 256 bytes, got {self.vocab_size}")

    @property
    def key(self) -> str:
        """Short hash of the settings and the recipe's format: the cache folder's name."""
        payload = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DemoGrid:
    """The sweep and statistics the demo runs on its pair (not part of the cache key)."""

    constructions: tuple[str, ...] = (
        "act_cov",
        "act_moment",
        "unembed",
        "unembed_centered",
        "weight_svd",
        "random",
    )
    cutoffs: tuple[str, ...] = ("k=4", "k=8", "k=16", "var=0.9", "pr")
    normalisations: tuple[str, ...] = ("isotropic", "log_isotropic", "null_z")
    tokens: int | None = None  # None: every held-out token (the pair never trained on them)
    seq_len: int = 128
    replicates: int = 100
    n_resamples: int = 9999
    seed: int = 0
    # rsf gradients on the checkpoints: this many per phase, evenly spaced (None: every one),
    # with this many chunk-bootstrap replicates (0: the layer means' EWC intervals only)
    gradient_checkpoints: int | None = 3
    gradient_replicates: int = 0

    @classmethod
    def tiny(cls, **changes) -> DemoGrid:
        values = dict(
            cutoffs=("k=2", "k=4", "var=0.9", "pr"),
            tokens=2048,
            seq_len=32,
            replicates=5,
            n_resamples=199,
            gradient_checkpoints=2,
        )
        values.update(changes)
        return cls(**values)


@dataclass(frozen=True)
class DemoPair:
    """A built demo pair: where it lies, its manifest, and whether this call trained it."""

    root: Path
    base: Path
    aligned: Path
    manifest: dict
    trained: bool


# ---------------------------------------------------------------------------- the pair


def train_demo_pair(settings: DemoSettings, out: str | Path, *, progress: bool = True) -> dict:
    """Train the demo pair into the folder `out` (created); returns the manifest written there.

    Training runs on one torch thread, so the weights depend on the seed and
    the settings, not on how many cores the machine has.
    """
    out = Path(out)
    with single_threaded():
        manifest = {
            "format": FORMAT,
            "key": settings.key,
            **train_pair(settings, out, progress=progress),
        }
    with atomic_output(out / MANIFEST) as temporary:
        temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def demo_is_cached(settings: DemoSettings, cache_root: str | Path | None = None) -> bool:
    """Whether the pair of `settings` is complete in the cache (so :func:`demo_pair` trains nothing)."""
    root = Path(cache_root) if cache_root is not None else default_cache_dir()
    return _complete(root / "demo" / settings.key)


def _complete(root: Path) -> bool:
    return (
        all((root / part / "config.json").is_file() for part in ("base", "aligned"))
        and (root / MANIFEST).is_file()
    )


def demo_pair(
    settings: DemoSettings | None = None,
    *,
    cache_root: str | Path | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> DemoPair:
    """The demo pair: from the cache when it is there (and ``retrain`` is off), else trained now.

    The pair lives in ``<cache_root>/demo/<settings.key>/`` (``cache_root``
    defaults to ``$RSF_CACHE_DIR`` or ``~/.cache/rsf-robustness``). It is
    trained in a temporary folder beside it and renamed into place.
    """
    settings = settings or DemoSettings()
    cache_root = Path(cache_root) if cache_root is not None else default_cache_dir()
    folder = cache_root / "demo"
    root = folder / settings.key
    if not retrain and _complete(root):
        manifest = json.loads((root / MANIFEST).read_text())
        return DemoPair(root, root / "base", root / "aligned", manifest, trained=False)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"cannot create the demo cache {folder}: {error.strerror or error}"
        ) from None
    building = folder / f".{settings.key}.{os.getpid()}.tmp"
    shutil.rmtree(building, ignore_errors=True)
    try:
        manifest = train_demo_pair(settings, building, progress=progress)
        if root.exists():
            retired = folder / f".{settings.key}.{os.getpid()}.old"
            os.replace(root, retired)
            shutil.rmtree(retired, ignore_errors=True)
        os.replace(building, root)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return DemoPair(root, root / "base", root / "aligned", manifest, trained=True)


# ---------------------------------------------------------------------------- checkpoints and text


@dataclass(frozen=True)
class DemoCheckpoints:
    """The demo pair's directories: base, aligned and the saved checkpoints of each phase."""

    base: str
    aligned: str
    pretrain: tuple[str, ...] = ()
    align: tuple[str, ...] = ()
    manifest: dict | None = None

    def phase(self, name: str) -> list[str]:
        """The saved checkpoints of phase ``align``, ``pretrain`` or ``both`` (in training order).

        Alignment starts from the base itself, the last pretraining
        checkpoint, so ``both`` drops that duplicate.
        """
        phases = {"align": list(self.align), "pretrain": list(self.pretrain)}
        phases["both"] = list(self.pretrain) + list(self.align[1:])
        if name not in phases:
            raise ValueError(f"unknown phase {name!r}: valid are align, pretrain, both")
        return phases[name]

    def gradient_checkpoints(self, name: str, *, per_phase: int | None = None) -> list:
        """:class:`robustness.mechanism.gradient_dataset.GradientCheckpoint` s of phase ``align``, ``pretrain`` or ``both``.

        Each phase's reference rule (:func:`robustness.mechanism.gradient_dataset.phase_checkpoints`):
        alignment checkpoints against the base, pretraining ones against themselves.
        `per_phase` keeps that many of each phase, evenly spaced, first and last
        included. With ``both``, the base appears once, as pretraining's last.
        """
        if name not in ("align", "pretrain", "both"):
            raise ValueError(f"unknown phase {name!r}: valid are align, pretrain, both")
        out = []
        for phase in ("pretrain", "align"):
            if name not in (phase, "both"):
                continue
            paths = list(getattr(self, phase))
            if not paths:
                raise ValueError(
                    f"the demo saved no {phase} checkpoints: rebuild it with --retrain"
                )
            if per_phase is not None:
                paths = [paths[i] for i in evenly_spaced(len(paths), per_phase)]
            chosen = phase_checkpoints(
                paths, phase=phase, reference=self.base if phase == "align" else None
            )
            if name == "both" and phase == "align":
                chosen = [c for c in chosen if c.path != self.align[0]]
            out.extend(chosen)
        return out


def demo_checkpoints(*, cache_root=None, progress: bool = True) -> DemoCheckpoints:
    """The demo pair's directories (trained and cached on first use by :func:`demo_pair`)."""
    return checkpoints_of(demo_pair(cache_root=cache_root, progress=progress))


def checkpoints_of(pair: DemoPair) -> DemoCheckpoints:
    """The directories of a built demo pair and of its saved checkpoints."""
    phases = {
        phase: tuple(str(p) for p in sorted((pair.root / "checkpoints" / phase).glob("step-*")))
        for phase in ("pretrain", "align")
    }
    return DemoCheckpoints(
        str(pair.base), str(pair.aligned), phases["pretrain"], phases["align"], pair.manifest
    )


def demo_token_windows(demo, *, held_out: bool, length: int) -> np.ndarray:
    """The demo corpus' training (or held-out) documents, tokenised, cut into windows of `length`.

    The same documents and tokenizer the demo trained on: every ``held_out_every``-th
    document is held out of both training phases. `demo` is a :class:`DemoPair`
    or :class:`DemoCheckpoints` (its ``base`` and ``manifest``).
    """
    every = int(demo.manifest["settings"]["held_out_every"])
    train, held = split_documents(builtin_documents(), every)
    stream = tokenize(held if held_out else train, load_tokenizer(str(demo.base)))
    n = len(stream) // length
    if n < 2:
        raise ValueError(f"the demo's {'held-out' if held_out else 'training'} text is too short")
    return stream[: n * length].reshape(n, length)


def demo_held_out_corpus(demo, *, length: int, tokens: int | None = None) -> Corpus:
    """The demo's held-out documents (never seen in training) in windows of `length`.

    All of them (about 10K tokens), or `tokens` of them in windows evenly
    spread over the documents. `demo` as for :func:`demo_token_windows`.
    """
    windows = demo_token_windows(demo, held_out=True, length=length)
    if tokens is not None:
        windows = windows[evenly_spaced(len(windows), max(2, tokens // length))]
    return Corpus(np.ascontiguousarray(windows, dtype=np.int64), "demo:held-out documents")


def demo_contrastive_inputs(demo, **given):
    """``(base, training windows, settings)`` of the contrastive experiment on the demo: its base,
    its training documents in preference windows and its alignment recipe (`given` overrides)."""
    from robustness.settings.options import ContrastiveSettings

    recipe = demo.manifest["settings"]
    length = int(recipe["prompt_len"]) + int(recipe["continuation_len"])
    windows = demo_token_windows(demo, held_out=False, length=length)
    return demo.base, windows, ContrastiveSettings.demo_recipe(recipe, **given)


def demo_held_out_inputs(demo, settings, *, seq_len: int | None = None, tokens: int | None = None):
    """``(corpus, settings)`` of an experiment measured on the demo's held-out documents (rank-1,
    gradients): windows of `seq_len` (default: the recipe's prompt and continuation), `tokens` of
    them (default: all), and the recipe's prompt length unless `settings` give one."""
    from dataclasses import replace

    recipe = demo.manifest["settings"]
    length = seq_len or int(recipe["prompt_len"]) + int(recipe["continuation_len"])
    corpus = demo_held_out_corpus(demo, length=length, tokens=tokens)
    if settings.prompt_len is None:
        settings = replace(settings, prompt_len=min(int(recipe["prompt_len"]), length - 1))
    return corpus, settings


def demo_probe_corpus(pair: DemoPair, grid: DemoGrid) -> Corpus:
    """The demo's probe corpus: :func:`demo_held_out_corpus` in windows of ``grid.seq_len``."""
    return demo_held_out_corpus(pair, length=grid.seq_len, tokens=grid.tokens)


def demo_gradients(
    pair: DemoPair, grid: DemoGrid, *, cache_root=None, progress: bool = True
) -> xr.Dataset:
    """``gradients.nc`` of the demo: CE and DPO at ``grid.gradient_checkpoints`` checkpoints per phase.

    Both phases (pretraining checkpoints each their own DPO reference,
    alignment ones against the base), on the held-out documents in windows of
    one preference pair (prompt + continuation, the alignment recipe's), with
    the recipe's β and prompt length.
    """
    return recipe_gradients(pair, checkpoints_of(pair), grid, tokens=grid.tokens,
                            cache_root=cache_root, progress=progress)  # fmt: skip


def recipe_gradients(
    pair: DemoPair, checkpoints: DemoCheckpoints, grid, *, tokens, cache_root=None, progress=True
) -> xr.Dataset:
    """CE and DPO at ``grid.gradient_checkpoints`` of each phase of `checkpoints`, on `tokens`
    held-out tokens in windows of one preference pair, with the pair's alignment recipe (β,
    prompt length): the toy demo's and the real demo's gradients alike."""
    recipe = pair.manifest["settings"]
    length = int(recipe["prompt_len"]) + int(recipe["continuation_len"])
    settings = GradientSettings(
        objectives=("ce", "dpo"),
        beta=float(recipe["beta"]),
        prompt_len=int(recipe["prompt_len"]),
        replicates=grid.gradient_replicates,
        seed=grid.seed,
    )
    chosen = checkpoints.gradient_checkpoints("both", per_phase=grid.gradient_checkpoints)
    corpus = demo_held_out_corpus(pair, length=length, tokens=tokens)
    return gradient_dataset(chosen, corpus, settings, cache_root=cache_root, progress=progress)


def demo_initialisation(pair: DemoPair) -> Path:
    """The pretraining run's first checkpoint: the initialisation the base was trained from."""
    path = pair.root / "checkpoints" / "pretrain" / "step-00000"
    if not (path / "config.json").is_file():
        raise ValueError(
            f"the demo pair at {pair.root} has no initial checkpoint: rebuild it with --retrain"
        )
    return path


def demo_sweep_config(pair: DemoPair, grid: DemoGrid) -> SweepConfig:
    """The sweep ``rsf demo`` runs (with :func:`demo_probe_corpus`): the grid's choices, CPU.

    Two pairs: ``demo`` (base → aligned, the alignment delta) and ``pretrain``
    (the initialisation → base, a pretraining delta, ``phase = "pretrain"``:
    its constructions come from the trained side, the base).
    """
    return SweepConfig(
        pairs=(
            PairSpec("demo", str(pair.base), str(pair.aligned)),
            PairSpec("pretrain", str(demo_initialisation(pair)), str(pair.base), phase="pretrain"),
        ),
        corpus=CorpusSpec(seq_len=grid.seq_len),
        constructions=grid.constructions,
        cutoffs=grid.cutoffs,
        normalisations=grid.normalisations,
        replicates=grid.replicates,
        seed=grid.seed,
        device="cpu",
    )
