"""Training the demo pair: a tokenizer, a small Llama-style model, cross-entropy then DPO.

Nothing is downloaded. From Python's own help topics (the built-in corpus,
``pydoc_data.topics``):

1. a byte-level BPE tokenizer is trained on the corpus (``tokenizers``) and
   wrapped in ``transformers.PreTrainedTokenizerFast``;
2. a small Llama-style model (untied embeddings, so the unembedding is its
   own matrix) is **pretrained** with next-token cross-entropy
   (:func:`robustness.training.loops.pretrain`);
3. a copy is **aligned** with DPO (:func:`robustness.training.loops.align`, the
   pretrained model frozen as the reference) on preference pairs from the
   corpus: the prompt is a passage's first tokens, *chosen* its true
   continuation, *rejected* a corrupted one (shuffled, or another passage's).

Everything is deterministic from the seed (on a given CPU architecture and
library versions: training runs on one thread). Where the pair is cached and
how it is found again is :mod:`robustness.demo.pair`.
"""

from __future__ import annotations

import copy
import hashlib
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from robustness import __version__
from robustness.io.provenance import package_versions
from robustness.measure.corpus import BUILTIN_CORPUS, builtin_documents, tokenize
from robustness.training.loops import align as align_model
from robustness.training.loops import pretrain, save_pretrained
from robustness.training.preferences import (
    PreferencePairs,
    chat_frame,
    continuation_logprobs,
    framed,
    preference_margin,
    preference_pairs,
)

__all__ = [
    "EOS",
    "build_tokenizer",
    "preference_metrics",
    "single_threaded",
    "split_documents",
    "token_windows",
    "train_pair",
]

EOS = "<|endoftext|>"


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


def _model_config(settings, vocab_size: int, eos_id: int):
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
        # No pad id: every window is full. A pad id would make the separator's embedding a
        # frozen zero (nn.Embedding's padding_idx); a sequence starting with it would then
        # carry a zero residual, whose RMSNorm gradient (1/√eps) swamps every δ_t statistic.
        pad_token_id=None,
    )


def token_windows(stream: np.ndarray, length: int) -> np.ndarray:
    n = len(stream) // length
    return stream[: n * length].reshape(n, length)


