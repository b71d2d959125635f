"""`rsf gradients`: how anisotropic are the gradients that build a weight delta?

An update of a matrix is a sum of outer products ``Σ_t δ_t a_tᵀ``. The paper
explains its read/write asymmetry by where that sum is anisotropic: read
matrices see their input ``a_t`` (the residual stream, strongly anisotropic),
write matrices their output gradient ``δ_t`` (the residual-stream gradient).
This module measures both for a model, a corpus and an objective
(:mod:`probes.gradients` does the hooks and the streaming sums):

- covariance spectra at the read sites (``attn_in``, ``mlp_in``: ``a_t``) and
  the write sites (``o_out``, ``down_out``: ``δ_t``);
- effective ranks: participation ratio ``(Σλ)²/Σλ²`` and entropy effective
  rank ``exp H(λ/Σλ)``;
- the fraction of the vectors' energy (uncentred second moment, the quantity a
  delta's residual-side Gram accumulates) in the top-k prediction subspace
  (the unembedding's right singular vectors), and its ratio to ``k/d``;
- percentile bootstrap intervals over chunks of consecutive sequences, by
  reweighting per-chunk sums (as the sweep's sequence bootstrap does). Every
  objective is measured on the same sequences and resampled with the same
  chunk weights, so differences between objectives get paired intervals.

Objectives (``--objective``):

``ce``
    next-token cross-entropy on the corpus sequences, every position;
``dpo``
    DPO (:func:`robustness.preferences.dpo_loss`) on preference pairs made from
    the same sequences (prompt: the first ``prompt_len`` tokens; chosen: the
    true rest; rejected: a corrupted one);
``lam=x`` (``mixed`` takes ``x`` from ``--lam``)
    the graded objective ``(1 − λ)·CE(chosen) + λ·DPO`` on those pairs.

Losses are scaled to a sum over sequences (or pairs), so every batch's
``δ_t`` is on the same scale. The DPO reference defaults to the model itself
(the gradient at the start of alignment, where the margin is zero).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import xarray as xr

import probes

from .corpus import Corpus
from .layers import layer_test
from .preferences import objective_loss, preference_pairs
from .provenance import provenance_attrs
from .resampling import bootstrap_weights, percentile_interval, sequence_chunks
from .specification import canonical_cutoffs

__all__ = [
    "SITE_ORDER",
    "GradientSettings",
    "gradient_dataset",
    "measure_objective",
    "parse_objectives",
    "summarise_statistics",
]

OBJECTIVES = ("ce", "dpo", "mixed")
SITE_ORDER = ("attn_in", "mlp_in", "o_out", "down_out")
SITE_KIND = {
    "attn_in": "activation",
    "mlp_in": "activation",
    "o_out": "gradient",
    "down_out": "gradient",
}
PREDICTION_CONSTRUCTIONS = ("unembed", "unembed_centered", "unembed_folded")


def parse_objectives(names, lams=(0.5,)) -> list[tuple[str, float | None]]:
    """``[(label, λ)]``: ``ce`` → ``("ce", None)``, ``dpo`` → ``("dpo", 1.0)``,
    ``mixed`` → one ``("lam=x", x)`` per x in `lams`, ``lam=x`` → ``("lam=x", x)``."""
    out: list[tuple[str, float | None]] = []
    for name in names:
        if name == "ce":
            out.append(("ce", None))
        elif name == "dpo":
            out.append(("dpo", 1.0))
        elif name == "mixed":
            if not lams:
                raise ValueError("objective `mixed` needs --lam values in [0, 1]")
            out.extend((f"lam={lam:g}", float(lam)) for lam in lams)
        elif name.startswith("lam="):
            try:
                lam = float(name[4:])
            except ValueError:
                raise ValueError(f"objective {name!r}: λ must be a number, e.g. lam=0.5") from None
            out.append((f"lam={lam:g}", lam))
        else:
            raise ValueError(
                f"unknown objective {name!r}: valid are {', '.join(OBJECTIVES)} or lam=x"
            )
    labels = [label for label, _ in out]
    if not out:
        raise ValueError(f"no objective given: choose from {', '.join(OBJECTIVES)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"repeated objective in {labels}")
    for label, lam in out:
        if lam is not None and not 0.0 <= lam <= 1.0:
            raise ValueError(f"objective {label!r}: λ must lie in [0, 1]")
    return out


@dataclass(frozen=True)
class GradientSettings:
    """Everything that changes the numbers of `rsf gradients` (written to the dataset's attrs)."""

    objectives: tuple[str, ...] = ("ce", "dpo")
    lams: tuple[float, ...] = (0.5,)
    beta: float = 0.1
    prompt_len: int | None = None  # default: half the sequence
    batch_size: int = 8
    replicates: int = 200
    seed: int = 0
    cutoffs: tuple[str, ...] = ("k=8", "frac=0.05")
    prediction: str = "unembed"
    confidence_level: float = 0.95

    def __post_init__(self):
        parse_objectives(self.objectives, self.lams)
        if self.beta <= 0:
            raise ValueError(f"`beta` must be positive, got {self.beta}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be positive, got {self.batch_size}")
        if self.replicates < 0:
            raise ValueError(f"`replicates` must be non-negative, got {self.replicates}")
        if not 0 < self.confidence_level < 1:
            raise ValueError(f"`confidence_level` must lie in (0, 1), got {self.confidence_level}")
        if self.prediction not in PREDICTION_CONSTRUCTIONS:
            raise ValueError(
                f"unknown prediction subspace {self.prediction!r}: valid are "
                f"{', '.join(PREDICTION_CONSTRUCTIONS)}"
            )
        object.__setattr__(self, "cutoffs", canonical_cutoffs(self.cutoffs))
        for label in self.cutoffs:
            if probes.parse_cutoff(label).rule not in ("k", "frac"):
                raise ValueError(
                    f"cutoff {label!r}: the prediction fraction takes fixed cutoffs (k=…, frac=…)"
                )

    def labelled_objectives(self) -> list[tuple[str, float | None]]:
        return parse_objectives(self.objectives, self.lams)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _batches(n: int, chunks, batch_size: int) -> tuple[list[slice], list[int]]:
    """Batches of at most `batch_size` that never straddle a chunk, and each one's chunk."""
    batches, chunk_of = [], []
    for c, (lo, hi) in enumerate(chunks):
        for start in range(lo, hi, batch_size):
            batches.append(slice(start, min(start + batch_size, hi)))
            chunk_of.append(c)
    return batches, chunk_of


def measure_objective(
    model,
    ids: np.ndarray,
    *,
    lam: float | None,
    pairs=None,
    reference=None,
    beta: float = 0.1,
    batch_size: int = 8,
    chunks=None,
    progress: bool = False,
    description: str = "gradients",
) -> probes.GradientStatistics:
    """Gradient and input statistics of one objective on `model`.

    ``lam=None`` is next-token cross-entropy on `ids` ``[n_seq, seq_len]``;
    otherwise ``L_λ`` on `pairs` (one pair per sequence, so `chunks` index
    both), with `reference` (default `model` itself) for the DPO term.
    """
    device = next(model.parameters()).device
    n = len(ids) if lam is None else len(pairs)
    chunks = chunks if chunks is not None else sequence_chunks(n)
    slices, chunk_of = _batches(n, chunks, batch_size)
    if lam is None:
        data = torch.as_tensor(np.asarray(ids), dtype=torch.long)

        def loss_fn(policy, index):
            batch = data[index].to(device)
            # The mean over tokens times the batch's sequences: every sequence counts alike.
            return policy(input_ids=batch, labels=batch, use_cache=False).loss * batch.shape[0]

    else:
        tensors = [
            torch.as_tensor(array, dtype=torch.long)
            for array in (pairs.prompt, pairs.chosen, pairs.rejected)
        ]
        ref = model if reference is None else reference

        def loss_fn(policy, index):
            prompt, chosen, rejected = (t[index].to(device) for t in tensors)
            loss = objective_loss(policy, ref, prompt, chosen, rejected, lam=lam, beta=beta)
            return loss * prompt.shape[0]

    return probes.collect_gradient_statistics(
        model,
        slices,
        loss_fn,
        sites=SITE_ORDER,
        chunk_of=chunk_of,
        progress=progress,
        description=description,
    )


def _site_summary(site: probes.SiteStatistics, basis: np.ndarray, ks: np.ndarray):
    """Covariance spectrum, effective ranks and prediction-subspace energy fractions."""
    covariance = site.covariance()
    spectrum = np.clip(np.linalg.eigvalsh(0.5 * (covariance + covariance.T))[::-1], 0.0, None)
    pr, er = probes.effective_ranks(spectrum)
    fraction = probes.subspace_energy_fraction(site.second_moment(), basis, ks)
    return spectrum, pr, er, fraction


def _ranks(spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Participation ratio and entropy effective rank of each row of ``spectra [B, d]``.

    The row-wise forms of :func:`probes.participation_ratio` and
    :func:`probes.entropy_effective_rank` (same definitions; NaN for a zero row).
    """
    lam = np.clip(spectra, 0.0, None)
    total = lam.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pr = total**2 / np.sum(lam**2, axis=1)
        p = lam / total[:, None]
        entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    er = np.where(total > 0, np.exp(entropy), np.nan)
    return np.where(total > 0, pr, np.nan), er


def _replicate_summaries(chunks: probes.ChunkStatistics, weights, basis, ks):
    """Effective ranks and prediction fractions for every bootstrap replicate at once.

    Replicate ``b`` counts chunk ``c`` ``weights[b, c]`` times; the reweighted
    sums, covariances and eigenvalues are formed for all replicates together.
    """
    d = chunks.d
    w = np.asarray(weights, dtype=np.float64)
    packed = w @ chunks.sum_xx_packed.astype(np.float64)  # [B, d(d+1)/2]
    rows, cols = np.triu_indices(d)
    sum_xx = np.empty((len(w), d * d))
    sum_xx[:, rows * d + cols] = packed  # flat positions: one contiguous scatter per triangle
    sum_xx[:, cols * d + rows] = packed
    sum_xx = sum_xx.reshape(len(w), d, d)
    n = w @ chunks.n.astype(np.float64)
    mean = (w @ chunks.sum_x) / n[:, None]
    second = sum_xx / n[:, None, None]
    covariance = second - mean[:, :, None] * mean[:, None, :]
    spectra = np.clip(np.linalg.eigvalsh(covariance)[:, ::-1], 0.0, None)
    pr, er = _ranks(spectra)
    width = int(ks.max())
    top = basis[:, :width]
    energy = np.einsum("dj,bdj->bj", top, second @ top)
    trace = np.trace(second, axis1=1, axis2=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.cumsum(energy, axis=1)[:, ks - 1] / trace[:, None]
    return pr, er, np.clip(fraction, 0.0, 1.0)


def summarise_statistics(
    stats: probes.GradientStatistics,
    *,
    n_layers: int,
    basis: np.ndarray,
    ks: np.ndarray,
    weights: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Arrays ``[layer, site, …]`` (and ``[replicate, layer, site, …]`` with `weights`)."""
    d = basis.shape[0]
    n_sites = len(SITE_ORDER)
    out = {
        "spectrum": np.full((n_layers, n_sites, d), np.nan),
        "participation_ratio": np.full((n_layers, n_sites), np.nan),
        "entropy_rank": np.full((n_layers, n_sites), np.nan),
        "prediction_fraction": np.full((n_layers, n_sites, len(ks)), np.nan),
        "n": np.zeros((n_layers, n_sites), dtype=np.int64),
    }
    n_boot = 0 if weights is None else len(weights)
    if n_boot:
        out["participation_ratio_boot"] = np.full((n_boot, n_layers, n_sites), np.nan)
        out["entropy_rank_boot"] = np.full((n_boot, n_layers, n_sites), np.nan)
        out["prediction_fraction_boot"] = np.full((n_boot, n_layers, n_sites, len(ks)), np.nan)
    for (layer, site), site_stats in stats.sites.items():
        s = SITE_ORDER.index(site)
        spectrum, pr, er, fraction = _site_summary(site_stats, basis, ks)
        out["spectrum"][layer, s] = spectrum
        out["participation_ratio"][layer, s] = pr
        out["entropy_rank"][layer, s] = er
        out["prediction_fraction"][layer, s] = fraction
        out["n"][layer, s] = site_stats.n
        if n_boot:
            pr, er, fraction = _replicate_summaries(stats.chunks[(layer, site)], weights, basis, ks)
            out["participation_ratio_boot"][:, layer, s] = pr
            out["entropy_rank_boot"][:, layer, s] = er
            out["prediction_fraction_boot"][:, layer, s] = fraction
    return out


def gradient_dataset(
    model,
    corpus: Corpus,
    settings: GradientSettings = GradientSettings(),
    *,
    reference=None,
    model_id: str = "",
    reference_id: str = "",
    progress: bool = True,
) -> xr.Dataset:
    """Measure every objective of `settings` on `model` and `corpus`; the ``gradients`` dataset.

    Layout: dims ``objective, layer, site, component, cutoff`` (and
    ``replicate`` with a bootstrap); per (objective, layer, site) the
    covariance ``spectrum``, ``participation_ratio`` and ``entropy_rank``, per
    cutoff ``prediction_fraction`` and ``prediction_ratio`` (fraction over
    ``k/d``), each with ``*_ci_low``/``*_ci_high``; layer means per
    (objective, site) as ``mean_*`` with intervals, and ``contrast_*`` =
    objective − the first objective, with paired intervals.
    """
    objectives = settings.labelled_objectives()
    ids = corpus.ids
    seq_len = ids.shape[1]
    prompt_len = settings.prompt_len or seq_len // 2
    if not 1 <= prompt_len < seq_len:
        raise ValueError(f"`prompt_len` must lie in [1, {seq_len - 1}], got {prompt_len}")
    needs_pairs = any(lam is not None for _, lam in objectives)
    if needs_pairs and len(ids) < 2:
        raise ValueError("preference pairs need at least 2 sequences: raise --tokens")
    pairs = None
    if needs_pairs:
        pairs = preference_pairs(
            ids,
            prompt_len=prompt_len,
            rng=probes.construction_rng(settings.seed, "gradients", "pairs"),
        )
    dims = probes.model_dims(model)
    d, n_layers = dims.d_model, dims.n_layers
    ks = np.array([probes.resolve_cutoff(c, d=d) for c in settings.cutoffs], dtype=np.int64)
    basis = probes.prediction_subspaces(model)[settings.prediction].basis
    chunks = sequence_chunks(len(ids))
    weights = (
        bootstrap_weights(len(chunks), settings.replicates, settings.seed, "gradients")
        if settings.replicates
        else None
    )
    per_objective, losses = [], []
    for label, lam in objectives:
        stats = measure_objective(
            model,
            ids,
            lam=lam,
            pairs=pairs,
            reference=reference,
            beta=settings.beta,
            batch_size=settings.batch_size,
            chunks=chunks,
            progress=progress,
            description=f"gradients ({label})",
        )
        n_examples = len(ids) if lam is None else len(pairs)
        losses.append(stats.loss / n_examples)
        per_objective.append(
            summarise_statistics(stats, n_layers=n_layers, basis=basis, ks=ks, weights=weights)
        )
    return _assemble(
        per_objective,
        objectives,
        losses,
        ks=ks,
        d=d,
        settings=settings,
        corpus=corpus,
        provenance={
            "model_id": model_id,
            "model_hash": probes.weights_hash(model_id) if model_id else "",
            "reference_id": reference_id or model_id,
            "reference_hash": probes.weights_hash(reference_id) if reference_id else "",
            "model_type": dims.model_type,
            "d_model": d,
            "n_layers": n_layers,
            "prompt_len": prompt_len,
        },
    )


def _assemble(per_objective, objectives, losses, *, ks, d, settings, corpus, provenance):
    stack = {name: np.stack([o[name] for o in per_objective]) for name in per_objective[0]}
    ratio_scale = d / ks.astype(np.float64)
    level = settings.confidence_level
    base_dims = ("objective", "layer", "site")
    data_vars = {
        "spectrum": (
            (*base_dims, "component"),
            stack["spectrum"],
            {
                "long_name": "covariance eigenvalues, descending (a_t at read sites, δ_t at write sites)"
            },
        ),
        "participation_ratio": (
            base_dims,
            stack["participation_ratio"],
            {"long_name": "(Σλ)²/Σλ²"},
        ),
        "entropy_rank": (
            base_dims,
            stack["entropy_rank"],
            {"long_name": "entropy effective rank exp H(λ/Σλ) (Roy & Vetterli 2007)"},
        ),
        "prediction_fraction": (
            (*base_dims, "cutoff"),
            stack["prediction_fraction"],
            {"long_name": "share of energy (uncentred) in the top-k prediction subspace"},
        ),
        "prediction_ratio": (
            (*base_dims, "cutoff"),
            stack["prediction_fraction"] * ratio_scale,
            {"long_name": "prediction_fraction / (k/d): 1 = isotropic"},
        ),
        "n_vectors": (base_dims, stack["n"], {"long_name": "vectors accumulated"}),
        "loss": (
            ("objective",),
            np.asarray(losses),
            {"long_name": "mean loss per sequence or pair"},
        ),
    }
    boot = {}
    if settings.replicates:
        boot = {
            "participation_ratio": stack["participation_ratio_boot"].swapaxes(0, 1),
            "entropy_rank": stack["entropy_rank_boot"].swapaxes(0, 1),
            "prediction_ratio": stack["prediction_fraction_boot"].swapaxes(0, 1) * ratio_scale,
        }
    observed = {
        "participation_ratio": stack["participation_ratio"],
        "entropy_rank": stack["entropy_rank"],
        "prediction_ratio": stack["prediction_fraction"] * ratio_scale,
    }
    for name, values in observed.items():
        extra = ("cutoff",) if name == "prediction_ratio" else ()
        mean = values.mean(axis=1)  # over layers: [objective, site, ...]
        contrast = mean - mean[:1]
        data_vars[f"mean_{name}"] = (
            ("objective", "site", *extra),
            mean,
            {"long_name": f"layer mean of {name}"},
        )
        data_vars[f"contrast_{name}"] = (
            ("objective", "site", *extra),
            contrast,
            {"long_name": f"layer mean of {name}, minus the first objective's (paired)"},
        )
        # Over layers, dependence-robust (the EWC test of rsf stats): the layers as the units.
        for target, per_layer in (
            (f"mean_{name}", values),
            (f"contrast_{name}", values - values[:1]),
        ):
            test = layer_test(
                np.moveaxis(per_layer, 1, 0).reshape(per_layer.shape[1], -1), confidence_level=level
            )
            shape = mean.shape
            data_vars[f"{target}_layer_ci_low"] = (
                ("objective", "site", *extra),
                test.ci_low.reshape(shape),
            )
            data_vars[f"{target}_layer_ci_high"] = (
                ("objective", "site", *extra),
                test.ci_high.reshape(shape),
            )
            if target.startswith("contrast"):
                data_vars[f"{target}_layer_p"] = (
                    ("objective", "site", *extra),
                    test.p_value.reshape(shape),
                )
        if not boot:
            continue
        replicates = boot[name]  # [B, objective, layer, site, ...]
        data_vars[f"{name}_boot"] = (("replicate", *base_dims, *extra), replicates)
        for target, draws, dims in (
            (name, replicates, (*base_dims, *extra)),
            (f"mean_{name}", replicates.mean(axis=2), ("objective", "site", *extra)),
            (
                f"contrast_{name}",
                replicates.mean(axis=2) - replicates.mean(axis=2)[:, :1],
                ("objective", "site", *extra),
            ),
        ):
            low, high = percentile_interval(draws, level)
            data_vars[f"{target}_ci_low"] = (dims, low)
            data_vars[f"{target}_ci_high"] = (dims, high)
    attrs = provenance_attrs(
        "gradients",
        title="gradient anisotropy: δ_t at write sites, a_t at read sites",
        corpus=corpus,
        seed=settings.seed,
        settings=settings.to_json(),
        inputs={"model": provenance["model_hash"], "reference": provenance["reference_hash"]},
    )
    attrs.update({key: value for key, value in provenance.items()})
    attrs.update(
        confidence_level=level,
        interval="percentile bootstrap over chunks of consecutive sequences (reweighted sums): *_ci_*; "
        "over layers, the EWC t interval (dependence-robust, robustness.layers): *_layer_ci_*",
        bootstrap_replicates=int(settings.replicates),
        prediction_subspace=settings.prediction,
        beta=settings.beta,
    )
    labels = [label for label, _ in objectives]
    lams = [np.nan if lam is None else lam for _, lam in objectives]
    return xr.Dataset(
        data_vars,
        coords={
            "objective": ("objective", np.asarray(labels, dtype=object)),
            "lam": ("objective", np.asarray(lams, dtype=np.float64)),
            "layer": ("layer", np.arange(stack["spectrum"].shape[1], dtype=np.int64)),
            "site": ("site", np.asarray(SITE_ORDER, dtype=object)),
            "vector": ("site", np.asarray([SITE_KIND[s] for s in SITE_ORDER], dtype=object)),
            "component": ("component", np.arange(d, dtype=np.int64)),
            "cutoff": ("cutoff", np.asarray(list(settings.cutoffs), dtype=object)),
            "k": ("cutoff", ks),
        },
        attrs=attrs,
    )
