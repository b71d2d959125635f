"""``rsf sweep``: probe every analytic choice for one or more pairs, into ``results.nc``."""

from __future__ import annotations

import json

from robustness.settings.config import CorpusSpec, PairSpec, SweepConfig, default_label
from robustness.settings.options import CacheOptions, ClusterOptions, ConfigFile, Output, Verbosity

from .options import add_options, cache_root, note, read_options, sweep_config

__all__ = ["add_parser", "config_from_args", "run"]

PROBE = ("constructions", "cutoffs", "normalisations", "matrices")
BOOTSTRAP = ("replicates", "seed", "bca")
RUN = ("device", "dtype", "batch_size")


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "sweep",
        help="probe every analytic choice for one or more pairs",
        description="Sweep constructions × cutoffs × normalisations over "
        "every layer and matrix, into a netCDF dataset.",
    )
    add_options(parser, PairSpec, ("base", "aligned", "label"), title="models")
    add_options(parser, ConfigFile, title="models",
                notes={"config": "one or more [[pair]] tables, instead of --base/--aligned"})  # fmt: skip
    add_options(parser, SweepConfig, PROBE, title="probe")
    add_options(parser, CorpusSpec, title="corpus",
                notes={"tokens": "default 65536; all rows of an .npy"})  # fmt: skip
    add_options(parser, SweepConfig, BOOTSTRAP, title="bootstrap")
    add_options(parser, SweepConfig, (*RUN, "trust_remote_code"), title="run")
    add_options(parser, ClusterOptions, title="run")
    add_options(parser, Verbosity, title="run")
    add_options(parser, CacheOptions, title="cache")
    add_options(parser, Output, title="output", defaults={"out": "results.nc"})
    parser.set_defaults(run=run)


def config_from_args(args) -> SweepConfig:
    """The sweep's configuration: ``--config`` or ``--base/--aligned``, then the other flags."""
    pair = read_options(PairSpec, args)
    if args.config and pair:
        raise ValueError("give either --config or --base/--aligned (and --label), not both")
    if args.config:
        from robustness.settings.config import load_config

        config = load_config(args.config)
    elif "base" in pair and "aligned" in pair:
        pair.setdefault("label", default_label(pair["aligned"]))
        config = SweepConfig(pairs=(PairSpec(**pair),))
    else:
        raise ValueError("rsf sweep needs --base and --aligned, or --config FILE.toml")
    return sweep_config(config, args)


def run(args) -> int:
    import robustness
    from robustness.io.datasets import write_dataset
    from robustness.io.files import check_writable

    config = config_from_args(args)
    cluster = ClusterOptions(**read_options(ClusterOptions, args))
    inputs = [args.config, *config.corpus.paths, config.corpus.ids]
    inputs += [side for pair in config.pairs for side in (pair.base, pair.aligned)]
    out = check_writable(args.out, inputs=[p for p in inputs if p], mkdir=bool(args.mkdir))
    results = robustness.sweep(
        config,
        cache_dir=cache_root(args),
        progress=not args.quiet,
        workers=cluster.workers,
        scheduler=cluster.scheduler,
    )
    write_dataset(results, out)
    for line in json.loads(results.attrs["notes"]):  # "label: note"
        note(args, f"note: {line}")
    if not args.quiet:
        print(f"wrote {out} ({results.sizes['pair']} pair(s), {results.attrs['n_tokens']} tokens)")
    return 0
