"""Streaming statistics of the upstream gradients δ_t at the write sites, beside the read-site inputs.

A weight update accumulates outer products: for a matrix with input ``a_t`` and
output gradient ``δ_t`` (``∂L/∂y_t``), ``∇_W L = Σ_t δ_t a_tᵀ``. A read matrix's
residual side is its input, so its delta inherits the anisotropy of the
``a_t`` it reads; a write matrix's residual side is its output, so its delta
inherits the anisotropy of ``δ_t``, the gradient of the residual stream
flowing back into ``o`` and ``down``. This module measures both in one pass:

- **read sites** ``attn_in``, ``mlp_in``: the tensor entering the module that
  holds q / up (the same hooks as :func:`probes.collect_statistics`);
- **write sites** ``o_out``, ``down_out``: ``δ_t = ∂L/∂(output of o / down)``,
  ``d``-dimensional, taken with ``torch.autograd.grad`` on those outputs, so
  no parameter's ``.grad`` is touched.

Sums ``Σx``, ``Σxxᵀ`` and ``n`` are float64 (a float64 model's products are
formed in float64, anything else in float32); per-chunk sums support a
bootstrap by reweighting, as for the activation statistics.

Summaries of a spectrum ``λ`` (eigenvalues of a covariance):

- participation ratio ``(Σλ)²/Σλ²``;
- entropy effective rank ``exp(H(p))``, ``p = λ/Σλ``, ``H(p) = −Σ p log p``
  (Roy & Vetterli 2007, "The effective rank: a measure of effective
  dimensionality");
- the share of energy ``tr(P_k M)/tr M`` of a second moment ``M`` in the top-k
  directions of a basis (the prediction subspace: the unembedding's right
  singular vectors), against ``k/d`` for isotropic vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .activations import (
    Accumulator,
    ChunkStatistics,
    SiteStatistics,
    accumulator_results,
    site_hooks,
)
from .adapters import SITES, family_of, layer_modules, model_dims
from .cutoffs import participation_ratio
from .fraction import as_float64

__all__ = [
    "GRADIENT_SITES",
    "GRADIENT_SITE_OF",
    "GradientStatistics",
    "collect_gradient_statistics",
    "effective_ranks",
    "entropy_effective_rank",
    "participation_ratio",
    "subspace_energy_fraction",
]

# Write sites: the gradient at the output of each write matrix (the residual side).
GRADIENT_SITE_OF = {"o": "o_out", "down": "down_out"}
GRADIENT_SITES = tuple(GRADIENT_SITE_OF.values())
READ_SITES = ("attn_in", "mlp_in")

SiteKey = tuple[int, str]


def entropy_effective_rank(spectrum) -> float:
    """``exp(−Σ p_i log p_i)`` with ``p = λ/Σλ`` (Roy & Vetterli 2007); ``0 log 0 = 0``.

    Lies in ``[1, d]``: 1 for a single direction, ``d`` for a flat spectrum.
    An all-zero spectrum gives NaN.
    """
    lam = np.clip(as_float64(spectrum).ravel(), 0.0, None)
    total = lam.sum()
    if not np.isfinite(total) or total <= 0:
        return math.nan
    p = lam[lam > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def effective_ranks(spectrum) -> tuple[float, float]:
    """``(participation ratio, entropy effective rank)`` of one spectrum."""
    return participation_ratio(spectrum), entropy_effective_rank(spectrum)


def subspace_energy_fraction(moment, basis, ks) -> np.ndarray:
    """``tr(U_kᵀ M U_k)/tr M`` at each k, for a PSD ``M [d, d]`` and orthonormal ``basis [d, r]``.

    One product ``M U`` gives every k by a cumulative sum. ``tr M = 0`` gives NaN.
    """
    moment = as_float64(moment)
    basis = as_float64(basis)
    ks = np.asarray(ks, dtype=np.int64)
    if ks.size and (ks.min() < 1 or ks.max() > basis.shape[1]):
        raise ValueError(f"`ks` must lie in [1, {basis.shape[1]}], got {ks.tolist()}")
    total = float(np.trace(moment))
    if not total > 0:
        return np.full(ks.shape, np.nan)
    width = int(ks.max()) if ks.size else 0
    energy = np.einsum("ij,ij->j", basis[:, :width], moment @ basis[:, :width])
    return np.clip(np.cumsum(energy)[ks - 1] / total, 0.0, 1.0)


class _ExactAccumulator(Accumulator):
    """The activation accumulator, but a float64 tensor's products stay in float64."""

    def add(self, tensor: torch.Tensor) -> None:
        x = tensor.detach().reshape(-1, tensor.shape[-1])
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        self.xx += (x.T @ x).double()
        self.x += x.sum(dim=0, dtype=torch.float64)
        self.n += x.shape[0]


