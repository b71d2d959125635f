"""``rsf export``: a dataset as one long ("tidy") table, for R (specr, speccurvieR) and pandas.

One row per value: a ``variable`` column, one column per coordinate the
variable has (dimensions and the coordinates along them, such as
``phase(pair)`` or ``control(construction)``; empty where a variable lacks
that dimension), and the value: numbers in ``value``, text (a claim's
verdict, a pair's model id) in ``text``. Written by pandas as CSV or parquet
(pyarrow). The dataset's attributes (its provenance) travel with the table:
in the parquet file's schema metadata (key ``rsf_attrs``, JSON), and for CSV
in a JSON file beside it (``NAME.csv.attrs.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from robustness.io.files import atomic_output, check_writable

__all__ = ["FORMATS", "attrs_path", "tidy_table", "write_table"]

FORMATS = ("csv", "parquet")
METADATA_KEY = b"rsf_attrs"


def tidy_table(dataset: xr.Dataset) -> pd.DataFrame:
    """`dataset` as one row per value (see the module docstring)."""
    frames = []
    integer = {name for name, c in dataset.coords.items() if c.dtype.kind in "iu"}
    for name, variable in dataset.data_vars.items():
        frame = variable.to_dataframe(name="__value__").reset_index()
        values = frame.pop("__value__")
        textual = values.dtype.kind in "OSU"
        frame.insert(0, "variable", name)
        frame["value"] = np.nan if textual else values.astype(np.float64)
        frame["text"] = values.astype(str) if textual else None
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True, sort=False)
    for name in integer & set(table.columns):  # a layer stays 3, not 3.0, where others lack it
        table[name] = table[name].astype("Int64")
    ordered = ["variable", *(c for c in table.columns if c not in ("variable", "value", "text"))]
    return table[[*ordered, "value", "text"]]


def attrs_path(path: str | Path) -> Path:
    """Where a CSV export's attributes are written: ``NAME.csv.attrs.json`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".attrs.json")


def _attrs(dataset: xr.Dataset) -> str:
    return json.dumps({k: _plain(v) for k, v in dataset.attrs.items()}, sort_keys=True)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def write_table(dataset: xr.Dataset, path: str | Path, fmt: str, *, inputs=(), mkdir=False) -> Path:
    """Write :func:`tidy_table` of `dataset` to `path` as `fmt`, atomically (attributes kept)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose from {', '.join(FORMATS)}")
    path = check_writable(path, inputs=inputs, mkdir=mkdir)
    table = tidy_table(dataset)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrow = pa.Table.from_pandas(table, preserve_index=False)
        arrow = arrow.replace_schema_metadata(
            {**(arrow.schema.metadata or {}), METADATA_KEY: _attrs(dataset).encode()}
        )
        with atomic_output(path) as temporary:
            pq.write_table(arrow, temporary)
        return path
    sidecar = check_writable(attrs_path(path), inputs=inputs)
    with atomic_output(sidecar) as temporary:
        temporary.write_text(_attrs(dataset) + "\n", encoding="utf-8")
    with atomic_output(path) as temporary:
        table.to_csv(temporary, index=False)
    return path
