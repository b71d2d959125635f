"""Read/write summaries of a sweep's probe values, shared by the experiments.

:func:`pathway_summary` takes layer means of the read and write sets on the
statistics' scale (log2 for ratio normalisations) and their difference;
:func:`layer_interval` puts an interval over layers on a layer mean, the same
method ``rsf stats`` uses for the asymmetry. :data:`EXPERIMENT_GRID` is the
experiments' default probe grid.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..asymmetry import studentized_interval
from ..specification import probe_scale

__all__ = ["EXPERIMENT_GRID", "layer_interval", "pathway_summary"]

EXPERIMENT_GRID = dict(
    constructions=("act_cov", "unembed", "random"),
    cutoffs=("k=8", "var=0.9"),
    normalisations=("isotropic",),
)


# ---------------------------------------------------------------------------- read/write summaries


def layer_interval(
    per_layer: xr.DataArray, confidence_level: float, seed: int, *, replicates: int = 2000
) -> dict:
    """Studentized cluster-bootstrap interval over layers for the layer mean of each cell."""
    moved = per_layer.transpose("layer", ...)
    flat = moved.values.reshape(moved.shape[0], -1)
    low = np.full(flat.shape[1], np.nan)
    high = np.full(flat.shape[1], np.nan)
    finite = np.isfinite(flat).all(axis=0)
    if finite.any() and flat.shape[0] >= 2:
        low[finite], high[finite] = studentized_interval(
            flat[:, finite],
            confidence_level=confidence_level,
            replicates=replicates,
            rng=np.random.default_rng(seed),
        )
    template = moved.isel(layer=0, drop=True)
    return {
        "ci_low": template.copy(data=low.reshape(template.shape)),
        "ci_high": template.copy(data=high.reshape(template.shape)),
    }


def pathway_summary(
    rsf: xr.DataArray,
    *,
    read,
    write,
    confidence_level: float = 0.95,
    replicates: int = 2000,
    seed=0,
    interval: bool = True,
) -> dict[str, xr.DataArray]:
    """Layer means of the read and write sets on the statistics' scale, and their difference.

    `rsf` has dims ``(..., layer, matrix, construction, cutoff, normalisation)``;
    ratio normalisations are taken on the log2 scale (``probe_scale``). Returns
    ``read``, ``write``, ``asymmetry`` ``[..., construction, cutoff, normalisation]``,
    the per-layer read and write means, and (with `interval`) a studentized
    cluster-bootstrap interval over layers for the asymmetry.
    """
    read = [m for m in read if m in rsf.matrix.values]
    write = [m for m in write if m in rsf.matrix.values]
    if not read or not write:
        raise ValueError(
            f"the read set and the write set need matrices present in {list(rsf.matrix.values)}"
        )
    scaled = xr.concat(
        [
            rsf.sel(normalisation=n).copy(data=probe_scale(rsf.sel(normalisation=n).values, n))
            for n in rsf.normalisation.values
        ],
        dim="normalisation",
    ).transpose(*rsf.dims)
    read_layer = scaled.sel(matrix=read).mean("matrix")
    write_layer = scaled.sel(matrix=write).mean("matrix")
    per_layer = read_layer - write_layer
    out = {
        "read": read_layer.mean("layer"),
        "write": write_layer.mean("layer"),
        "asymmetry": per_layer.mean("layer"),
        "read_layer": read_layer,
        "write_layer": write_layer,
    }
    if interval:  # studentized cluster bootstrap over layers, as rsf stats does
        bounds = layer_interval(per_layer, confidence_level, seed, replicates=replicates)
        out["asymmetry_ci_low"], out["asymmetry_ci_high"] = bounds["ci_low"], bounds["ci_high"]
    return out
