"""`rsf calibrate` (rsf/calibrate.py over robustness.calibration.study): the fast study that CI runs.

The fast study is far too small to judge the targets (40 studies per scenario);
it checks that every scenario and test runs, that rates pooled over the cells
where a test's assumptions hold stay near α, that the tests have power, and
that the intervals cover. The full study's figures are in the README.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from robustness.io.datasets import open_dataset
from rsf.main import main


@pytest.mark.slow
def test_fast_calibration_runs_every_scenario_holds_its_level_and_has_power(tmp_path, capsys):
    out = tmp_path / "calibration.nc"
    assert main(["calibrate", "--fast", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "type-I error" in printed and "misses against the targets" in printed
    assert "sequence bootstrap coverage" in printed
    calibration = open_dataset(out)
    # The sequence-bootstrap study's own description (it used to be read after being dropped).
    assert "simulated corpora per chunk effect" in calibration.attrs["sequence_bootstrap"]
    assert set(calibration.scenario.values) >= {"null", "correlated ρ≈0.5", "correlated ρ≈0.8",
                                                "shared components", "skewed", "both concentrated",
                                                "demo size", "24 layers", "two pairs"}  # fmt: skip
    type1 = calibration.type1_error.where(calibration.assumptions_hold == 1)
    # Pooled over the cells where the EWC test's assumptions hold: near α (binomial SE ≈ 0.013).
    pooled = float(type1.sel(test="ewc").mean())
    assert 0.0 < pooled < 0.1
    # Where they do not (correlated layers, ρ ≈ 0.8) the exchangeable sign-flip test over-rejects.
    assert float(calibration.type1_error.sel(test="signflip", scenario="correlated ρ≈0.8")) > 0.2
    assert int(calibration.assumptions_hold.sel(test="signflip", scenario="correlated ρ≈0.8")) == 0
    assert np.isfinite(calibration.type1_error.sel(test="pair_difference", scenario="two pairs"))
    assert (
        calibration.power.sel(plant="read", strength=0.2, test=["ewc", "joint_share"]) > 0.8
    ).all()
    # A write plant shows with the unembed specifications (any adjusted p), while the
    # joint tests, which look for read > write only, stay silent.
    write = calibration.power.sel(plant="write", strength=0.2)
    assert (write.sel(test=["bh_any", "wy_any"]) > 0.8).all()
    assert float(write.sel(test="joint_share")) < 0.1
    assert float(calibration.coverage.sel(interval="ewc", coverage_scenario="null")) > 0.85
    assert calibration.seq_coverage.sizes == {
        "seq_method": 2,
        "chunk_effect": 2,
        "seq_replicates": 2,
        "seq_cutoff": 3,
    }
    assert json.loads(calibration.attrs["type1_target"]) == [0.03, 0.07]
