"""Training loops in torch: cross-entropy pretraining and preference alignment.

The project trains its own demo pair with these functions (``robustness.demo.pair``),
and experiments on the training objectives build on them:

- :func:`pretrain` (next-token cross-entropy on token ids) and :func:`align`
  (``L_λ`` of :func:`robustness.training.preferences.objective_loss` on preference
  pairs, the reference model frozen) run AdamW with a linear warm-up and
  cosine decay, save intermediate checkpoints with ``save_pretrained`` (and
  the tokenizer, when given) into ``checkpoint_dir/step-XXXXX``, and return
  the trained model.

Determinism: every random choice comes from the ``seed`` argument (batch
order through a ``torch.Generator``, dropout inside ``torch.random.fork_rng``,
so the caller's global RNG state is left as it was). The same seed, inputs and
thread count give identical weights.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from robustness.training.preferences import PreferencePairs, model_device, objective_loss

__all__ = ["align", "pretrain", "save_pretrained"]


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
    devices = [model_device(model)] if model_device(model).type == "cuda" else []
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
    device = model_device(model)
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
    device = model_device(policy)
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
