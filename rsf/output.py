"""What every command does with its result: write the dataset atomically, print its summary."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from robustness.dataset import write_dataset

__all__ = ["publish"]


def publish(dataset: xr.Dataset, out: Path, lines, *, quiet: bool) -> int:
    """Write `dataset` to `out`, print the summary `lines`, then ``wrote OUT`` unless `quiet`; exit status 0."""
    write_dataset(dataset, out)
    print("\n".join(lines) if not isinstance(lines, str) else lines)
    if not quiet:
        print(f"wrote {out}")
    return 0
