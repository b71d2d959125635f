"""The planted-truth simulation and the calibration study (robustness.calibration.simulation, robustness.calibration.study,
robustness.calibration.sequence)."""

from __future__ import annotations

import numpy as np
import pytest

import probes
from robustness.calibration.sequence import _cutoffs
from robustness.calibration.simulation import GRIDS, Scenario, simulate
from robustness.calibration.study import CALIBRATED, TESTS, scenarios
from robustness.stats.asymmetry import layer_differences
from robustness.stats.layers import lag1_autocorrelation

J = GRIDS["calibration"].index(CALIBRATED)


def _d(scenario, n_layers, seed=0):
    sim = simulate(np.random.default_rng(seed), scenario, n_layers=n_layers)
    return layer_differences(sim.s[0], [0, 1], [2, 3]), sim


def test_the_isotropic_null_has_mean_zero_and_independent_layers():
    """H0 by construction: read and write deltas exchangeable, layers drawn independently."""
    d, _ = _d(Scenario("null", ""), 400)
    x = d[:, J]
    assert abs(x.mean()) < 4 * x.std() / np.sqrt(x.size)
    assert abs(float(lag1_autocorrelation(x)[0])) < 0.15


def test_correlated_draws_give_correlated_layer_differences_with_mean_zero():
    """The AR(1) chain of the draws reaches D_l: lag-1 autocorrelation near the scenario's nominal value."""
    by_name = {s.name: s for s in scenarios()}
    for name, low, high in (("correlated ρ≈0.5", 0.35, 0.65), ("correlated ρ≈0.8", 0.7, 0.92)):
        d, _ = _d(by_name[name], 1500, seed=3)
        assert low < float(lag1_autocorrelation(d[:, J])[0]) < high, name
        assert abs(d[:, J].mean()) < 0.2


def test_the_read_plant_concentrates_read_deltas_and_the_write_plant_write_deltas():
    d, sim = _d(Scenario("read", "", read_strength=0.5), 60)
    assert sim.s[0, :, :2, J].mean() > 1.0 and abs(sim.s[0, :, 2:, J].mean()) < 0.5
    unembed = GRIDS["calibration"].index(("unembed", "k=4", "log_isotropic"))
    _, sim = _d(Scenario("write", "", write_strength=0.5), 60)
    assert sim.s[0, :, 2:, unembed].mean() > 1.0 > sim.s[0, :, :2, unembed].mean()


def test_shared_components_correlate_q_with_k_and_o_with_down_only():
    _, sim = _d(Scenario("shared", "", shared=0.8), 300)
    s = sim.s[0, :, :, J]
    corr = np.corrcoef(s.T)
    assert corr[0, 1] > 0.4 and corr[2, 3] > 0.4 and abs(corr[0, 2]) < 0.15


def test_random_control_values_average_their_haar_reference():
    """The random construction's probe against probes.haar_log2_ratio_mean of each delta (Monte Carlo)."""
    _, sim = _d(Scenario("null", ""), 300)
    j = GRIDS["calibration"].index(("random", "k=4", "log_isotropic"))
    reference = probes.haar_log2_ratio_mean(sim.k[0, :, :, j], 24, sim.purity[0])
    error = sim.s[0, :, :, j] - reference
    assert abs(error.mean()) < 4 * error.std() / np.sqrt(error.size)


def test_the_row_wise_cutoffs_equal_resolve_cutoff():
    rng = np.random.default_rng(1)
    spectra = np.sort(rng.gamma(0.7, 1.0, (40, 24)), axis=1)[:, ::-1]
    expected = [
        [probes.resolve_cutoff(c, d=24, spectrum=row) for c in ("k=8", "var=0.9", "pr")]
        for row in spectra
    ]
    np.testing.assert_array_equal(_cutoffs(spectra, 24), expected)


def test_every_scenario_names_a_known_grid_and_the_tests_are_listed_once():
    assert len(set(TESTS)) == len(TESTS)
    for scenario in scenarios():
        assert CALIBRATED in scenario.specs
    with pytest.raises(KeyError):
        _ = Scenario("x", "", grid="unknown").specs
