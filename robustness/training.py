"""Training in torch: cross-entropy pretraining and preference alignment (DPO).

The project trains its own demo pair with these functions (``robustness.demo``),
and experiments on the training objectives build on them, so the names and
signatures below are stable:

- :class:`PreferencePairs` and :func:`preference_pairs` make preference data
  from token ids: the prompt is a sequence's first ``prompt_len`` tokens, the
  **chosen** continuation is the true rest of that sequence, the **rejected**
  one a corrupted version of it (its tokens shuffled, or the continuation of
  another passage).
- :func:`continuation_logprobs` is ``log π(continuation | prompt)``, summed
  over the continuation's tokens, differentiable.
- :func:`dpo_loss` is the DPO loss of Rafailov et al. (2023), "Direct
  Preference Optimization: Your Language Model is Secretly a Reward Model",
  eq. 7::

      L_DPO = −mean log σ( β·[(log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))] )

- :func:`preference_margin` is the implicit-reward margin inside that
  sigmoid, per pair, without gradients: positive when the policy prefers the
  chosen continuation more than the reference does.
- :func:`objective_loss` is the graded objective
  ``L_λ = (1 − λ)·CE(chosen) + λ·L_DPO``: λ = 0 is supervised fine-tuning on
  the chosen continuations (mean token cross-entropy), λ = 1 is pure DPO.
- :func:`pretrain` (next-token cross-entropy on token ids) and :func:`align`
  (``L_λ`` on preference pairs, the reference model frozen) run AdamW with a
  linear warm-up and cosine decay, save intermediate checkpoints with
  ``save_pretrained`` (and the tokenizer, when given) into
  ``checkpoint_dir/step-XXXXX``, and return the trained model.

Determinism: every random choice comes from the ``seed`` argument (batch
order through a ``torch.Generator``, dropout inside ``torch.random.fork_rng``,
so the caller's global RNG state is left as it was). The same seed, inputs and
thread count give identical weights.
"""

from __future__ import annotations

import inspect
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = [
    "CORRUPTIONS",
    "PreferencePairs",
    "align",
    "continuation_logprobs",
    "dpo_loss",
    "objective_loss",
    "preference_margin",
    "preference_pairs",
    "pretrain",
    "save_pretrained",
]

CORRUPTIONS = ("mixed", "shuffle", "swap")


# ---------------------------------------------------------------------------- preference data


