"""The pipeline as functions: a Dataset out of models, a Dataset out of a Dataset.

What ``rsf sweep``, ``rsf stats`` and ``rsf claims`` do, for a notebook::

    import robustness
    results = robustness.sweep("org/base", "org/aligned", cutoffs=("k=8", "var=0.9"))
    stats = robustness.statistics(results)
    claims = robustness.paper_claims(results, stats=stats)

Every option is keyword-only, with the option schema's default
(:mod:`robustness.config`, :mod:`robustness.options`), and is checked as the
command line checks it: a bad value is the same one-line ``ValueError``.
The command line is a thin shell over these functions. (``asymmetry`` and
``claims`` are the names of modules of this package, so the functions are
``statistics`` and ``paper_claims``: a submodule, once imported, would
shadow a function of the same name on the package.)
"""

from __future__ import annotations

import json

import xarray as xr

from .config import CorpusSpec, PairSpec, SweepConfig, default_label

__all__ = ["paper_claims", "statistics", "sweep"]


def sweep(
    base: str | SweepConfig,
    aligned: str | None = None,
    *,
    label: str | None = None,
    phase: str = "align",
    corpus: CorpusSpec | None = None,
    cache_dir=None,
    progress: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    **settings,
) -> xr.Dataset:
    """``results.nc`` of one pair (`base` → `aligned`), or of every pair of a :class:`SweepConfig`.

    `settings` are :class:`SweepConfig`'s options (``constructions``,
    ``cutoffs``, ``normalisations``, ``matrices``, ``replicates``, ``seed``,
    ``bca``, ``device``, ``dtype``, ``batch_size``, ``trust_remote_code``);
    `corpus` a :class:`CorpusSpec` (default: the built-in corpus). `cache_dir`
    ``None`` keeps no statistics cache. The notes a sweep prints are in
    ``attrs["notes"]`` (JSON: per pair, a list of lines).
    """
    from .dataset import build_dataset
    from .engine import run_sweep
    from .models import prepare_corpus

    if isinstance(base, SweepConfig):
        if aligned is not None or label is not None or corpus is not None:
            raise ValueError("sweep(config) takes the pairs and the corpus from the config")
        config = base.with_options(**settings) if settings else base
    else:
        if aligned is None:
            raise ValueError("sweep(base, aligned): the aligned model is missing")
        pair = PairSpec(label or default_label(aligned), str(base), str(aligned), phase=phase)
        config = SweepConfig(pairs=(pair,), corpus=corpus or CorpusSpec(), **settings)
    prepared = prepare_corpus(config, config.pairs[0].base)
    found = run_sweep(
        config, prepared, cache_root=cache_dir, progress=progress, workers=workers,
        scheduler=scheduler,
    )  # fmt: skip
    results = build_dataset(found, config, prepared)
    results.attrs["notes"] = json.dumps({r.label: list(r.notes) for r in found}, sort_keys=True)
    return results


def statistics(results: xr.Dataset, **options) -> xr.Dataset:
    """``stats.nc`` of `results`: :func:`robustness.stats.compute_stats` with
    :class:`robustness.options.StatsOptions`' options (``read``, ``write``,
    ``confidence_level``, ``n_resamples``, ``alpha``, ``seed``, ``preferred``,
    ``experts``)."""
    from .stats import compute_stats

    return compute_stats(results, **options)


def paper_claims(results: xr.Dataset, *, stats=None, extra=(), **options) -> xr.Dataset:
    """``claims.nc``: the paper's claims on `results` (and its `stats`, and `extra` datasets:
    gradients, trajectory, contrastive, rank-1), with
    :class:`robustness.options.ClaimsOptions`' options (``margin``, ``isotropy_margin``,
    ``graded_margin``, ``alpha``, ``n_resamples``, ``seed``, ``experts``)."""
    from . import paper

    return paper.paper_claims(results, stats=stats, extras=list(extra), **options)
