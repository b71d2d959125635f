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
step of each layer-mean quantity, its EWC test over layers
(:func:`robustness.mechanism.trend.trend_test`) and Spearman's ρ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

import probes
from robustness.io.provenance import provenance_attrs
from robustness.measure.cache import StatisticsCache
from robustness.measure.corpus import Corpus
from robustness.measure.models import check_corpus, config_widths, load_model, supported_config
from robustness.measure.resampling import bootstrap_weights, percentile_interval, sequence_chunks
from robustness.mechanism.gradients import (
    SITE_KIND,
    SITE_ORDER,
    GradientSettings,
    measure_objective,
    summarise_statistics,
)
from robustness.mechanism.trajectory import checkpoint_label, checkpoint_step
from robustness.mechanism.trend import trend_test
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
MEASURES = ("entropy_rank", "participation_ratio", "prediction_ratio", "leading_share")


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
    objectives = settings.labelled_objectives()
    ids = corpus.ids
    seq_len = ids.shape[1]
    prompt_len = settings.prompt_len or seq_len // 2
    if not 1 <= prompt_len < seq_len:
        raise ValueError(f"`prompt_len` must lie in [1, {seq_len - 1}], got {prompt_len}")
    check_corpus(corpus, {"the checkpoints": widths})
    needs_pairs = any(lam is not None for _, lam in objectives)
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
    cache = StatisticsCache(cache_root)

    def load(path):
        return load_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)

    per_checkpoint, losses, hashes, reference_hashes = [], [], [], []
    d = n_layers = ks = None
    held = None  # (path, model): a reference shared by several checkpoints is loaded once
    for checkpoint in checkpoints:
        model = load(checkpoint.path)
        own_hash = probes.weights_hash(checkpoint.path)
        reference, reference_hash = None, own_hash
        if checkpoint.reference and checkpoint.reference != checkpoint.path:
            if held is None or held[0] != checkpoint.reference:
                held = None  # free the previous reference before loading the next
                held = (checkpoint.reference, load(checkpoint.reference))
            reference, reference_hash = held[1], probes.weights_hash(checkpoint.reference)
        dims = probes.model_dims(model)
        d, n_layers = dims.d_model, dims.n_layers
        ks = np.array([probes.resolve_cutoff(c, d=d) for c in settings.cutoffs], dtype=np.int64)
        basis = probes.prediction_subspaces(model)[settings.prediction].basis
        rows, row_losses = [], []
        for label, lam in objectives:
            parts = {
                "weights": own_hash, "corpus": corpus.hash, "kind": "gradients",
                "reference": None if lam is None else reference_hash, "objective": label,
                "beta": settings.beta, "prompt_len": prompt_len, "batch_size": settings.batch_size,
                "chunks": chunks if settings.replicates else None, "dtype": dtype, "device_type": device.split(":")[0],
                "pairs_seed": settings.seed,
            }  # fmt: skip

            def compute(
                lam=lam, label=label, model=model, reference=reference, checkpoint=checkpoint
            ):
                stats = measure_objective(
                    model, ids, lam=lam, pairs=pairs, reference=reference, beta=settings.beta,
                    batch_size=settings.batch_size, chunks=chunks, progress=progress,
                    description=f"gradients {checkpoint.label} ({label})",
                    # per-chunk sums only for a bootstrap: each holds every layer's and site's d×d
                    keep_chunks=bool(settings.replicates),
                )  # fmt: skip
                _check_finite(stats, checkpoint.label, label)
                return stats

            stats = _cached(cache, parts, compute)
            n_examples = len(ids) if lam is None else len(pairs)
            row_losses.append(stats.loss / n_examples)
            rows.append(
                summarise_statistics(stats, n_layers=n_layers, basis=basis, ks=ks, weights=weights)
            )
        per_checkpoint.append(rows)
        losses.append(row_losses)
        hashes.append(own_hash)
        reference_hashes.append(reference_hash)
        del model, reference
    return _assemble(
        per_checkpoint, np.asarray(losses), checkpoints, hashes, reference_hashes, objectives,
        ks=ks, d=d, n_layers=n_layers, settings=settings, corpus=corpus, prompt_len=prompt_len,
        model_type=widths["model_type"],
    )  # fmt: skip


def _stack(per_checkpoint, name) -> np.ndarray:
    return np.stack([np.stack([row[name] for row in rows]) for rows in per_checkpoint])