@dataclass(frozen=True)
class PreferencePairs:
    """Preference data as token ids (int64): ``prompt [n, P]``, ``chosen [n, C]``, ``rejected [n, C]``.

    ``chosen[i]`` is the true continuation of ``prompt[i]``; ``rejected[i]`` a
    corrupted one of the same length (never equal to ``chosen[i]``).
    """

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray

    def __post_init__(self):
        n = self.prompt.shape[0]
        if self.prompt.ndim != 2 or self.chosen.ndim != 2 or self.rejected.ndim != 2:
            raise ValueError("`prompt`, `chosen` and `rejected` must be 2-d id arrays")
        if self.chosen.shape != self.rejected.shape or self.chosen.shape[0] != n:
            raise ValueError(
                f"`chosen` {self.chosen.shape} and `rejected` {self.rejected.shape} must both be "
                f"[{n}, C] to match `prompt` {self.prompt.shape}"
            )

    def __len__(self) -> int:
        return int(self.prompt.shape[0])

    def subset(self, index) -> PreferencePairs:
        """The pairs at `index` (an index array, a boolean mask or a slice)."""
        return PreferencePairs(self.prompt[index], self.chosen[index], self.rejected[index])


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation with no fixed point (n ≥ 2), by rejection."""
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def preference_pairs(
    ids: np.ndarray,
    *,
    prompt_len: int,
    rng: np.random.Generator,
    corruption: str = "mixed",
) -> PreferencePairs:
    """Preference pairs from token ids ``[n_seq, seq_len]``.

    The prompt is each sequence's first `prompt_len` tokens and **chosen** its
    true continuation (the remaining ``seq_len − prompt_len`` tokens).
    **Rejected** is a corrupted continuation of the same length:

    - ``"shuffle"``: the continuation's own tokens in a random order (right
      words, wrong syntax);
    - ``"swap"``: the continuation of another sequence (fluent, wrong topic),
      through a random derangement so no sequence keeps its own;
    - ``"mixed"`` (default): each pair draws one of the two with equal
      probability.

    A shuffle that reproduces the continuation (e.g. all its tokens equal)
    falls back to a swap, and a swap that brings in an identical continuation
    (a repeated passage) to a randomly chosen differing one; a pair with no
    differing continuation anywhere is an error.

    Parameters
    ----------
    ids : int array ``[n_seq, seq_len]``
    prompt_len : int, ``1 ≤ prompt_len < seq_len``
    rng : numpy.random.Generator, the only source of randomness
    corruption : ``"mixed"`` | ``"shuffle"`` | ``"swap"``
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"`ids` must be an integer array [n_seq, seq_len], got {ids.dtype} {ids.shape}"
        )
    n, seq_len = ids.shape
    if not 1 <= prompt_len < seq_len:
        raise ValueError(f"`prompt_len` must lie in [1, {seq_len - 1}], got {prompt_len}")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown `corruption` {corruption!r}: valid are {', '.join(CORRUPTIONS)}")
    if n < 2 and corruption != "shuffle":
        raise ValueError(f"`ids` needs at least 2 sequences to swap continuations, got {n}")
    ids = ids.astype(np.int64)
    prompt, chosen = ids[:, :prompt_len].copy(), ids[:, prompt_len:].copy()
    if corruption == "mixed":
        use_swap = rng.random(n) < 0.5
    else:
        use_swap = np.full(n, corruption == "swap")
    other = _derangement(n, rng) if n >= 2 else np.zeros(n, dtype=np.int64)
    rejected = np.empty_like(chosen)
    for i in range(n):
        if not use_swap[i]:
            rejected[i] = chosen[i, rng.permutation(chosen.shape[1])]
            if np.array_equal(rejected[i], chosen[i]) and n >= 2:
                use_swap[i] = True
        if use_swap[i]:
            rejected[i] = chosen[other[i]]
        if np.array_equal(rejected[i], chosen[i]):  # repeated passages: any differing one
            differing = np.flatnonzero((chosen != chosen[i]).any(axis=1))
            if differing.size:
                rejected[i] = chosen[rng.choice(differing)]
    same = np.flatnonzero((rejected == chosen).all(axis=1))
    if same.size:
        raise ValueError(
            f"{same.size} pair(s) (first: sequence {same[0]}) have a rejected continuation equal to "
            "the chosen one: the sequences repeat; deduplicate `ids` or lengthen the continuation"
        )
    return PreferencePairs(prompt, chosen, rejected)


# ---------------------------------------------------------------------------- losses


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


