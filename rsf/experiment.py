"""``rsf experiment trajectory|contrastive|rank1``: tests of the asymmetry's mechanism."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import xarray as xr

from robustness.cache import default_cache_dir
from robustness.config import CorpusSpec, PairSpec, SweepConfig
from robustness.corpus import evenly_spaced, load_corpus
from robustness.demo import demo_checkpoints, demo_held_out_corpus, demo_token_windows
from robustness.experiments.contrastive import (
    ContrastiveSettings,
    contrastive_dataset,
    train_variants,
)
from robustness.experiments.rank1 import Rank1Settings, rank1_dataset
from robustness.experiments.summaries import EXPERIMENT_GRID
from robustness.experiments.trajectory import (
    trajectory_dataset,
    trajectory_from_toml,
    trajectory_pairs,
)
from robustness.files import check_writable
from robustness.models import check_vocabulary, load_model, prepare_corpus, resolve_device
from robustness.specification import RATIO_NORMALISATIONS

from .options import (
    add_bootstrap,
    add_cache,
    add_corpus,
    add_pathway_sets,
    add_probe_grid,
    add_run,
    cache_root,
    command_corpus,
    parse_numbers,
    pathway_sets,
    split_list,
    sweep_config,
)
from .output import publish

__all__ = ["add_parser", "contrastive_lines", "rank1_lines", "trajectory_lines"]


def _add_sweep_options(parser) -> None:
    """The sweep each experiment runs per pair: grid, pathway sets, corpus, bootstrap, run, cache."""
    add_probe_grid(
        parser,
        title="probe (a sweep per pair; defaults act_cov,unembed,random × k=8,var=0.9 × isotropic)",
    )
    add_pathway_sets(parser)
    add_corpus(parser, title="probe corpus", tokenizer_default="the first model's")
    add_bootstrap(parser, seed_default=0)
    add_run(parser, dtype=False)
    add_cache(parser)


def add_parser(commands) -> None:
    experiment = commands.add_parser(
        "experiment",
        help="tests of the mechanism: trajectory, contrastive, rank1",
        description="Experiments on the asymmetry's mechanism, each written as a netCDF dataset.",
    )
    kinds = experiment.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    trajectory = kinds.add_parser(
        "trajectory",
        help="RSF along ordered checkpoints, relative to the start and to the previous one",
    )
    source = trajectory.add_argument_group("checkpoints (one of)")
    source.add_argument("--checkpoints", help="ordered comma list of directories or hub ids")
    source.add_argument(
        "--config", help="TOML with [trajectory] checkpoints = [...] and the sweep's tables"
    )
    source.add_argument("--demo", action="store_true", help="the demo pair's saved checkpoints")
    source.add_argument(
        "--phase",
        default="align",
        choices=("align", "pretrain", "both"),
        help="demo phase (default align)",
    )
    source.add_argument("--labels", help="comma list of checkpoint labels (default: folder names)")
    trajectory.add_argument(
        "--out", default="trajectory.nc", help="output dataset (default trajectory.nc)"
    )
    _add_sweep_options(trajectory)
    trajectory.set_defaults(run=run_trajectory)

    contrastive = kinds.add_parser(
        "contrastive",
        help="variants trained with (1 − λ)·CE(chosen) + λ·DPO: RSF and δ_t rank against λ",
    )
    source = contrastive.add_argument_group("base (one of)")
    source.add_argument("--base", help="the base model: a directory or a hub id")
    source.add_argument("--demo", action="store_true", help="the demo's base, data and recipe")
    training = contrastive.add_argument_group(
        "training (with --demo, the defaults are the demo's alignment recipe)"
    )
    training.add_argument(
        "--lams", default="0,0.25,0.5,0.75,1", help="λ values (default 0,0.25,0.5,0.75,1)"
    )
    training.add_argument(
        "--steps", type=int, help="training steps per variant (default 60; --demo: the demo's)"
    )
    training.add_argument(
        "--lr", type=float, help="peak learning rate (default 1e-3; --demo: the demo's)"
    )
    training.add_argument(
        "--train-batch", type=int, help="pairs per step (default 16; --demo: the demo's)"
    )
    training.add_argument("--beta", type=float, help="DPO β (default 0.1; --demo: the demo's)")
    training.add_argument(
        "--prompt-len", type=int, help="prompt tokens of a pair (default 32; --demo: the demo's)"
    )
    training.add_argument(
        "--train-corpus", help="text/JSONL files for the pairs (default: built-in corpus)"
    )
    training.add_argument(
        "--train-tokens", type=int, default=65536, help="tokens of training text (default 65536)"
    )
    training.add_argument(
        "--variants-dir", help="where variants are saved and reused (default: the cache)"
    )
    training.add_argument(
        "--gradient-pairs",
        type=int,
        default=256,
        help="training pairs for the δ_t statistics (default 256)",
    )
    training.add_argument(
        "--gradient-bootstrap",
        type=int,
        default=200,
        help="bootstrap replicates of δ_t ranks (default 200)",
    )
    contrastive.add_argument(
        "--out", default="contrastive.nc", help="output dataset (default contrastive.nc)"
    )
    _add_sweep_options(contrastive)
    contrastive.set_defaults(run=run_contrastive)

    rank1 = kinds.add_parser(
        "rank1",
        help="rank-1 interventions along principal directions against matched controls",
    )
    rank1.add_argument(
        "--model", help="a directory or hub id (default: the demo's base, on held-out documents)"
    )
    setup = rank1.add_argument_group("interventions")
    setup.add_argument("--layer", type=int, help="layer (default: the middle one)")
    setup.add_argument("--read-matrix", default="q", help="read matrix (default q)")
    setup.add_argument("--write-matrix", default="o", help="write matrix (default o)")
    setup.add_argument("--controls", type=int, default=20, help="controls per family (default 20)")
    setup.add_argument(
        "--scale", type=float, default=0.25, help="‖ΔW‖_F = scale·‖W‖_F (default 0.25)"
    )
    setup.add_argument(
        "--neighbours",
        type=int,
        default=4,
        help="matched controls mix principal directions 2..1+N (default 4)",
    )
    setup.add_argument("--beta", type=float, default=0.1, help="DPO β of the margin (default 0.1)")
    setup.add_argument(
        "--prompt-len", type=int, help="prompt tokens of a pair (default half a sequence)"
    )
    rank1.add_argument("--out", default="rank1.nc", help="output dataset (default rank1.nc)")
    add_corpus(rank1, tokenizer_default="the model's", tokens_default=8192)
    rank1.add_argument(
        "--seed", type=int, default=0, help="seed of the controls and intervals (default 0)"
    )
    add_run(rank1, device_default="auto", dtype_default="float32", batch_default=16)
    add_cache(rank1, hidden_no_cache=True)
    rank1.set_defaults(run=run_rank1)


# ---------------------------------------------------------------------------- trajectory


def run_trajectory(args) -> int:
    out = check_writable(args.out)
    if sum([bool(args.checkpoints), bool(args.config), bool(args.demo)]) != 1:
        raise ValueError("rsf experiment trajectory needs one of --checkpoints, --config or --demo")
    labels = split_list(args.labels)
    base_config = None
    if args.checkpoints:
        checkpoints = list(split_list(args.checkpoints))
    elif args.config:
        checkpoints, config_labels, base_config = trajectory_from_toml(args.config)
        labels = labels or config_labels
    else:
        demo = demo_checkpoints(cache_root=cache_root(args), progress=not args.quiet)
        checkpoints = demo.phase(args.phase)
        if len(checkpoints) < 2:
            raise ValueError(f"the demo saved fewer than 2 checkpoints for phase {args.phase!r}")
    pairs, _ = trajectory_pairs(checkpoints, labels)
    config = _experiment_config(args, pairs, base_config)
    corpus = prepare_corpus(config, checkpoints[0])
    read, write = pathway_sets(args)
    ds = trajectory_dataset(
        checkpoints,
        config,
        corpus,
        labels=labels,
        read=read,
        write=write,
        cache_root=cache_root(args),
        progress=not args.quiet,
    )
    return publish(ds, out, trajectory_lines(ds), quiet=args.quiet)


def _experiment_config(args, pairs, base: SweepConfig | None = None) -> SweepConfig:
    """A sweep config of `pairs` from the experiment's options over `base` (or the experiment grid)."""
    config = base or SweepConfig(pairs=tuple(pairs), **EXPERIMENT_GRID)
    return sweep_config(replace(config, pairs=tuple(pairs)), args)


