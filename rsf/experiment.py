"""``rsf experiment trajectory|contrastive|rank1``: tests of the asymmetry's mechanism."""

from __future__ import annotations

from dataclasses import replace

from robustness.settings.config import CorpusSpec, PairSpec, SweepConfig
from robustness.settings.options import (
    CacheOptions,
    ConfigFile,
    ContrastiveInputs,
    ContrastiveSettings,
    Output,
    Rank1Settings,
    RunOptions,
    Sources,
    StatsOptions,
    Verbosity,
)

from .options import (
    add_options,
    cache_root,
    command_corpus,
    corpus_spec,
    read_options,
    sweep_config,
)
from .output import publish

__all__ = ["add_parser", "contrastive_lines", "rank1_lines", "trajectory_lines"]

# The experiments' default probe grid (robustness.mechanism.summaries.EXPERIMENT_GRID), as help.
GRID_NOTES = {
    "constructions": "default act_cov,unembed,random",
    "cutoffs": "default k=8,var=0.9",
    "normalisations": "default isotropic",
}


def _add_sweep_options(parser) -> None:
    """The sweep each experiment runs per pair: grid, pathway sets, corpus, bootstrap, run, cache."""
    add_options(parser, SweepConfig, ("constructions", "cutoffs", "normalisations", "matrices"),
                title="probe (a sweep per pair)", notes=GRID_NOTES)  # fmt: skip
    add_options(parser, StatsOptions, ("read", "write"), title="pathway sets")
    add_options(parser, CorpusSpec, title="probe corpus",
                notes={"tokens": "default 65536; all rows of an .npy",
                       "tokenizer": "default: the first model's"})  # fmt: skip
    add_options(parser, SweepConfig, ("replicates", "seed"), title="bootstrap")
    add_options(parser, SweepConfig, ("device", "batch_size", "trust_remote_code"), title="run")
    add_options(parser, Verbosity, title="run")
    add_options(parser, CacheOptions, title="cache")


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
    add_options(trajectory, Sources, ("checkpoints",), title="checkpoints (one of)")
    add_options(trajectory, ConfigFile, title="checkpoints (one of)",
                notes={"config": "TOML with [trajectory] checkpoints = [...] and the sweep's tables"})  # fmt: skip
    add_options(trajectory, Sources, ("demo", "phase", "labels"), title="checkpoints (one of)")
    add_options(trajectory, Output, title="output", defaults={"out": "trajectory.nc"})
    _add_sweep_options(trajectory)
    trajectory.set_defaults(run=run_trajectory)

    contrastive = kinds.add_parser(
        "contrastive",
        help="variants trained with (1 − λ)·CE(chosen) + λ·DPO: RSF and δ_t rank against λ",
    )
    add_options(contrastive, ContrastiveInputs, ("base", "demo"), title="base (one of)")
    add_options(contrastive, ContrastiveSettings,
                title="training (with --demo, the defaults are the demo's alignment recipe)")  # fmt: skip
    add_options(contrastive, ContrastiveInputs,
                ("train_corpus", "train_tokens", "variants_dir", "gradient_pairs"), title="training")  # fmt: skip
    add_options(contrastive, Output, title="output", defaults={"out": "contrastive.nc"})
    _add_sweep_options(contrastive)
    contrastive.set_defaults(run=run_contrastive)

    rank1 = kinds.add_parser(
        "rank1",
        help="rank-1 interventions along principal directions against matched controls",
    )
    add_options(rank1, Sources, ("model",),
                notes={"model": "default: the demo's base, on its held-out documents"})  # fmt: skip
    add_options(rank1, Rank1Settings, title="interventions")
    add_options(rank1, CorpusSpec, title="corpus",
                notes={"tokens": "default 8192; all rows of an .npy",
                       "tokenizer": "default: the model's"})  # fmt: skip
    add_options(rank1, RunOptions, ("device", "dtype", "trust_remote_code"), title="run")
    add_options(rank1, Verbosity, title="run")
    add_options(rank1, CacheOptions, ("cache_dir",), title="cache")
    add_options(rank1, Output, title="output", defaults={"out": "rank1.nc"})
    rank1.set_defaults(run=run_rank1)


def _out(args, *inputs):
    from robustness.io.files import check_writable

    return check_writable(args.out, inputs=[p for p in inputs if p], mkdir=bool(args.mkdir))


def _sets(args) -> tuple[tuple, tuple]:
    options = StatsOptions(**read_options(StatsOptions, args, ("read", "write")))
    return options.read, options.write


# ---------------------------------------------------------------------------- trajectory