@dataclass
class GradientStatistics:
    """Streaming sums per ``(layer, site)``: read-site inputs and write-site gradients.

    ``sites`` and ``chunks`` are keyed by ``(layer, site)`` with ``site`` in
    ``attn_in, mlp_in`` (activations ``a_t``) or ``o_out, down_out`` (``δ_t``).
    ``loss`` is the sum of the losses of every batch.
    """

    sites: dict[SiteKey, SiteStatistics]
    chunks: dict[SiteKey, ChunkStatistics] = field(default_factory=dict)
    n_batches: int = 0
    loss: float = 0.0


def _write_modules(model, layer: int) -> dict[str, torch.nn.Module]:
    family = family_of(model)
    block = layer_modules(model)[layer]
    return {
        GRADIENT_SITE_OF[name]: block.get_submodule(family.matrices[name].module)
        for name in GRADIENT_SITE_OF
    }


def _keys(model, sites, layers) -> list[SiteKey]:
    n_layers = len(layer_modules(model))
    layers = range(n_layers) if layers is None else layers
    valid = READ_SITES + GRADIENT_SITES
    for site in sites:
        if site not in valid:
            raise ValueError(f"unknown site {site!r}: choose from {', '.join(valid)}")
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"`layers` must lie in [0, {n_layers - 1}], got {layer}")
    return [(layer, site) for layer in layers for site in sites]


def _chunk_index(chunk_of, n_batches: int) -> np.ndarray | None:
    """`chunk_of` as an array, checked: one non-decreasing chunk index per batch."""
    if chunk_of is None:
        return None
    chunk_of = np.asarray(chunk_of)
    if chunk_of.shape != (n_batches,) or np.any(np.diff(chunk_of) < 0):
        raise ValueError(
            "`chunk_of` must give one non-decreasing chunk index per batch, "
            f"got {chunk_of.tolist()} for {n_batches} batches"
        )
    return chunk_of


