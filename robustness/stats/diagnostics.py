"""Real-model diagnostics: massive activations, and the ranks each cutoff chose per pathway.

Trained transformers carry a few residual dimensions whose activations are
orders of magnitude larger than the rest (*massive activations*: Sun, Chen,
Kolter & Liu 2024). Where one direction holds most of a site's variance, a
spectral cutoff (``var=0.9``, ``pr``, ``mp``) chooses k = 1 or 2 there while
it chooses hundreds at a site without one, and a read/write comparison then
compares unlike ranks. These diagnostics make that visible, from the sweep's
results alone:

- ``top_direction_share(pair, layer, site)``: ``λ₁ / tr Σ`` of the site's
  centred activation covariance (stored by the sweep, from its ``act_cov``
  basis on the construction side);
- ``massive_activation(pair, layer, site)``: the share is at least
  :data:`MASSIVE_SHARE` (the rule: one direction carries half the variance
  or more);
- ``k_range(pair, construction, cutoff, pathway, statistic)``: the minimum,
  median and maximum k the cutoff chose over the layers and the matrices of
  each pathway (undefined ranks left out);
- :func:`small_ranks`: the cutoffs that chose k ≤ :data:`SMALL_K` anywhere,
  which the report names in a caveat.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

__all__ = ["MASSIVE_RULE", "MASSIVE_SHARE", "SMALL_K", "STATISTICS", "diagnostics", "small_ranks"]

MASSIVE_SHARE = 0.5  # λ₁ ≥ half the trace: one direction carries most of the site's variance
SMALL_K = 2  # a cutoff choosing at most this many directions measures one outlier, not a subspace
STATISTICS = ("min", "median", "max")
MASSIVE_RULE = (
    f"a site has a massive activation when one direction carries at least {MASSIVE_SHARE:.0%} of "
    "its variance: λ₁ ≥ 0.5 tr Σ of the centred covariance (act_cov, on the construction side)"
)


def _k_range(results: xr.Dataset) -> np.ndarray:
    """``[pair, construction, cutoff, pathway, statistic]`` of the k each cutoff chose."""
    pathways = ("read", "write")
    out = np.full(
        (results.sizes["pair"], results.sizes["construction"], results.sizes["cutoff"], 2, 3),
        np.nan,
    )
    pathway_of = [str(p) for p in results.pathway.values]
    k = results.k.values.astype(float)  # [pair, layer, matrix, construction, cutoff]
    k[k < 1] = np.nan
    for w, pathway in enumerate(pathways):
        columns = [i for i, p in enumerate(pathway_of) if p == pathway]
        if not columns:
            continue
        block = k[:, :, columns].transpose(0, 3, 4, 1, 2)  # [pair, construction, cutoff, L, M]
        flat = block.reshape(*block.shape[:3], -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: a cutoff undefined there
            out[..., w, 0] = np.nanmin(flat, axis=-1)
            out[..., w, 1] = np.nanmedian(flat, axis=-1)
            out[..., w, 2] = np.nanmax(flat, axis=-1)
    return out


def diagnostics(results: xr.Dataset) -> dict:
    """The diagnostics' data variables (``{name: (dims, values, attrs)}``) for ``stats.nc``."""
    if "top_direction_share" in results:
        share = results.top_direction_share.values
        sites = [str(s) for s in results.site.values]
    else:  # results written before the sweep stored it
        share = np.full((results.sizes["pair"], results.sizes["layer"], 0), np.nan)
        sites = []
    massive = np.where(np.isfinite(share), share >= MASSIVE_SHARE, False).astype(np.int8)
    return {
        "coords": {
            "site": np.asarray(sites, dtype=object),
            "pathway": np.asarray(["read", "write"], dtype=object),
            "statistic": np.asarray(STATISTICS, dtype=object),
        },  # fmt: skip
        "data_vars": {
            "top_direction_share": (
                ("pair", "layer", "site"),
                share,
                {"long_name": "λ₁ / tr Σ of the site's centred activation covariance"},
            ),
            "massive_activation": (
                ("pair", "layer", "site"),
                massive,
                {"long_name": MASSIVE_RULE},
            ),
            "k_range": (
                ("pair", "construction", "cutoff", "pathway", "statistic"),
                _k_range(results),
                {
                    "long_name": "min, median and max k the cutoff chose over layers and the "
                    "pathway's matrices (undefined ranks left out)"
                },
            ),
        },
    }


def small_ranks(stats: xr.Dataset, pair) -> list[tuple[str, str, str, int]]:
    """``[(construction, cutoff, pathway, smallest k)]`` where a cutoff chose k ≤ :data:`SMALL_K`."""
    if "k_range" not in stats:
        return []
    found = []
    low = stats.k_range.sel(pair=pair, statistic="min")
    for c in stats.construction.values:
        for k in stats.cutoff.values:
            for pathway in stats.pathway.values:
                value = float(low.sel(construction=c, cutoff=k, pathway=pathway))
                if np.isfinite(value) and value <= SMALL_K:
                    found.append((str(c), str(k), str(pathway), int(value)))
    return found
