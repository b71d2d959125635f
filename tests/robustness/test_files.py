"""Output files (robustness.io.files): written atomically, so an interrupted `rsf sweep` leaves the
previous results and no temporary file, and with the usual mode, not mkstemp's."""

from __future__ import annotations

import os
import stat

import xarray as xr
from rsf_commands import SMALL

from rsf.main import main


def test_interrupted_write_leaves_no_truncated_results(saved_pair, tmp_path, monkeypatch):
    base, aligned = saved_pair("llama")
    out = tmp_path / "results.nc"
    out.write_bytes(b"previous results")

    def broken(self, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"CDF half")
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    assert (
        main(
            ["sweep", "--base", base, "--aligned", aligned, "--out", str(out), *SMALL, "--no-cache"]
        )
        == 130
    )
    assert out.read_bytes() == b"previous results"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_outputs_get_the_usual_file_mode(tmp_path):
    from robustness.io.files import atomic_output

    previous = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "out.nc") as temporary:
            temporary.write_bytes(b"data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.nc").stat().st_mode) == 0o644  # not mkstemp's 0600
