"""``rsf sweep``: probe every analytic choice for one or more pairs, into ``results.nc``."""

from __future__ import annotations

import sys
from pathlib import Path

from robustness.config import PairSpec, SweepConfig, load_config
from robustness.dataset import build_dataset, write_dataset
from robustness.engine import run_sweep
from robustness.files import check_writable
from robustness.models import prepare_corpus

from .options import (
    add_bootstrap,
    add_cache,
    add_corpus,
    add_probe_grid,
    add_run,
    cache_root,
    sweep_config,
)

__all__ = ["add_parser", "config_from_args", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "sweep",
        help="probe every analytic choice for one or more pairs",
        description="Sweep constructions × cutoffs × normalisations over "
        "every layer and matrix, into a netCDF dataset.",
    )
    models = parser.add_argument_group("models")
    models.add_argument("--base", help="base model: a save_pretrained directory or a hub id")
    models.add_argument("--aligned", help="aligned model: a directory or a hub id")
    models.add_argument("--label", help="pair label (default: the aligned model's name)")
    models.add_argument("--config", help="TOML config with one or more [[pair]] tables")
    add_probe_grid(parser)
    add_corpus(parser)
    add_bootstrap(parser, bca=True)
    add_run(parser, dask=True)
    add_cache(parser)
    parser.add_argument("--out", default="results.nc", help="output dataset (default results.nc)")
    parser.set_defaults(run=run)


def config_from_args(args) -> SweepConfig:
    if args.config and (args.base or args.aligned):
        raise ValueError("give either --config or --base/--aligned, not both")
    if args.config:
        config = load_config(args.config)
    elif args.base and args.aligned:
        label = args.label or Path(args.aligned.rstrip("/")).name or "pair"
        config = SweepConfig(pairs=(PairSpec(label, args.base, args.aligned),))
    else:
        raise ValueError("rsf sweep needs --base and --aligned, or --config FILE.toml")
    return sweep_config(config, args, dtype=args.dtype)


def run(args) -> int:
    config = config_from_args(args)
    out = check_writable(args.out)
    # Configs only: bad ids, mismatched pairs and k > d fail before any load.
    corpus = prepare_corpus(config, config.pairs[0].base)
    results = run_sweep(
        config,
        corpus,
        cache_root=cache_root(args),
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
