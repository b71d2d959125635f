"""``gradients.nc``: δ_t and a_t along checkpoints, per objective, with intervals and trends.

For each checkpoint (a model, or an ordered list of checkpoints of one
training run) and each objective of :class:`robustness.mechanism.gradients.GradientSettings`,
one statistics pass (:func:`robustness.mechanism.gradients.measure_objective`, cached
like the sweep's, keyed by the checkpoint's and its reference's weights
hashes, the corpus and the settings) gives per layer and site the covariance
spectrum, its leading eigenvalues (as shares of the trace), the participation
ratio, the entropy effective rank and the prediction-subspace energy.

**The DPO reference** at each checkpoint is chosen as the training that
produced it would choose it: for alignment checkpoints the model alignment
started from (``reference``, default the first checkpoint), for pretraining
checkpoints the checkpoint itself (the gradient alignment would start with
there). It is recorded per checkpoint (``reference_id``, ``reference_hash``).

**Intervals**: percentile over corpus chunks (``*_ci_*``: the same chunk
weights for every checkpoint and objective, so differences are paired) and,
for layer means, the dependence-robust EWC interval over layers
(``*_layer_ci_*``). **Contrasts**: each objective minus the first, at every
checkpoint. **Trends** along the checkpoints (three or more): the slope per
step of each layer-mean quantity within each training phase, its EWC test
over layers and Spearman's ρ (:mod:`robustness.mechanism.gradient_trends`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import xarray as xr

import probes
from robustness.io.provenance import provenance_attrs
from robustness.measure.cache import StatisticsCache
from robustness.measure.corpus import Corpus
from robustness.measure.models import check_corpus, config_widths, load_model, supported_config
from robustness.measure.resampling import bootstrap_weights, percentile_interval, sequence_chunks
from robustness.mechanism.gradient_trends import MEASURES, phase_trends
from robustness.mechanism.gradients import (
    SITE_KIND,
    SITE_ORDER,
    GradientSettings,
    measure_objective,
    summarise_statistics,
)
from robustness.mechanism.trajectory import checkpoint_label, checkpoint_step
from robustness.stats.layers import layer_test
from robustness.training.preferences import preference_pairs

__all__ = [
    "LEADING",
    "MEASURES",
    "GradientCheckpoint",
    "check_checkpoints",
    "gradient_dataset",
    "phase_checkpoints",
]

LEADING = 5  # leading eigenvalues kept, as shares of the trace


@dataclass(frozen=True)
class GradientCheckpoint:
    """One model to measure: its label, where it is, its training step, phase and DPO reference.

    ``reference`` ``None`` means the checkpoint is its own reference.
    """

    label: str
    path: str
    step: int | None = None
    phase: str = ""  # "align", "pretrain", or "" for a model on its own
    reference: str | None = None


def phase_checkpoints(
    paths, *, phase: str = "align", labels=None, reference: str | None = None
) -> list[GradientCheckpoint]:
    """The checkpoints of one training phase, in order, each with its DPO reference.

    ``align``: the model alignment started from, `reference` (default the
    first checkpoint); ``pretrain``: each checkpoint itself. Labels default to
    the folder names, steps come from them (``step-00040``) where they say.
    """
    paths = [str(p) for p in paths]
    if phase not in ("align", "pretrain"):
        raise ValueError(f"unknown phase {phase!r}: valid are align, pretrain")
    if phase == "pretrain" and reference is not None:
        raise ValueError(
            "pretraining checkpoints are their own DPO reference: a reference applies to alignment"
        )
    labels = list(labels) if labels is not None else [checkpoint_label(p) for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} checkpoints")
    if len(set(labels)) != len(labels):
        raise ValueError(f"repeated checkpoint label in {labels}")
    start = (reference or paths[0]) if phase == "align" else None
    return [
        GradientCheckpoint(label, path, checkpoint_step(path), phase, start)
        for label, path in zip(labels, paths, strict=True)
    ]


def _check_finite(stats, checkpoint: str, objective: str) -> None:
    """Refuse (and never cache) sums holding inf or NaN: a spectrum of them would be meaningless."""
    for (layer, site), sums in sorted(stats.sites.items()):
        if not (np.isfinite(sums.sum_x).all() and np.isfinite(sums.sum_xx).all()):
            raise ValueError(
                f"checkpoint {checkpoint} ({objective}): the {site} statistics of layer {layer} are "
                "not finite on this corpus (an overflowing gradient, or a token whose residual "
                "stream is exactly zero, such as an initialisation's zeroed padding embedding)"
            )


def check_checkpoints(checkpoints, *, trust_remote_code: bool = False) -> dict:
    """Configs only, before any forward pass: every checkpoint exists, is supported and has the same widths.

    A mismatch names the first checkpoint that differs from the first one and how.
    """
    if not checkpoints:
        raise ValueError("no checkpoint to measure")
    widths = None
    for checkpoint in checkpoints:
        for path in {checkpoint.path, checkpoint.reference} - {None}:
            own = config_widths(supported_config(path, trust_remote_code=trust_remote_code))
            if widths is None:
                widths, first = own, path
            differences = [f"{k}: {widths[k]} vs {own[k]}" for k in widths if widths[k] != own[k]]
            if differences:
                raise ValueError(
                    f"{path} does not match {first} ("
                    + "; ".join(differences)
                    + "): checkpoints of one "
                    "architecture and width are needed"
                )
    return widths


def _cached(cache, key_parts: dict, compute):
    key = StatisticsCache.key(weights_hash=key_parts.pop("weights"), corpus_hash=key_parts.pop("corpus"),
                              settings=key_parts)  # fmt: skip
    stats = cache.load(key)
    if stats is None:
        stats = compute()
        cache.store(key, stats)
    return stats


@dataclass(frozen=True)
class _Sample:
    """The corpus side of every statistics pass: the sequences, their preference pairs (when an
    objective has a DPO term), the chunks and the bootstrap's chunk weights (``None``: none)."""

    ids: np.ndarray
    corpus_hash: str
    prompt_len: int
    pairs: object
    chunks: list
    weights: np.ndarray | None


