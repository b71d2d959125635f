"""Datasets on disk: written atomically, read whole, recognised by their kind.

Every dataset rsf writes is netCDF4 with a ``kind`` attribute (``results``,
``stats``, ``claims``, ``calibration``, ``gradients``, ``trajectory``,
``contrastive``, ``rank1``). :func:`write_dataset` writes one atomically (a
reader never sees half a file); :func:`open_dataset` reads one fully into
memory, closes the file and, given a kind, refuses any other with one line
naming what the file is and which command wrote it.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from robustness.io.files import atomic_output

__all__ = ["DESCRIBED", "FLAG", "WRITTEN_BY", "dataset_kind", "open_dataset", "write_dataset"]


def write_dataset(dataset: xr.Dataset, path: str | Path) -> Path:
    """Write netCDF4 atomically: a reader never sees a half-written file."""
    path = Path(path)
    with atomic_output(path) as temporary:
        dataset.to_netcdf(temporary, engine="netcdf4", format="NETCDF4")
    return path


# Files written before the `kind` attribute existed are recognised by a variable only they hold.
_RECOGNISED = (("rsf", "results"), ("asymmetry", "stats"), ("type1_error", "calibration"))
WRITTEN_BY = {
    "results": "rsf sweep",
    "stats": "rsf stats",
    "calibration": "rsf calibrate",
    "claims": "rsf claims",
    "gradients": "rsf gradients",
    "trajectory": "rsf experiment trajectory",
    "contrastive": "rsf experiment contrastive",
    "rank1": "rsf experiment rank1",
}
DESCRIBED = {
    "results": "a results dataset",
    "stats": "a statistics dataset",
    "calibration": "a calibration dataset",
    "claims": "a claims dataset",
}
FLAG = {"stats": "--stats", "calibration": "--calibration", "claims": "--claims"}


def dataset_kind(dataset: xr.Dataset) -> str | None:
    """The ``kind`` attribute, else the kind recognised from the variables, else ``None``."""
    kind = dataset.attrs.get("kind")
    if kind:
        return str(kind)
    for variable, name in _RECOGNISED:
        if variable in dataset:
            return name
    return None


def open_dataset(path: str | Path, kind: str | None = None) -> xr.Dataset:
    """Read a dataset fully into memory and close the file; with `kind`, check it is one of those.

    A dataset of another kind is a one-line error saying what it is and which
    command wrote it (and the flag that takes it, where there is one).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file")
    try:
        with xr.open_dataset(path, engine="netcdf4") as stored:
            dataset = stored.load()
    except (OSError, ValueError, KeyError, TypeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path} is not a readable netCDF dataset: {first}") from None
    if kind is not None:
        found = dataset_kind(dataset)
        if found != kind:
            wanted = f"{DESCRIBED.get(kind, f'a {kind} dataset')} written by {WRITTEN_BY[kind]}"
            if found in WRITTEN_BY:
                hint = f": pass it with {FLAG[found]}" if found in FLAG else ""
                what = DESCRIBED.get(found, f"a {found} dataset")
                raise ValueError(f"{path} is {what} (from {WRITTEN_BY[found]}), not {wanted}{hint}")
            detail = (
                f"it holds a dataset of kind {found!r}"
                if found
                else "it has none of the variables rsf writes"
            )
            raise ValueError(f"{path} is not {wanted}: {detail}")
    return dataset