def continuation_logprobs(model, prompt: torch.Tensor, continuation: torch.Tensor) -> torch.Tensor:
    """``log π(continuation | prompt)``, summed over the continuation's tokens: ``[n]``, differentiable.

    `prompt` ``[n, P]`` (P ≥ 1) and `continuation` ``[n, C]`` are token ids; the
    model reads ``prompt ++ continuation`` and the logits at positions
    ``P−1 … P+C−2`` score the continuation's tokens. The log-softmax is taken
    in float32 whatever the model's dtype.
    """
    if prompt.ndim != 2 or continuation.ndim != 2 or prompt.shape[0] != continuation.shape[0]:
        raise ValueError(
            f"`prompt` [n, P] and `continuation` [n, C] must share n, got {tuple(prompt.shape)} "
            f"and {tuple(continuation.shape)}"
        )
    if prompt.shape[1] < 1:
        raise ValueError("`prompt` needs at least one token to condition the continuation on")
    c = continuation.shape[1]
    inputs = torch.cat([prompt, continuation], dim=1)
    if _accepts_logits_to_keep(model):  # skip the unembedding on the prompt
        logits = model(input_ids=inputs, logits_to_keep=c + 1).logits[:, :-1]
    else:
        logits = model(input_ids=inputs).logits[:, -c - 1 : -1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(-1, continuation.unsqueeze(-1)).squeeze(-1).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """``mean −log σ(β·((pc − rc) − (pr − rr)))`` (Rafailov et al. 2023, eq. 7).

    Arguments are summed continuation log-probabilities ``[n]`` under the
    policy (``pc``, ``pr``) and the frozen reference (``rc``, ``rr``).
    """
    if beta <= 0:
        raise ValueError(f"`beta` must be positive, got {beta}")
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean()


def _as_ids(array, device) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.to(device=device, dtype=torch.long)
    return torch.as_tensor(np.asarray(array), dtype=torch.long, device=device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def preference_margin(
    policy, reference, pairs: PreferencePairs, *, beta: float, batch_size: int = 32
) -> np.ndarray:
    """Per-pair DPO implicit-reward margin ``β·((pc − rc) − (pr − rr))``, float64 ``[n]``, no grad.

    Positive: the policy raised the chosen continuation relative to the
    rejected one more than the reference had it. Both models are evaluated
    in eval mode (each model's mode is restored afterwards).
    """
    if beta <= 0:
        raise ValueError(f"`beta` must be positive, got {beta}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}")
    modes = [(m, m.training) for m in (policy, reference)]
    for model, _ in modes:
        model.eval()
    try:
        out = []
        device = _device(policy)
        for start in range(0, len(pairs), batch_size):
            batch = pairs.subset(slice(start, start + batch_size))
            prompt, chosen, rejected = (
                _as_ids(batch.prompt, device),
                _as_ids(batch.chosen, device),
                _as_ids(batch.rejected, device),
            )
            pc = continuation_logprobs(policy, prompt, chosen)
            pr = continuation_logprobs(policy, prompt, rejected)
            ref_device = _device(reference)
            rc = continuation_logprobs(reference, prompt.to(ref_device), chosen.to(ref_device))
            rr = continuation_logprobs(reference, prompt.to(ref_device), rejected.to(ref_device))
            margin = beta * ((pc - rc.to(device)) - (pr - rr.to(device)))
            out.append(margin.double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)
    finally:
        for model, mode in modes:
            model.train(mode)


def objective_loss(
    policy,
    reference,
    prompt: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    lam: float,
    beta: float,
) -> torch.Tensor:
    """The graded objective ``L_λ = (1 − λ)·CE(chosen) + λ·L_DPO``.

    ``CE(chosen)`` is the mean token cross-entropy of the chosen continuation
    given the prompt (the model reads ``prompt ++ chosen``; only the chosen
    tokens are scored), i.e. ``−Σ log π(y_c|x) / (n·C)``. ``L_DPO`` is
    :func:`dpo_loss` with the reference's log-probabilities computed without
    gradients. ``lam = 0`` needs no reference (pass ``None``) and skips the
    rejected continuations.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"`lam` must lie in [0, 1], got {lam}")
    if lam > 0 and reference is None:
        raise ValueError("`reference` is required when `lam` > 0 (the DPO term needs it)")
    policy_chosen = continuation_logprobs(policy, prompt, chosen)
    loss = policy_chosen.new_zeros(())
    if lam < 1:
        ce = -policy_chosen.sum() / chosen.numel()
        loss = loss + (1.0 - lam) * ce
    if lam > 0:
        policy_rejected = continuation_logprobs(policy, prompt, rejected)
        with torch.no_grad():
            ref_chosen = continuation_logprobs(reference, prompt, chosen)
            ref_rejected = continuation_logprobs(reference, prompt, rejected)
        loss = loss + lam * dpo_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta
        )
    return loss


# ---------------------------------------------------------------------------- loops


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def save_pretrained(model, path, *, tokenizer=None) -> None:
    """``model.save_pretrained(path)`` (and the tokenizer's), without the library's progress bar."""
    from transformers.utils import logging as hf_logging

    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()


def _save_checkpoint(model, tokenizer, checkpoint_dir, step: int) -> None:
    """``checkpoint_dir/step-XXXXX``, written beside under a temporary name, then renamed."""
    root = Path(checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:05d}"
    temporary = root / f".step-{step:05d}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    save_pretrained(model, temporary, tokenizer=tokenizer)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)


def _check_loop_args(steps, lr, batch_size, every, checkpoint_dir) -> None:
    if steps < 1:
        raise ValueError(f"`steps` must be positive, got {steps}")
    if lr <= 0:
        raise ValueError(f"`lr` must be positive, got {lr}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}")
    if every is not None and every < 1:
        raise ValueError(f"`every` must be positive, got {every}")
    if every is not None and checkpoint_dir is None:
        raise ValueError("`every` needs a `checkpoint_dir` to write checkpoints into")


def _loop(
    model,
    *,
    n_examples: int,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    checkpoint_dir,
    every,
    tokenizer,
    progress: bool,
    history: list | None,
    description: str,
):
    """AdamW over random minibatches (with replacement across steps, without within a step)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _schedule(step, steps, warmup)
    )
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, n_examples)
    checkpoints = every is not None and checkpoint_dir is not None
    devices = [_device(model)] if _device(model).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # dropout, inside the fork: the caller's RNG is untouched
        if checkpoints:
            model.eval()
            _save_checkpoint(model, tokenizer, checkpoint_dir, 0)
        model.train()
        bar = tqdm(range(steps), desc=description, disable=not progress, leave=False)
        for step in bar:
            index = torch.randperm(n_examples, generator=generator)[:size]
            loss = loss_fn(index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"{description}: the loss became {value} at step {step + 1}; lower `lr`"
                )
            if history is not None:
                history.append({"step": step + 1, "loss": value})
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
            done = step + 1
            if checkpoints and (done % every == 0 or done == steps):
                model.eval()
                _save_checkpoint(model, tokenizer, checkpoint_dir, done)
                model.train()
    model.eval()
    return model


def pretrain(
    model,
    ids: np.ndarray,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    checkpoint_dir=None,
    every: int | None = None,
    tokenizer=None,
    progress: bool = True,
    history: list | None = None,
):
    """Next-token cross-entropy on token ids ``[n_seq, seq_len]``; returns `model` (trained in place).

    Each step draws `batch_size` distinct sequences with a ``torch.Generator``
    seeded by `seed`. AdamW (β = 0.9, 0.95; weight decay 0.01), linear warm-up
    over the first 10% of steps then cosine decay to 10% of `lr`, gradients
    clipped to norm 1. With `checkpoint_dir` and `every`, the model (and
    `tokenizer`) is saved at step 0, every `every` steps and at the last step
    into ``checkpoint_dir/step-XXXXX``. `history`, a list, receives
    ``{"step", "loss"}`` per step. The model is left in eval mode.
    """
    _check_loop_args(steps, lr, batch_size, every, checkpoint_dir)
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] < 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`ids` must be integer [n_seq, seq_len ≥ 2], got {ids.dtype} {ids.shape}")
    device = _device(model)
    data = torch.as_tensor(ids, dtype=torch.long)

    def loss_fn(index):
        batch = data[index].to(device)
        return model(input_ids=batch, labels=batch).loss

    return _loop(
        model,
        n_examples=len(data),
        loss_fn=loss_fn,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        every=every,
        tokenizer=tokenizer,
        progress=progress,
        history=history,
        description="pretrain (cross-entropy)",
    )