@dataclass(frozen=True)
class _CheckpointGradients:
    """One checkpoint's statistics: per objective a :func:`summarise_statistics` row and the mean
    loss per sequence or pair; the weights hashes of it and its DPO reference; its widths."""

    checkpoint: GradientCheckpoint
    rows: list[dict]
    losses: list[float]
    weights_hash: str
    reference_hash: str
    ks: np.ndarray
    d_model: int
    n_layers: int


def _gradient_sample(corpus: Corpus, settings: GradientSettings, widths: dict) -> _Sample:
    """The sequences every checkpoint and objective is measured on, once they fit the checkpoints."""
    ids = corpus.ids
    seq_len = ids.shape[1]
    prompt_len = settings.prompt_len or seq_len // 2
    if not 1 <= prompt_len < seq_len:
        raise ValueError(f"`prompt_len` must lie in [1, {seq_len - 1}], got {prompt_len}")
    check_corpus(corpus, {"the checkpoints": widths})
    needs_pairs = any(lam is not None for _, lam in settings.labelled_objectives())
    if needs_pairs and len(ids) < 2:
        raise ValueError("preference pairs need at least 2 sequences: raise the tokens")
    pairs = None
    if needs_pairs:
        pairs = preference_pairs(
            ids,
            prompt_len=prompt_len,
            rng=probes.construction_rng(settings.seed, "gradients", "pairs"),
        )
    chunks = sequence_chunks(len(ids))
    weights = (
        bootstrap_weights(len(chunks), settings.replicates, settings.seed, "gradients")
        if settings.replicates
        else None
    )
    return _Sample(ids, corpus.hash, prompt_len, pairs, chunks, weights)


