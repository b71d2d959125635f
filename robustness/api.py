"""The pipeline as functions: a Dataset out of models, a Dataset out of a Dataset.

What ``rsf sweep``, ``rsf stats`` and ``rsf claims`` do, for a notebook::

    import robustness
    results = robustness.sweep("org/base", "org/aligned", cutoffs=("k=8", "var=0.9"))
    stats = robustness.statistics(results)
    claims = robustness.paper_claims(results, stats=stats)

Every option is keyword-only, with the option schema's default
(:mod:`robustness.settings.config`, :mod:`robustness.settings.options`), and is checked as the
command line checks it: a bad value is the same one-line ``ValueError``.
The command line is a thin shell over these functions. (``asymmetry``,
``claims`` and ``gradients`` are the names of modules of this package, so the
functions are ``statistics``, ``paper_claims`` and ``measure_gradients``: a
submodule, once imported, would shadow a function of the same name on the
package.)
"""

from __future__ import annotations

from dataclasses import replace

import xarray as xr

import robustness.accessor  # noqa: F401  (registers ds.robustness on every dataset the API returns)
from robustness.io.datasets import open_dataset
from robustness.settings.config import CorpusSpec, PairSpec, SweepConfig, default_label

__all__ = [
    "calibrate",
    "contrastive",
    "load",
    "measure_gradients",
    "paper_claims",
    "rank1",
    "run_demo",
    "statistics",
    "sweep",
    "trajectory",
]


