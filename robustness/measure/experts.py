"""Mixture-of-experts layers: each expert measured alone, then the load-weighted mean.

An MoE layer's up, gate and down are one matrix per expert (``probes.adapters``).
Each expert's delta is measured like any matrix (its own fractions, ranks,
Gram spectrum and mechanical reference). The results' per-matrix values are
their mean over experts weighted by each expert's **routing share** on the
probe corpus: the routing weights the router handed it, summed over tokens,
over all experts' (``expert_load``, recorded). The mean of the ratios, not
the ratio of a mean: an expert that routes no token counts for nothing, and
the Haar reference of the mean is the same mean of the experts' references
(an expectation is linear), which :func:`mean_reference` computes exactly
from the stored per-expert spectra. The routing share is taken from the full
corpus: bootstrap replicates reweight the activations, not the shares.
"""

from __future__ import annotations

import numpy as np

import probes

__all__ = [
    "ExpertSpectra",
    "collapse",
    "each_expert",
    "common_rank",
    "expert_mean",
    "mean_reference",
    "routing_shares",
    "rows_mean",
]

UNDEFINED = -1  # a rank the experts do not share (as results.nc's k: −1 undefined)


def routing_shares(load: np.ndarray) -> np.ndarray:
    """Each expert's share of the summed routing weights (uniform when no token was routed)."""
    load = np.asarray(load, dtype=np.float64)
    total = load.sum()
    return load / total if total > 0 else np.full(load.shape, 1.0 / load.size)


