"""``rsf demo``: the embedded default, demo pair → sweep → stats → claims → report, and its verdict.

The datasets come from :func:`robustness.api.run_demo` (the pair trained or
cached, swept with its sequence bootstrap, tested); this module checks the
output folder, writes them and the report, and prints a one-paragraph verdict.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from robustness.settings.options import CacheOptions, DemoOptions, Output, Verbosity

from .claims import claim_lines
from .options import add_options, read_options
from .stats import summary as stats_summary

__all__ = ["DemoOutcome", "add_parser", "run", "run_demo"]


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


def _output_paths(out: Path, *, full: bool, mkdir: bool) -> dict[str, Path]:
    """Every file the demo writes in `out`, checked (and `out` created) before any work."""
    from robustness.demo.pipeline import EXPERIMENTS
    from robustness.io.files import check_writable

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
    names = ["results", "stats", "claims", *(k for k in EXPERIMENTS if full or k == "gradients")]
    return {name: check_writable(out / f"{name}.nc") for name in names} | {
        "report": check_writable(out / "report.html")
    }


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
    """:func:`robustness.api.run_demo`'s datasets written in `out` with the report and the verdict.

    Writes ``results.nc``, ``stats.nc``, ``gradients.nc``, ``claims.nc`` (and
    with `full` ``trajectory.nc``, ``contrastive.nc``, ``rank1.nc``) and
    ``report.html`` in `out` (created when missing; its missing parents only
    with `mkdir`), every path checked before any work.
    """
    import robustness.api
    from reports import write_report
    from robustness.io.datasets import write_dataset

    started = time.perf_counter()
    if real:  # first: without the package (or with another file) nothing is created
        from robustness.demo.real import real_model_file

        real_model_file()
    paths = _output_paths(Path(out), full=full, mkdir=mkdir)
    run = robustness.api.run_demo(
        settings=settings, grid=grid, cache_dir=cache_root, retrain=retrain, full=full,
        real=real, progress=progress, stage=lambda message: _stage(message, not progress),
    )  # fmt: skip
    for name, dataset in {"results": run.results, "stats": run.stats, **run.extras,
                          "claims": run.claims}.items():  # fmt: skip
        write_dataset(dataset, paths[name])
    mark = time.perf_counter()
    _stage("report: writing", not progress)
    extras = {kind: paths[kind] for kind in run.extras}
    report = Path(write_report(paths["results"], paths["report"], stats_path=paths["stats"],
                               claims_path=paths["claims"], extra_paths=tuple(extras.values())))  # fmt: skip
    timings = {**run.timings, "report": time.perf_counter() - mark}
    verdict = verdict_paragraph(
        run.pair, run.stats, stats_summary(run.stats), run.claims, real=real
    )
    return DemoOutcome(
        run.pair, paths["results"], paths["stats"], report, verdict,
        time.perf_counter() - started, timings, paths["claims"], claim_lines(run.claims), extras,
    )  # fmt: skip


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