def align(
    policy,
    reference,
    pairs: PreferencePairs,
    *,
    lam: float = 1.0,
    beta: float = 0.1,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    checkpoint_dir=None,
    every: int | None = None,
    tokenizer=None,
    progress: bool = True,
    history: list | None = None,
):
    """Train `policy` on ``L_λ`` (:func:`objective_loss`) over `pairs`; returns `policy`.

    `reference` is frozen here (``requires_grad_(False)``, eval mode) and never
    updated; it may be ``None`` only for ``lam = 0``. It must be a separate
    model (typically a copy of the policy before alignment). Optimiser,
    schedule, batches, checkpoints and `history` as in :func:`pretrain`.
    """
    _check_loop_args(steps, lr, batch_size, every, checkpoint_dir)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"`lam` must lie in [0, 1], got {lam}")
    if reference is None and lam > 0:
        raise ValueError("`reference` is required when `lam` > 0 (the DPO term needs it)")
    if reference is policy:
        raise ValueError(
            "`reference` must be a separate, frozen copy of the policy, not the policy"
        )
    if len(pairs) < 1:
        raise ValueError("`pairs` is empty")
    if reference is not None:
        reference.requires_grad_(False)
        reference.eval()
    device = _device(policy)
    prompt, chosen, rejected = (
        torch.as_tensor(pairs.prompt, dtype=torch.long),
        torch.as_tensor(pairs.chosen, dtype=torch.long),
        torch.as_tensor(pairs.rejected, dtype=torch.long),
    )

    def loss_fn(index):
        return objective_loss(
            policy,
            reference,
            prompt[index].to(device),
            chosen[index].to(device),
            rejected[index].to(device),
            lam=lam,
            beta=beta,
        )

    label = "DPO" if lam == 1 else ("cross-entropy on chosen" if lam == 0 else f"L_λ, λ={lam:g}")
    return _loop(
        policy,
        n_examples=len(pairs),
        loss_fn=loss_fn,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        every=every,
        tokenizer=tokenizer,
        progress=progress,
        history=history,
        description=f"align ({label})",
    )