def _first_spec(ds: xr.Dataset) -> dict:
    """The specification a summary prints: act_cov if present, the first cutoff and normalisation."""
    construction = "act_cov" if "act_cov" in ds.construction.values else ds.construction.values[0]
    return {
        "construction": construction,
        "cutoff": ds.cutoff.values[0],
        "normalisation": ds.normalisation.values[0],
    }


def trajectory_lines(ds: xr.Dataset) -> list[str]:
    spec = _first_spec(ds)
    scale = "log2 " if spec["normalisation"] in RATIO_NORMALISATIONS else ""
    lines = [
        f"read − write asymmetry ({scale}{spec['normalisation']}, {spec['construction']}, "
        f"{spec['cutoff']}; read {ds.attrs['read_set']}, write {ds.attrs['write_set']}), "
        f"from {ds.attrs['start_label']}:"
    ]
    for reference in ds.reference.values:
        lines.append(f"  relative to the {reference} checkpoint")
        for checkpoint in ds.checkpoint.values:
            cell = ds.sel(reference=reference, checkpoint=checkpoint, **spec)
            lines.append(
                f"    {checkpoint:28s} read {float(cell.read_rsf):+.3f}  write {float(cell.write_rsf):+.3f}  "
                f"asymmetry {float(cell.asymmetry):+.3f} "
                f"[{float(cell.asymmetry_ci_low):+.3f}, {float(cell.asymmetry_ci_high):+.3f}]"
            )
    return lines


# ---------------------------------------------------------------------------- contrastive


