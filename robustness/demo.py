"""The embedded default: a demo pair trained here, then sweep → stats → report.

Nothing is downloaded. The pair is built from Python's own help topics (the
built-in corpus, ``pydoc_data.topics``):

1. a byte-level BPE tokenizer is trained on the corpus (``tokenizers``) and
   wrapped in ``transformers.PreTrainedTokenizerFast``;
2. a small Llama-style model (untied embeddings, so the unembedding is its
   own matrix) is **pretrained** with next-token cross-entropy
   (:func:`robustness.training.pretrain`);
3. a copy is **aligned** with DPO (:func:`robustness.training.align`, the
   pretrained model frozen as the reference) on preference pairs from the
   corpus: the prompt is a passage's first tokens, *chosen* its true
   continuation, *rejected* a corrupted one (shuffled, or another passage's).

Both models, their tokenizer and the intermediate checkpoints of both phases
are written with ``save_pretrained`` under
``<cache>/demo/<settings-hash>/``::

    base/  aligned/                       the pair, each with the tokenizer
    checkpoints/pretrain/step-XXXXX/      from initialisation to base
    checkpoints/align/step-XXXXX/         from base to aligned
    demo.json                             manifest: seed, settings, versions,
                                          losses, held-out preference metrics

The folder is built under a temporary name and renamed, so a half-built pair
is never used. A second call with the same settings reuses it;
``retrain=True`` rebuilds it. Everything is deterministic from the seed (on a
given CPU architecture and library versions: training runs on one thread).

:func:`demo_sweep_config` is the sweep the demo runs on its pair (its
:class:`DemoGrid`); ``rsf demo`` then sweeps it with a sequence bootstrap,
tests the read/write asymmetry and writes the report.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .cache import default_cache_dir
from .config import CorpusSpec, PairSpec, SweepConfig
from .corpus import BUILTIN_CORPUS, builtin_documents, load_tokenizer, tokenize
from .files import atomic_output
from .preferences import continuation_logprobs, preference_margin, preference_pairs
from .provenance import package_versions
from .training import align as align_model
from .training import pretrain, save_pretrained

__all__ = [
    "DemoCheckpoints",
    "DemoGrid",
    "DemoPair",
    "DemoSettings",
    "build_tokenizer",
    "demo_checkpoints",
    "demo_is_cached",
    "demo_pair",
    "demo_sweep_config",
    "demo_token_windows",
    "single_threaded",
    "split_documents",
    "train_demo_pair",
]

FORMAT = 1  # bump when the training recipe changes: cached pairs are then rebuilt
EOS = "<|endoftext|>"
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
            n_layers=3,
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
    tokens: int = 65536
    seq_len: int = 128
    replicates: int = 100
    layer_replicates: int = 9999
    n_resamples: int = 9999
    seed: int = 0

    @classmethod
    def tiny(cls, **changes) -> DemoGrid:
        values = dict(
            cutoffs=("k=2", "k=4", "var=0.9", "pr"),
            tokens=2048,
            seq_len=32,
            replicates=5,
            layer_replicates=199,
            n_resamples=199,
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


def build_tokenizer(documents: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `documents`, as a ``PreTrainedTokenizerFast``.

    Byte-level, so any text encodes without unknown tokens; ``<|endoftext|>``
    (id 0) separates documents and serves as BOS, EOS and padding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=1 << 20,  # the corpus tools cut sequences themselves
    )


def _model_config(settings: DemoSettings, vocab_size: int, eos_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=settings.d_model,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.n_layers,
        num_attention_heads=settings.n_heads,
        num_key_value_heads=settings.n_heads,
        max_position_embeddings=max(256, 2 * settings.seq_len),
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def _windows(stream: np.ndarray, length: int) -> np.ndarray:
    n = len(stream) // length
    return stream[: n * length].reshape(n, length)


def split_documents(documents: list[str], every: int) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: one document in every `every` (offset ``every // 2``) is held out."""
    held = [doc for i, doc in enumerate(documents) if i % every == every // 2]
    train = [doc for i, doc in enumerate(documents) if i % every != every // 2]
    return train, held


@torch.no_grad()
def _preference_metrics(policy, reference, pairs, *, beta: float, batch_size: int = 64) -> dict:
    """Held-out preference: the DPO implicit-reward margin and the policy's own log-likelihood gap."""
    margin = preference_margin(policy, reference, pairs, beta=beta, batch_size=batch_size)
    gaps = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs.subset(slice(start, start + batch_size))
        prompt, chosen, rejected = (
            torch.as_tensor(a) for a in (batch.prompt, batch.chosen, batch.rejected)
        )
        gaps.append(
            (
                continuation_logprobs(policy, prompt, chosen)
                - continuation_logprobs(policy, prompt, rejected)
            ).double()
        )
    gap = torch.cat(gaps).numpy()
    return {
        "dpo_margin_mean": float(margin.mean()),
        "logprob_gap_mean": float(gap.mean()),
        "prefers_chosen": float((gap > 0).mean()),
        "n_pairs": len(pairs),
    }


def _summary(history: list[dict]) -> dict:
    losses = [round(h["loss"], 6) for h in history]
    tail = losses[-min(10, len(losses)) :]
    return {"first_loss": losses[0], "final_loss": float(np.mean(tail)), "losses": losses}


@contextmanager
def single_threaded():
    """Torch on one thread for the duration (restored after).

    The demo's matrices are small (d = 128), so a second thread gains little,
    while on a machine busy with other work each parallel region waits for a
    descheduled worker: measured on two shared cores, a training step took
    10 s on two threads and 1 s on one. One thread also makes the trained
    weights independent of the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_demo_pair(settings: DemoSettings, out: str | Path, *, progress: bool = True) -> dict:
    """Train the demo pair into the folder `out` (created); returns the manifest written there.

    Training runs on one torch thread, so the weights depend on the seed and
    the settings, not on how many cores the machine has.
    """
    with single_threaded():
        return _train_demo_pair(settings, Path(out), progress=progress)


def _train_demo_pair(settings: DemoSettings, out: Path, *, progress: bool) -> dict:
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    documents = builtin_documents()
    train_docs, held_docs = split_documents(documents, settings.held_out_every)
    tokenizer = build_tokenizer(train_docs, settings.vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    train_stream, held_stream = tokenize(train_docs, tokenizer), tokenize(held_docs, tokenizer)
    pair_len = settings.prompt_len + settings.continuation_len
    text_ids = _windows(train_stream, settings.seq_len)
    if len(text_ids) < settings.pretrain_batch or len(_windows(held_stream, pair_len)) < 2:
        raise ValueError(
            f"the built-in corpus gives {len(train_stream)} training tokens: too few for "
            f"seq_len {settings.seq_len} and batch {settings.pretrain_batch}"
        )
    rng = np.random.default_rng(settings.seed)
    train_pairs = preference_pairs(
        _windows(train_stream, pair_len), prompt_len=settings.prompt_len, rng=rng
    )
    held_pairs = preference_pairs(
        _windows(held_stream, pair_len), prompt_len=settings.prompt_len, rng=rng
    )

    config = _model_config(settings, len(tokenizer), eos_id)
    with torch.random.fork_rng(devices=[]):  # the initialisation, without touching global state
        torch.manual_seed(settings.seed)
        model = AutoModelForCausalLM.from_config(config)
    checkpoints = out / "checkpoints"
    pretrain_history: list = []
    pretrain(
        model,
        text_ids,
        steps=settings.pretrain_steps,
        lr=settings.pretrain_lr,
        batch_size=settings.pretrain_batch,
        seed=settings.seed,
        checkpoint_dir=checkpoints / "pretrain",
        every=settings.pretrain_every,
        tokenizer=tokenizer,
        progress=progress,
        history=pretrain_history,
    )
    save_pretrained(model, out / "base", tokenizer=tokenizer)
    pretrained_at = time.perf_counter()

    reference = copy.deepcopy(model)
    policy = copy.deepcopy(model)
    before = _preference_metrics(model, reference, held_pairs, beta=settings.beta)
    align_history: list = []
    align_model(
        policy,
        reference,
        train_pairs,
        lam=1.0,
        beta=settings.beta,
        steps=settings.align_steps,
        lr=settings.align_lr,
        batch_size=settings.align_batch,
        seed=settings.seed + 1,
        checkpoint_dir=checkpoints / "align",
        every=settings.align_every,
        tokenizer=tokenizer,
        progress=progress,
        history=align_history,
    )
    save_pretrained(policy, out / "aligned", tokenizer=tokenizer)
    after = _preference_metrics(policy, reference, held_pairs, beta=settings.beta)
    train_after = _preference_metrics(
        policy, reference, train_pairs.subset(slice(0, 256)), beta=settings.beta
    )
    finished = time.perf_counter()

    manifest = {
        "title": "rsf demo pair: pretrained with cross-entropy, then aligned with DPO",
        "format": FORMAT,
        "key": settings.key,
        "seed": settings.seed,
        "settings": asdict(settings),
        "model": "llama (untied embeddings)",
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "corpus": BUILTIN_CORPUS,
        "tokenizer": {
            "kind": "byte-level BPE trained on the corpus' training documents",
            "vocab_size": len(tokenizer),
            "sha256": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        },
        "data": {
            "documents": len(documents),
            "held_out_documents": len(held_docs),
            "train_tokens": int(len(train_stream)),
            "held_out_tokens": int(len(held_stream)),
            "pretrain_sequences": int(len(text_ids)),
            "train_pairs": len(train_pairs),
            "held_out_pairs": len(held_pairs),
            "rejected": "the continuation's tokens shuffled, or another passage's continuation (half each)",
        },
        "pretrain": _summary(pretrain_history),
        "align": {
            "objective": "DPO (Rafailov et al. 2023), reference frozen",
            **_summary(align_history),
        },
        "held_out": {"base": before, "aligned": after},
        "train_subset_aligned": train_after,
        "seconds": {
            "pretrain": round(pretrained_at - started, 1),
            "align": round(finished - pretrained_at, 1),
        },
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "rsf_version": __version__,
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


def demo_checkpoints(*, cache_root=None, progress: bool = True) -> DemoCheckpoints:
    """The demo pair's directories (trained and cached on first use by :func:`demo_pair`)."""
    pair = demo_pair(cache_root=cache_root, progress=progress)
    phases = {
        phase: tuple(str(p) for p in sorted((pair.root / "checkpoints" / phase).glob("step-*")))
        for phase in ("pretrain", "align")
    }
    return DemoCheckpoints(
        str(pair.base), str(pair.aligned), phases["pretrain"], phases["align"], pair.manifest
    )


def demo_token_windows(demo: DemoCheckpoints, *, held_out: bool, length: int) -> np.ndarray:
    """The demo corpus' training (or held-out) documents, tokenised, cut into windows of `length`.

    The same documents and tokenizer the demo trained on: every ``held_out_every``-th
    document is held out of both training phases.
    """
    every = int(demo.manifest["settings"]["held_out_every"])
    train, held = split_documents(builtin_documents(), every)
    stream = tokenize(held if held_out else train, load_tokenizer(demo.base))
    n = len(stream) // length
    if n < 2:
        raise ValueError(f"the demo's {'held-out' if held_out else 'training'} text is too short")
    return stream[: n * length].reshape(n, length)


def demo_sweep_config(pair: DemoPair, grid: DemoGrid) -> SweepConfig:
    """The sweep ``rsf demo`` runs on its pair: the grid's choices, the built-in corpus, CPU."""
    return SweepConfig(
        pairs=(PairSpec("demo", str(pair.base), str(pair.aligned)),),
        corpus=CorpusSpec(tokens=grid.tokens, seq_len=grid.seq_len),
        constructions=grid.constructions,
        cutoffs=grid.cutoffs,
        normalisations=grid.normalisations,
        replicates=grid.replicates,
        seed=grid.seed,
        device="cpu",
    )