@contextmanager
def _write_site_hooks(
    model, keys: Iterable[SiteKey], callback: Callable[[SiteKey, torch.Tensor], None]
):
    """Call ``callback((layer, site), output)`` with each write site's output that autograd tracks.

    ``o_out``/``down_out``: the output of the module holding o / down, when
    gradients are enabled and it requires them. An input embeddings' output
    that does not require gradients (frozen parameters) is made a leaf that
    does, so the write sites' outputs are in the loss's graph all the same.
    Hooks are removed on exit, even on error.
    """

    def output_hook(key):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            if torch.is_grad_enabled() and tensor.requires_grad:
                callback(key, tensor)

        return hook

    def make_differentiable(module, args, output):
        # Frozen parameters would leave the hooked outputs outside the graph.
        if torch.is_grad_enabled() and not output.requires_grad and output.is_floating_point():
            return output.detach().requires_grad_(True)
        return None

    handles = [model.get_input_embeddings().register_forward_hook(make_differentiable)]
    try:
        for key in keys:
            module = _write_modules(model, key[0])[key[1]]
            handles.append(module.register_forward_hook(output_hook(key)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class _GradientPass:
    """One pass's running sums, and the write-site outputs of the batch being measured."""

    accumulators: dict[SiteKey, _ExactAccumulator]
    write_keys: list[SiteKey]
    captured: list[tuple[SiteKey, torch.Tensor]] = field(default_factory=list)

    def add_input(self, key: SiteKey, tensor: torch.Tensor) -> None:
        """A read site's ``a_t``; a forward pass run with gradients disabled is not recorded."""
        if torch.is_grad_enabled():
            self.accumulators[key].add(tensor)

    def capture(self, key: SiteKey, tensor: torch.Tensor) -> None:
        """A write site's output ``y_t``, kept until the batch's gradients are taken."""
        self.captured.append((key, tensor))

    def step(self, model, batch, loss_fn) -> float:
        """One batch: its loss, and ``δ_t = ∂L/∂y_t`` added at every write site; the loss."""
        self.captured.clear()
        loss = loss_fn(model, batch)
        if loss.ndim != 0:
            raise ValueError(f"`loss_fn` must return a scalar, got shape {tuple(loss.shape)}")
        if self.write_keys:
            if not self.captured:
                raise ValueError("no write-site output took part in the loss's graph")
            grads = torch.autograd.grad(
                loss, [tensor for _, tensor in self.captured], allow_unused=True
            )
            for (key, tensor), grad in zip(self.captured, grads, strict=True):
                # An output the loss does not depend on has a zero gradient.
                self.accumulators[key].add(torch.zeros_like(tensor) if grad is None else grad)
        self.captured.clear()
        return float(loss.detach())

    def end_chunk(self) -> None:
        for accumulator in self.accumulators.values():
            accumulator.end_chunk()


def collect_gradient_statistics(
    model,
    batches: Sequence,
    loss_fn: Callable[[object, object], torch.Tensor],
    *,
    sites: Iterable[str] = READ_SITES + GRADIENT_SITES,
    layers: Iterable[int] | None = None,
    chunk_of: Sequence[int] | None = None,
    progress: bool = False,
    description: str = "gradients",
) -> GradientStatistics:
    """One pass over `batches`: forward, ``δ_t`` by autograd at the write sites, inputs at the read sites.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A supported causal LM; it is run in eval mode (no dropout) and its
        parameters' ``.grad`` are left untouched.
    batches : sequence
        Whatever `loss_fn` takes, one item per step.
    loss_fn : callable ``(model, batch) -> scalar tensor``
        The objective. For ``δ_t`` on a common scale across batches of
        different sizes, sum over examples rather than average. Forward passes
        run with gradients disabled (e.g. a reference model's, or this model
        used as its own reference) are not recorded.
    sites : iterable of str
        From ``attn_in, mlp_in`` (inputs) and ``o_out, down_out`` (gradients).
    layers : iterable of int, optional
        Default every layer.
    chunk_of : sequence of int, optional
        The bootstrap chunk of each batch (non-decreasing: a chunk is a run of
        consecutive batches); ``None`` keeps no per-chunk statistics.
    """
    sites = tuple(sites)
    keys = _keys(model, sites, layers)
    if len(batches) == 0:
        raise ValueError("`batches` is empty: nothing to measure")
    chunk_of = _chunk_index(chunk_of, len(batches))
    device = next(model.parameters()).device
    d = model_dims(model).d_model
    chunked = chunk_of is not None
    sums = _GradientPass(
        {key: _ExactAccumulator(d, device, chunked) for key in keys},
        [key for key in keys if key[1] in GRADIENT_SITES],
    )
    read_keys = [key for key in keys if key[1] in SITES]
    was_training = model.training
    model.eval()
    total_loss = 0.0
    bar = tqdm(
        total=len(batches), desc=description, disable=not progress, leave=False, unit="batch"
    )
    try:
        with (
            _write_site_hooks(model, sums.write_keys, sums.capture),
            torch.enable_grad(),
            site_hooks(model, read_keys, sums.add_input),
        ):
            for index, batch in enumerate(batches):
                total_loss += sums.step(model, batch, loss_fn)
                bar.update(1)
                last = index + 1 == len(batches)
                if chunked and (last or chunk_of[index + 1] != chunk_of[index]):
                    sums.end_chunk()
    finally:
        bar.close()
        sums.captured.clear()
        model.train(was_training)
    site_stats, chunk_stats = accumulator_results(sums.accumulators)
    return GradientStatistics(site_stats, chunk_stats, len(batches), total_loss)