def load(path, kind: str | None = None) -> xr.Dataset:
    """A dataset rsf wrote, read whole (``ds.robustness`` ready); with `kind`, refused if it is another."""
    return open_dataset(path, kind)


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
    ``attrs["notes"]`` (a JSON list of ``"label: note"`` lines).
    """
    from robustness.measure.models import prepare_corpus
    from robustness.measure.results import sweep_dataset

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
    return sweep_dataset(
        config, prepared, cache_root=cache_dir, progress=progress, workers=workers,
        scheduler=scheduler,
    )  # fmt: skip


def statistics(results: xr.Dataset, **options) -> xr.Dataset:
    """``stats.nc`` of `results`: :func:`robustness.stats.statistics.compute_stats` with
    :class:`robustness.settings.options.StatsOptions`' options (``read``, ``write``,
    ``confidence_level``, ``n_resamples``, ``alpha``, ``seed``, ``preferred``,
    ``experts``)."""
    from robustness.stats.statistics import compute_stats

    return compute_stats(results, **options)


def paper_claims(results: xr.Dataset, *, stats=None, extra=(), **options) -> xr.Dataset:
    """``claims.nc``: the paper's claims on `results` (and its `stats`, and `extra` datasets:
    gradients, trajectory, contrastive, rank-1), with
    :class:`robustness.settings.options.ClaimsOptions`' options (``margin``, ``isotropy_margin``,
    ``graded_margin``, ``alpha``, ``n_resamples``, ``seed``, ``experts``)."""
    from robustness.claims import paper

    return paper.paper_claims(results, stats=stats, extras=list(extra), **options)


def trajectory(
    checkpoints,
    *,
    labels=None,
    config: SweepConfig | None = None,
    read=None,
    write=None,
    cache_dir=None,
    progress: bool = False,
) -> xr.Dataset:
    """``trajectory.nc``: RSF of each checkpoint against the start and the previous one.

    `config` gives the grid, corpus and run options (default: the experiments'
    grid on the built-in corpus); its pairs are the trajectory's own.
    """
    from robustness.measure.models import prepare_corpus
    from robustness.mechanism.summaries import EXPERIMENT_GRID
    from robustness.mechanism.trajectory import trajectory_dataset, trajectory_pairs
    from robustness.settings.specification import DEFAULT_READ, DEFAULT_WRITE

    checkpoints = list(checkpoints)
    pairs, _ = trajectory_pairs(checkpoints, labels)
    config = replace(
        config or SweepConfig(pairs=tuple(pairs), **EXPERIMENT_GRID), pairs=tuple(pairs)
    )
    corpus = prepare_corpus(config, checkpoints[0])
    return trajectory_dataset(
        checkpoints, config, corpus, labels=labels, read=read or DEFAULT_READ,
        write=write or DEFAULT_WRITE, cache_root=cache_dir, progress=progress,
    )  # fmt: skip


def contrastive(
    base: str,
    train_ids,
    settings,
    *,
    config: SweepConfig | None = None,
    variants_dir=None,
    gradient_pairs: int = 256,
    read=None,
    write=None,
    cache_dir=None,
    progress: bool = False,
) -> xr.Dataset:
    """``contrastive.nc``: variants of `base` trained on `train_ids` (preference windows) under
    each objective of `settings` (:class:`robustness.settings.options.ContrastiveSettings`), swept against
    `base`, with δ_t at `gradient_pairs` of the training pairs. Variants are saved in and reused
    from `variants_dir` (default: the cache's ``contrastive`` folder)."""
    from pathlib import Path

    from robustness.measure.cache import default_cache_dir
    from robustness.measure.corpus import evenly_spaced
    from robustness.measure.models import prepare_corpus, resolve_device
    from robustness.mechanism.contrastive import (
        ContrastiveModels,
        Pathways,
        contrastive_dataset,
        train_variants,
    )
    from robustness.mechanism.summaries import EXPERIMENT_GRID
    from robustness.settings.specification import DEFAULT_READ, DEFAULT_WRITE

    pairs = (PairSpec("contrastive", str(base), str(base)),)
    config = replace(config or SweepConfig(pairs=pairs, **EXPERIMENT_GRID), pairs=pairs)
    if len(train_ids) < 2:
        raise ValueError("the training text gives fewer than 2 preference pairs")
    corpus = prepare_corpus(config, base)
    device = resolve_device(config.device)
    folder = variants_dir or Path(cache_dir or default_cache_dir()) / "contrastive"
    variants = train_variants(
        base, train_ids, settings, variants_dir=folder, device=device, progress=progress
    )
    models = ContrastiveModels(
        base, variants, gradient_ids=train_ids[evenly_spaced(len(train_ids), gradient_pairs)]
    )
    dataset = contrastive_dataset(
        models, settings, config, corpus,
        pathways=Pathways(read=read or DEFAULT_READ, write=write or DEFAULT_WRITE),
        cache_root=cache_dir, device=device, progress=progress,
    )  # fmt: skip
    dataset.attrs["base_id"] = str(base)
    dataset.attrs["training_pairs"] = int(len(train_ids))
    return dataset


def rank1(
    model_id: str,
    corpus,
    settings,
    *,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    progress: bool = False,
) -> xr.Dataset:
    """``rank1.nc``: rank-1 interventions on `model_id` along its top activation directions and
    controls (:class:`robustness.settings.options.Rank1Settings`), measured on `corpus`; `device`,
    `dtype` and `trust_remote_code` as :class:`robustness.settings.options.RunOptions`' (checked there)."""
    from robustness.settings.options import RunOptions

    RunOptions(device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    from robustness.measure.models import check_vocabulary, load_model, resolve_device
    from robustness.mechanism.rank1 import rank1_dataset

    model = load_model(
        model_id, device=resolve_device(device), dtype=dtype, trust_remote_code=trust_remote_code
    )
    check_vocabulary(corpus, model)
    return rank1_dataset(model, corpus, settings, model_id=model_id, progress=progress)


def measure_gradients(
    checkpoints,
    corpus,
    settings,
    *,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    cache_dir=None,
    progress: bool = False,
) -> xr.Dataset:
    """``gradients.nc``: δ_t and a_t at each of `checkpoints`
    (:class:`robustness.mechanism.gradient_dataset.GradientCheckpoint`, e.g. from
    :func:`robustness.mechanism.gradient_dataset.phase_checkpoints`) under each objective of `settings`
    (:class:`robustness.mechanism.gradients.GradientSettings`), measured on `corpus`."""
    from robustness.measure.models import resolve_device
    from robustness.mechanism.gradient_dataset import check_checkpoints, gradient_dataset
    from robustness.settings.options import RunOptions

    RunOptions(device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    check_checkpoints(checkpoints, trust_remote_code=trust_remote_code)
    return gradient_dataset(
        checkpoints, corpus, settings, cache_root=cache_dir, device=resolve_device(device),
        dtype=dtype, trust_remote_code=trust_remote_code, progress=progress,
    )  # fmt: skip


def calibrate(settings=None, *, fast: bool = False, progress: bool = False) -> xr.Dataset:
    """``calibration.nc``: type-I error, power and coverage of the tests on simulated studies
    (:class:`robustness.settings.options.CalibrationSettings`; ``fast`` its quick preset)."""
    from robustness.calibration.study import run_calibration
    from robustness.settings.options import CalibrationSettings

    if settings is None:
        settings = CalibrationSettings.fast() if fast else CalibrationSettings()
    return run_calibration(settings, progress=progress)


def run_demo(
    *,
    settings=None,
    grid=None,
    cache_dir=None,
    retrain: bool = False,
    full: bool = False,
    real: bool = False,
    progress: bool = False,
    stage=None,
):
    """``rsf demo``'s datasets: the demo pair (or, with `real`, the real model's pairs) swept,
    tested, its gradients measured and the claims tested; with `full` the trajectory, contrastive
    and rank-1 experiments too (this module's functions, with the commands' defaults).

    Returns a :class:`robustness.demo.pipeline.DemoRun` (``results``, ``stats``, ``claims``,
    ``extras``: kind → dataset); `stage` (a callable) hears each stage's name.
    """
    from robustness.demo.pipeline import DemoRequest, demo_datasets

    request = DemoRequest(settings=settings, grid=grid, cache_root=cache_dir, retrain=retrain,
                          full=full, progress=progress, real=real)  # fmt: skip
    return demo_datasets(request, experiments=_demo_experiment, stage=stage or (lambda _: None))


def _demo_experiment(kind: str, demo, cache_root, progress: bool) -> xr.Dataset:
    """The dataset of one experiment on the demo's checkpoints, with its command's defaults."""
    from robustness.demo.pair import demo_contrastive_inputs, demo_held_out_inputs
    from robustness.settings.options import ContrastiveInputs, Rank1Settings

    if kind == "trajectory":
        return trajectory(demo.phase("align"), cache_dir=cache_root, progress=progress)
    if kind == "contrastive":
        base, windows, settings = demo_contrastive_inputs(demo)
        return contrastive(
            base, windows, settings, gradient_pairs=ContrastiveInputs().gradient_pairs,
            cache_dir=cache_root, progress=progress,
        )  # fmt: skip
    corpus, settings = demo_held_out_inputs(demo, Rank1Settings(), tokens=8192)
    return rank1(demo.base, corpus, settings, progress=progress)
