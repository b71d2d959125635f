"""The ``rsf`` command line.

``main(argv=None)`` so that tests call the CLI in-process. Errors a user can
cause are one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .config import CorpusSpec, SweepConfig

__all__ = [
    "cache_root_from_args",
    "corpus_options",
    "main",
    "parse_numbers",
    "split_list",
    "sweep_options",
]


def split_list(text: str | None) -> tuple[str, ...] | None:
    """A comma list option as a tuple of its non-empty, stripped parts; ``None`` stays ``None``."""
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_numbers(text: str, option: str) -> tuple[float, ...]:
    """A comma list of numbers (`option` names the flag in the error)."""
    try:
        return tuple(float(part) for part in split_list(text))
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, got {text!r}") from None


def corpus_options(args, corpus: CorpusSpec | None = None) -> CorpusSpec:
    """`corpus` (default the built-in one) with the options ``--corpus/--tokens/--seq-len/--tokenizer``.

    ``--corpus`` is a comma list of text/JSONL files or one ``.npy`` id file;
    an option left out keeps `corpus`'s value.
    """
    from .config import CorpusSpec

    corpus = CorpusSpec() if corpus is None else corpus
    paths, ids = corpus.paths, corpus.ids
    if args.corpus:
        files = split_list(args.corpus)
        id_files = [f for f in files if f.endswith(".npy")]
        if id_files and len(files) > 1:
            raise ValueError("--corpus takes one .npy id file, or text/JSONL files, not a mix")
        paths, ids = ((), id_files[0]) if id_files else (files, None)
    return CorpusSpec(
        paths=paths,
        ids=ids,
        tokens=args.tokens if args.tokens is not None else corpus.tokens,
        seq_len=args.seq_len if args.seq_len is not None else corpus.seq_len,
        tokenizer=args.tokenizer or corpus.tokenizer,
    )


def _add_corpus_options(parser, *, title: str, tokenizer_default: str, tokens_default: int) -> None:
    """The options :func:`corpus_options` reads, as an argument group."""
    corpus = parser.add_argument_group(title)
    corpus.add_argument(
        "--corpus", help="text/JSONL files (comma list) or one ids .npy [n_seq, seq_len]"
    )
    corpus.add_argument("--tokenizer", help=f"tokenizer for text (default: {tokenizer_default})")
    corpus.add_argument(
        "--tokens", type=int, help=f"tokens to use (default {tokens_default}; all rows of an .npy)"
    )
    corpus.add_argument("--seq-len", type=int, help="sequence length (default 128)")


def cache_root_from_args(args):
    """The statistics cache of ``--cache-dir``/``--no-cache`` (``None``: no cache)."""
    from .cache import default_cache_dir

    return None if args.no_cache else (args.cache_dir or default_cache_dir())


def sweep_options(config: SweepConfig, args, **changes) -> SweepConfig:
    """`config` with a command's corpus, probe, bootstrap and run options.

    Options left out keep `config`'s values; `changes` are further options of
    the command (``None`` keeps the value too).
    """
    return config.with_options(
        corpus=corpus_options(args, config.corpus),
        constructions=split_list(args.constructions),
        cutoffs=split_list(args.cutoffs),
        normalisations=split_list(args.normalisations),
        matrices=split_list(args.matrices),
        replicates=args.bootstrap,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        trust_remote_code=True if args.trust_remote_code else None,
        **changes,
    )


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("distributed").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------- sweep


def _sweep_config(args):
    from .config import PairSpec, SweepConfig, load_config

    if args.config and (args.base or args.aligned):
        raise ValueError("give either --config or --base/--aligned, not both")
    if args.config:
        config = load_config(args.config)
    elif args.base and args.aligned:
        label = args.label or Path(args.aligned.rstrip("/")).name or "pair"
        config = SweepConfig(pairs=(PairSpec(label, args.base, args.aligned),))
    else:
        raise ValueError("rsf sweep needs --base and --aligned, or --config FILE.toml")
    return sweep_options(config, args, dtype=args.dtype)


def run_sweep_command(args) -> int:
    from .corpus import load_corpus
    from .dataset import build_dataset, write_dataset
    from .engine import check_corpus, preflight, run_sweep
    from .files import check_writable

    config = _sweep_config(args)
    out = check_writable(args.out)
    widths = preflight(
        config
    )  # configs only: bad ids, mismatched pairs and k > d fail before any load
    corpus = load_corpus(
        config.corpus,
        tokenizer_source=config.pairs[0].base,
        trust_remote_code=config.trust_remote_code,
    )
    check_corpus(corpus, widths)
    results = run_sweep(
        config,
        corpus,
        cache_root=cache_root_from_args(args),
        progress=not args.quiet,
        workers=args.workers,
        scheduler=args.scheduler,
    )
    write_dataset(build_dataset(results, config, corpus), out)
    if not args.quiet:
        for result in results:
            for note in result.notes:
                print(f"note: {result.label}: {note}", file=sys.stderr)
        print(f"wrote {out} ({len(results)} pair(s), {corpus.n_tokens} tokens)")
    return 0


def _add_sweep(commands) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="probe every analytic choice for one or more pairs",
        description="Sweep constructions × cutoffs × normalisations over "
        "every layer and matrix, into a netCDF dataset.",
    )
    models = sweep.add_argument_group("models")
    models.add_argument("--base", help="base model: a save_pretrained directory or a hub id")
    models.add_argument("--aligned", help="aligned model: a directory or a hub id")
    models.add_argument("--label", help="pair label (default: the aligned model's name)")
    models.add_argument("--config", help="TOML config with one or more [[pair]] tables")
    models.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow model code from the hub (off by default)",
    )
    probe = sweep.add_argument_group("probe")
    probe.add_argument("--constructions", help="comma list, e.g. act_cov,unembed,random")
    probe.add_argument("--cutoffs", help="comma list, e.g. k=8,frac=0.05,var=0.9,pr,mp")
    probe.add_argument("--normalisations", help="comma list, e.g. isotropic,null_z")
    probe.add_argument("--matrices", help="comma list from q,k,v,o,up,gate,down")
    _add_corpus_options(
        sweep, title="corpus", tokenizer_default="the base model's", tokens_default=65536
    )
    run = sweep.add_argument_group("run")
    run.add_argument("--out", default="results.nc", help="output dataset (default results.nc)")
    run.add_argument("--bootstrap", type=int, help="bootstrap replicates over corpus sequences")
    run.add_argument("--seed", type=int, help="seed for random bases and resampling (default 0)")
    run.add_argument("--device", help="auto (default), cpu or cuda")
    run.add_argument("--dtype", help="float32 (default), bfloat16, float16 or float64")
    run.add_argument("--batch-size", type=int, help="sequences per forward pass (default 8)")
    run.add_argument("--workers", type=int, help="run pairs on a local Dask cluster of N workers")
    run.add_argument("--scheduler", help="address of an existing Dask scheduler")
    run.add_argument("--cache-dir", help="statistics cache (default ~/.cache/rsf-robustness)")
    run.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.set_defaults(run=run_sweep_command)


# ---------------------------------------------------------------------------- stats


def run_stats_command(args) -> int:
    from .dataset import open_dataset, write_dataset
    from .files import check_writable
    from .stats import compute_stats, summarise

    out = check_writable(args.out)
    results = open_dataset(args.results)
    if "rsf" not in results:
        raise ValueError(f"{args.results} is not an rsf results dataset (no `rsf` variable)")
    stats = compute_stats(
        results,
        read=split_list(args.read),
        write=split_list(args.write),
        confidence_level=args.confidence,
        n_resamples=args.resamples,
        n_permutations=args.permutations,
        alpha=args.alpha,
        seed=args.seed,
        preferred=split_list(args.preferred),
        progress=not args.quiet,
    )
    write_dataset(stats, out)
    print(summarise(stats))
    if not args.quiet:
        print(f"\nwrote {out}")
    return 0


def _add_stats(commands) -> None:
    from .stats import DEFAULT_PREFERRED

    stats = commands.add_parser("stats", help="test the read/write asymmetry in a results dataset")
    stats.add_argument("results", help="results.nc written by rsf sweep")
    stats.add_argument("--out", default="stats.nc", help="output dataset (default stats.nc)")
    stats.add_argument("--read", default="q,k", help="read set (default q,k)")
    stats.add_argument("--write", default="o,down", help="write set (default o,down)")
    stats.add_argument(
        "--confidence", type=float, default=0.95, help="confidence level (default 0.95)"
    )
    stats.add_argument(
        "--resamples", type=int, default=9999, help="bootstrap resamples (default 9999)"
    )
    stats.add_argument(
        "--permutations", type=int, default=9999, help="Monte Carlo permutations (default 9999)"
    )
    stats.add_argument(
        "--alpha", type=float, default=0.05, help="significance level (default 0.05)"
    )
    stats.add_argument("--seed", type=int, default=0, help="seed for resampling (default 0)")
    stats.add_argument(
        "--preferred",
        default=",".join(DEFAULT_PREFERRED),
        help="the paper's specification: construction,cutoff,normalisation",
    )
    stats.add_argument("--quiet", action="store_true", help="no progress bars")
    stats.set_defaults(run=run_stats_command)


# ---------------------------------------------------------------------------- calibrate


def run_calibrate_command(args) -> int:
    import dataclasses
    import json

    from .calibration import CalibrationSettings, run_calibration
    from .dataset import write_dataset
    from .files import check_writable

    out = check_writable(args.out)
    settings = (
        CalibrationSettings.fast(seed=args.seed)
        if args.fast
        else CalibrationSettings(seed=args.seed)
    )
    if args.sims is not None:
        if args.sims < 10:
            raise ValueError(f"--sims must be at least 10, got {args.sims}")
        settings = dataclasses.replace(settings, n_null=args.sims)
    calibration = run_calibration(settings, progress=not args.quiet)
    write_dataset(calibration, out)
    alpha = calibration.attrs["alpha"]
    print(f"type-I error at α = {alpha} ({settings.n_null} null pairs, 95% Clopper-Pearson):")
    for test in calibration.test.values:
        row = calibration.sel(test=test)
        print(
            f"  {test:15s} {float(row.type1_error):.3f} [{float(row.type1_ci_low):.3f}, {float(row.type1_ci_high):.3f}]"
        )
    for plant in calibration.plant.values:
        print(f"rejection rate against the {plant} plant's strength β:")
        for test in calibration.test.values:
            rates = calibration.power.sel(test=test, plant=plant).values
            values = "  ".join(
                f"β={b:g}: {r:.2f}" for b, r in zip(calibration.strength.values, rates, strict=True)
            )
            print(f"  {test:15s} {values}")
    print("coverage of the 95% layer-bootstrap intervals (bootstrap-t is what rsf stats reports):")
    for method in calibration.interval.values:
        for scenario in calibration.scenario.values:
            row = calibration.sel(scenario=scenario, interval=method)
            low, high = float(row.coverage_ci_low), float(row.coverage_ci_high)
            print(
                f"  {method:12s} {scenario:22s} {float(row.coverage):.3f} [{low:.3f}, {high:.3f}]"
            )
    misses = json.loads(calibration.attrs["misses"])
    print("misses against the targets: " + ("; ".join(misses) if misses else "none"))
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def _add_calibrate(commands) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="simulation study: type-I error, power, coverage"
    )
    calibrate.add_argument(
        "--sims", type=int, help="null simulations (default 1000; 200 with --fast)"
    )
    calibrate.add_argument(
        "--fast", action="store_true", help="a quick study for CI (about a minute)"
    )
    calibrate.add_argument(
        "--out", default="calibration.nc", help="output dataset (default calibration.nc)"
    )
    calibrate.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    calibrate.add_argument("--quiet", action="store_true", help="no progress bars")
    calibrate.set_defaults(run=run_calibrate_command)


# ---------------------------------------------------------------------------- report


def run_report_command(args) -> int:
    from reports import write_report

    out = write_report(
        args.results,
        args.out,
        stats_path=args.stats,
        calibration_path=args.calibration,
        extra_paths=split_list(args.extra) or (),
    )
    print(f"wrote {out}")
    return 0


def _add_report(commands) -> None:
    report = commands.add_parser(
        "report",
        help="the reviewer-facing HTML report from the datasets",
        description="One self-contained HTML file (inline figures, no network requests): "
        "verdict, specification curve, evidence, methods, provenance and caveats.",
    )
    report.add_argument("results", help="results.nc written by rsf sweep")
    report.add_argument("--stats", help="stats.nc written by rsf stats from the same results")
    report.add_argument("--calibration", help="calibration.nc written by rsf calibrate")
    report.add_argument(
        "--extra",
        help="comma list of further datasets (rsf gradients, rsf experiment …), a section each",
    )
    report.add_argument("--out", default="report.html", help="output file (default report.html)")
    report.set_defaults(run=run_report_command)


# ---------------------------------------------------------------------------- inspect


def run_inspect_command(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    import probes

    from .engine import open_model_config

    config = open_model_config(args.model, trust_remote_code=args.trust_remote_code)
    if config.model_type not in probes.SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported model type {config.model_type!r}: supported are "
            f"{', '.join(probes.SUPPORTED_MODEL_TYPES)}"
        )
    with torch.device("meta"):  # shapes from the config alone: no weights are read
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=args.trust_remote_code)
    view = probes.describe(model)
    print(f"model        {args.model}")
    print(f"family       {view['model_type']}" + (f"  ({view['notes']})" if view["notes"] else ""))
    print(f"layers       {view['n_layers']}")
    print(
        f"widths       d_model={view['d_model']} heads={view['n_heads']} "
        f"kv_heads={view['n_kv_heads']} head_dim={view['head_dim']} vocab={view['vocab_size']}"
    )
    print(
        f"parallel     attention and MLP {'in parallel' if view['parallel_attention_mlp'] else 'in sequence'}"
    )
    print(f"final norm   {view['final_norm']} (gain {view['final_norm_gain']})")
    print(
        f"embeddings   {'tied: unembed is the embedding subspace' if view['tied_embeddings'] else 'untied'}"
    )
    print("matrices")
    for m in view["matrices"]:
        fused = f" [fused {m['fused']}]" if m["fused"] else ""
        shape = "×".join(map(str, m["shape"]))
        print(
            f"  {m['matrix']:5s} {shape:>11s}  {m['pathway']:5s}  site {m['site']:10s} {m['module']}{fused}"
        )
    print("hook sites")
    for site, where in view["sites"].items():
        print(f"  {site:10s} {where}")
    return 0


def _add_inspect(commands) -> None:
    inspect = commands.add_parser("inspect", help="show the adapter's view of a model")
    inspect.add_argument("model", help="a save_pretrained directory or a hub id")
    inspect.add_argument("--trust-remote-code", action="store_true")
    inspect.set_defaults(run=run_inspect_command)


# ---------------------------------------------------------------------------- gradients


def run_gradients(args) -> int:
    from .gradients import run_gradients_command

    return run_gradients_command(args)


def _add_model_corpus_options(parser, *, tokens_default: int) -> None:
    _add_corpus_options(
        parser, title="corpus", tokenizer_default="the model's", tokens_default=tokens_default
    )
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    run.add_argument(
        "--dtype", default="float32", help="float32 (default), bfloat16, float16 or float64"
    )
    run.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub"
    )
    run.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_gradients(commands) -> None:
    gradients = commands.add_parser(
        "gradients",
        help="anisotropy of the gradients δ_t at the write sites, beside the read-site inputs",
        description="Covariance spectra, effective ranks and prediction-subspace energy of the "
        "residual-stream gradients δ_t at the outputs of o and down, and of the inputs a_t "
        "at the read sites, for each objective, with bootstrap intervals.",
    )
    gradients.add_argument(
        "--model", help="a save_pretrained directory or a hub id (default: the demo's base)"
    )
    gradients.add_argument("--reference", help="DPO reference model (default: the model itself)")
    gradients.add_argument(
        "--objective",
        default="ce,dpo",
        help="comma list from ce, dpo, mixed, lam=x (default ce,dpo)",
    )
    gradients.add_argument("--lam", default="0.5", help="λ values for `mixed` (default 0.5)")
    gradients.add_argument("--beta", type=float, default=0.1, help="DPO β (default 0.1)")
    gradients.add_argument(
        "--prompt-len", type=int, help="prompt tokens of a pair (default half a sequence)"
    )
    gradients.add_argument(
        "--cutoffs", default="k=8,frac=0.05", help="prediction-subspace k (default k=8,frac=0.05)"
    )
    gradients.add_argument(
        "--prediction",
        default="unembed",
        help="prediction subspace: unembed (default), unembed_centered or unembed_folded",
    )
    gradients.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap replicates (default 200)"
    )
    gradients.add_argument(
        "--batch-size", type=int, default=8, help="sequences per step (default 8)"
    )
    gradients.add_argument(
        "--out", default="gradients.nc", help="output dataset (default gradients.nc)"
    )
    gradients.add_argument("--cache-dir", help="where the demo pair is cached (without --model)")
    _add_model_corpus_options(gradients, tokens_default=16384)
    gradients.set_defaults(run=run_gradients)


# ---------------------------------------------------------------------------- experiment


def run_experiment(args) -> int:
    if args.experiment == "trajectory":
        from .trajectory import run_trajectory_command as command
    elif args.experiment == "contrastive":
        from .contrastive import run_contrastive_command as command
    else:
        from .rank1 import run_rank1_command as command
    return command(args)


def _add_sweep_grid_options(parser) -> None:
    probe = parser.add_argument_group(
        "probe (a sweep per pair; defaults act_cov,unembed,random × k=8,var=0.9 × isotropic)"
    )
    probe.add_argument("--constructions", help="comma list, e.g. act_cov,unembed,random")
    probe.add_argument("--cutoffs", help="comma list, e.g. k=8,var=0.9")
    probe.add_argument("--normalisations", help="comma list, e.g. isotropic")
    probe.add_argument("--matrices", help="comma list from q,k,v,o,up,gate,down")
    probe.add_argument("--read", default="q,k", help="read set of the summaries (default q,k)")
    probe.add_argument(
        "--write", default="o,down", help="write set of the summaries (default o,down)"
    )
    probe.add_argument("--bootstrap", type=int, help="sequence-bootstrap replicates of each sweep")
    probe.add_argument("--batch-size", type=int, help="sequences per forward pass (default 8)")
    probe.add_argument("--cache-dir", help="statistics cache (default ~/.cache/rsf-robustness)")
    probe.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    _add_corpus_options(
        parser, title="probe corpus", tokenizer_default="the first model's", tokens_default=65536
    )
    run = parser.add_argument_group("run")
    run.add_argument("--device", help="auto (default), cpu or cuda")
    run.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub"
    )
    run.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_experiment(commands) -> None:
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
    _add_sweep_grid_options(trajectory)

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
    _add_sweep_grid_options(contrastive)

    rank1 = kinds.add_parser(
        "rank1",
        help="rank-1 interventions along principal directions against matched controls",
    )
    rank1.add_argument(
        "--model", help="a directory or hub id (default: the demo's base, on held-out documents)"
    )
    rank1.add_argument("--layer", type=int, help="layer (default: the middle one)")
    rank1.add_argument("--read-matrix", default="q", help="read matrix (default q)")
    rank1.add_argument("--write-matrix", default="o", help="write matrix (default o)")
    rank1.add_argument("--controls", type=int, default=20, help="controls per family (default 20)")
    rank1.add_argument("--scale", type=float, default=0.25, help="α = scale·‖W‖_F (default 0.25)")
    rank1.add_argument(
        "--neighbours",
        type=int,
        default=4,
        help="matched controls mix principal directions 2..1+N (default 4)",
    )
    rank1.add_argument("--beta", type=float, default=0.1, help="DPO β of the margin (default 0.1)")
    rank1.add_argument(
        "--prompt-len", type=int, help="prompt tokens of a pair (default half a sequence)"
    )
    rank1.add_argument(
        "--batch-size", type=int, default=16, help="sequences per forward pass (default 16)"
    )
    rank1.add_argument("--cache-dir", help="where the demo pair is cached")
    rank1.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    rank1.add_argument("--out", default="rank1.nc", help="output dataset (default rank1.nc)")
    _add_model_corpus_options(rank1, tokens_default=8192)
    experiment.set_defaults(run=run_experiment)


# ---------------------------------------------------------------------------- demo


def run_demo_command(args) -> int:
    from .demo import DemoSettings, run_demo

    settings = DemoSettings() if args.seed is None else DemoSettings(seed=args.seed)
    outcome = run_demo(
        args.out,
        settings=settings,
        cache_root=args.cache_dir,
        retrain=args.retrain,
        progress=not args.quiet,
    )
    print(f"report: {outcome.report}")
    print(f"results: {outcome.results}  stats: {outcome.stats}  pair: {outcome.pair.root}")
    print()
    print(outcome.verdict)
    return 0


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="the embedded default: a demo pair trained here → sweep → stats → report",
        description="Train (or reuse from the cache) a small Llama-style pair on Python's "
        "help topics, pretrained with cross-entropy and aligned with DPO; sweep it with a "
        "sequence bootstrap, test the read/write asymmetry and write the report. "
        "Nothing is downloaded.",
    )
    demo.add_argument(
        "--out", default="rsf-demo", help="output folder (default rsf-demo/): results.nc, "
        "stats.nc, report.html"
    )
    demo.add_argument("--retrain", action="store_true", help="rebuild the cached demo pair")
    demo.add_argument("--seed", type=int, help="training seed (default 0; another seed, another pair)")
    demo.add_argument(
        "--cache-dir", help="cache for the pair and statistics (default ~/.cache/rsf-robustness)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=run_demo_command)


# ---------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsf",
        description="Relative-subspace-fraction probe of transformer weight deltas, "
        "with robustness sweeps and honest uncertainty.",
    )
    parser.add_argument("--version", action="version", version=f"rsf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_sweep(commands)
    _add_stats(commands)
    _add_calibrate(commands)
    _add_report(commands)
    _add_inspect(commands)
    _add_gradients(commands)
    _add_experiment(commands)
    _add_demo(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) is None:
        parser.print_help()
        return 0
    if getattr(args, "quiet", False):
        _quiet_libraries()
    try:
        with warnings.catch_warnings():
            if getattr(args, "quiet", False):
                warnings.simplefilter("ignore")
            return args.run(args)
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        print(f"rsf: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rsf: interrupted; finished statistics stay in the cache", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
