"""Rank cutoffs (probes.cutoffs) on known spectra, and the Marchenko–Pastur rule on simulated Wishart data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from probes import parse_cutoff, resolve_cutoff, validate_cutoffs
from probes.cutoffs import UNDEFINED, _mp_median, participation_ratio


@pytest.mark.parametrize(
    ("label", "d", "expected"),
    [
        ("k=8", 768, 8),
        ("k=1", 2, 1),
        ("frac=0.05", 768, 38),
        ("frac=0.05", 10, 1),
        ("frac=1", 12, 12),
        ("frac=0.25", 6, 2),
    ],  # round(1.5) = 2 (Python rounds half to even)
)
def test_fixed_and_fractional_cutoffs(label, d, expected):
    assert resolve_cutoff(label, d=d) == expected


def test_variance_cutoff_reaches_the_target_exactly():
    spectrum = np.array([5.0, 3.0, 1.0, 1.0])  # cumulative 0.5, 0.8, 0.9, 1.0
    assert resolve_cutoff("var=0.5", d=4, spectrum=spectrum) == 1
    assert resolve_cutoff("var=0.8", d=4, spectrum=spectrum) == 2
    assert resolve_cutoff("var=0.81", d=4, spectrum=spectrum) == 3
    assert resolve_cutoff("var=0.9", d=4, spectrum=spectrum) == 3
    assert resolve_cutoff("var=1", d=4, spectrum=spectrum) == 4


def test_participation_ratio_on_known_spectra():
    assert resolve_cutoff("pr", d=10, spectrum=np.ones(10)) == 10
    assert resolve_cutoff("pr", d=10, spectrum=np.r_[1.0, np.zeros(9)]) == 1
    assert participation_ratio([2.0, 1.0, 1.0]) == pytest.approx(16 / 6)
    assert resolve_cutoff("pr", d=3, spectrum=[2.0, 1.0, 1.0]) == 3  # round(2.67)


@given(st.lists(st.floats(0.0, 1e6), min_size=1, max_size=40).filter(lambda s: sum(s) > 1e-3))
def test_participation_ratio_lies_between_one_and_the_dimension(spectrum):
    k = resolve_cutoff("pr", d=len(spectrum), spectrum=sorted(spectrum, reverse=True))
    assert 1 <= k <= len(spectrum)


@given(st.lists(st.floats(1e-6, 1e6), min_size=2, max_size=40), st.floats(0.01, 1.0))
def test_variance_cutoff_is_the_smallest_k_reaching_the_target(spectrum, target):
    lam = np.sort(spectrum)[::-1]
    k = resolve_cutoff(f"var={target!r}", d=lam.size, spectrum=lam)
    share = np.cumsum(lam) / lam.sum()
    assert share[k - 1] >= target - 1e-12
    assert k == 1 or share[k - 2] < target


def test_marchenko_pastur_counts_planted_spikes():
    rng = np.random.default_rng(0)
    d, n = 60, 3000
    scales = np.ones(d)
    scales[:3] = np.sqrt([30.0, 15.0, 6.0])
    x = rng.standard_normal((n, d)) * scales
    eig = np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1]
    assert resolve_cutoff("mp", d=d, spectrum=eig, n_samples=n) == 3
    # Pure noise has nothing above the edge: the rule is undefined there.
    noise = np.linalg.eigvalsh(np.cov(rng.standard_normal((n, d)).T, bias=True))[::-1]
    assert resolve_cutoff("mp", d=d, spectrum=noise, n_samples=n) == UNDEFINED


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.9])
def test_mp_median_matches_simulated_wishart_median(ratio):
    rng = np.random.default_rng(1)
    d = 400
    n = int(d / ratio)
    x = rng.standard_normal((n, d))
    eig = np.linalg.eigvalsh(x.T @ x / n)  # unit-variance noise, uncentred
    assert np.median(eig) == pytest.approx(_mp_median(d / n), rel=0.03)


def test_cutoffs_undefined_for_a_construction_give_minus_one():
    assert resolve_cutoff("var=0.9", d=8, spectrum=None) == UNDEFINED
    assert resolve_cutoff("pr", d=8, spectrum=None) == UNDEFINED
    assert resolve_cutoff("mp", d=8, spectrum=np.ones(8), n_samples=None) == UNDEFINED
    assert resolve_cutoff("k=3", d=8, spectrum=None) == 3


def test_labels_parse_to_canonical_spelling():
    assert [parse_cutoff(s).label for s in ["k=8", " frac = 0.05", "var=0.90", "pr", "mp"]] == [
        "k=8",
        "frac=0.05",
        "var=0.9",
        "pr",
        "mp",
    ]


@pytest.mark.parametrize("label", ["x=3", "k=0", "k=2.5", "var=1.5", "frac=0", "k=", "top8"])
def test_bad_labels_are_errors_saying_what_is_allowed(label):
    with pytest.raises(ValueError, match="cutoff"):
        parse_cutoff(label)


def test_k_larger_than_d_is_a_configuration_error():
    with pytest.raises(ValueError, match="exceeds the residual width d=16"):
        validate_cutoffs(["k=4", "k=32"], 16)
    assert [c.label for c in validate_cutoffs(["k=16", "pr"], 16)] == ["k=16", "pr"]
