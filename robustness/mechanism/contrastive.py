"""`rsf experiment contrastive`: a graded objective from fine-tuning to preference alignment.

From one base, variants aligned with ``L_λ = (1 − λ)·CE(chosen) + λ·DPO`` for
several λ (same data, steps, seed; only the objective changes). Read RSF
(``act_cov``), write RSF (``unembed``), their asymmetry and the effective rank
of ``L_λ``'s gradients δ_t at the write sites, against λ, with a trend test
(:func:`trend_test`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

import probes
from robustness.io.provenance import provenance_attrs
from robustness.measure.corpus import Corpus, load_tokenizer
from robustness.measure.models import load_model
from robustness.measure.resampling import bootstrap_weights, percentile_interval, sequence_chunks
from robustness.measure.results import sweep_dataset
from robustness.mechanism.gradients import SITE_ORDER, measure_objective, summarise_statistics
from robustness.mechanism.summaries import pathway_summary
from robustness.mechanism.trend import trend_test
from robustness.settings.config import PairSpec, SweepConfig
from robustness.settings.options import ContrastiveSettings
from robustness.settings.specification import DEFAULT_READ, DEFAULT_WRITE
from robustness.stats.layers import layer_interval
from robustness.training.loops import align
from robustness.training.preferences import preference_pairs

__all__ = [
    "ContrastiveModels",
    "ContrastiveSettings",
    "Pathways",
    "contrastive_dataset",
    "train_variants",
]


def _variant_key(base_hash: str, train_hash: str, settings: ContrastiveSettings, lam: float) -> str:
    fields = {
        k: v
        for k, v in asdict(settings).items()
        if k in ("steps", "lr", "batch_size", "beta", "prompt_len", "seed")
    }
    text = json.dumps(
        {"base": base_hash, "train": train_hash, "lam": lam, **fields}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_variants(
    base_id: str,
    train_ids: np.ndarray,
    settings: ContrastiveSettings,
    *,
    variants_dir,
    device: str = "cpu",
    progress: bool = True,
) -> list[str]:
    """One variant per λ, trained from `base_id` on pairs from `train_ids`; their directories.

    Every variant starts from the same weights and sees the same pairs in the
    same order (one seed); only λ differs. A variant already saved under its
    key (base weights, data, settings, λ) is reused.
    """
    base = load_model(base_id, device=device)
    base_hash = probes.weights_hash(base_id)
    digest = hashlib.sha256(np.ascontiguousarray(train_ids, dtype=np.int64).tobytes()).hexdigest()
    prompt_len = settings.prompt_len or train_ids.shape[1] // 2
    pairs = preference_pairs(
        train_ids,
        prompt_len=prompt_len,
        rng=probes.construction_rng(settings.seed, "contrastive", "pairs"),
    )
    try:
        tokenizer = load_tokenizer(base_id)
    except ValueError:
        tokenizer = None
    root = Path(variants_dir)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for lam in tqdm(settings.lams, desc="variants", disable=not progress, leave=False):
        target = root / f"lam-{lam:g}-{_variant_key(base_hash, digest, settings, lam)}"
        if not (target / "config.json").is_file():
            policy = copy.deepcopy(base)
            reference = copy.deepcopy(base) if lam > 0 else None
            align(
                policy,
                reference,
                pairs,
                lam=lam,
                beta=settings.beta,
                steps=settings.steps,
                lr=settings.lr,
                batch_size=settings.batch_size,
                seed=settings.seed,
                progress=progress,
            )
            temporary = root / f".{target.name}.tmp"
            shutil.rmtree(temporary, ignore_errors=True)
            policy.save_pretrained(temporary)
            if tokenizer is not None:
                tokenizer.save_pretrained(temporary)
            temporary.rename(target)
        out.append(str(target))
    return out


@dataclass(frozen=True)
class ContrastiveModels:
    """The models of the graded-objective control and the text of its gradients.

    ``variants``: one model per λ of the settings, in their order (from
    :func:`train_variants`); ``gradient_ids``: windows of prompt + continuation
    the δ_t statistics are measured on (``None``: the probe corpus' sequences).
    """

    base_id: str
    variants: Sequence[str]
    gradient_ids: np.ndarray | None = None


@dataclass(frozen=True)
class Pathways:
    """The read and write sets, and the construction each pathway is measured against in the
    paper's contrast (read against activations, write against the prediction subspace)."""

    read: tuple[str, ...] = DEFAULT_READ
    write: tuple[str, ...] = DEFAULT_WRITE
    read_construction: str = "act_cov"
    write_construction: str = "unembed"


@dataclass(frozen=True)
class _ObjectiveGradients:
    """δ_t of each ``L_λ`` on the base: one :func:`summarise_statistics` row per λ, at one cutoff."""

    rows: list[dict]
    bootstrapped: bool
    d_model: int
    ks: np.ndarray


_WRITE_SITES = ("o_out", "down_out")
_TREND_FIELDS = ("slope", "slope_ci_low", "slope_ci_high", "p_value", "p_permutation", "spearman",
                 "spearman_p", "page_p", "n_blocks")  # fmt: skip


def _lam_labels(settings: ContrastiveSettings) -> list[str]:
    return [f"lam={lam:g}" for lam in settings.lams]


def contrastive_dataset(
    models: ContrastiveModels,
    settings: ContrastiveSettings,
    config: SweepConfig,
    corpus: Corpus,
    *,
    pathways: Pathways | None = None,
    cache_root=None,
    device: str = "cpu",
    progress: bool = True,
) -> xr.Dataset:
    """Read/write RSF of each variant and the δ_t effective rank of each ``L_λ``, against λ.

    RSF: one sweep pair (base, variant) per λ on the probe `corpus`. Gradients:
    ``L_λ`` on the base (its own DPO reference: the gradient that starts each
    variant's training) on preference pairs from ``models.gradient_ids``
    (windows of prompt + continuation; default the probe corpus' sequences).
    Trend tests use layers as blocks (for δ_t: layer × write site).
    """
    pathways = pathways or Pathways()
    for construction in (pathways.read_construction, pathways.write_construction):
        if construction not in config.constructions:
            raise ValueError(
                f"the contrastive summary needs construction {construction!r} in the sweep"
            )
    labels = _lam_labels(settings)
    config = replace(
        config,
        pairs=tuple(
            PairSpec(label, models.base_id, v)
            for label, v in zip(labels, models.variants, strict=True)
        ),
    )
    sweep = sweep_dataset(config, corpus, cache_root=cache_root, progress=progress).rename(
        pair="lam_label"
    )
    gradients = _objective_gradients(models, settings, corpus, device=device, progress=progress)
    data_vars, blocks = _rsf_variables(sweep, pathways, settings.confidence_level)
    delta_vars, delta_blocks = _delta_variables(gradients, settings.confidence_level)
    data_vars.update(delta_vars)
    trends = _trend_tests(blocks | delta_blocks, settings)
    data_vars.update(_trend_variables(trends))
    ds = xr.Dataset(data_vars)
    ds = ds.assign_coords(
        lam=("lam_label", np.asarray(settings.lams, dtype=np.float64)),
        variant_id=("lam_label", np.asarray(models.variants, dtype=object)),
        write_site=("write_site", np.asarray(_WRITE_SITES, dtype=object)),
        trend=("trend", np.asarray([_trend_name(*key) for key in trends], dtype=object)),
        trend_quantity=("trend", np.asarray([q for (q, _, _) in trends], dtype=object)),
    )
    ds["variant_hash"] = (
        "lam_label",
        np.asarray([str(h) for h in sweep["aligned_hash"].values], dtype=object),
    )
    ds.attrs = _contrastive_attrs(
        models, settings, config, corpus, sweep, pathways, d_model=gradients.d_model
    )
    return ds


def _objective_gradients(
    models: ContrastiveModels, settings: ContrastiveSettings, corpus: Corpus, *, device, progress
) -> _ObjectiveGradients:
    """δ_t of each ``L_λ`` on the base, its own DPO reference: the same pairs and chunks for every
    λ, with the same chunk-bootstrap weights (paired intervals across λ)."""
    base = load_model(models.base_id, device=device)
    ids = corpus.ids if models.gradient_ids is None else np.asarray(models.gradient_ids)
    prompt_len = settings.prompt_len or ids.shape[1] // 2
    pairs = preference_pairs(
        ids,
        prompt_len=prompt_len,
        rng=probes.construction_rng(settings.seed, "contrastive", "probe"),
    )
    chunks = sequence_chunks(len(pairs))
    weights = (
        bootstrap_weights(len(chunks), settings.gradient_replicates, settings.seed, "contrastive")
        if settings.gradient_replicates
        else None
    )
    dims = probes.model_dims(base)
    basis = probes.prediction_subspaces(base)["unembed"].basis
    ks = np.array([probes.resolve_cutoff("k=8", d=dims.d_model)])
    rows = []
    for lam, label in zip(settings.lams, _lam_labels(settings), strict=True):
        stats = measure_objective(
            base, ids, lam=float(lam), pairs=pairs, beta=settings.beta, chunks=chunks,
            progress=progress, description=f"gradients ({label})",
        )  # fmt: skip
        rows.append(
            summarise_statistics(stats, n_layers=dims.n_layers, basis=basis, ks=ks, weights=weights)
        )
    return _ObjectiveGradients(rows, weights is not None, dims.d_model, ks)


def _rsf_variables(sweep: xr.Dataset, pathways: Pathways, level: float) -> tuple[dict, dict]:
    """The sweep's RSF with its read/write layer means and the paper's contrast, and the
    ``[λ, layer]`` block of each contrast quantity's trend test, per cutoff and normalisation."""
    rsf = sweep["rsf"]
    summary = pathway_summary(rsf, read=pathways.read, write=pathways.write, confidence_level=level)
    data_vars = {
        "rsf": rsf,
        "k": sweep["k"],
        "delta_fro": sweep["delta_fro"],
        # For levels against the Haar reference and the excess over the mechanism (rsf claims).
        "gram_purity": sweep["gram_purity"],
        "gram_spectrum": sweep["gram_spectrum"],
        "mechanical_reference": sweep["mechanical_reference"],
    }
    for name in ("read", "write", "asymmetry", "asymmetry_ci_low", "asymmetry_ci_high"):
        data_vars[f"{name}_rsf" if name in ("read", "write") else name] = summary[name]
    # The paper's contrast: read against activations, write against the prediction subspace.
    headline = {
        "read_rsf": summary["read_layer"].sel(construction=pathways.read_construction),
        "write_rsf": summary["write_layer"].sel(construction=pathways.write_construction),
    }
    headline["asymmetry"] = headline["read_rsf"] - headline["write_rsf"]
    data_vars["paper_read_rsf"] = headline["read_rsf"].mean("layer")
    data_vars["paper_write_rsf"] = headline["write_rsf"].mean("layer")
    data_vars["paper_asymmetry"] = headline["asymmetry"].mean("layer")
    bounds = layer_interval(headline["asymmetry"], confidence_level=level)
    for ci_name in ("ci_low", "ci_high"):
        data_vars[f"paper_asymmetry_{ci_name}"] = bounds[ci_name]
    blocks = {
        (quantity, str(c), str(n)): layer_values.sel(cutoff=str(c), normalisation=str(n))
        .transpose("lam_label", "layer")
        .values
        for quantity, layer_values in headline.items()
        for c in sweep.cutoff.values
        for n in sweep.normalisation.values
    }
    return data_vars, blocks


def _delta_variables(gradients: _ObjectiveGradients, level: float) -> tuple[dict, dict]:
    """δ_t at the write sites per λ: entropy rank and participation ratio per layer and their
    means over layers and sites (with chunk-bootstrap intervals), and the prediction-subspace
    energy over k/d; with each one's ``[λ, layer]`` trend block (the mean over write sites)."""
    rows = gradients.rows
    write_sites = [SITE_ORDER.index(site) for site in _WRITE_SITES]
    data_vars, blocks = {}, {}
    for measure in ("entropy_rank", "participation_ratio"):
        per = np.stack([g[measure][:, write_sites] for g in rows])  # [lam, layer, 2]
        data_vars[f"delta_{measure}"] = (("lam_label", "layer", "write_site"), per)
        data_vars[f"delta_mean_{measure}"] = (("lam_label",), per.mean(axis=(1, 2)))
        if gradients.bootstrapped:
            boot = np.stack(
                [g[f"{measure}_boot"][:, :, write_sites] for g in rows], axis=1
            )  # [B, lam, L, 2]
            low, high = percentile_interval(boot.mean(axis=(2, 3)), level)
            data_vars[f"delta_mean_{measure}_ci_low"] = (("lam_label",), low)
            data_vars[f"delta_mean_{measure}_ci_high"] = (("lam_label",), high)
        blocks[(f"delta_{measure}", "", "")] = per.mean(axis=2)  # one block per layer
    ratio = (
        np.stack([g["prediction_fraction"][:, write_sites, 0] for g in rows])
        * gradients.d_model
        / gradients.ks[0]
    )
    data_vars["delta_prediction_ratio"] = (("lam_label", "layer", "write_site"), ratio)
    blocks[("delta_prediction_ratio", "", "")] = ratio.mean(axis=2)
    return data_vars, blocks


def _trend_tests(blocks: dict, settings: ContrastiveSettings) -> dict:
    """:func:`trend_test` of each ``[λ, block]`` array against λ, in order, from one generator."""
    lams = np.asarray(settings.lams, dtype=np.float64)
    rng = np.random.default_rng(settings.seed)
    return {
        key: trend_test(
            per_block,
            lams,
            n_resamples=settings.n_resamples,
            confidence_level=settings.confidence_level,
            rng=rng,
        )  # fmt: skip
        for key, per_block in blocks.items()
    }


def _trend_name(quantity: str, cutoff: str, normalisation: str) -> str:
    return quantity if not cutoff else f"{quantity}[{cutoff},{normalisation}]"


def _trend_variables(trends: dict) -> dict:
    """``trend_<field>(trend)`` for every field of the trend tests, and ``trend_exact``."""
    data_vars = {
        f"trend_{field}": (
            ("trend",),
            np.asarray([getattr(r, field) for r in trends.values()], dtype=np.float64),
        )
        for field in _TREND_FIELDS
    }
    data_vars["trend_exact"] = (
        ("trend",),
        np.asarray([r.exact for r in trends.values()], dtype=np.int8),
    )
    return data_vars


def _contrastive_attrs(models, settings, config, corpus, sweep, pathways, *, d_model) -> dict:
    """Provenance, the variants' and base's hashes, the sets and constructions, and the tests."""
    labels = _lam_labels(settings)
    attrs = provenance_attrs(
        "contrastive",
        title="graded contrastive objective: L_λ = (1 − λ)·CE(chosen) + λ·DPO",
        corpus=corpus,
        seed=settings.seed,
        settings=asdict(settings),
        inputs={"base": str(sweep["base_hash"].values[0])}
        | {label: str(h) for label, h in zip(labels, sweep["aligned_hash"].values, strict=True)},
    )
    attrs.update(
        base_id=models.base_id,
        d_model=int(d_model),
        base_hash=str(sweep["base_hash"].values[0]),
        config=config.to_toml(),
        read_set=",".join(pathways.read),
        write_set=",".join(pathways.write),
        read_construction=pathways.read_construction,
        write_construction=pathways.write_construction,
        confidence_level=settings.confidence_level,
        trend_test="fixed-effects slope against λ (the mean of the layers' own slopes); p_value and "
        "slope interval: EWC t-test over layers (dependence-robust); p_permutation: levels permuted "
        "within layers (independent layers); Spearman's ρ of layer means; Page's L test",
        gradient_objective="L_λ on the base model, its own DPO reference, pairs from the probe corpus",
        bootstrap_replicates=int(settings.gradient_replicates),
    )
    return attrs
