"""Running ``rsf`` commands in-process for the tests: ``main([...])``, its stdout, and a small sweep.

Imported by the tests that go through the command line (``tests/cli``, and the
library tests that check a module end to end through ``rsf sweep``).
"""

from __future__ import annotations

import contextlib
import io

from robustness.io.datasets import open_dataset
from rsf.main import main

# A sweep small enough for a tiny pair: 256 tokens in sequences of 16.
SMALL = ["--tokens", "256", "--seq-len", "16", "--quiet"]


def run_cli(argv) -> str:
    """`main(argv)` in-process; its stdout (exit status 0 required)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue()


def sweep(tmp_path, base, aligned, *extra, out="results.nc", cache=None):
    """`rsf sweep` of one pair at the SMALL size (exit status 0 required); the dataset written."""
    target = tmp_path / out
    args = ["sweep", "--base", base, "--aligned", aligned, "--out", str(target), *SMALL, *extra]
    args += ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    assert main(args) == 0
    return open_dataset(target)