def expert_mean(values: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """``Σ_e share_e · values[e]`` over the experts (axis 0) with a finite value, re-normalised.

    A cell no expert defines stays NaN; an expert with a zero delta (NaN) is
    left out and the others' shares scaled to sum to one.
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.broadcast_to(
        np.asarray(shares, dtype=np.float64).reshape(-1, *([1] * (values.ndim - 1))), values.shape
    )
    finite = np.isfinite(values)
    total = np.where(finite, weights, 0.0).sum(axis=0)
    summed = np.where(finite, values * weights, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, summed / total, np.nan)


def common_rank(ks: np.ndarray) -> np.ndarray:
    """The rank every expert's cutoff chose (axis 0), else :data:`UNDEFINED`.

    Activation, unembedding and random bases are the site's, so every expert
    gets the same k; ``weight_svd`` bases are each expert's own.
    """
    ks = np.asarray(ks)
    same = (ks == ks[:1]).all(axis=0)
    return np.where(same, ks[0], UNDEFINED)


def rows_mean(values, rows, n_matrices: int, shares) -> np.ndarray:
    """``[M, …]`` from rows ``[(matrix index, expert)]`` of `values`: the load-weighted mean over
    each matrix's experts (a matrix with one row is that row)."""
    out = np.empty((n_matrices, *np.shape(values)[1:]))
    for mi in range(n_matrices):
        mine = [r for r, (m, _) in enumerate(rows) if m == mi]
        if len(mine) == 1:  # attention, the router: one matrix
            out[mi] = values[mine[0]]
            continue
        out[mi] = expert_mean(values[mine], np.asarray(shares)[[rows[r][1] for r in mine]])
    return out


def collapse(rows, n_matrices: int, shares: np.ndarray, out: dict, per_row: dict) -> dict:
    """Per-matrix values from per-(matrix, expert) rows; the per-expert ones for the dataset.

    `rows` lists ``(matrix index, expert)`` of each row of the `per_row`
    arrays (``rsf``, ``k``, ``mechanical``, ``spectrum``, ``purity``); `out`
    receives the per-matrix arrays. Returns ``{"rsf", "spectrum", "purity"}``
    per expert (``[M, E, …]``, NaN for matrices with no experts).
    """
    n_experts = len(shares)
    experts = {
        name: np.full((n_matrices, n_experts, *per_row[name].shape[1:]), np.nan)
        for name in ("rsf", "spectrum", "purity")
    }
    for mi in range(n_matrices):
        mine = [r for r, (m, _) in enumerate(rows) if m == mi]
        if len(mine) == 1:  # attention, the router: one matrix
            for name in ("rsf", "k", "mechanical", "spectrum", "purity"):
                out[name][mi] = per_row[name][mine[0]]
            continue
        order = [rows[r][1] for r in mine]
        for name in ("rsf", "mechanical"):
            out[name][mi] = expert_mean(per_row[name][mine], shares[order])
        out["k"][mi] = common_rank(per_row["k"][mine])
        out["spectrum"][mi] = np.nan  # no single delta: the experts' spectra are kept instead
        out["purity"][mi] = np.nan
        for name in ("rsf", "spectrum", "purity"):
            experts[name][mi, order] = per_row[name][mine]
    return experts


class ExpertSpectra:
    """A pair's per-expert spectra ``[L, M, E, r]`` and routing shares ``[L, E]`` from results.nc,
    for the Haar references of its expert means (``None`` from :meth:`of` for a dense pair)."""

    def __init__(self, spectrum: np.ndarray, shares: np.ndarray):
        self.spectrum = spectrum
        self.shares = shares
        self.mask = np.isfinite(spectrum).all(axis=-1).any(axis=-1)  # [L, M]: has experts

    @classmethod
    def of(cls, results, pair, n_layers: int, d: int):
        if "gram_spectrum_expert" not in results:
            return None
        spectrum = results.gram_spectrum_expert.sel(pair=pair).values[:n_layers, ..., :d]
        load = results.expert_load.sel(pair=pair).values[:n_layers]
        if not np.isfinite(load).any():
            return None  # a dense pair in a sweep with an MoE one
        return cls(spectrum, np.nan_to_num(load))

    def reference(self, normalisation, k, d, columns=None) -> np.ndarray:
        """``[L, M']``: :func:`mean_reference` of `columns` (all matrices by default)."""
        columns = slice(None) if columns is None else list(columns)
        return mean_reference(normalisation, k, d, self.spectrum[:, columns], self.shares)

    def override(self, reference, normalisation, k, d, columns=None) -> np.ndarray:
        """`reference` ``[L, M']`` with the expert matrices' cells replaced by their mean's."""
        mask = self.mask if columns is None else self.mask[:, list(columns)]
        if not mask.any():
            return reference
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.reference(normalisation, k, d, columns)
        return np.where(mask, mean, reference)


def mean_reference(normalisation, k, d, expert_spectrum, shares) -> np.ndarray:
    """The Haar reference of a load-weighted expert mean: ``Σ_e share_e · ref(k, g_e)``.

    `k` ``[L, M]``, `expert_spectrum` ``[L, M, E, r]`` (NaN rows for matrices
    without experts), `shares` ``[L, E]``. Exact wherever
    :func:`probes.haar_reference` is: the expectation of a mean is the mean of
    the expectations.
    """
    spectrum = np.asarray(expert_spectrum, dtype=np.float64)
    n_experts = spectrum.shape[2]
    k = np.repeat(np.asarray(k)[:, :, None], n_experts, axis=2)
    refs = np.asarray(
        probes.haar_reference(normalisation, k, d, spectrum=np.nan_to_num(spectrum)),
        dtype=np.float64,
    )
    refs = np.where(np.isfinite(spectrum).all(axis=-1), refs, np.nan)
    weights = np.broadcast_to(np.asarray(shares)[:, None, :], refs.shape)
    finite = np.isfinite(refs)
    total = np.where(finite, weights, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.where(finite, refs * weights, 0).sum(axis=-1) / total, np.nan)


EXPERT_VARIABLES = ("rsf_expert", "gram_spectrum_expert", "gram_purity_expert", "expert_load")


def each_expert(results):
    """`results` with every expert of a mixture-of-experts pair as a pair of its own.

    Pair ``label`` becomes ``label/expert-0`` … ``label/expert-{E-1}``: its up,
    gate and down are that expert's (``rsf``, ``gram_spectrum``,
    ``gram_purity``), its attention matrices and router the pair's own, so
    each expert is tested and counted as a specification of its own
    (``--experts each``). The sequence-bootstrap replicates are of the mean
    only: the expert pairs carry none (``rsf_boot`` and ``rsf_jack`` are
    dropped, and the intervals are those over layers). ``mechanical_reference``
    depends on the activations alone, so it is every expert's. A dense pair
    is kept as it is.
    """
    import xarray as xr

    if "rsf_expert" not in results:
        raise ValueError(
            "--experts each needs a mixture-of-experts sweep: these results have no experts"
        )
    pieces = []
    for pair in results.pair.values:
        one = results.sel(pair=[pair])
        load = one.expert_load.values[0]  # [layer, expert]
        if not np.isfinite(load).any():
            pieces.append(one.drop_vars(EXPERT_VARIABLES))
            continue
        with_experts = np.isfinite(one.rsf_expert).any(
            dim=[d for d in one.rsf_expert.dims if d not in ("matrix",)]
        )
        for expert in range(int(np.isfinite(load).any(axis=0).sum())):
            piece = one.copy()
            for name in ("rsf", "gram_spectrum", "gram_purity"):
                own = one[f"{name}_expert"].isel(expert=expert, drop=True)
                piece[name] = xr.where(with_experts, own, one[name]).transpose(*one[name].dims)
            piece = piece.assign_coords(pair=[f"{pair}/expert-{expert}"])
            pieces.append(piece.drop_vars(EXPERT_VARIABLES))
    out = xr.concat(
        [p.drop_vars([v for v in ("rsf_boot", "rsf_jack") if v in p]) for p in pieces],
        dim="pair",
    )
    out.attrs = dict(results.attrs, experts="each")
    return out
