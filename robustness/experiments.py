"""What the `rsf experiment` commands share: the demo's checkpoints, read/write summaries, options.

The paper explains the read/write asymmetry by anisotropic gradient
accumulation (an update is ``Σ_t δ_t a_tᵀ``). Three experiments test that
mechanism, each a dataset with intervals, one module each:

- :mod:`robustness.trajectory`: RSF along an ordered list of checkpoints,
  relative to the start and to the previous checkpoint;
- :mod:`robustness.contrastive`: variants aligned with
  ``L_λ = (1 − λ)·CE(chosen) + λ·DPO`` for several λ, and the trend of read
  RSF, write RSF and the gradients' effective rank against λ;
- :mod:`robustness.rank1`: closed-form rank-1 interventions along principal
  directions against matched controls.

This module holds what they share: the demo pair's checkpoints and text
(:func:`demo_checkpoints`, :func:`demo_token_windows`), the layer means of the
read and write sets with a cluster-bootstrap interval over layers
(:func:`pathway_summary`, :func:`layer_interval`), and the sweep settings and
probe corpus of an experiment command (:func:`experiment_config`,
:func:`load_probe_corpus`). The ``rsf experiment`` parser is in
:mod:`robustness.cli`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from .asymmetry import probe_scale, studentized_interval
from .config import SweepConfig

__all__ = [
    "DEFAULT_READ",
    "DEFAULT_WRITE",
    "EXPERIMENT_GRID",
    "DemoCheckpoints",
    "demo_checkpoints",
    "demo_token_windows",
    "evenly_spaced",
    "experiment_config",
    "layer_interval",
    "load_probe_corpus",
    "pathway_summary",
]

DEFAULT_READ = ("q", "k")
DEFAULT_WRITE = ("o", "down")
EXPERIMENT_GRID = dict(
    constructions=("act_cov", "unembed", "random"),
    cutoffs=("k=8", "var=0.9"),
    normalisations=("isotropic",),
)


# ---------------------------------------------------------------------------- demo


@dataclass(frozen=True)
class DemoCheckpoints:
    """The demo pair's directories: base, aligned and the saved checkpoints of each phase."""

    base: str
    aligned: str
    pretrain: tuple[str, ...] = ()
    align: tuple[str, ...] = ()
    manifest: dict | None = None


def demo_checkpoints(*, cache_root=None, progress: bool = True) -> DemoCheckpoints:
    """The demo pair (trained and cached on first use by :func:`robustness.demo.demo_pair`)."""
    from .demo import demo_pair

    pair = demo_pair(cache_root=cache_root, progress=progress)
    phases = {
        phase: tuple(str(p) for p in sorted((pair.root / "checkpoints" / phase).glob("step-*")))
        for phase in ("pretrain", "align")
    }
    return DemoCheckpoints(
        str(pair.base), str(pair.aligned), phases["pretrain"], phases["align"], pair.manifest
    )


def demo_token_windows(demo: DemoCheckpoints, *, held_out: bool, length: int) -> np.ndarray:
    """The demo corpus' training (or held-out) documents, tokenised, cut into windows of `length`.

    The same documents and tokenizer the demo trained on: every ``held_out_every``-th
    document is held out of both training phases.
    """
    from .corpus import builtin_documents, load_tokenizer, tokenize
    from .demo import split_documents

    every = int(demo.manifest["settings"]["held_out_every"])
    train, held = split_documents(builtin_documents(), every)
    stream = tokenize(held if held_out else train, load_tokenizer(demo.base))
    n = len(stream) // length
    if n < 2:
        raise ValueError(f"the demo's {'held-out' if held_out else 'training'} text is too short")
    return stream[: n * length].reshape(n, length)


# ---------------------------------------------------------------------------- read/write summaries


def layer_interval(
    per_layer: xr.DataArray, level: float, seed: int, *, n_resamples: int = 2000
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
            confidence_level=level,
            n_resamples=n_resamples,
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
    n_resamples: int = 2000,
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
        bounds = layer_interval(per_layer, confidence_level, seed, n_resamples=n_resamples)
        out["asymmetry_ci_low"], out["asymmetry_ci_high"] = bounds["ci_low"], bounds["ci_high"]
    return out


# ---------------------------------------------------------------------------- commands


def experiment_config(args, pairs, base: SweepConfig | None = None) -> SweepConfig:
    """A sweep config of `pairs` from the experiment's options over `base` (or the experiment grid)."""
    from .cli import sweep_options

    config = base or SweepConfig(pairs=tuple(pairs), **EXPERIMENT_GRID)
    return sweep_options(replace(config, pairs=tuple(pairs)), args)


def load_probe_corpus(config: SweepConfig, tokenizer_source: str):
    """The probe corpus of `config`, after checking the config against the models' configs."""
    from .corpus import load_corpus
    from .engine import check_corpus, preflight

    widths = preflight(config)  # configs only: bad ids, mismatched pairs and k > d fail here
    corpus = load_corpus(
        config.corpus, tokenizer_source=tokenizer_source, trust_remote_code=config.trust_remote_code
    )
    check_corpus(corpus, widths)
    return corpus


def evenly_spaced(available: int, wanted: int) -> np.ndarray:
    """About `wanted` (at least 2, at most `available`) evenly spaced indices into `available`."""
    wanted = min(available, max(2, wanted))
    return np.unique(np.linspace(0, available - 1, wanted).round().astype(np.int64))