@dataclass
class _GradientRun:
    """How each statistics pass runs: cached, with one loader (device, dtype), keeping the DPO
    reference last loaded (a reference shared by several checkpoints is loaded once)."""

    settings: GradientSettings
    sample: _Sample
    cache: StatisticsCache
    load: Callable[[str], object]
    dtype: str
    device: str
    progress: bool
    held: tuple | None = None  # (path, model)

    def reference(self, path: str):
        if self.held is None or self.held[0] != path:
            self.held = None  # free the previous reference before loading the next
            self.held = (path, self.load(path))
        return self.held[1]

    def checkpoint(self, checkpoint: GradientCheckpoint) -> _CheckpointGradients:
        """Every objective at one checkpoint, against its DPO reference."""
        settings, sample = self.settings, self.sample
        model = self.load(checkpoint.path)
        own_hash = probes.weights_hash(checkpoint.path)
        reference, reference_hash = None, own_hash
        if checkpoint.reference and checkpoint.reference != checkpoint.path:
            reference = self.reference(checkpoint.reference)
            reference_hash = probes.weights_hash(checkpoint.reference)
        dims = probes.model_dims(model)
        ks = np.array(
            [probes.resolve_cutoff(c, d=dims.d_model) for c in settings.cutoffs], dtype=np.int64
        )
        basis = probes.prediction_subspaces(model)[settings.prediction].basis
        rows, losses = [], []
        for label, lam in settings.labelled_objectives():
            parts = {
                "weights": own_hash, "corpus": sample.corpus_hash, "kind": "gradients",
                "reference": None if lam is None else reference_hash, "objective": label,
                "beta": settings.beta, "prompt_len": sample.prompt_len, "batch_size": settings.batch_size,
                "chunks": sample.chunks if settings.replicates else None, "dtype": self.dtype,
                "device_type": self.device.split(":")[0], "pairs_seed": settings.seed,
            }  # fmt: skip
            stats = _cached(
                self.cache,
                parts,
                partial(self.statistics, model, reference, checkpoint, label, lam),
            )
            n_examples = len(sample.ids) if lam is None else len(sample.pairs)
            losses.append(stats.loss / n_examples)
            rows.append(
                summarise_statistics(
                    stats, n_layers=dims.n_layers, basis=basis, ks=ks, weights=sample.weights
                )
            )
        return _CheckpointGradients(checkpoint, rows, losses, own_hash, reference_hash, ks,
                                    dims.d_model, dims.n_layers)  # fmt: skip

    def statistics(self, model, reference, checkpoint, label, lam):
        """One objective's statistics pass, refused when not finite."""
        settings = self.settings
        stats = measure_objective(
            model, self.sample.ids, lam=lam, pairs=self.sample.pairs, reference=reference,
            beta=settings.beta, batch_size=settings.batch_size, chunks=self.sample.chunks,
            progress=self.progress, description=f"gradients {checkpoint.label} ({label})",
            # per-chunk sums only for a bootstrap: each holds every layer's and site's d×d
            keep_chunks=bool(settings.replicates),
        )  # fmt: skip
        _check_finite(stats, checkpoint.label, label)
        return stats