def run_trajectory(args) -> int:
    import robustness.api
    from robustness.demo.pair import demo_checkpoints
    from robustness.mechanism.trajectory import trajectory_from_toml, trajectory_pairs

    sources = Sources(**read_options(Sources, args, ("checkpoints", "demo", "phase", "labels")))
    out = _out(args, args.config, *(sources.checkpoints or ()), *corpus_spec(args).paths)
    if sum([bool(sources.checkpoints), bool(args.config), sources.demo]) != 1:
        raise ValueError("rsf experiment trajectory needs one of --checkpoints, --config or --demo")
    labels = sources.labels
    base_config = None
    if sources.checkpoints:
        checkpoints = list(sources.checkpoints)
    elif args.config:
        checkpoints, config_labels, base_config = trajectory_from_toml(args.config)
        labels = labels or config_labels
    else:
        demo = demo_checkpoints(cache_root=cache_root(args), progress=not args.quiet)
        checkpoints = demo.phase(sources.phase)
        if len(checkpoints) < 2:
            raise ValueError(f"the demo saved fewer than 2 checkpoints for phase {sources.phase!r}")
    pairs, _ = trajectory_pairs(checkpoints, labels)
    read, write = _sets(args)
    ds = robustness.api.trajectory(
        checkpoints, labels=labels, config=_experiment_config(args, pairs, base_config),
        read=read, write=write, cache_dir=cache_root(args), progress=not args.quiet,
    )  # fmt: skip
    return publish(ds, out, trajectory_lines(ds), quiet=args.quiet)


def _experiment_config(args, pairs, base: SweepConfig | None = None) -> SweepConfig:
    """A sweep config of `pairs` from the experiment's options over `base` (or the experiment grid)."""
    from robustness.mechanism.summaries import EXPERIMENT_GRID

    config = base or SweepConfig(pairs=tuple(pairs), **EXPERIMENT_GRID)
    return sweep_config(replace(config, pairs=tuple(pairs)), args)


def _first_spec(ds) -> dict:
    """The specification a summary prints: act_cov if present, the first cutoff and normalisation."""
    construction = "act_cov" if "act_cov" in ds.construction.values else ds.construction.values[0]
    return {
        "construction": construction,
        "cutoff": ds.cutoff.values[0],
        "normalisation": ds.normalisation.values[0],
    }


def trajectory_lines(ds) -> list[str]:
    from robustness.settings.specification import RATIO_NORMALISATIONS

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
    import robustness.api
    from robustness.demo.pair import demo_checkpoints, demo_contrastive_inputs
    from robustness.measure.corpus import load_corpus

    given = read_options(ContrastiveSettings, args)
    inputs = ContrastiveInputs(**read_options(ContrastiveInputs, args))
    out = _out(args, inputs.base, *inputs.train_corpus, *corpus_spec(args).paths)
    if bool(inputs.base) == inputs.demo:
        raise ValueError("rsf experiment contrastive needs one of --base M or --demo")
    if inputs.demo:
        demo = demo_checkpoints(cache_root=cache_root(args), progress=not args.quiet)
        base_id, train_ids, settings = demo_contrastive_inputs(demo, **given)
    else:
        settings = ContrastiveSettings(**given)
        base_id = inputs.base
        pair_len = 2 * (settings.prompt_len or 32)
        spec = CorpusSpec(paths=inputs.train_corpus, tokens=inputs.train_tokens, seq_len=pair_len)
        train_ids = load_corpus(spec, tokenizer_source=base_id).ids
    read, write = _sets(args)
    ds = robustness.api.contrastive(
        base_id, train_ids, settings,
        config=_experiment_config(args, [PairSpec("contrastive", base_id, base_id)]),
        variants_dir=inputs.variants_dir, gradient_pairs=inputs.gradient_pairs, read=read,
        write=write, cache_dir=cache_root(args), progress=not args.quiet,
    )  # fmt: skip
    return publish(ds, out, contrastive_lines(ds), quiet=args.quiet)


def contrastive_lines(ds) -> list[str]:
    from robustness.settings.specification import scale_name

    spec = {"cutoff": ds.cutoff.values[0], "normalisation": ds.normalisation.values[0]}
    lines = [
        f"λ against read RSF ({ds.attrs['read_construction']}), write RSF "
        f"({ds.attrs['write_construction']}) [{spec['cutoff']}, {scale_name(spec['normalisation'])}] "
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
    import robustness.api
    from robustness.demo.pair import demo_checkpoints, demo_held_out_inputs

    settings = Rank1Settings(**read_options(Rank1Settings, args))
    run_options = RunOptions(**read_options(RunOptions, args))
    model_id = read_options(Sources, args, ("model",)).get("model")
    corpus_given = read_options(CorpusSpec, args)
    out = _out(args, model_id, *corpus_given.get("paths", ()))
    if model_id:
        corpus = command_corpus(args, model_id, default_tokens=8192,
                                trust_remote_code=run_options.trust_remote_code)  # fmt: skip
    else:
        if "paths" in corpus_given:
            raise ValueError("--corpus needs --model; the demo uses its own held-out documents")
        demo = demo_checkpoints(cache_root=cache_root(args), progress=not args.quiet)
        model_id = demo.base
        corpus, settings = demo_held_out_inputs(
            demo, settings, seq_len=corpus_given.get("seq_len"),
            tokens=corpus_given.get("tokens", 8192),
        )  # fmt: skip
    ds = robustness.api.rank1(
        model_id, corpus, settings, device=run_options.device, dtype=run_options.dtype,
        trust_remote_code=run_options.trust_remote_code, progress=not args.quiet,
    )  # fmt: skip
    return publish(ds, out, rank1_lines(ds), quiet=args.quiet)


def rank1_lines(ds) -> list[str]:
    import numpy as np

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