def _layer_bounds(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EWC interval and p over the layer axis (axis 2) of ``[checkpoint, objective, layer, …]``."""
    moved = np.moveaxis(values, 2, 0)
    test = layer_test(moved.reshape(moved.shape[0], -1), confidence_level=level)
    shape = moved.shape[1:]
    return test.ci_low.reshape(shape), test.ci_high.reshape(shape), test.p_value.reshape(shape)


def _assemble(per_checkpoint, losses, checkpoints, hashes, reference_hashes, objectives, *, ks, d, n_layers,
              settings, corpus, prompt_len, model_type) -> xr.Dataset:  # fmt: skip
    level = settings.confidence_level
    ratio_scale = d / ks.astype(np.float64)
    spectrum = _stack(per_checkpoint, "spectrum")  # [C, O, L, S, d]
    with np.errstate(divide="ignore", invalid="ignore"):
        leading = spectrum[..., :LEADING] / spectrum.sum(axis=-1, keepdims=True)
    base = ("checkpoint", "objective", "layer", "site")
    observed = {
        "participation_ratio": _stack(per_checkpoint, "participation_ratio"),
        "entropy_rank": _stack(per_checkpoint, "entropy_rank"),
        "prediction_ratio": _stack(per_checkpoint, "prediction_fraction") * ratio_scale,
        "leading_share": leading,
    }
    extra_dims = {"prediction_ratio": ("cutoff",), "leading_share": ("leading",)}
    data = {
        "spectrum": ((*base, "component"), spectrum,
                     {"long_name": "covariance eigenvalues, descending (a_t at read sites, δ_t at write sites)"}),
        "prediction_fraction": ((*base, "cutoff"), _stack(per_checkpoint, "prediction_fraction"),
                                {"long_name": "share of energy (uncentred) in the top-k prediction subspace"}),
        "n_vectors": (base, _stack(per_checkpoint, "n"), {"long_name": "vectors accumulated"}),
        "loss": (("checkpoint", "objective"), losses, {"long_name": "mean loss per sequence or pair"}),
    }  # fmt: skip
    long_names = {
        "participation_ratio": "(Σλ)²/Σλ²",
        "entropy_rank": "entropy effective rank exp H(λ/Σλ) (Roy & Vetterli 2007)",
        "prediction_ratio": "prediction_fraction / (k/d): 1 = isotropic",
        "leading_share": "leading eigenvalues as shares of the trace, λ_i/Σλ",
    }
    boot = {}
    if settings.replicates:
        boot = {
            "participation_ratio": _stack(per_checkpoint, "participation_ratio_boot"),
            "entropy_rank": _stack(per_checkpoint, "entropy_rank_boot"),
            "prediction_ratio": _stack(per_checkpoint, "prediction_fraction_boot") * ratio_scale,
        }  # [C, O, B, L, S, …]
    for name, values in observed.items():
        extra = extra_dims.get(name, ())
        mean_dims = ("checkpoint", "objective", "site", *extra)
        data[name] = ((*base, *extra), values, {"long_name": long_names[name]})
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
        if name not in boot:
            continue
        replicates = np.moveaxis(boot[name], 2, 0)  # [B, C, O, L, S, …]
        data[f"{name}_boot"] = (("replicate", *base, *extra), replicates)
        means = replicates.mean(axis=3)
        for target, draws, dims in (
            (name, replicates, (*base, *extra)),
            (f"mean_{name}", means, mean_dims),
            (f"contrast_{name}", means - means[:, :, :1], mean_dims),
        ):
            low, high = percentile_interval(draws, level)
            data[f"{target}_ci_low"] = (dims, low)
            data[f"{target}_ci_high"] = (dims, high)
    trends, segments = _trends(observed, checkpoints, level, settings.seed)
    data.update(trends)
    attrs = provenance_attrs(
        "gradients",
        title="gradient anisotropy along checkpoints: δ_t at write sites, a_t at read sites",
        corpus=corpus,
        seed=settings.seed,
        settings=settings.to_json(),
        inputs={c.label: h for c, h in zip(checkpoints, hashes, strict=True)},
    )
    first = checkpoints[0]
    attrs.update(
        model_id=first.path, model_hash=hashes[0], reference_id=first.reference or first.path,
        reference_hash=reference_hashes[0], model_type=model_type, d_model=int(d), n_layers=int(n_layers),
        prompt_len=int(prompt_len), confidence_level=level, bootstrap_replicates=int(settings.replicates),
        prediction_subspace=settings.prediction, beta=settings.beta,
        interval="percentile bootstrap over chunks of consecutive sequences (reweighted sums, the same chunk "
        "weights at every checkpoint and objective): *_ci_*; over layers, the EWC t interval "
        "(dependence-robust, robustness.stats.layers): *_layer_ci_*",
        reference_rule="alignment checkpoints: the model alignment started from; pretraining checkpoints: "
        "the checkpoint itself",
        trend_test="slope of each layer mean per step, EWC t-test over the layers' own slopes; Spearman's ρ",
    )  # fmt: skip
    steps = [np.nan if c.step is None else float(c.step) for c in checkpoints]
    return xr.Dataset(
        data,
        coords={
            "checkpoint": ("checkpoint", np.asarray([c.label for c in checkpoints], dtype=object)),
            "step": ("checkpoint", np.asarray(steps)),
            "phase": ("checkpoint", np.asarray([c.phase for c in checkpoints], dtype=object)),
            "checkpoint_id": (
                "checkpoint",
                np.asarray([c.path for c in checkpoints], dtype=object),
            ),
            "checkpoint_hash": ("checkpoint", np.asarray(hashes, dtype=object)),
            "reference_id": (
                "checkpoint",
                np.asarray([c.reference or c.path for c in checkpoints], dtype=object),
            ),
            "reference_hash": ("checkpoint", np.asarray(reference_hashes, dtype=object)),
            "objective": (
                "objective",
                np.asarray([label for label, _ in objectives], dtype=object),
            ),
            "lam": (
                "objective",
                np.asarray([np.nan if lam is None else lam for _, lam in objectives]),
            ),
            "layer": ("layer", np.arange(n_layers, dtype=np.int64)),
            "site": ("site", np.asarray(SITE_ORDER, dtype=object)),
            "vector": ("site", np.asarray([SITE_KIND[s] for s in SITE_ORDER], dtype=object)),
            "component": ("component", np.arange(d, dtype=np.int64)),
            "leading": ("leading", np.arange(LEADING, dtype=np.int64)),
            "cutoff": ("cutoff", np.asarray(list(settings.cutoffs), dtype=object)),
            "k": ("cutoff", ks),
            "measure": ("measure", np.asarray(MEASURES, dtype=object)),
            "segment": ("segment", np.asarray(segments, dtype=object)),
        },
        attrs=attrs,
    )


def _segments(checkpoints) -> list[tuple[str, list[int]]]:
    """The checkpoints of each phase, in order of first appearance: a trend runs within one phase."""
    out: dict[str, list[int]] = {}
    for i, checkpoint in enumerate(checkpoints):
        out.setdefault(checkpoint.phase or "checkpoints", []).append(i)
    return list(out.items())


def _trends(observed: dict, checkpoints, level: float, seed: int) -> tuple[dict, list[str]]:
    """``trend_*(segment, objective, site, measure)``: each measure against the step, per phase.

    A segment is one phase's checkpoints (pretraining and alignment steps are
    counted apart, so a trend never runs across the change of objective);
    the step where the folder names give one, else the position. Per layer
    the least-squares slope, then the EWC test over the layers' own slopes
    (:func:`robustness.mechanism.trend.trend_test`). NaN with fewer than 3
    checkpoints in the segment. ``leading_share`` and ``prediction_ratio``
    at their first entry (the top eigenvalue, the first cutoff).
    """
    segments = _segments(checkpoints)
    sample = observed["entropy_rank"]
    shape = (len(segments), sample.shape[1], sample.shape[3], len(MEASURES))
    names = ("slope", "slope_ci_low", "slope_ci_high", "p_value", "spearman")
    out = {name: np.full(shape, np.nan) for name in names}
    rng = np.random.default_rng(seed)
    for g, (_, members) in enumerate(segments):
        steps = np.array(
            [checkpoints[i].step if checkpoints[i].step is not None else i for i in members],
            dtype=np.float64,
        )
        if len(members) < 3 or len(set(steps)) != len(members):
            continue
        for m, measure in enumerate(MEASURES):
            values = observed[measure][members]
            if values.ndim == 5:
                values = values[..., 0]
            for o in range(shape[1]):
                for s in range(shape[2]):
                    result = trend_test(
                        values[:, o, :, s], steps, confidence_level=level, rng=rng, n_resamples=999
                    )
                    for name in names:
                        out[name][g, o, s, m] = getattr(result, name)
    dims = ("segment", "objective", "site", "measure")
    notes = {
        "long_name": "along one phase's checkpoints, per step; NaN with fewer than 3 checkpoints"
    }
    return {f"trend_{name}": (dims, values, notes) for name, values in out.items()}, [
        label for label, _ in segments
    ]
