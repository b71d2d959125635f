"""``rsf gradients``: anisotropy of the gradients δ_t at the write sites, into ``gradients.nc``.

One model (``--model``) or the checkpoints of a training run (``--checkpoints``,
``--config`` with ``[trajectory]``, ``--demo --phase align|pretrain|both``),
each with the DPO reference its phase implies
(:func:`robustness.gradient_dataset.phase_checkpoints`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import xarray as xr

from robustness.demo import demo_checkpoints, demo_held_out_corpus
from robustness.experiments.trajectory import checkpoint_label, trajectory_from_toml
from robustness.files import check_writable
from robustness.gradient_dataset import (
    GradientCheckpoint,
    check_checkpoints,
    gradient_dataset,
    phase_checkpoints,
)
from robustness.gradients import GradientSettings
from robustness.models import resolve_device

from .options import (
    add_bootstrap,
    add_cache,
    add_corpus,
    add_run,
    cache_root,
    command_corpus,
    parse_numbers,
    split_list,
)
from .output import publish

__all__ = ["add_parser", "run", "summary_lines"]


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
    models = parser.add_argument_group("models (one of)")
    models.add_argument("--model", help="one model: a save_pretrained directory or a hub id")
    models.add_argument(
        "--checkpoints", help="ordered comma list of checkpoints (directories or hub ids)"
    )
    models.add_argument("--config", help="TOML with [trajectory] checkpoints = [...] (and labels)")
    models.add_argument("--demo", action="store_true", help="the demo's saved checkpoints")
    models.add_argument(
        "--phase",
        choices=("align", "pretrain", "both"),
        default="align",
        help="which training the checkpoints come from, so which DPO reference each gets "
        "(default align; both: the demo's pretraining then alignment)",
    )
    models.add_argument("--labels", help="comma list of checkpoint labels (default: folder names)")
    models.add_argument(
        "--reference",
        help="DPO reference: for alignment checkpoints the model alignment started from "
        "(default the first checkpoint; with --model, the model itself)",
    )
    objective = parser.add_argument_group("objectives")
    objective.add_argument(
        "--objective",
        default="ce,dpo",
        help="comma list from ce, dpo, mixed, lam=x (default ce,dpo)",
    )
    objective.add_argument("--lam", default="0.5", help="λ values for `mixed` (default 0.5)")
    objective.add_argument("--beta", type=float, default=0.1, help="DPO β (default 0.1)")
    objective.add_argument(
        "--prompt-len", type=int, help="prompt tokens of a pair (default half a sequence)"
    )
    measure = parser.add_argument_group("measurement")
    measure.add_argument(
        "--cutoffs", default="k=8,frac=0.05", help="prediction-subspace k (default k=8,frac=0.05)"
    )
    measure.add_argument(
        "--prediction",
        default="unembed",
        help="prediction subspace: unembed (default), unembed_centered or unembed_folded",
    )
    add_corpus(
        parser,
        tokenizer_default="the first checkpoint's",
        tokens_default=16384,
        title="corpus (--demo: the demo's held-out documents)",
    )
    add_bootstrap(parser, default=200, seed_default=0)
    add_run(parser, device_default="auto", dtype_default="float32", batch_default=8)
    add_cache(parser)
    parser.add_argument(
        "--out", default="gradients.nc", help="output dataset (default gradients.nc)"
    )
    parser.set_defaults(run=run)


def gradient_checkpoints(args) -> tuple[list[GradientCheckpoint], object]:
    """The checkpoints to measure, from one of the model options, and the demo when it is the source."""
    sources = [bool(args.model), bool(args.checkpoints), bool(args.config), bool(args.demo)]
    if sum(sources) != 1:
        raise ValueError("rsf gradients needs one of --model, --checkpoints, --config or --demo")
    if args.phase == "both" and not args.demo:
        raise ValueError("--phase both needs --demo (which knows where its pretraining ends)")
    labels = split_list(args.labels)
    if args.model:
        if labels and len(labels) != 1:
            raise ValueError(f"{len(labels)} labels for one model")
        label = labels[0] if labels else checkpoint_label(args.model)
        return [GradientCheckpoint(label, args.model, reference=args.reference)], None
    if args.demo:
        if args.labels or args.reference:
            raise ValueError(
                "--demo names its own checkpoints and references: drop --labels/--reference"
            )
        demo = demo_checkpoints(cache_root=cache_root(args), progress=not args.quiet)
        return demo.gradient_checkpoints(args.phase), demo
    if args.checkpoints:
        paths = list(split_list(args.checkpoints))
        if len(paths) < 2:
            raise ValueError(
                "--checkpoints takes two or more checkpoints: for one model use --model"
            )
    else:
        paths, config_labels, _ = trajectory_from_toml(args.config)
        labels = labels or config_labels
    reference = args.reference if args.phase == "align" else None
    if args.reference and args.phase == "pretrain":
        raise ValueError("pretraining checkpoints are their own DPO reference: drop --reference")
    return phase_checkpoints(paths, phase=args.phase, labels=labels, reference=reference), None


def run(args) -> int:
    out = check_writable(args.out)
    settings = GradientSettings(
        objectives=split_list(args.objective),
        lams=parse_numbers(args.lam, "--lam"),
        beta=args.beta,
        prompt_len=args.prompt_len,
        batch_size=args.batch_size,
        replicates=args.bootstrap,
        seed=args.seed,
        cutoffs=split_list(args.cutoffs),
        prediction=args.prediction,
    )
    checkpoints, demo = gradient_checkpoints(args)
    check_checkpoints(checkpoints, trust_remote_code=args.trust_remote_code)
    if demo is not None and not args.corpus:
        recipe = demo.manifest["settings"]
        length = args.seq_len or int(recipe["prompt_len"]) + int(recipe["continuation_len"])
        corpus = demo_held_out_corpus(demo, length=length, tokens=args.tokens)
        if args.prompt_len is None:
            settings = replace(settings, prompt_len=min(int(recipe["prompt_len"]), length - 1))
    else:
        corpus = command_corpus(args, checkpoints[0].path, default_tokens=16384)
    ds = gradient_dataset(
        checkpoints,
        corpus,
        settings,
        cache_root=cache_root(args),
        device=resolve_device(args.device),
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        progress=not args.quiet,
    )
    return publish(ds, out, summary_lines(ds), quiet=args.quiet)


def summary_lines(ds: xr.Dataset) -> list[str]:
    """Per checkpoint: the layer-mean entropy rank per objective and site, the write sites' contrast, the trends."""
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
