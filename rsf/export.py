"""``rsf export DATASET --format csv|parquet --out FILE``: a dataset as one long table."""

from __future__ import annotations

from robustness.settings.options import ExportOptions, Output

from .options import add_options, read_options

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="a results, stats, claims (or any rsf) dataset as a long CSV or parquet table",
        description="One row per value, one column per coordinate (the shape specr and "
        "speccurvieR read); the dataset's attributes go into the parquet metadata, or beside a "
        "CSV as NAME.csv.attrs.json.",
    )
    parser.add_argument("dataset", help="results.nc, stats.nc, claims.nc or another rsf dataset")
    add_options(parser, ExportOptions)
    add_options(parser, Output, title="output")
    parser.set_defaults(run=run)


def run(args) -> int:
    from robustness.io.datasets import open_dataset
    from robustness.io.export import write_table

    fmt = ExportOptions(**read_options(ExportOptions, args)).format
    dataset = open_dataset(args.dataset)
    out = write_table(dataset, args.out, fmt, inputs=(args.dataset,), mkdir=bool(args.mkdir))
    print(f"wrote {out} ({dataset.attrs.get('kind', 'dataset')} as {fmt})")
    return 0
