"""Preference data and the objectives trained on it: pairs, log-probabilities, DPO, L_λ.

- :class:`PreferencePairs` and :func:`preference_pairs` make preference data
  from token ids: the prompt is a sequence's first ``prompt_len`` tokens, the
  **chosen** continuation is the true rest of that sequence, the **rejected**
  one a corrupted version of it (its tokens shuffled, or the continuation of
  another passage).
- :func:`chat_frame` and :func:`framed`: where the tokenizer has a chat
  template, each prompt is put in a user turn and followed by the assistant's
  header (the template's own tokens around it), so the chosen and rejected
  continuations are the assistant's answer, as in chat alignment data.
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

The training loops that use them are in :mod:`robustness.training.loops`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CORRUPTIONS",
    "PreferencePairs",
    "chat_frame",
    "framed",
    "continuation_logprobs",
    "dpo_loss",
    "model_device",
    "objective_loss",
    "preference_margin",
    "preference_pairs",
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


MARKER = "\ue000"  # a private-use character: no template writes it, so it marks the prompt


def chat_frame(tokenizer) -> tuple[np.ndarray, np.ndarray] | None:
    """The ids the tokenizer's chat template puts before a user's prompt and after it, through
    the assistant's header (``None`` without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": MARKER}], add_generation_prompt=True, tokenize=False
    )
    if text.count(MARKER) != 1:
        raise ValueError("the tokenizer's chat template does not show the user's prompt once")
    before, after = text.split(MARKER)

    def encode(part: str) -> np.ndarray:
        return np.asarray(tokenizer(part, add_special_tokens=False)["input_ids"], dtype=np.int64)

    return encode(before), encode(after)


def framed(pairs: PreferencePairs, frame) -> PreferencePairs:
    """`pairs` with every prompt inside the chat `frame` (:func:`chat_frame`; ``None``: as is)."""
    if frame is None:
        return pairs
    before, after = frame
    n = len(pairs)
    prompt = np.concatenate(
        [np.tile(before, (n, 1)), pairs.prompt, np.tile(after, (n, 1))], axis=1
    ).astype(np.int64)
    return PreferencePairs(prompt, pairs.chosen, pairs.rejected)


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


def model_device(model) -> torch.device:
    """The device of a model's first parameter."""
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
        device = model_device(policy)
        for start in range(0, len(pairs), batch_size):
            batch = pairs.subset(slice(start, start + batch_size))
            prompt, chosen, rejected = (
                _as_ids(batch.prompt, device),
                _as_ids(batch.chosen, device),
                _as_ids(batch.rejected, device),
            )
            pc = continuation_logprobs(policy, prompt, chosen)
            pr = continuation_logprobs(policy, prompt, rejected)
            ref_device = model_device(reference)
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
