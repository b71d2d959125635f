"""The planted-truth simulation (robustness.calibration): an exchangeable null, a read plant that
concentrates the read deltas."""

from __future__ import annotations

import numpy as np

from robustness.asymmetry import layer_differences
from robustness.calibration import SPECS, CalibrationSettings, simulate_probe


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
