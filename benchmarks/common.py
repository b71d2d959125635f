"""What the benchmarks share: the GPT-2-small-shaped random pair, its tokens, a process's peak RSS."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import probes

SEQ_LEN = 128
BATCH = 8
BOOTSTRAP_CUTOFFS = ("k=8", "k=16", "k=32", "k=64", "var=0.9", "pr")


def gpt2_small(path: Path, aligned_path: Path | None = None, *, d: int = 768, layers: int = 12):
    """A random GPT-2-small-shaped model; with `aligned_path`, also base + a small random delta.

    `d` and `layers` shrink it (a small case with the same vocabulary and heads of 64).
    """
    config = GPT2Config(n_embd=d, n_layer=layers, n_head=max(1, d // 64), n_positions=1024,
                        vocab_size=50257)  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(path)
    if aligned_path is not None:
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.01)
        model.save_pretrained(aligned_path)


def token_ids(n_tokens: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50257, size=(n_tokens // SEQ_LEN, SEQ_LEN))


def peak_rss_bytes() -> int:
    """The process's resident high-water mark (``VmHWM``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bootstrap_setup(base_dir, aligned_dir, n_tokens: int, replicates: int, **options):
    """``(config, corpus)`` of the bootstrap figures: ``act_cov`` × :data:`BOOTSTRAP_CUTOFFS` × all
    normalisations on the CPU (`options` override any of the config's settings)."""
    from robustness.measure.corpus import Corpus
    from robustness.settings.config import PairSpec, SweepConfig

    corpus = Corpus(token_ids(n_tokens, seed=2), "benchmark")
    config = SweepConfig(
        pairs=(PairSpec("bench", str(base_dir), str(aligned_dir)),),
        constructions=("act_cov",),
        cutoffs=BOOTSTRAP_CUTOFFS,
        normalisations=probes.NORMALISATIONS,
        device="cpu",
        replicates=replicates,
    )
    return config.with_options(**options), corpus
