"""``rsf gradients``: anisotropy of the gradients δ_t at the write sites, into ``gradients.nc``.

One model (``--model``) or the checkpoints of a training run (``--checkpoints``,
``--config`` with ``[trajectory]``, ``--demo --phase align|pretrain|both``),
each with the DPO reference its phase implies
(:func:`robustness.mechanism.gradient_dataset.phase_checkpoints`).
"""

from __future__ import annotations

from robustness.settings.config import CorpusSpec
from robustness.settings.options import (
    CacheOptions,
    ConfigFile,
    GradientSettings,
    Output,
    RunOptions,
    Sources,
    Verbosity,
)

from .options import add_options, cache_root, command_corpus, read_options
from .output import publish

__all__ = ["add_parser", "run", "summary_lines"]

DEFAULT_TOKENS = 16384


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "gradients",
        help="anisotropy of the gradients δ_t at the write sites, beside the read-site inputs, "
        "at one model or along checkpoints",
        description="Covariance spectra, leading eigenvalues, effective ranks and "
        "prediction-subspace energy of the residual-stream gradients δ_t at the outputs of o "
        "and down, and of the inputs a_t at the read sites, for each objective, at one model "
        "or at every checkpoint of a training run, with intervals and trends.",
    )
    add_options(parser, Sources, ("model", "checkpoints"), title="models (one of)")
    add_options(parser, ConfigFile, title="models (one of)",
                notes={"config": "TOML with [trajectory] checkpoints = [...] (and labels)"})  # fmt: skip
    add_options(parser, Sources, ("demo", "phase", "labels", "reference"), title="models (one of)")
    add_options(parser, GradientSettings, ("objectives", "lams", "beta", "prompt_len"),
                title="objectives")  # fmt: skip
    add_options(parser, GradientSettings, ("cutoffs", "prediction"), title="measurement")
    add_options(parser, CorpusSpec, title="corpus (--demo: the demo's held-out documents)",
                notes={"tokens": f"default {DEFAULT_TOKENS}; all rows of an .npy",
                       "tokenizer": "default: the first checkpoint's"})  # fmt: skip
    add_options(parser, GradientSettings, ("replicates", "seed"), title="bootstrap")
    add_options(parser, GradientSettings, ("batch_size",), title="run")
    add_options(parser, RunOptions, ("device", "dtype", "trust_remote_code"), title="run")
    add_options(parser, Verbosity, title="run")
    add_options(parser, CacheOptions, title="cache")
    add_options(parser, Output, title="output", defaults={"out": "gradients.nc"})
    parser.set_defaults(run=run)


def gradient_checkpoints(args, sources: Sources) -> tuple[list, object]:
    """The checkpoints to measure, from one of the model options, and the demo when it is the source."""
    from robustness.demo.pair import demo_checkpoints
    from robustness.mechanism.gradient_dataset import GradientCheckpoint, phase_checkpoints
    from robustness.mechanism.trajectory import checkpoint_label, trajectory_from_toml

    chosen = [bool(sources.model), bool(sources.checkpoints), bool(args.config), sources.demo]
    if sum(chosen) != 1:
        raise ValueError("rsf gradients needs one of --model, --checkpoints, --config or --demo")
    if sources.phase == "both" and not sources.demo:
        raise ValueError("--phase both needs --demo (which knows where its pretraining ends)")
    labels = sources.labels
    if sources.model:
        if labels and len(labels) != 1:
            raise ValueError(f"{len(labels)} labels for one model")
        label = labels[0] if labels else checkpoint_label(sources.model)
        return [GradientCheckpoint(label, sources.model, reference=sources.reference)], None
    if sources.demo:
        if sources.labels or sources.reference:
            raise ValueError(
                "--demo names its own checkpoints and references: drop --labels/--reference"
            )
        demo = demo_checkpoints(cache_root=cache_root(args), progress=not args.quiet)
        return demo.gradient_checkpoints(sources.phase), demo
    if sources.checkpoints:
        paths = list(sources.checkpoints)
        if len(paths) < 2:
            raise ValueError(
                "--checkpoints takes two or more checkpoints: for one model use --model"
            )
    else:
        paths, config_labels, _ = trajectory_from_toml(args.config)
        labels = labels or config_labels
    if sources.reference and sources.phase == "pretrain":
        raise ValueError("pretraining checkpoints are their own DPO reference: drop --reference")
    reference = sources.reference if sources.phase == "align" else None
    return phase_checkpoints(paths, phase=sources.phase, labels=labels, reference=reference), None


