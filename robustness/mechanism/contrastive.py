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
from dataclasses import asdict, replace
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

__all__ = ["ContrastiveSettings", "contrastive_dataset", "train_variants"]


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


def contrastive_dataset(
    base_id: str,
    variants: list[str],
    settings: ContrastiveSettings,
    config: SweepConfig,
    corpus: Corpus,
    *,
    read=DEFAULT_READ,
    write=DEFAULT_WRITE,
    read_construction: str = "act_cov",
    write_construction: str = "unembed",
    gradient_ids: np.ndarray | None = None,
    cache_root=None,
    device: str = "cpu",
    progress: bool = True,
) -> xr.Dataset:
    """Read/write RSF of each variant and the δ_t effective rank of each ``L_λ``, against λ.

    RSF: one sweep pair (base, variant) per λ on the probe `corpus`. Gradients:
    ``L_λ`` on the base (its own DPO reference: the gradient that starts each
    variant's training) on preference pairs from `gradient_ids` (windows of
    prompt + continuation; default the probe corpus' sequences). Trend tests
    use layers as blocks (for δ_t: layer × write site).
    """
    lams = np.asarray(settings.lams, dtype=np.float64)
    for construction in (read_construction, write_construction):
        if construction not in config.constructions:
            raise ValueError(
                f"the contrastive summary needs construction {construction!r} in the sweep"
            )
    labels = [f"lam={lam:g}" for lam in settings.lams]
    config = replace(
        config,
        pairs=tuple(PairSpec(label, base_id, v) for label, v in zip(labels, variants, strict=True)),
    )
    sweep = sweep_dataset(config, corpus, cache_root=cache_root, progress=progress).rename(
        pair="lam_label"
    )
    rsf = sweep["rsf"]
    summary = pathway_summary(
        rsf, read=read, write=write, confidence_level=settings.confidence_level
    )

    # δ_t of each L_λ on the base, the same pairs and chunks for every λ.
    base = load_model(base_id, device=device)
    ids = corpus.ids if gradient_ids is None else np.asarray(gradient_ids)
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
    grad = []
    for lam, label in zip(settings.lams, labels, strict=True):
        stats = measure_objective(
            base, ids, lam=float(lam), pairs=pairs, beta=settings.beta, chunks=chunks,
            progress=progress, description=f"gradients ({label})",
        )  # fmt: skip
        grad.append(
            summarise_statistics(stats, n_layers=dims.n_layers, basis=basis, ks=ks, weights=weights)
        )
    write_sites = [SITE_ORDER.index("o_out"), SITE_ORDER.index("down_out")]
    level = settings.confidence_level
    data_vars = {
        "rsf": rsf,
        "k": sweep["k"],
        "delta_fro": sweep["delta_fro"],
        # For levels against the Haar reference and the excess over the mechanism (rsf claims).
        "gram_purity": sweep["gram_purity"],
        "gram_spectrum": sweep["gram_spectrum"],
        "mechanical_reference": sweep["mechanical_reference"],
    }
    rng = np.random.default_rng(settings.seed)
    trend_rows = {}

    def add_trend(name, per_block):
        result = trend_test(
            per_block, lams, n_resamples=settings.n_resamples, confidence_level=level, rng=rng
        )
        trend_rows[name] = result

    headline = {
        "read_rsf": summary["read_layer"].sel(construction=read_construction),
        "write_rsf": summary["write_layer"].sel(construction=write_construction),
    }
    for name, value in summary.items():
        if name in ("read", "write", "asymmetry", "asymmetry_ci_low", "asymmetry_ci_high"):
            data_vars[f"{name}_rsf" if name in ("read", "write") else name] = value
    # The paper's contrast: read against activations, write against the prediction subspace.
    paper_layer = headline["read_rsf"] - headline["write_rsf"]
    data_vars["paper_read_rsf"] = headline["read_rsf"].mean("layer")
    data_vars["paper_write_rsf"] = headline["write_rsf"].mean("layer")
    data_vars["paper_asymmetry"] = paper_layer.mean("layer")
    bounds = layer_interval(paper_layer, confidence_level=level)
    for ci_name in ("ci_low", "ci_high"):
        data_vars[f"paper_asymmetry_{ci_name}"] = bounds[ci_name]
    cutoffs = [str(c) for c in sweep.cutoff.values]
    normalisations = [str(n) for n in sweep.normalisation.values]
    for quantity, layer_values in (
        ("read_rsf", headline["read_rsf"]),
        ("write_rsf", headline["write_rsf"]),
        ("asymmetry", paper_layer),
    ):
        for c in cutoffs:
            for n in normalisations:
                block = (
                    layer_values.sel(cutoff=c, normalisation=n)
                    .transpose("lam_label", "layer")
                    .values
                )
                add_trend((quantity, c, n), block)
    for measure in ("entropy_rank", "participation_ratio"):
        per = np.stack([g[measure][:, write_sites] for g in grad])  # [lam, layer, 2]
        data_vars[f"delta_{measure}"] = (("lam_label", "layer", "write_site"), per)
        data_vars[f"delta_mean_{measure}"] = (("lam_label",), per.mean(axis=(1, 2)))
        if weights is not None:
            boot = np.stack(
                [g[f"{measure}_boot"][:, :, write_sites] for g in grad], axis=1
            )  # [B, lam, L, 2]
            low, high = percentile_interval(boot.mean(axis=(2, 3)), level)
            data_vars[f"delta_mean_{measure}_ci_low"] = (("lam_label",), low)
            data_vars[f"delta_mean_{measure}_ci_high"] = (("lam_label",), high)
        add_trend((f"delta_{measure}", "", ""), per.mean(axis=2))  # one block per layer
    ratio = (
        np.stack([g["prediction_fraction"][:, write_sites, 0] for g in grad]) * dims.d_model / ks[0]
    )
    data_vars["delta_prediction_ratio"] = (("lam_label", "layer", "write_site"), ratio)
    add_trend(("delta_prediction_ratio", "", ""), ratio.mean(axis=2))

    names = [f"{q}" if not c else f"{q}[{c},{n}]" for (q, c, n) in trend_rows]
    for field in (
        "slope",
        "slope_ci_low",
        "slope_ci_high",
        "p_value",
        "p_permutation",
        "spearman",
        "spearman_p",
        "page_p",
        "n_blocks",
    ):
        data_vars[f"trend_{field}"] = (
            ("trend",),
            np.asarray([getattr(r, field) for r in trend_rows.values()], dtype=np.float64),
        )
    data_vars["trend_exact"] = (
        ("trend",),
        np.asarray([r.exact for r in trend_rows.values()], dtype=np.int8),
    )
    ds = xr.Dataset(data_vars)
    ds = ds.assign_coords(
        lam=("lam_label", lams),
        variant_id=("lam_label", np.asarray(variants, dtype=object)),
        write_site=("write_site", np.asarray(["o_out", "down_out"], dtype=object)),
        trend=("trend", np.asarray(names, dtype=object)),
        trend_quantity=("trend", np.asarray([q for (q, _, _) in trend_rows], dtype=object)),
    )
    ds["variant_hash"] = (
        "lam_label",
        np.asarray([str(h) for h in sweep["aligned_hash"].values], dtype=object),
    )
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
        base_id=base_id,
        d_model=int(dims.d_model),
        base_hash=str(sweep["base_hash"].values[0]),
        config=config.to_toml(),
        read_set=",".join(read),
        write_set=",".join(write),
        read_construction=read_construction,
        write_construction=write_construction,
        confidence_level=level,
        trend_test="fixed-effects slope against λ (the mean of the layers' own slopes); p_value and "
        "slope interval: EWC t-test over layers (dependence-robust); p_permutation: levels permuted "
        "within layers (independent layers); Spearman's ρ of layer means; Page's L test",
        gradient_objective="L_λ on the base model, its own DPO reference, pairs from the probe corpus",
        bootstrap_replicates=int(settings.gradient_replicates),
    )
    ds.attrs = attrs
    return ds
