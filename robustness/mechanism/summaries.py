"""Read/write summaries of a sweep's probe values, shared by the experiments.

:func:`pathway_summary` takes layer means of the read and write sets on the
statistics' scale (log2 for ratio normalisations) and their difference;
the interval over layers of a layer mean is the one ``rsf stats`` uses
(:func:`robustness.stats.layers.layer_interval`, dependence-robust). :data:`EXPERIMENT_GRID` is the
experiments' default probe grid.
"""

from __future__ import annotations

import xarray as xr

from robustness.settings.specification import probe_scale
from robustness.stats.layers import layer_interval

__all__ = ["EXPERIMENT_GRID", "pathway_summary"]

EXPERIMENT_GRID = dict(
    constructions=("act_cov", "unembed", "random"),
    cutoffs=("k=8", "var=0.9"),
    normalisations=("isotropic",),
)


# ---------------------------------------------------------------------------- read/write summaries


def pathway_summary(
    rsf: xr.DataArray,
    *,
    read,
    write,
    confidence_level: float = 0.95,
    interval: bool = True,
) -> dict[str, xr.DataArray]:
    """Layer means of the read and write sets on the statistics' scale, and their difference.

    `rsf` has dims ``(..., layer, matrix, construction, cutoff, normalisation)``;
    ratio normalisations are taken on the log2 scale (``probe_scale``). Returns
    ``read``, ``write``, ``asymmetry`` ``[..., construction, cutoff, normalisation]``,
    the per-layer read and write means, and (with `interval`) the
    dependence-robust interval over layers for the asymmetry.
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
    if interval:  # the EWC interval over layers, as rsf stats does
        bounds = layer_interval(per_layer, confidence_level=confidence_level)
        out["asymmetry_ci_low"], out["asymmetry_ci_high"] = bounds["ci_low"], bounds["ci_high"]
    return out
