"""``rsf demo``: the embedded default, demo pair → sweep → stats → report, and its verdict.

The pair is trained (or taken from the cache) by :func:`robustness.demo.pair.demo_pair`;
this module only orchestrates: the sweep of :func:`robustness.demo.pair.demo_sweep_config`
with its sequence bootstrap, ``rsf stats`` with the grid's settings, the
report, and a one-paragraph verdict.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from robustness.settings.options import CacheOptions, DemoOptions, Output, Verbosity

from .claims import claim_lines
from .options import add_options, read_options
from .stats import summary as stats_summary

__all__ = ["DemoOutcome", "add_parser", "run", "run_demo"]

# The experiments' datasets the demo writes (gradients always, by robustness.demo.pair.demo_gradients;
# the others with --full), and the command that makes each one on the demo pair.
EXPERIMENTS = {
    "gradients": ("gradients", "--demo", "--phase", "both"),
    "trajectory": ("experiment", "trajectory", "--demo", "--phase", "align"),
    "contrastive": ("experiment", "contrastive", "--demo"),
    "rank1": ("experiment", "rank1"),  # the demo's base unless --model
}
FULL_GRADIENT_REPLICATES = 200


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "demo",
        help="the embedded default: a demo pair trained here → sweep → stats → report",
        description="Train (or reuse from the cache) a small Llama-style pair on Python's "
        "help topics, pretrained with cross-entropy and aligned with DPO; sweep it with a "
        "sequence bootstrap, test the read/write asymmetry and write the report. "
        "Nothing is downloaded. With --real, the same pipeline on a real model "
        "(SmolLM2-135M-Instruct's GGUF from the installed `real` extra: `make demo-real`).",
    )
    add_options(parser, Output, ("out",), defaults={"out": None},
                notes={"out": "a folder, default rsf-demo/ (rsf-demo-real/ with --real): "
                       "results.nc, stats.nc, claims.nc, gradients.nc, report.html"})  # fmt: skip
    add_options(parser, Output, ("mkdir",))
    add_options(parser, DemoOptions)
    add_options(parser, CacheOptions, ("cache_dir",))
    add_options(parser, Verbosity)
    parser.set_defaults(run=run)


def run(args) -> int:
    from robustness.demo.pair import DemoSettings
    from robustness.demo.real import RealSettings

    options = DemoOptions(**read_options(DemoOptions, args))
    kind = RealSettings if options.real else DemoSettings
    settings = kind() if options.seed is None else kind(seed=options.seed)
    if options.full and (options.real or settings != DemoSettings()):
        raise ValueError(
            "--full runs the experiments on the default toy pair: drop --seed and --real (or run "
            "the experiments one by one)"
        )
    outcome = run_demo(
        args.out or ("rsf-demo-real" if options.real else "rsf-demo"),
        settings=settings,
        cache_root=args.cache_dir,
        retrain=options.retrain,
        full=options.full,
        progress=not args.quiet,
        mkdir=bool(args.mkdir),
        real=options.real,
    )
    print(f"report: {outcome.report}")
    print(
        f"results: {outcome.results}  stats: {outcome.stats}  claims: {outcome.claims}  "
        f"pair: {outcome.pair.root}"
    )
    print("experiments: " + "  ".join(f"{kind}: {path}" for kind, path in outcome.extras.items()))
    print()
    print("\n".join(outcome.claims_table))
    print()
    print(outcome.verdict)
    return 0


@dataclass(frozen=True)
class DemoOutcome:
    """What :func:`run_demo` wrote, and the verdict it printed."""

    pair: object  # robustness.demo.pair.DemoPair
    results: Path
    stats: Path
    report: Path | None
    verdict: str
    seconds: float
    timings: dict = field(default_factory=dict)
    claims: Path | None = None
    claims_table: list[str] = field(default_factory=list)
    extras: dict = field(default_factory=dict)  # kind → path of each experiment's dataset


def _stage(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def run_demo(
    out: str | Path = "rsf-demo",
    *,
    settings=None,
    grid=None,
    cache_root: str | Path | None = None,
    retrain: bool = False,
    full: bool = False,
    progress: bool = True,
    mkdir: bool = False,
    real: bool = False,
) -> DemoOutcome:
    """Demo pair (trained or cached) → sweep with bootstrap → stats → gradients → claims → report, in `out`.

    With `real`, the pairs of :mod:`robustness.demo.real` (SmolLM2-135M-Instruct's
    GGUF against a short DPO run from it, and a seeded initialisation against
    it) with its :class:`robustness.demo.real.RealGrid`; `settings` and `grid`
    are then that module's.

    Writes ``results.nc``, ``stats.nc``, ``gradients.nc``, ``claims.nc`` and
    ``report.html`` in `out` (created when missing; its missing parents only
    with `mkdir`). The sweep covers the
    alignment pair and a pretraining pair (the initialisation → base); the
    gradients a few checkpoints of both phases (:func:`robustness.demo.pair.demo_gradients`).
    Statistics are cached like any sweep's, so a second run does no forward
    pass. With `full`, every checkpoint's gradients with a bootstrap, and the
    trajectory, contrastive and rank-1 experiments through the API their
    commands call (:mod:`robustness.api`, with the commands' defaults), so
    every claim is tested.
    """
    from reports import write_report
    from robustness.claims.paper import paper_claims
    from robustness.demo.pair import (
        DemoGrid,
        DemoSettings,
        demo_checkpoints,
        demo_gradients,
        demo_is_cached,
        demo_pair,
        demo_probe_corpus,
        demo_sweep_config,
        single_threaded,
    )
    from robustness.demo.real import (
        RealGrid,
        RealSettings,
        real_gradients,
        real_is_cached,
        real_model_file,
        real_outputs,
        real_pair,
        real_probe_corpus,
        real_sweep_config,
    )
    from robustness.io.datasets import open_dataset, write_dataset
    from robustness.io.files import check_writable
    from robustness.measure.cache import default_cache_dir
    from robustness.measure.results import sweep_dataset
    from robustness.stats.statistics import compute_stats

    if real:
        gguf = real_model_file()  # first: without the package, nothing else is done
        settings, grid = settings or RealSettings(), grid or RealGrid()
    else:
        settings, grid = settings or DemoSettings(), grid or DemoGrid()
    cache_root = Path(cache_root) if cache_root is not None else default_cache_dir()
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"cannot write into {out}: it exists and is not a folder")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"cannot create {out}: {out.parent} is not a folder")
    if not out.parent.exists() and not mkdir:
        raise ValueError(
            f"cannot create {out}: folder {out.parent} does not exist (create it, or pass --mkdir)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"cannot create the output folder {out}: {error.strerror or error}"
        ) from None
    results_path, stats_path, claims_path, report_path = (
        check_writable(out / name)
        for name in ("results.nc", "stats.nc", "claims.nc", "report.html")
    )
    extras = {
        kind: check_writable(out / f"{kind}.nc")
        for kind in EXPERIMENTS
        if full or kind == "gradients"
    }
    quiet = not progress
    timings = {}

    if real:
        cached = not retrain and real_is_cached(settings, gguf, cache_root)
        _stage("real pairs: cached" if cached else "real pairs: dequantising, initialising and "
               "running DPO from the real model", quiet)  # fmt: skip
        pair = real_pair(settings, gguf, cache_root=cache_root, retrain=retrain, progress=progress)
        config, corpus = real_sweep_config(pair, grid), real_probe_corpus(pair, grid)
        # d = 576: the real model's matrices use both threads
        threads = contextlib.nullcontext()
    else:
        cached = not retrain and demo_is_cached(settings, cache_root)
        _stage("demo pair: cached" if cached else "demo pair: training (cross-entropy, then DPO)",
               quiet)  # fmt: skip
        pair = demo_pair(settings, cache_root=cache_root, retrain=retrain, progress=progress)
        config, corpus = demo_sweep_config(pair, grid), demo_probe_corpus(pair, grid)
        # small matrices: a second thread only adds waiting on a busy machine
        threads = single_threaded()
    timings["pair"] = time.perf_counter() - started
    _stage(f"{'real pairs' if real else 'demo pair'}: {pair.root}", quiet)

    mark = time.perf_counter()
    stored = real_outputs(pair, grid) if real else None
    if stored is not None and (stored / "results.nc").is_file():
        _stage("sweep: the same grid on the same pairs, from the cache", quiet)
        dataset = open_dataset(stored / "results.nc").load()
    else:
        with threads:
            dataset = sweep_dataset(config, corpus, cache_root=cache_root, progress=progress)
    phases = [phase for phase in ("pretrain", "align") if phase in pair.manifest]
    dataset.attrs["demo_manifest"] = json.dumps(
        {k: v for k, v in pair.manifest.items() if k not in phases}
        | {
            phase: {k: v for k, v in pair.manifest[phase].items() if k != "losses"}
            for phase in phases
        },
        sort_keys=True,
    )
    write_dataset(dataset, results_path)
    if stored is not None and not (stored / "results.nc").is_file():
        stored.mkdir(parents=True, exist_ok=True)
        write_dataset(dataset, stored / "results.nc")
    timings["sweep"] = time.perf_counter() - mark

    mark = time.perf_counter()
    stats = compute_stats(
        dataset,
        n_resamples=grid.n_resamples,
        seed=grid.seed,
        progress=progress,
    )
    write_dataset(stats, stats_path)
    summary = stats_summary(stats)
    timings["stats"] = time.perf_counter() - mark

    mark = time.perf_counter()
    if full:
        grid = replace(
            grid, gradient_checkpoints=None, gradient_replicates=FULL_GRADIENT_REPLICATES
        )
    _stage(
        "gradients: δ_t under CE and DPO at "
        + (
            "every checkpoint"
            if grid.gradient_checkpoints is None
            else f"{grid.gradient_checkpoints} checkpoints"
        )
        + " of each phase",
        quiet,
    )
    if stored is not None and (stored / "gradients.nc").is_file():
        gradients = open_dataset(stored / "gradients.nc").load()
    elif real:
        gradients = real_gradients(pair, grid, cache_root=cache_root, progress=progress)
        stored.mkdir(parents=True, exist_ok=True)
        write_dataset(gradients, stored / "gradients.nc")
    else:
        with single_threaded():
            gradients = demo_gradients(pair, grid, cache_root=cache_root, progress=progress)
    write_dataset(gradients, extras["gradients"])
    timings["gradients"] = time.perf_counter() - mark
    if full:
        demo = demo_checkpoints(cache_root=cache_root, progress=progress)
        for kind, command in EXPERIMENTS.items():
            if kind == "gradients":
                continue
            mark = time.perf_counter()
            _stage(f"{kind}: rsf {' '.join(command)}", quiet)  # what it is equivalent to
            write_dataset(_experiment(kind, demo, cache_root, progress), extras[kind])
            timings[kind] = time.perf_counter() - mark

    mark = time.perf_counter()
    _stage("claims: testing the paper's claims", quiet)
    claims = paper_claims(
        dataset, stats=stats, extras=[open_dataset(path) for path in extras.values()],
        n_resamples=grid.n_resamples, seed=grid.seed,
    )  # fmt: skip
    write_dataset(claims, claims_path)
    timings["claims"] = time.perf_counter() - mark

    mark = time.perf_counter()
    _stage("report: writing", quiet)
    report = Path(
        write_report(
            results_path,
            report_path,
            stats_path=stats_path,
            claims_path=claims_path,
            extra_paths=tuple(extras.values()),
        )  # fmt: skip
    )
    timings["report"] = time.perf_counter() - mark

    verdict = verdict_paragraph(pair, stats, summary, claims, real=real)
    return DemoOutcome(
        pair, results_path, stats_path, report, verdict, time.perf_counter() - started, timings,
        claims_path, claim_lines(claims), extras,
    )  # fmt: skip


def _experiment(kind: str, demo, cache_root, progress: bool):
    """The dataset of ``rsf`` EXPERIMENTS[kind] on the demo, with its default options."""
    import robustness.api
    from robustness.demo.pair import demo_contrastive_inputs, demo_held_out_inputs
    from robustness.settings.options import ContrastiveInputs, Rank1Settings

    if kind == "trajectory":
        return robustness.api.trajectory(
            demo.phase("align"), cache_dir=cache_root, progress=progress
        )
    if kind == "contrastive":
        base, windows, settings = demo_contrastive_inputs(demo)
        return robustness.api.contrastive(
            base, windows, settings, gradient_pairs=ContrastiveInputs().gradient_pairs,
            cache_dir=cache_root, progress=progress,
        )  # fmt: skip
    corpus, settings = demo_held_out_inputs(demo, Rank1Settings(), tokens=8192)
    return robustness.api.rank1(demo.base, corpus, settings, progress=progress)


def verdict_paragraph(pair, stats, summary: str, claims=None, *, real: bool = False) -> str:
    """One paragraph: what the pair is, what training did, what the statistics say."""
    m = pair.manifest
    s = m["settings"]
    held = m["held_out"]
    label = "align" if real else "demo"
    preference = (
        f"on held-out passages the aligned model prefers the true continuation over a corrupted one "
        f"{held['aligned']['prefers_chosen']:.0%} of the time (base: {held['base']['prefers_chosen']:.0%}), "
        f"with a mean DPO margin of {held['aligned']['dpo_margin_mean']:+.2f}."
    )
    if real:
        intro = (
            f"The real pair is SmolLM2-135M-Instruct ({m['model']}, {m['n_parameters'] / 1e6:.0f}M "
            f"parameters, read from its 4-bit GGUF, sha256 {m['gguf']['sha256'][:12]}…) against "
            f"itself after {s['align_steps']} DPO steps run here on Python's help topics (loss "
            f"{m['align']['first_loss']:.3f} → {m['align']['final_loss']:.3f}); " + preference
        )
    else:
        intro = (
            f"The demo pair is a {s['n_layers']}-layer Llama-style model (d = {s['d_model']}, "
            f"{m['n_parameters'] / 1e6:.1f}M parameters) pretrained here on Python's help topics "
            f"(cross-entropy {m['pretrain']['first_loss']:.2f} → {m['pretrain']['final_loss']:.2f} "
            f"over {s['pretrain_steps']} steps), then aligned with DPO for {s['align_steps']} steps; "
            + preference
        )
    parts = [intro]
    per_pair = stats.robustness.per_pair()[label]
    preferred = stats.robustness.preferred
    joint = per_pair.get("joint", {})
    if "median_effect" in joint:
        cell = stats.sel(
            pair=label,
            construction=preferred[0],
            cutoff=preferred[1],
            normalisation=preferred[2],
        )
        expected = per_pair.get("expected_share", {})
        parts.append(
            f"Measured on the held-out documents, for the paper's specification ({preferred}) "
            f"the read − write asymmetry is {float(cell.asymmetry):+.3f} "
            f"[{float(cell.ci_low):+.3f}, {float(cell.ci_high):+.3f}] (p = {float(cell.p_value):.3g}, "
            f"the EWC test over {per_pair['n_layers']} layers with {per_pair['projections']} cosine "
            f"projections, which holds when neighbouring layers are correlated; lag-1 autocorrelation "
            f"{float(cell.lag1_autocorrelation):+.2f}); across {joint['n_specifications']} counted "
            f"specifications the median effect size is d_z = {joint['median_effect']:+.2f} "
            f"(joint p = {joint['p_median_effect']:.3g}) and {joint['share_significant']:.0%} are "
            f"significant with read > write (joint p = {joint['p_share_significant']:.3g}), against "
            f"{expected.get('under_null', float('nan')):.1%} expected under the null and "
            f"{expected.get('under_median_effect', float('nan')):.0%} if every specification had the "
            f"median effect."
        )
    # the first pair's verdict: the alignment pair comes first in both demos' sweeps
    verdicts = [
        line.split("verdict:", 1)[1].strip() for line in summary.splitlines() if "verdict:" in line
    ]
    if verdicts:
        parts.append(f"Verdict: {verdicts[0]}.")
    if claims is not None:
        cell = claims.sel(pair=label)
        named = "; ".join(
            f"{claim}: {str(cell.verdict.sel(claim=claim).values).replace('_', ' ')}"
            for claim in claims.claim.values
        )
        parts.append(f"The paper's claims on this pair: {named}.")
    parts.append(
        "The aligned side is a short DPO run here from a 4-bit-quantised model's weights, not the "
        "published alignment: it shows the pipeline on a real model, not the paper's claim."
        if real
        else "This is a toy model trained for minutes; it shows the pipeline, not the paper's claim."
    )
    return " ".join(parts)