def run(args) -> int:
    import robustness.api
    from robustness.demo.pair import demo_held_out_inputs
    from robustness.io.files import check_writable
    from robustness.mechanism.gradient_dataset import check_checkpoints

    settings = GradientSettings(**read_options(GradientSettings, args))
    run_options = RunOptions(**read_options(RunOptions, args))
    sources = Sources(**read_options(Sources, args))
    corpus_given = read_options(CorpusSpec, args)
    inputs = [
        args.config,
        *corpus_given.get("paths", ()),
        sources.model,
        *(sources.checkpoints or ()),
    ]
    out = check_writable(args.out, inputs=[p for p in inputs if p], mkdir=bool(args.mkdir))
    checkpoints, demo = gradient_checkpoints(args, sources)
    check_checkpoints(checkpoints, trust_remote_code=run_options.trust_remote_code)
    if demo is not None and not corpus_given.get("paths"):
        corpus, settings = demo_held_out_inputs(
            demo, settings, seq_len=corpus_given.get("seq_len"), tokens=corpus_given.get("tokens")
        )
    else:
        corpus = command_corpus(args, checkpoints[0].path, default_tokens=DEFAULT_TOKENS,
                                trust_remote_code=run_options.trust_remote_code)  # fmt: skip
    ds = robustness.api.measure_gradients(
        checkpoints, corpus, settings, device=run_options.device, dtype=run_options.dtype,
        trust_remote_code=run_options.trust_remote_code, cache_dir=cache_root(args),
        progress=not args.quiet,
    )  # fmt: skip
    return publish(ds, out, summary_lines(ds), quiet=args.quiet)


def summary_lines(ds) -> list[str]:
    """Per checkpoint: the layer-mean entropy rank per objective and site, the write sites' contrast, the trends."""
    import numpy as np

    d = int(ds.attrs["d_model"])
    level = 100 * float(ds.attrs["confidence_level"])
    sites = [str(s) for s in ds.site.values]
    lines = [
        f"entropy effective rank, layer means (d = {d}; a_t at {', '.join(sites[:2])}, "
        f"δ_t at {', '.join(sites[2:])}):",
        f"  {'checkpoint':24s} {'step':>6s} {'objective':10s} "
        + " ".join(f"{s:>9s}" for s in sites),
    ]
    for checkpoint in ds.checkpoint.values:
        cell = ds.sel(checkpoint=checkpoint)
        step = float(cell.step)
        shown = "" if np.isnan(step) else f"{step:.0f}"
        for objective in ds.objective.values:
            ranks = cell.mean_entropy_rank.sel(objective=objective)
            lines.append(
                f"  {str(checkpoint):24s} {shown:>6s} {str(objective):10s} "
                + " ".join(f"{float(ranks.sel(site=s)):9.2f}" for s in sites)
            )
    objectives = [str(o) for o in ds.objective.values]
    if len(objectives) > 1:
        first = objectives[0]
        lines.append(
            f"{objectives[1]} − {first} at the write sites (paired; {level:g}% EWC interval over layers):"
        )
        for checkpoint in ds.checkpoint.values:
            cells = []
            for site in sites[2:]:
                cell = ds.sel(checkpoint=checkpoint, objective=objectives[1], site=site)
                cells.append(
                    f"{site} {float(cell.contrast_entropy_rank):+.2f} "
                    f"[{float(cell.contrast_entropy_rank_layer_ci_low):+.2f}, "
                    f"{float(cell.contrast_entropy_rank_layer_ci_high):+.2f}]"
                )
            lines.append(f"  {str(checkpoint):24s} " + "   ".join(cells))
    slopes = ds.trend_slope.sel(measure="entropy_rank")
    if np.isfinite(slopes.values).any():
        lines.append(
            "trend of the entropy rank along each phase (per 100 steps; EWC p over layers' slopes):"
        )
        for segment in ds.segment.values:
            for objective in objectives:
                cells = []
                for site in sites:
                    cell = ds.sel(
                        segment=segment, objective=objective, site=site, measure="entropy_rank"
                    )
                    slope, p = float(cell.trend_slope), float(cell.trend_p_value)
                    cells.append(f"{site} {100 * slope:+.2f} (p {p:.2g})")
                lines.append(f"  {str(segment):9s} {objective:8s} " + "  ".join(cells))
    return lines
