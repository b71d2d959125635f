"""What every command does with its result: write the dataset atomically, print its summary."""

from __future__ import annotations

from pathlib import Path

__all__ = ["publish"]


def publish(dataset, out: Path, lines, *, quiet: bool) -> int:
    """Write `dataset` to `out`, print the summary `lines`, then ``wrote OUT`` unless `quiet`; exit status 0."""
    from robustness.io.datasets import write_dataset

    write_dataset(dataset, out)
    print("\n".join(lines) if not isinstance(lines, str) else lines)
    if not quiet:
        print(f"wrote {out}")
    return 0
