"""Every normalisation (probes.normalise) against its closed form."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from probes import NORMALISATIONS, haar_variance, normalise


def test_closed_forms():
    d, k, f = 64, 8, 0.5
    assert normalise("fraction", f, k, d) == 0.5
    assert normalise("isotropic", f, k, d) == pytest.approx(0.5 / (8 / 64))  # = 4
    assert normalise("log_isotropic", f, k, d) == pytest.approx(2.0)
    assert normalise("base_relative", f, k, d, base_fraction=0.25) == pytest.approx(2.0)
    g = np.r_[0.7, np.full(9, 0.3 / 9)]
    var = 2 * k * (d - k) / (d * (d - 1) * (d + 2)) * (np.sum(g**2) - 1 / d)
    assert normalise("null_z", f, k, d, gram_spectrum=g) == pytest.approx(
        (f - k / d) / np.sqrt(var)
    )


@given(
    st.integers(2, 500).flatmap(lambda d: st.tuples(st.just(d), st.integers(1, d))),
    st.floats(0.0, 1.0),
)
def test_isotropic_is_one_at_the_haar_mean_and_at_most_d_over_k(dk, fraction):
    d, k = dk
    assert normalise("isotropic", k / d, k, d) == pytest.approx(1.0)
    assert normalise("isotropic", fraction, k, d) <= d / k + 1e-9
    assert normalise("log_isotropic", k / d, k, d) == pytest.approx(0.0, abs=1e-12)


def test_vectorised_over_k_and_undefined_cutoff_gives_nan():
    out = normalise("isotropic", np.array([0.5, 0.5, 0.5]), np.array([4, -1, 8]), 16)
    np.testing.assert_allclose(out, [2.0, np.nan, 1.0])
    assert np.isnan(normalise("null_z", 0.3, -1, 16, gram_spectrum=[1.0]))


def test_null_z_uses_the_haar_variance():
    g = np.array([0.5, 0.3, 0.2])
    k, d = np.arange(1, 10), 10
    z = normalise("null_z", k / d + 0.01, k, d, gram_spectrum=g)
    np.testing.assert_allclose(z, 0.01 / np.sqrt(haar_variance(k, d, g)))


def test_missing_inputs_and_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="base_fraction"):
        normalise("base_relative", 0.5, 2, 8)
    with pytest.raises(ValueError, match="gram_spectrum"):
        normalise("null_z", 0.5, 2, 8)
    with pytest.raises(
        ValueError, match="unknown normalisation 'zscore'.*" + ", ".join(NORMALISATIONS)
    ):
        normalise("zscore", 0.5, 2, 8)


def test_null_z_from_purity_equals_null_z_from_the_spectrum():
    g = np.array([0.6, 0.25, 0.15])
    assert normalise("null_z", 0.4, 2, 10, purity=float(np.sum(g**2))) == pytest.approx(
        normalise("null_z", 0.4, 2, 10, gram_spectrum=g)
    )
