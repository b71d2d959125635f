"""The paper's names (robustness.settings.specification): the probe scale of each normalisation."""

from __future__ import annotations

import numpy as np

from robustness.settings.specification import probe_scale


def test_ratio_normalisations_go_to_the_log_scale():
    np.testing.assert_allclose(
        probe_scale(np.array([1.0, 4.0, 0.0]), "isotropic"), [0.0, 2.0, np.nan]
    )
    np.testing.assert_allclose(probe_scale(np.array([0.5, -1.0]), "null_z"), [0.5, -1.0])