def run_contrastive(args) -> int:
    out = check_writable(args.out)
    if bool(args.base) == bool(args.demo):
        raise ValueError("rsf experiment contrastive needs one of --base M or --demo")
    options = dict(
        lams=parse_numbers(args.lams, "--lams"),
        steps=args.steps,
        lr=args.lr,
        batch_size=args.train_batch,
        beta=args.beta,
        prompt_len=args.prompt_len,
        seed=args.seed,
        gradient_replicates=args.gradient_bootstrap,
    )
    demo = None
    if args.demo:
        demo = demo_checkpoints(cache_root=cache_root(args), progress=not args.quiet)
        recipe = demo.manifest["settings"]
        settings = ContrastiveSettings.demo_recipe(recipe, **options)
        base_id = demo.base
        pair_len = int(recipe["prompt_len"]) + int(recipe["continuation_len"])
        train_ids = demo_token_windows(demo, held_out=False, length=pair_len)
    else:
        settings = ContrastiveSettings(**{k: v for k, v in options.items() if v is not None})
        base_id = args.base
        pair_len = 2 * (settings.prompt_len or 32)
        spec = CorpusSpec(
            paths=split_list(args.train_corpus) or (), tokens=args.train_tokens, seq_len=pair_len
        )
        train_ids = load_corpus(spec, tokenizer_source=base_id).ids
    config = _experiment_config(args, [PairSpec("contrastive", base_id, base_id)])
    if len(train_ids) < 2:
        raise ValueError("the training text gives fewer than 2 preference pairs")
    corpus = prepare_corpus(config, base_id)
    variants_dir = args.variants_dir or (
        Path(cache_root(args) or default_cache_dir()) / "contrastive"
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
    gradient_ids = train_ids[evenly_spaced(len(train_ids), max(2, args.gradient_pairs))]
    read, write = pathway_sets(args)
    ds = contrastive_dataset(
        base_id,
        variants,
        settings,
        config,
        corpus,
        read=read,
        write=write,
        gradient_ids=gradient_ids,
        cache_root=cache_root(args),
        device=device,
        progress=not args.quiet,
    )
    ds.attrs["base_id"] = base_id
    ds.attrs["training_pairs"] = int(len(train_ids))
    return publish(ds, out, contrastive_lines(ds), quiet=args.quiet)


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
        "trend against λ (slope per unit λ with its EWC interval over layers and p; Spearman ρ of layer means):"
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


# ---------------------------------------------------------------------------- rank1


def run_rank1(args) -> int:
    out = check_writable(args.out)
    settings = Rank1Settings(
        layer=args.layer,
        read_matrix=args.read_matrix,
        write_matrix=args.write_matrix,
        controls=args.controls,
        scale=args.scale,
        neighbours=args.neighbours,
        beta=args.beta,
        prompt_len=args.prompt_len,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    if args.model:
        model_id = args.model
        corpus = command_corpus(args, model_id, default_tokens=8192)
    else:
        if args.corpus:
            raise ValueError("--corpus needs --model; the demo uses its own held-out documents")
        demo = demo_checkpoints(cache_root=cache_root(args), progress=not args.quiet)
        model_id = demo.base
        recipe = demo.manifest["settings"]
        length = args.seq_len or int(recipe["prompt_len"]) + int(recipe["continuation_len"])
        tokens = args.tokens if args.tokens is not None else 8192
        corpus = demo_held_out_corpus(demo, length=length, tokens=tokens)
        if args.prompt_len is None:
            settings = replace(settings, prompt_len=min(int(recipe["prompt_len"]), length - 1))
    model = load_model(
        model_id,
        device=resolve_device(args.device),
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )
    check_vocabulary(corpus, model)
    ds = rank1_dataset(model, corpus, settings, model_id=model_id, progress=not args.quiet)
    return publish(ds, out, rank1_lines(ds), quiet=args.quiet)


def rank1_lines(ds: xr.Dataset) -> list[str]:
    lines = [
        f"rank-1 interventions at layer {ds.attrs['layer']} (‖ΔW‖_F = scale·‖W‖_F; "
        f"{int((ds.family == 'random').sum())} random and {int((ds.family == 'matched').sum())} matched controls):"
    ]
    for matrix in ds.matrix.values:
        cell = ds.sel(matrix=matrix)
        principal = cell.sel(intervention="principal")
        controls = cell.where(cell.family != "principal", drop=True)
        lines.append(
            f"  {matrix} ({str(cell.role.values)}): principal Δmargin {float(principal.margin_change):+.4f} "
            f"[{float(principal.margin_change_ci_low):+.4f}, {float(principal.margin_change_ci_high):+.4f}], "
            f"KL {float(principal.kl):.4g}; controls median |Δmargin| "
            f"{float(np.median(controls.abs_margin_change)):.4f}, KL {float(np.median(controls.kl)):.4g}"
        )
        lines.append(
            "     p (principal vs controls, |Δmargin| / KL): "
            + ", ".join(
                f"{c} {float(cell.p_margin.sel(control=c)):.3g} / {float(cell.p_kl.sel(control=c)):.3g}"
                for c in cell.control.values
            )
        )
    return lines