def split_documents(documents: list[str], every: int) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: one document in every `every` (offset ``every // 2``) is held out."""
    held = [doc for i, doc in enumerate(documents) if i % every == every // 2]
    train = [doc for i, doc in enumerate(documents) if i % every != every // 2]
    return train, held


@torch.no_grad()
def preference_metrics(policy, reference, pairs, *, beta: float, batch_size: int = 64) -> dict:
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


@dataclass(frozen=True)
class DemoData:
    """The corpus split, the tokenizer trained on its training side, and what both phases train on."""

    n_documents: int  # in the corpus
    n_held_out_documents: int
    tokenizer: object  # a PreTrainedTokenizerFast
    train_stream: np.ndarray  # the training documents' tokens, one stream
    held_stream: np.ndarray  # the held-out documents' tokens
    text_ids: np.ndarray  # pretraining's sequences [n, seq_len]
    train_pairs: PreferencePairs  # framed for DPO
    held_pairs: PreferencePairs


@dataclass(frozen=True)
class Pretrained:
    """Pretraining's outcome (step 2): the model, saved as ``base/``, and its loss history."""

    model: object
    history: list[dict]


@dataclass(frozen=True)
class Aligned:
    """Alignment's outcome (step 3): the DPO run's loss history and the preference metrics around it."""

    history: list[dict]
    before: dict  # held-out pairs, the pretrained model
    after: dict  # held-out pairs, the aligned model
    train_after: dict  # the first 256 training pairs, the aligned model


def _demo_data(settings) -> DemoData:
    """The training/held-out split, its tokenizer, pretraining's sequences and the preference pairs.

    Training and held-out pairs are drawn in that order from one generator seeded with
    ``settings.seed``.
    """
    documents = builtin_documents()
    train_docs, held_docs = split_documents(documents, settings.held_out_every)
    tokenizer = build_tokenizer(train_docs, settings.vocab_size)
    train_stream, held_stream = tokenize(train_docs, tokenizer), tokenize(held_docs, tokenizer)
    pair_len = settings.prompt_len + settings.continuation_len
    text_ids = token_windows(train_stream, settings.seq_len)
    if len(text_ids) < settings.pretrain_batch or len(token_windows(held_stream, pair_len)) < 2:
        raise ValueError(
            f"the built-in corpus gives {len(train_stream)} training tokens: too few for "
            f"seq_len {settings.seq_len} and batch {settings.pretrain_batch}"
        )
    rng = np.random.default_rng(settings.seed)
    frame = chat_frame(tokenizer)  # the demo's own BPE has no chat template: prompts as they are
    train_pairs = framed(preference_pairs(
        token_windows(train_stream, pair_len), prompt_len=settings.prompt_len, rng=rng
    ), frame)  # fmt: skip
    held_pairs = framed(preference_pairs(
        token_windows(held_stream, pair_len), prompt_len=settings.prompt_len, rng=rng
    ), frame)  # fmt: skip
    return DemoData(
        n_documents=len(documents),
        n_held_out_documents=len(held_docs),
        tokenizer=tokenizer,
        train_stream=train_stream,
        held_stream=held_stream,
        text_ids=text_ids,
        train_pairs=train_pairs,
        held_pairs=held_pairs,
    )


def _pretrain_base(settings, data: DemoData, out: Path, *, progress: bool) -> Pretrained:
    """A seeded initialisation pretrained with cross-entropy, saved as ``out/base``."""
    from transformers import AutoModelForCausalLM

    tokenizer = data.tokenizer
    config = _model_config(settings, len(tokenizer), tokenizer.convert_tokens_to_ids(EOS))
    with torch.random.fork_rng(devices=[]):  # the initialisation, without touching global state
        torch.manual_seed(settings.seed)
        model = AutoModelForCausalLM.from_config(config)
    history: list = []
    pretrain(
        model,
        data.text_ids,
        steps=settings.pretrain_steps,
        lr=settings.pretrain_lr,
        batch_size=settings.pretrain_batch,
        seed=settings.seed,
        checkpoint_dir=out / "checkpoints" / "pretrain",
        every=settings.pretrain_every,
        tokenizer=tokenizer,
        progress=progress,
        history=history,
    )
    save_pretrained(model, out / "base", tokenizer=tokenizer)
    return Pretrained(model, history)


def _align_copy(settings, data: DemoData, model, out: Path, *, progress: bool) -> Aligned:
    """A copy of `model` aligned with DPO against `model` frozen, saved as ``out/aligned``."""
    reference = copy.deepcopy(model)
    policy = copy.deepcopy(model)
    before = preference_metrics(model, reference, data.held_pairs, beta=settings.beta)
    history: list = []
    align_model(
        policy,
        reference,
        data.train_pairs,
        lam=1.0,
        beta=settings.beta,
        steps=settings.align_steps,
        lr=settings.align_lr,
        batch_size=settings.align_batch,
        seed=settings.seed + 1,
        checkpoint_dir=out / "checkpoints" / "align",
        every=settings.align_every,
        tokenizer=data.tokenizer,
        progress=progress,
        history=history,
    )
    save_pretrained(policy, out / "aligned", tokenizer=data.tokenizer)
    after = preference_metrics(policy, reference, data.held_pairs, beta=settings.beta)
    train_after = preference_metrics(
        policy, reference, data.train_pairs.subset(slice(0, 256)), beta=settings.beta
    )
    return Aligned(history, before, after, train_after)


def train_pair(settings, out: Path, *, progress: bool) -> dict:
    """Train the pair of `settings` (a :class:`robustness.demo.pair.DemoSettings`) into `out`; the manifest's content.

    Writes ``base/``, ``aligned/`` and ``checkpoints/{pretrain,align}/step-*``; the
    caller adds the recipe's format and key and writes the manifest.
    """
    started = time.perf_counter()
    data = _demo_data(settings)
    pretrained = _pretrain_base(settings, data, out, progress=progress)
    pretrained_at = time.perf_counter()
    aligned = _align_copy(settings, data, pretrained.model, out, progress=progress)
    finished = time.perf_counter()
    seconds = {
        "pretrain": round(pretrained_at - started, 1),
        "align": round(finished - pretrained_at, 1),
    }
    return _manifest(settings, data, pretrained, aligned, seconds)


def _manifest(
    settings, data: DemoData, pretrained: Pretrained, aligned: Aligned, seconds: dict
) -> dict:
    """The manifest's content: the recipe, the data's sizes, the losses and the preference metrics."""
    tokenizer = data.tokenizer
    return {
        "title": "rsf demo pair: pretrained with cross-entropy, then aligned with DPO",
        "seed": settings.seed,
        "settings": asdict(settings),
        "model": "llama (untied embeddings)",
        "n_parameters": int(sum(p.numel() for p in pretrained.model.parameters())),
        "corpus": BUILTIN_CORPUS,
        "tokenizer": {
            "kind": "byte-level BPE trained on the corpus' training documents",
            "vocab_size": len(tokenizer),
            "sha256": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        },
        "data": {
            "documents": data.n_documents,
            "held_out_documents": data.n_held_out_documents,
            "train_tokens": int(len(data.train_stream)),
            "held_out_tokens": int(len(data.held_stream)),
            "pretrain_sequences": int(len(data.text_ids)),
            "train_pairs": len(data.train_pairs),
            "held_out_pairs": len(data.held_pairs),
            "rejected": "the continuation's tokens shuffled, or another passage's continuation (half each)",
        },
        "pretrain": _summary(pretrained.history),
        "align": {
            "objective": "DPO (Rafailov et al. 2023), reference frozen",
            **_summary(aligned.history),
        },
        "held_out": {"base": aligned.before, "aligned": aligned.after},
        "train_subset_aligned": aligned.train_after,
        "seconds": seconds,
        "torch_threads": torch.get_num_threads(),
        "versions": package_versions(),
        "rsf_version": __version__,
    }