def gradient_dataset(
    checkpoints,
    corpus: Corpus,
    settings: GradientSettings | None = None,
    *,
    cache_root=None,
    device: str = "cpu",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    progress: bool = True,
) -> xr.Dataset:
    """Measure every objective of `settings` at every checkpoint; the ``gradients`` dataset.

    Layout: dims ``checkpoint, objective, layer, site, component, leading,
    cutoff`` (and ``replicate`` with a bootstrap); see the module docstring.
    """
    settings = settings or GradientSettings()
    checkpoints = list(checkpoints)
    widths = check_checkpoints(checkpoints, trust_remote_code=trust_remote_code)
    sample = _gradient_sample(corpus, settings, widths)
    load = partial(load_model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    run = _GradientRun(settings, sample, StatisticsCache(cache_root), load, dtype, device, progress)
    measured = [run.checkpoint(checkpoint) for checkpoint in checkpoints]
    return _assemble(measured, settings, corpus, prompt_len=sample.prompt_len,
                     model_type=widths["model_type"])  # fmt: skip


def _stack(per_checkpoint, name) -> np.ndarray:
    return np.stack([np.stack([row[name] for row in rows]) for rows in per_checkpoint])


def _layer_bounds(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EWC interval and p over the layer axis (axis 2) of ``[checkpoint, objective, layer, …]``."""
    moved = np.moveaxis(values, 2, 0)
    test = layer_test(moved.reshape(moved.shape[0], -1), confidence_level=level)
    shape = moved.shape[1:]
    return test.ci_low.reshape(shape), test.ci_high.reshape(shape), test.p_value.reshape(shape)


_BASE_DIMS = ("checkpoint", "objective", "layer", "site")
_EXTRA_DIMS = {"prediction_ratio": ("cutoff",), "leading_share": ("leading",)}
_LONG_NAMES = {
    "participation_ratio": "(Σλ)²/Σλ²",
    "entropy_rank": "entropy effective rank exp H(λ/Σλ) (Roy & Vetterli 2007)",
    "prediction_ratio": "prediction_fraction / (k/d): 1 = isotropic",
    "leading_share": "leading eigenvalues as shares of the trace, λ_i/Σλ",
}


def _assemble(measured: list[_CheckpointGradients], settings: GradientSettings, corpus: Corpus, *,
              prompt_len: int, model_type: str) -> xr.Dataset:  # fmt: skip
    """The ``gradients`` dataset from every checkpoint's statistics (see the module docstring)."""
    level = settings.confidence_level
    last = measured[-1]
    per_checkpoint = [m.rows for m in measured]
    data = _spectrum_variables(per_checkpoint, np.asarray([m.losses for m in measured]))
    observed, boot = _measures(per_checkpoint, last.d_model / last.ks.astype(np.float64),
                               bootstrapped=bool(settings.replicates))  # fmt: skip
    for name, values in observed.items():
        data.update(_measure_variables(name, values, boot.get(name), level))
    trends, segments = phase_trends(
        observed, [m.checkpoint for m in measured], level, settings.seed
    )
    data.update(trends)
    attrs = _gradient_attrs(measured, settings, corpus, prompt_len=prompt_len,
                            model_type=model_type)  # fmt: skip
    return xr.Dataset(data, coords=_gradient_coords(measured, settings, segments), attrs=attrs)


def _spectrum_variables(per_checkpoint: list, losses: np.ndarray) -> dict:
    """The covariance spectra, prediction fractions, vector counts and losses as measured."""
    return {
        "spectrum": ((*_BASE_DIMS, "component"), _stack(per_checkpoint, "spectrum"),
                     {"long_name": "covariance eigenvalues, descending (a_t at read sites, δ_t at write sites)"}),
        "prediction_fraction": ((*_BASE_DIMS, "cutoff"), _stack(per_checkpoint, "prediction_fraction"),
                                {"long_name": "share of energy (uncentred) in the top-k prediction subspace"}),
        "n_vectors": (_BASE_DIMS, _stack(per_checkpoint, "n"), {"long_name": "vectors accumulated"}),
        "loss": (("checkpoint", "objective"), losses, {"long_name": "mean loss per sequence or pair"}),
    }  # fmt: skip


def _measures(per_checkpoint: list, ratio_scale: np.ndarray, *, bootstrapped: bool):
    """Each of :data:`MEASURES` ``[C, O, L, S, …]`` and, with a bootstrap, the replicates of all
    but ``leading_share`` ``[C, O, B, L, S, …]``; ``prediction_ratio`` is the prediction
    fraction over k/d (`ratio_scale`: d/k per cutoff)."""
    spectrum = _stack(per_checkpoint, "spectrum")  # [C, O, L, S, d]
    with np.errstate(divide="ignore", invalid="ignore"):
        leading = spectrum[..., :LEADING] / spectrum.sum(axis=-1, keepdims=True)
    observed = {
        "participation_ratio": _stack(per_checkpoint, "participation_ratio"),
        "entropy_rank": _stack(per_checkpoint, "entropy_rank"),
        "prediction_ratio": _stack(per_checkpoint, "prediction_fraction") * ratio_scale,
        "leading_share": leading,
    }
    boot = {}
    if bootstrapped:
        boot = {
            "participation_ratio": _stack(per_checkpoint, "participation_ratio_boot"),
            "entropy_rank": _stack(per_checkpoint, "entropy_rank_boot"),
            "prediction_ratio": _stack(per_checkpoint, "prediction_fraction_boot") * ratio_scale,
        }
    return observed, boot


def _measure_variables(name: str, values: np.ndarray, boot, level: float) -> dict:
    """One measure per layer, its layer mean and that minus the first objective's (paired), with
    the EWC interval over layers and, with bootstrap replicates `boot`, percentile intervals."""
    extra = _EXTRA_DIMS.get(name, ())
    mean_dims = ("checkpoint", "objective", "site", *extra)
    data = {name: ((*_BASE_DIMS, *extra), values, {"long_name": _LONG_NAMES[name]})}
    mean = values.mean(axis=2)
    data[f"mean_{name}"] = (mean_dims, mean, {"long_name": f"layer mean of {name}"})
    data[f"contrast_{name}"] = (mean_dims, mean - mean[:, :1],
                                {"long_name": f"layer mean of {name}, minus the first objective's (paired)"})  # fmt: skip
    # Over layers, dependence-robust (the EWC test of rsf stats): the layers as the units.
    for target, per_layer in (
        (f"mean_{name}", values),
        (f"contrast_{name}", values - values[:, :1]),
    ):
        low, high, p = _layer_bounds(per_layer, level)
        data[f"{target}_layer_ci_low"] = (mean_dims, low)
        data[f"{target}_layer_ci_high"] = (mean_dims, high)
        if target.startswith("contrast"):
            data[f"{target}_layer_p"] = (mean_dims, p)
    if boot is None:
        return data
    replicates = np.moveaxis(boot, 2, 0)  # [B, C, O, L, S, …]
    data[f"{name}_boot"] = (("replicate", *_BASE_DIMS, *extra), replicates)
    means = replicates.mean(axis=3)
    for target, draws, dims in (
        (name, replicates, (*_BASE_DIMS, *extra)),
        (f"mean_{name}", means, mean_dims),
        (f"contrast_{name}", means - means[:, :, :1], mean_dims),
    ):
        low, high = percentile_interval(draws, level)
        data[f"{target}_ci_low"] = (dims, low)
        data[f"{target}_ci_high"] = (dims, high)
    return data


def _gradient_attrs(
    measured, settings: GradientSettings, corpus, *, prompt_len, model_type
) -> dict:
    """Provenance, the first checkpoint and its reference, the widths, and how intervals are made."""
    first, last = measured[0], measured[-1]
    attrs = provenance_attrs(
        "gradients",
        title="gradient anisotropy along checkpoints: δ_t at write sites, a_t at read sites",
        corpus=corpus,
        seed=settings.seed,
        settings=settings.to_json(),
        inputs={m.checkpoint.label: m.weights_hash for m in measured},
    )
    attrs.update(
        model_id=first.checkpoint.path, model_hash=first.weights_hash,
        reference_id=first.checkpoint.reference or first.checkpoint.path,
        reference_hash=first.reference_hash, model_type=model_type, d_model=int(last.d_model),
        n_layers=int(last.n_layers), prompt_len=int(prompt_len), confidence_level=settings.confidence_level,
        bootstrap_replicates=int(settings.replicates), prediction_subspace=settings.prediction,
        beta=settings.beta,
        interval="percentile bootstrap over chunks of consecutive sequences (reweighted sums, the same chunk "
        "weights at every checkpoint and objective): *_ci_*; over layers, the EWC t interval "
        "(dependence-robust, robustness.stats.layers): *_layer_ci_*",
        reference_rule="alignment checkpoints: the model alignment started from; pretraining checkpoints: "
        "the checkpoint itself",
        trend_test="slope of each layer mean per step, EWC t-test over the layers' own slopes; Spearman's ρ",
    )  # fmt: skip
    return attrs


def _gradient_coords(measured, settings: GradientSettings, segments: list[str]) -> dict:
    """Checkpoints (label, step, phase, ids and hashes of it and its reference), objectives (λ),
    layers, sites (activation or gradient), components, cutoffs (k), measures and segments."""
    checkpoints = [m.checkpoint for m in measured]
    objectives = settings.labelled_objectives()
    last = measured[-1]
    steps = [np.nan if c.step is None else float(c.step) for c in checkpoints]

    def per_checkpoint(values):
        return ("checkpoint", np.asarray(values, dtype=object))

    return {
        "checkpoint": per_checkpoint([c.label for c in checkpoints]),
        "step": ("checkpoint", np.asarray(steps)),
        "phase": per_checkpoint([c.phase for c in checkpoints]),
        "checkpoint_id": per_checkpoint([c.path for c in checkpoints]),
        "checkpoint_hash": per_checkpoint([m.weights_hash for m in measured]),
        "reference_id": per_checkpoint([c.reference or c.path for c in checkpoints]),
        "reference_hash": per_checkpoint([m.reference_hash for m in measured]),
        "objective": ("objective", np.asarray([label for label, _ in objectives], dtype=object)),
        "lam": ("objective", np.asarray([np.nan if lam is None else lam for _, lam in objectives])),
        "layer": ("layer", np.arange(last.n_layers, dtype=np.int64)),
        "site": ("site", np.asarray(SITE_ORDER, dtype=object)),
        "vector": ("site", np.asarray([SITE_KIND[s] for s in SITE_ORDER], dtype=object)),
        "component": ("component", np.arange(last.d_model, dtype=np.int64)),
        "leading": ("leading", np.arange(LEADING, dtype=np.int64)),
        "cutoff": ("cutoff", np.asarray(list(settings.cutoffs), dtype=object)),
        "k": ("cutoff", last.ks),
        "measure": ("measure", np.asarray(MEASURES, dtype=object)),
        "segment": ("segment", np.asarray(segments, dtype=object)),
    }
