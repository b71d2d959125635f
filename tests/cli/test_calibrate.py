"""`rsf calibrate` (rsf/calibrate.py over robustness.calibration): the fast study that CI runs
holds its level, has power and covers."""

from __future__ import annotations

import json

import pytest

from robustness.dataset import open_dataset
from rsf.main import main


@pytest.mark.slow
def test_fast_calibration_holds_its_level_and_has_power(tmp_path, capsys):
    out = tmp_path / "calibration.nc"
    assert main(["calibrate", "--fast", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "type-I error" in printed and "misses against the targets" in printed
    calibration = open_dataset(out)
    # 200 null pairs: a test at level 0.05 stays below 0.1 unless it is broken.
    assert (calibration.type1_error < 0.1).all()
    assert (calibration.power.sel(plant="read", strength=0.2) > 0.8).all()
    # A write plant shows with the unembed specifications (any adjusted p), while the
    # joint tests, which look for read > write only, stay silent.
    write = calibration.power.sel(plant="write", strength=0.2)
    assert (write.sel(test=["bh_any", "wy_any"]) > 0.8).all()
    assert (calibration.power.sel(plant="write", strength=0.2, test="joint_share") < 0.05).all()
    assert float(calibration.coverage.sel(interval="bootstrap-t", scenario="null")) > 0.88
    assert json.loads(calibration.attrs["type1_target"]) == [0.03, 0.07]
