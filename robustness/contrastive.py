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
import itertools
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats as scipy_stats
from tqdm.auto import tqdm

import probes

from .cli import cache_root_from_args, parse_numbers, split_list
from .config import PairSpec, SweepConfig
from .corpus import Corpus
from .experiments import (
    DEFAULT_READ,
    DEFAULT_WRITE,
    demo_checkpoints,
    demo_token_windows,
    evenly_spaced,
    experiment_config,
    layer_interval,
    load_probe_corpus,
    pathway_summary,
)
from .gradients import (
    bootstrap_weights,
    load_model,
    measure_objective,
    percentile_interval,
    provenance_attrs,
    sequence_chunks,
    summarise_statistics,
)

__all__ = [
    "ContrastiveSettings",
    "TrendTest",
    "contrastive_dataset",
    "contrastive_lines",
    "run_contrastive_command",
    "train_variants",
    "trend_test",
]

EXACT_LIMIT = 65536


@dataclass(frozen=True)
class ContrastiveSettings:
    """Training and measurement settings of the graded-objective control."""

    lams: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    steps: int = 60
    lr: float = 1e-3
    batch_size: int = 16
    beta: float = 0.1
    prompt_len: int | None = None
    seed: int = 0
    gradient_replicates: int = 200
    confidence_level: float = 0.95
    n_permutations: int = 9999

    def __post_init__(self):
        if len(self.lams) < 3 or len(set(self.lams)) != len(self.lams):
            raise ValueError(f"--lams needs at least 3 distinct values, got {list(self.lams)}")
        if any(not 0.0 <= lam <= 1.0 for lam in self.lams):
            raise ValueError(f"every λ must lie in [0, 1], got {list(self.lams)}")
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.beta <= 0:
            raise ValueError("`steps`, `lr`, `batch_size` and `beta` must be positive")


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
    from .corpus import load_tokenizer
    from .training import align, preference_pairs

    base = load_model(base_id, device=device)
    base_hash = probes.weights_hash(base)
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
            import shutil

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
    from .dataset import build_dataset
    from .engine import run_sweep
    from .training import preference_pairs

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
    results = run_sweep(config, corpus, cache_root=cache_root, progress=progress)
    sweep = build_dataset(results, config, corpus).rename(pair="lam_label")
    rsf = sweep["rsf"]
    summary = pathway_summary(
        rsf, read=read, write=write, confidence_level=settings.confidence_level, seed=settings.seed
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
    basis = probes.unembedding_subspaces(probes.unembedding(base))["unembed"].basis
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
    write_sites = [2, 3]  # o_out, down_out in robustness.gradients.SITE_ORDER
    level = settings.confidence_level
    data_vars = {"rsf": rsf, "k": sweep["k"], "delta_fro": sweep["delta_fro"]}
    rng = np.random.default_rng(settings.seed)
    trend_rows = {}

    def add_trend(name, per_block):
        result = trend_test(
            per_block, lams, n_permutations=settings.n_permutations, confidence_level=level, rng=rng
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
    for ci_name, value in layer_interval(paper_layer, level, settings.seed).items():
        data_vars[f"paper_asymmetry_{ci_name}"] = value
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
        add_trend((f"delta_{measure}", "", ""), per.reshape(len(lams), -1))
    ratio = (
        np.stack([g["prediction_fraction"][:, write_sites, 0] for g in grad]) * dims.d_model / ks[0]
    )
    data_vars["delta_prediction_ratio"] = (("lam_label", "layer", "write_site"), ratio)
    add_trend(("delta_prediction_ratio", "", ""), ratio.reshape(len(lams), -1))

    names = [f"{q}" if not c else f"{q}[{c},{n}]" for (q, c, n) in trend_rows]
    for field in (
        "slope",
        "slope_ci_low",
        "slope_ci_high",
        "p_value",
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
        corpus=corpus,
        seed=settings.seed,
        settings_json=json.dumps(asdict(settings), sort_keys=True),
    )
    attrs.update(
        title="graded contrastive objective: L_λ = (1 − λ)·CE(chosen) + λ·DPO",
        base_id=base_id,
        base_hash=str(sweep["base_hash"].values[0]),
        config=config.to_toml(),
        read_set=",".join(read),
        write_set=",".join(write),
        read_construction=read_construction,
        write_construction=write_construction,
        confidence_level=level,
        trend_test="fixed-effects slope against λ, levels permuted within blocks (layers); "
        "Spearman's ρ of layer means; Page's L test",
        gradient_objective="L_λ on the base model, its own DPO reference, pairs from the probe corpus",
        bootstrap_replicates=int(settings.gradient_replicates),
    )
    ds.attrs = attrs
    return ds


# ---------------------------------------------------------------------------- trend test


@dataclass(frozen=True)
class TrendTest:
    """A monotone trend of ``values [level, block]`` in the ordered `levels`.

    ``slope``: least-squares slope with a fixed effect per block,
    ``Σ_i (x_i − x̄) Σ_b (y_ib − ȳ_b) / (B Σ_i (x_i − x̄)²)``; ``p_value``: the
    levels permuted independently within each block (exact when every
    arrangement can be enumerated, else Monte Carlo ``(1 + b)/(1 + N)``),
    two-sided on ``|slope|``; ``slope_ci_*``: percentile cluster bootstrap over
    blocks; ``spearman``/``spearman_p``: Spearman's ρ of the block means
    against the levels (scipy); ``page_p``: Page's L test for ordered
    alternatives (scipy.stats.page_trend_test), two-sided by doubling the
    smaller one-sided p.
    """

    slope: float
    slope_ci_low: float
    slope_ci_high: float
    p_value: float
    exact: bool
    spearman: float
    spearman_p: float
    page_p: float
    n_blocks: int


def _slopes(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Fixed-effects slope for ``values [..., level, block]``."""
    xc = x - x.mean()
    centred = values - values.mean(axis=-2, keepdims=True)
    return np.einsum("i,...ib->...", xc, centred) / (values.shape[-1] * np.sum(xc**2))


def trend_test(
    values,
    levels,
    *,
    n_permutations: int = 9999,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    rng: np.random.Generator,
) -> TrendTest:
    """Test for a monotone trend of ``values [level, block]`` across ordered `levels`.

    Blocks with a NaN are dropped. See :class:`TrendTest` for the statistics.
    """
    values = np.asarray(values, dtype=np.float64)
    x = np.asarray(levels, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != x.size:
        raise ValueError(
            f"`values` must be [level, block] with {x.size} levels, got {values.shape}"
        )
    if x.size < 3 or np.ptp(x) == 0:
        raise ValueError("a trend test needs at least 3 distinct levels")
    values = values[:, np.isfinite(values).all(axis=0)]
    n_levels, n_blocks = values.shape
    nan = TrendTest(
        math.nan, math.nan, math.nan, math.nan, False, math.nan, math.nan, math.nan, n_blocks
    )
    if n_blocks == 0:
        return nan
    slope = float(_slopes(values, x))
    # Within-block permutations; the statistic is linear, so each block contributes separately.
    perms = np.array(list(itertools.permutations(range(n_levels))))
    xc = x - x.mean()
    centred = values - values.mean(axis=0)
    per_block = np.einsum("pi,ib->pb", xc[perms], centred) / (n_blocks * np.sum(xc**2))  # [P, B]
    exact = len(perms) ** n_blocks <= EXACT_LIMIT
    tolerance = 1e-12 * max(1.0, abs(slope))
    if exact:
        grid = np.array(list(itertools.product(range(len(perms)), repeat=n_blocks)))
        null = per_block[grid, np.arange(n_blocks)].sum(axis=1)
        p_value = float(np.mean(np.abs(null) >= abs(slope) - tolerance))
    else:
        choice = rng.integers(0, len(perms), size=(n_permutations, n_blocks))
        null = per_block[choice, np.arange(n_blocks)].sum(axis=1)
        p_value = float((1 + np.sum(np.abs(null) >= abs(slope) - tolerance)) / (1 + n_permutations))
    rows = rng.integers(0, n_blocks, size=(n_resamples, n_blocks))
    boot = _slopes(np.moveaxis(values[:, rows], 1, 0), x)  # [R]
    low, high = percentile_interval(boot, confidence_level)
    means = values.mean(axis=1)
    if np.ptp(means) == 0:
        rho, rho_p = math.nan, math.nan
    else:
        result = scipy_stats.spearmanr(x, means)
        rho, rho_p = float(result.statistic), float(result.pvalue)
    page_p = math.nan
    if n_blocks >= 2:
        order = np.argsort(x)
        data = values[order].T  # [block, level], levels ascending
        increasing = scipy_stats.page_trend_test(data, method="auto").pvalue
        decreasing = scipy_stats.page_trend_test(data[:, ::-1], method="auto").pvalue
        page_p = float(min(1.0, 2 * min(increasing, decreasing)))
    return TrendTest(slope, float(low), float(high), p_value, exact, rho, rho_p, page_p, n_blocks)


# ---------------------------------------------------------------------------- command


def run_contrastive_command(args) -> int:
    from .cache import default_cache_dir
    from .config import CorpusSpec
    from .corpus import load_corpus
    from .dataset import write_dataset
    from .engine import resolve_device
    from .files import check_writable

    out = check_writable(args.out)
    if bool(args.base) == bool(args.demo):
        raise ValueError("rsf experiment contrastive needs one of --base M or --demo")
    lams = parse_numbers(args.lams, "--lams")
    defaults = ContrastiveSettings()
    demo = None
    if args.demo:
        demo = demo_checkpoints(cache_root=cache_root_from_args(args), progress=not args.quiet)
        recipe = demo.manifest["settings"]
        defaults = replace(
            defaults,
            steps=int(recipe["align_steps"]),
            lr=float(recipe["align_lr"]),
            batch_size=int(recipe["align_batch"]),
            beta=float(recipe["beta"]),
            prompt_len=int(recipe["prompt_len"]),
        )
    settings = ContrastiveSettings(
        lams=lams,
        steps=args.steps if args.steps is not None else defaults.steps,
        lr=args.lr if args.lr is not None else defaults.lr,
        batch_size=args.train_batch if args.train_batch is not None else defaults.batch_size,
        beta=args.beta if args.beta is not None else defaults.beta,
        prompt_len=args.prompt_len if args.prompt_len is not None else defaults.prompt_len,
        seed=args.seed,
        gradient_replicates=args.gradient_bootstrap,
    )
    base_id = demo.base if demo else args.base
    config = experiment_config(args, [PairSpec("contrastive", base_id, base_id)])
    if demo:
        pair_len = int(recipe["prompt_len"]) + int(recipe["continuation_len"])
        train_ids = demo_token_windows(demo, held_out=False, length=pair_len)
    else:
        pair_len = 2 * (settings.prompt_len or 32)
        spec = CorpusSpec(
            paths=split_list(args.train_corpus) or (), tokens=args.train_tokens, seq_len=pair_len
        )
        train_ids = load_corpus(spec, tokenizer_source=base_id).ids
    if len(train_ids) < 2:
        raise ValueError("the training text gives fewer than 2 preference pairs")
    corpus = load_probe_corpus(config, base_id)
    variants_dir = args.variants_dir or (
        Path(cache_root_from_args(args) or default_cache_dir()) / "contrastive"
    )
    device = resolve_device(args.device or "auto")
    variants = train_variants(
        base_id,
        train_ids,
        settings,
        variants_dir=variants_dir,
        device=device,
        progress=not args.quiet,
    )
    gradient_ids = train_ids[evenly_spaced(len(train_ids), args.gradient_pairs)]
    ds = contrastive_dataset(
        base_id,
        variants,
        settings,
        config,
        corpus,
        read=split_list(args.read),
        write=split_list(args.write),
        gradient_ids=gradient_ids,
        cache_root=cache_root_from_args(args),
        device=device,
        progress=not args.quiet,
    )
    ds.attrs["base_id"] = base_id
    ds.attrs["training_pairs"] = int(len(train_ids))
    write_dataset(ds, out)
    print("\n".join(contrastive_lines(ds)))
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def contrastive_lines(ds: xr.Dataset) -> list[str]:
    spec = {"cutoff": ds.cutoff.values[0], "normalisation": ds.normalisation.values[0]}
    lines = [
        f"λ against read RSF ({ds.attrs['read_construction']}), write RSF "
        f"({ds.attrs['write_construction']}) [{spec['cutoff']}, {spec['normalisation']}, log2 for ratios] "
        "and the δ_t entropy rank of L_λ at the write sites:"
    ]
    has_ci = "delta_mean_entropy_rank_ci_low" in ds
    for label in ds.lam_label.values:
        cell = ds.sel(lam_label=label)
        ci = (
            f" [{float(cell.delta_mean_entropy_rank_ci_low):.2f}, {float(cell.delta_mean_entropy_rank_ci_high):.2f}]"
            if has_ci
            else ""
        )
        lines.append(
            f"  λ = {float(cell.lam):<5g} read {float(cell.paper_read_rsf.sel(**spec)):+.3f}  "
            f"write {float(cell.paper_write_rsf.sel(**spec)):+.3f}  "
            f"asymmetry {float(cell.paper_asymmetry.sel(**spec)):+.3f}  "
            f"δ entropy rank {float(cell.delta_mean_entropy_rank):.2f}{ci}"
        )
    lines.append(
        "trend against λ (slope per unit λ; within-layer permutation p; Spearman ρ of layer means):"
    )
    wanted = [
        f"{q}[{spec['cutoff']},{spec['normalisation']}]"
        for q in ("read_rsf", "write_rsf", "asymmetry")
    ]
    wanted += ["delta_entropy_rank", "delta_participation_ratio", "delta_prediction_ratio"]
    for name in wanted:
        if name not in ds.trend.values:
            continue
        row = ds.sel(trend=name)
        lines.append(
            f"  {name:34s} slope {float(row.trend_slope):+.4f} "
            f"[{float(row.trend_slope_ci_low):+.4f}, {float(row.trend_slope_ci_high):+.4f}]  "
            f"p = {float(row.trend_p_value):.3g}  ρ = {float(row.trend_spearman):+.2f}"
        )
    return lines
