"""Streaming activation statistics at each matrix's residual-side site.

Hooks accumulate ``Σx``, ``Σxxᵀ`` and ``n`` per (layer, site) in float64; a
batch's product ``XᵀX`` is formed in float32 (bf16/fp16 activations are upcast
first) and added to the float64 sums. Activations are never stored, so memory
does not grow with the number of tokens.

Only the base transformer (``model.<base_model_prefix>``) runs: the statistics
need no logits, so the unembedding, often the largest matrix, is never paid for.

For the sequence bootstrap, ``chunk_size`` groups consecutive sequences into
chunks and keeps each chunk's ``(n, Σx, Σxxᵀ)`` compactly: ``Σxxᵀ`` as a packed
upper triangle in float32 (``d(d+1)/2`` values). A bootstrap replicate is then
a reweighting of chunks, never another forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .adapters import SITES, family_of, layer_modules, model_dims, n_experts, site_modules
from .spectra import PartialSpectrum, partial_eigh
from .subspaces import Subspace, covariance_moment, covariance_subspace

__all__ = [
    "Accumulator",
    "ActivationStatistics",
    "ChunkStatistics",
    "SiteStatistics",
    "accumulator_results",
    "collect_statistics",
    "expert_load_hooks",
    "site_hooks",
    "statistics_batches",
    "token_ids",
]

SiteKey = tuple[int, str]
PACKED_BLOCK = 1 << 14  # packed-triangle columns upcast to float64 at a time


@dataclass
class SiteStatistics:
    """Float64 streaming sums at one site.

    ``upper_only``: ``sum_xx`` holds only its upper triangle (the rest zero), as a
    bootstrap replicate's exactly symmetric reweighted sums are kept for their
    eigendecomposition, which reads one triangle. Only :meth:`subspace` reads it.
    """

    n: int
    sum_x: np.ndarray
    sum_xx: np.ndarray
    upper_only: bool = False

    @property
    def mean(self) -> np.ndarray:
        return self.sum_x / self.n

    def _full(self) -> np.ndarray:
        if self.upper_only:
            raise ValueError("these statistics keep only the upper triangle of Σxxᵀ")
        return self.sum_xx

    def covariance(self) -> np.ndarray:
        """Centred covariance ``Σxxᵀ/n − μμᵀ`` (maximum-likelihood normalisation)."""
        return self._full() / self.n - np.outer(self.mean, self.mean)

    def second_moment(self) -> np.ndarray:
        return self._full() / self.n

    def subspace(self, *, centred: bool = True, construction: str | None = None) -> Subspace:
        return covariance_subspace(
            self.sum_x, self.sum_xx, self.n, centred=centred, construction=construction,
            upper_only=self.upper_only,
        )  # fmt: skip

    def partial_spectrum(
        self, cutoffs, *, centred: bool = True, method: str = "auto", hint: int | None = None
    ) -> PartialSpectrum:
        """What `cutoffs` read of the matrix :meth:`subspace` decomposes: each cutoff's k and
        only the eigenvectors its fractions need (:func:`probes.spectra.partial_eigh`, ``mp``
        with these statistics' ``n``; `method` and `hint` as there)."""
        moment = covariance_moment(self.sum_x, self.sum_xx, self.n, centred)
        if not self.upper_only:  # symmetrised as covariance_subspace symmetrises it
            moment = 0.5 * (moment + moment.T)
        return partial_eigh(moment, cutoffs, n_samples=int(self.n), method=method, hint=hint)


@dataclass
class ChunkStatistics:
    """Per-chunk sums at one site: ``n [C]``, ``sum_x [C, d]`` float64, packed ``Σxxᵀ``."""

    n: np.ndarray
    sum_x: np.ndarray
    sum_xx_packed: np.ndarray  # [C, d(d+1)/2] float32, row-major upper triangle

    @property
    def d(self) -> int:
        return self.sum_x.shape[1]

    def sum_xx(self, weights=None) -> np.ndarray:
        """``Σ_c w_c Σxxᵀ_c`` as a full float64 matrix (all weights 1 by default)."""
        w = np.ones(len(self.n)) if weights is None else np.asarray(weights, dtype=np.float64)
        return self.sum_xx_many(w[None, :])[0]

    def sum_xx_many(self, weights, *, upper_only: bool = False, out=None) -> np.ndarray:
        """``[B, d, d]``: :meth:`sum_xx` for each row of ``weights [B, C]``.

        One product reads the chunks once for the whole block of rows, which is
        what makes a block of bootstrap replicates cheaper than the rows one by one.
        ``upper_only`` leaves the lower triangle zero (half the unpacking). `out`: a
        float64 ``[B, d, d]`` array to write into instead of a new one (a block reused
        block after block: a fresh one of tens of MB costs page faults each time, and on
        kernels that compact memory for numpy's huge-page advice, hundreds of ms); with
        ``upper_only`` its lower triangle is left as it was.
        """
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        # Column blocks small enough to stay in cache, upcast into one reused buffer: a
        # float64 copy of every chunk's triangle at once would be C · d(d+1)/2 · 8 bytes
        # (537 MB at d = 4096 with 8 chunks); the sums are the same.
        chunks, width = self.sum_xx_packed.shape
        packed = np.empty((len(w), width))
        upcast = np.empty((chunks, min(PACKED_BLOCK, width)))
        for lo in range(0, width, PACKED_BLOCK):
            hi = min(lo + PACKED_BLOCK, width)
            np.copyto(upcast[:, : hi - lo], self.sum_xx_packed[:, lo:hi])
            np.matmul(w, upcast[:, : hi - lo], out=packed[:, lo:hi])
        del upcast
        # Row by row: row i of the packed triangle is row i of the upper triangle and,
        # the sums being symmetric, column i of the lower one (slices, not a scatter).
        d = self.d
        if out is not None and out.shape != (len(w), d, d):
            raise ValueError(f"`out` must have shape {(len(w), d, d)}, got {out.shape}")
        if out is None:
            out = np.zeros((len(w), d, d)) if upper_only else np.empty((len(w), d, d))
        full = out
        start = 0
        for i in range(d):
            row = packed[:, start : start + d - i]
            full[:, i, i:] = row
            if not upper_only:
                full[:, i:, i] = row
            start += d - i
        return full

    def reweighted(self, weights) -> SiteStatistics:
        """The site's statistics with chunk `c` counted ``weights[c]`` times."""
        return self.reweighted_many(np.asarray(weights, dtype=np.float64)[None, :])[0]

    def reweighted_many(
        self, weights, *, upper_only: bool = False, out=None
    ) -> list[SiteStatistics]:
        """:meth:`reweighted` for each row of ``weights [B, C]``, from one pass over the chunks.

        ``upper_only``: statistics for an eigendecomposition only (see :class:`SiteStatistics`);
        `out`: as :meth:`sum_xx_many`'s (the statistics' ``sum_xx`` are views of it).
        """
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        sum_xx = self.sum_xx_many(w, upper_only=upper_only, out=out)
        sum_x, n = w @ self.sum_x, w @ self.n
        return [
            SiteStatistics(
                n=int(round(float(n[b]))), sum_x=sum_x[b], sum_xx=sum_xx[b], upper_only=upper_only
            )  # fmt: skip
            for b in range(len(w))
        ]


@dataclass
class ActivationStatistics:
    """Everything one statistics pass produces."""

    sites: dict[SiteKey, SiteStatistics]
    chunks: dict[SiteKey, ChunkStatistics] = field(default_factory=dict)
    n_tokens: int = 0
    n_sequences: int = 0
    chunk_sequences: list[tuple[int, int]] = field(default_factory=list)
    # A mixture-of-experts model: per layer, each expert's summed routing weight over the tokens.
    expert_load: dict[int, np.ndarray] = field(default_factory=dict)


@contextmanager
def site_hooks(model, keys: Iterable[SiteKey], callback: Callable[[SiteKey, torch.Tensor], None]):
    """Call ``callback((layer, site), tensor)`` with the tensor each site sees.

    ``attn_in``/``mlp_in``: the input of the module holding q / up (whatever the
    architecture feeds it, positionally or as a keyword); ``resid_post``: the
    layer's output hidden states. Hooks are removed on exit, even on error.
    """
    handles = []

    def input_hook(key):
        def hook(module, args, kwargs):
            tensor = (
                args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
            )
            callback(key, tensor)

        return hook

    def output_hook(key):
        def hook(module, args, output):
            callback(key, output[0] if isinstance(output, tuple) else output)

        return hook

    try:
        for layer, site in keys:
            if site not in SITES:
                raise ValueError(f"unknown site {site!r}: choose from {SITES}")
            module, side = site_modules(model, layer)[site]
            if side == "input":
                handles.append(
                    module.register_forward_pre_hook(input_hook((layer, site)), with_kwargs=True)
                )
            else:
                handles.append(module.register_forward_hook(output_hook((layer, site))))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def expert_load_hooks(model, layers: Iterable[int], loads: dict[int, torch.Tensor]):
    """Add each token's routing weights into ``loads[layer]`` (``[E]`` float64), per expert.

    The hook reads what the router hands the experts (``top_k_index``,
    ``top_k_weights``), so the load is the routing the forward pass used: an
    expert's share of it is ``loads[layer][e] / loads[layer].sum()``. Nothing
    is hooked for a dense family.
    """
    family = family_of(model)
    if family.experts is None:
        yield
        return
    count = n_experts(model)
    handles = []

    def hook(layer):
        def pre(module, args, kwargs):
            index = args[1] if len(args) > 1 else kwargs["top_k_index"]
            weights = args[2] if len(args) > 2 else kwargs["top_k_weights"]
            # Index `count` (if any) is the experts' padding slot, not an expert: dropped.
            found = torch.bincount(index.reshape(-1), weights=weights.reshape(-1).double(),
                                   minlength=count + 1)  # fmt: skip
            loads[layer] += found[:count].to(loads[layer].device)

        return pre

    try:
        for layer in layers:
            module = layer_modules(model)[layer].get_submodule(family.matrices["up"].module)
            loads.setdefault(layer, torch.zeros(count, dtype=torch.float64))
            handles.append(module.register_forward_pre_hook(hook(layer), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


class Accumulator:
    """Float64 sums for one site on the compute device, with an optional chunk layer."""

    def __init__(self, d: int, device, chunked: bool):
        zeros = dict(dtype=torch.float64, device=device)
        self.total_x = torch.zeros(d, **zeros)
        self.total_xx = torch.zeros(d, d, **zeros)
        self.total_n = 0
        # Without chunks the running sums *are* the totals: no second d×d buffer.
        self.x = torch.zeros(d, **zeros) if chunked else self.total_x
        self.xx = torch.zeros(d, d, **zeros) if chunked else self.total_xx
        self.n = 0
        self.chunked = chunked
        self.chunk_n: list[int] = []
        self.chunk_x: list[np.ndarray] = []
        self.chunk_xx: list[np.ndarray] = []
        self.triu = torch.triu_indices(d, d, device=device) if chunked else None

    def add(self, tensor: torch.Tensor) -> None:
        x = tensor.detach().reshape(-1, tensor.shape[-1])
        if x.dtype != torch.float32:
            x = x.float()
        self.xx += (x.T @ x).double()
        self.x += x.sum(dim=0, dtype=torch.float64)
        self.n += x.shape[0]

    def end_chunk(self) -> None:
        if not self.chunked:
            return
        self.chunk_n.append(self.n)
        self.chunk_x.append(self.x.cpu().numpy().copy())
        self.chunk_xx.append(self.xx[self.triu[0], self.triu[1]].float().cpu().numpy())
        self.total_x += self.x
        self.total_xx += self.xx
        self.total_n += self.n
        self.x.zero_()
        self.xx.zero_()
        self.n = 0

    def result(self) -> tuple[SiteStatistics, ChunkStatistics | None]:
        n = self.total_n if self.chunked else self.n
        site = SiteStatistics(n, self.total_x.cpu().numpy(), self.total_xx.cpu().numpy())
        if not self.chunked:
            return site, None
        chunks = ChunkStatistics(
            np.asarray(self.chunk_n, dtype=np.int64),
            np.stack(self.chunk_x),
            np.stack(self.chunk_xx),
        )
        return site, chunks


def statistics_batches(
    n_sequences: int, batch_size: int, chunk_size: int | None
) -> list[list[tuple[int, int]]]:
    """The batches of a statistics pass, ``[(lo, hi), …]`` per chunk of ``chunk_size`` sequences.

    Batches never straddle a chunk, so each chunk's sums are exact; without
    chunks the whole corpus is one. Every pass (hooked or layer by layer) uses these.
    """
    span = chunk_size or n_sequences
    return [
        [(lo, min(lo + batch_size, stop)) for lo in range(start, stop, batch_size)]
        for start, stop in ((s, min(s + span, n_sequences)) for s in range(0, n_sequences, span))
    ]


def token_ids(input_ids) -> torch.Tensor:
    """`input_ids` as a long tensor, checked to be a non-empty ``[n_seq, seq_len]`` array."""
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    if ids.ndim != 2 or ids.numel() == 0:
        raise ValueError(
            f"`input_ids` must be a non-empty [n_seq, seq_len] array, got {tuple(ids.shape)}"
        )
    return ids


def _check_batching(batch_size: int, chunk_size: int | None) -> None:
    """Sequences per forward pass and per bootstrap chunk: positive (no chunks: ``None``)."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"`chunk_size` must be positive or None, got {chunk_size}")


def _site_keys(model, sites: Iterable[str] | Iterable[SiteKey] | None) -> list[SiteKey]:
    """``(layer, site)`` keys: a site name stands for every layer; default every site."""
    n_layers = len(layer_modules(model))
    keys: list[SiteKey] = []
    for item in list(SITES if sites is None else sites):
        keys.extend(
            [(layer, item) for layer in range(n_layers)] if isinstance(item, str) else [tuple(item)]
        )
    return keys


def accumulator_results(
    accumulators: dict[SiteKey, Accumulator],
) -> tuple[dict[SiteKey, SiteStatistics], dict[SiteKey, ChunkStatistics]]:
    """Each site's statistics, and its per-chunk statistics where the sums were chunked."""
    site_stats, chunk_stats = {}, {}
    for key, accumulator in accumulators.items():
        site_stats[key], chunks = accumulator.result()
        if chunks is not None:
            chunk_stats[key] = chunks
    return site_stats, chunk_stats


def collect_statistics(
    model,
    input_ids,
    *,
    sites: Iterable[str] | Iterable[SiteKey] | None = None,
    batch_size: int = 8,
    chunk_size: int | None = None,
    progress: bool = False,
    description: str = "statistics",
) -> ActivationStatistics:
    """One streaming pass over a token array, accumulating statistics at the sites.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A supported causal LM (see :data:`probes.SUPPORTED_MODEL_TYPES`).
    input_ids : array or tensor ``[n_seq, seq_len]`` of int
        Used exactly as given: every position of every sequence counts.
    sites : iterable, optional
        Site names (every layer) or ``(layer, site)`` keys; default all sites.
    batch_size : int
        Sequences per forward pass.
    chunk_size : int, optional
        Sequences per bootstrap chunk; ``None`` keeps no per-chunk statistics.
    progress : bool
        Show a progress bar.
    """
    ids = token_ids(input_ids)
    _check_batching(batch_size, chunk_size)
    keys = _site_keys(model, sites)
    device = next(model.parameters()).device
    chunked = chunk_size is not None
    d = model_dims(model).d_model  # every site lives in the residual space
    accumulators = {key: Accumulator(d, device, chunked) for key in keys}

    def accumulate(key, tensor):
        accumulators[key].add(tensor)

    n_seq = ids.shape[0]
    chunks = statistics_batches(n_seq, batch_size, chunk_size)
    chunk_bounds = [(chunk[0][0], chunk[-1][1]) for chunk in chunks]
    body = getattr(model, model.base_model_prefix)
    was_training = model.training
    model.eval()
    bar = tqdm(
        total=n_seq * ids.shape[1],
        unit="tok",
        unit_scale=True,
        desc=description,
        disable=not progress,
        leave=False,
    )
    loads: dict[int, torch.Tensor] = {}
    try:
        with (
            torch.inference_mode(),
            site_hooks(model, keys, accumulate),
            expert_load_hooks(model, sorted({layer for layer, _ in keys}), loads),
        ):
            for chunk in chunks:
                for lo, hi in chunk:
                    batch = ids[lo:hi].to(device)
                    body(input_ids=batch, use_cache=False)
                    bar.update(batch.numel())
                for accumulator in accumulators.values():
                    accumulator.end_chunk()
    finally:
        bar.close()
        model.train(was_training)
    site_stats, chunk_stats = accumulator_results(accumulators)
    return ActivationStatistics(
        sites=site_stats,
        chunks=chunk_stats,
        n_tokens=int(ids.numel()),
        n_sequences=int(n_seq),
        chunk_sequences=chunk_bounds if chunked else [],
        expert_load={layer: load.numpy() for layer, load in loads.items()},
    )
