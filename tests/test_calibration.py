"""`rsf calibrate`: the planted-truth simulation and the fast study CI runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robustness.asymmetry import layer_differences
from robustness.calibration import SPECS, CalibrationSettings, simulate_probe
from robustness.dataset import open_dataset
from rsf.main import main


def test_null_is_exchangeable_and_the_read_plant_concentrates_read_deltas():
    settings = CalibrationSettings()
    rng = np.random.default_rng(0)
    null = simulate_probe(rng, settings, n_layers=300)
    j = SPECS.index(("act_cov", "k=4", "log_isotropic"))
    d = layer_differences(null, [0, 1], [2, 3])[:, j]
    assert abs(d.mean()) < 4 * d.std() / np.sqrt(d.size)
    planted = simulate_probe(rng, settings, read_strength=0.5, n_layers=100)
    # Read deltas line up with the read site's principal directions: log2(F·d/k) well above 0.
    assert planted[:, :2, j].mean() > 1.0 and abs(planted[:, 2:, j].mean()) < 0.5


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
