"""The all-k fraction profile (probes.fraction): invariants, a naive reference, and the Haar null."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from scipy import stats
from strategies import delta_and_basis

import probes
from probes.fraction import energy_profile


def naive_fraction(delta, basis, k, pathway):
    """‖P_k ΔW‖² / ‖ΔW‖² with an explicit projector, one k at a time."""
    projector = basis[:, :k] @ basis[:, :k].T
    projected = delta @ projector if pathway == "read" else projector @ delta
    return np.sum(projected**2) / np.sum(delta**2)


@given(delta_and_basis())
def test_profile_equals_naive_per_k_projection(case):
    delta, basis, pathway, _, _ = case
    profile = probes.fraction_profile(delta, basis, pathway=pathway)
    naive = [naive_fraction(delta, basis, k, pathway) for k in range(1, basis.shape[0] + 1)]
    np.testing.assert_allclose(profile, naive, rtol=1e-10, atol=1e-12)


@given(delta_and_basis())
def test_complete_basis_captures_everything_and_profile_is_monotone(case):
    delta, basis, pathway, _, _ = case
    profile = probes.fraction_profile(delta, basis, pathway=pathway)
    assert profile[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(profile) >= -1e-15)
    assert np.all((profile >= 0) & (profile <= 1))


@given(delta_and_basis())
def test_subspace_and_its_complement_sum_to_one(case):
    delta, basis, pathway, k, _ = case
    inside = probes.fraction_profile(delta, basis[:, :k], pathway=pathway)[-1]
    if k == basis.shape[0]:
        assert inside == pytest.approx(1.0)
        return
    outside = probes.fraction_profile(delta, basis[:, k:], pathway=pathway)[-1]
    assert inside + outside == pytest.approx(1.0, abs=1e-12)


@given(delta_and_basis(), st.floats(1e-6, 1e6).flatmap(lambda c: st.sampled_from([c, -c])))
def test_invariant_to_scaling_the_delta(case, scale):
    delta, basis, pathway, _, _ = case
    np.testing.assert_allclose(
        probes.fraction_profile(scale * delta, basis, pathway=pathway),
        probes.fraction_profile(delta, basis, pathway=pathway),
        rtol=1e-9,
        atol=1e-12,
    )


@given(delta_and_basis())
def test_invariant_to_rotating_the_non_residual_side(case):
    delta, basis, pathway, _, rng = case
    n = delta.shape[0] if pathway == "read" else delta.shape[1]
    q = stats.ortho_group.rvs(n, random_state=rng) if n > 1 else -np.ones((1, 1))
    rotated = q @ delta if pathway == "read" else delta @ q
    np.testing.assert_allclose(
        probes.fraction_profile(rotated, basis, pathway=pathway),
        probes.fraction_profile(delta, basis, pathway=pathway),
        rtol=1e-9,
        atol=1e-12,
    )


@given(delta_and_basis())
def test_rotating_residual_side_with_the_basis_changes_nothing(case):
    delta, basis, pathway, _, rng = case
    r = stats.ortho_group.rvs(basis.shape[0], random_state=rng)
    rotated = delta @ r.T if pathway == "read" else r @ delta
    np.testing.assert_allclose(
        probes.fraction_profile(rotated, r @ basis, pathway=pathway),
        probes.fraction_profile(delta, basis, pathway=pathway),
        rtol=1e-9,
        atol=1e-12,
    )


@given(delta_and_basis())
@example((np.diag([3.0, 1.0]), np.eye(2), "read", 1, np.random.default_rng(0)))
def test_energy_profile_is_the_gram_diagonal_in_the_basis(case):
    delta, basis, pathway, _, _ = case
    gram = probes.residual_gram(delta, pathway=pathway)
    expected = np.diag(basis.T @ gram @ basis) / np.trace(gram)
    np.testing.assert_allclose(
        energy_profile(delta, basis, pathway=pathway), expected, rtol=1e-10, atol=1e-12
    )


def test_known_answer_on_axis_aligned_delta():
    # Read delta with energy 9 on e1, 1 on e2: F(1) = 0.9 on the standard basis, 0.1 reversed.
    delta = np.array([[3.0, 0.0], [0.0, 1.0]])
    assert probes.fraction_profile(delta, np.eye(2), pathway="read")[0] == pytest.approx(0.9)
    assert probes.fraction_profile(delta, np.eye(2)[:, ::-1], pathway="read")[0] == pytest.approx(
        0.1
    )
    # Write side reads rows: a delta writing only along e2.
    write = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    assert probes.fraction_profile(write, np.eye(2), pathway="write").tolist() == [0.0, 1.0]


def test_torch_and_numpy_inputs_agree_and_output_is_float64():
    rng = np.random.default_rng(1)
    delta, basis = rng.standard_normal((5, 6)), stats.ortho_group.rvs(6, random_state=rng)
    out = probes.fraction_profile(
        torch.tensor(delta, dtype=torch.float32), torch.tensor(basis), pathway="read"
    )
    assert out.dtype == np.float64
    np.testing.assert_allclose(
        out, probes.fraction_profile(delta, basis, pathway="read"), rtol=1e-6
    )


def test_all_zero_delta_gives_nan_and_a_warning():
    with pytest.warns(RuntimeWarning, match="all-zero delta"):
        profile = probes.fraction_profile(np.zeros((3, 4)), np.eye(4), pathway="read")
    assert np.isnan(profile).all() and profile.shape == (4,)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="`pathway` must be one of"):
        probes.fraction_profile(np.ones((2, 2)), np.eye(2), pathway="both")
    with pytest.raises(ValueError, match="residual side .n_out. of a write delta"):
        probes.fraction_profile(np.ones((3, 2)), np.eye(2), pathway="write")
    with pytest.raises(ValueError, match="must be a matrix"):
        probes.fraction_profile(np.ones(3), np.eye(3), pathway="read")


def test_gram_spectrum_is_normalised_squared_singular_values():
    delta = np.diag([2.0, 1.0, 1.0])
    np.testing.assert_allclose(probes.gram_spectrum(delta), [4 / 6, 1 / 6, 1 / 6])
    gram = probes.residual_gram(np.arange(6.0).reshape(2, 3), pathway="read")
    assert np.trace(gram) == pytest.approx(np.sum(np.arange(6.0) ** 2))


@pytest.mark.parametrize("pathway", ["read", "write"])
def test_haar_random_subspaces_have_design_mean_and_variance(pathway):
    """Monte Carlo over Haar bases against E[F] = k/d and the variance formula of docs/design.md."""
    rng = np.random.default_rng(20260511)
    d, draws = 8, 6000
    shape = (5, d) if pathway == "read" else (d, 5)
    weights = np.geomspace(1, 0.1, d)
    delta = rng.standard_normal(shape) * (
        weights[None, :] if pathway == "read" else weights[:, None]
    )
    g = probes.gram_spectrum(delta)
    samples = np.stack(
        [
            probes.fraction_profile(
                delta, stats.ortho_group.rvs(d, random_state=rng), pathway=pathway
            )
            for _ in range(draws)
        ]
    )
    k = np.arange(1, d)  # k = d has zero variance
    mean, var = samples[:, :-1].mean(axis=0), samples[:, :-1].var(axis=0, ddof=1)
    expected_mean = probes.haar_mean(k, d)
    expected_var = probes.haar_variance(k, d, g)
    # Mean: 4.5 standard errors; variance: a 4.5-sigma band from the sample kurtosis.
    se_mean = np.sqrt(expected_var / draws)
    assert np.all(np.abs(mean - expected_mean) < 4.5 * se_mean)
    fourth = np.mean((samples[:, :-1] - mean) ** 4, axis=0)
    se_var = np.sqrt((fourth - var**2) / draws)
    assert np.all(np.abs(var - expected_var) < 4.5 * se_var), (var, expected_var)
    # And the formula is not trivially satisfied: a wrong constant (no +2) would fail.
    wrong = 2 * k * (d - k) / (d * (d - 1) * d) * (np.sum(g**2) - 1 / d)
    assert np.any(np.abs(var - wrong) > 4.5 * se_var)


def test_haar_variance_vanishes_for_an_isotropic_delta_and_at_k_equals_d():
    d = 6
    assert probes.haar_variance(3, d, np.full(d, 1 / d)) == pytest.approx(0.0)
    assert probes.haar_variance(d, d, [1.0]) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert probes.haar_variance(np.arange(1, d), d, [1.0]).shape == (d - 1,)


@given(delta_and_basis())
def test_purity_without_eigendecomposition_equals_sum_of_squared_spectrum(case):
    delta = case[0]
    g = probes.gram_spectrum(delta)
    assert probes.gram_purity(delta) == pytest.approx(np.sum(g**2), rel=1e-10)
    for pathway in ("read", "write"):  # either side's Gram, when already at hand
        gram = probes.residual_gram(delta, pathway=pathway)
        assert probes.gram_purity(gram=gram) == pytest.approx(np.sum(g**2), rel=1e-10)
    k = np.arange(1, 5)
    np.testing.assert_allclose(
        probes.haar_variance(k, 12, purity=probes.gram_purity(delta)),
        probes.haar_variance(k, 12, g),
    )


@given(delta_and_basis())
def test_energy_from_the_gram_equals_energy_from_the_product(case):
    delta, basis, pathway, k, _ = case
    gram = probes.residual_gram(delta, pathway=pathway)
    factor = probes.residual_factor(pathway=pathway, gram=gram)  # the Gram alone, as for wide W
    np.testing.assert_allclose(
        factor.energies(basis[:, :k]) / factor.total,
        energy_profile(delta, basis[:, :k], pathway=pathway),
        rtol=1e-9,
        atol=1e-13,
    )


@given(delta_and_basis(), st.lists(st.integers(-1, 12), min_size=1, max_size=6))
def test_fractions_at_cutoffs_equal_the_full_profile(case, ks):
    delta, basis, pathway, _, _ = case
    d = basis.shape[0]
    ks = np.array([k if k <= d else d for k in ks])
    profile = probes.fraction_profile(delta, basis, pathway=pathway)
    expected = np.where(ks >= 1, profile[np.clip(ks, 1, d) - 1], np.nan)
    gram = probes.residual_gram(delta, pathway=pathway)
    for g in (None, gram):
        np.testing.assert_allclose(
            probes.fractions_at(delta, basis, ks, pathway=pathway, gram=g),
            expected,
            rtol=1e-9,
            atol=1e-12,
        )
    # A partial frame has no tail to read from: only its own prefix.
    part = probes.fractions_at(
        delta, basis[:, : max(1, ks.max())], ks.clip(max=max(1, ks.max())), pathway=pathway
    )
    assert part.shape == ks.shape


def _rank_deficient(case):
    """The case's delta with its residual side cut to rank 1 (a singular Gram)."""
    delta, basis, pathway, k, rng = case
    d = basis.shape[0]
    u = rng.standard_normal(d)
    if pathway == "read":
        return np.outer(rng.standard_normal(delta.shape[0]), u), basis, pathway
    return np.outer(u, rng.standard_normal(delta.shape[1])), basis, pathway


@given(delta_and_basis(), st.booleans(), st.booleans())
def test_a_residual_factor_reproduces_the_gram_and_its_energies(case, singular, gram_only):
    # An identity, not a statistic: RᵀR = G for every route (the delta itself when its
    # other side is at most d/2, G's Cholesky factor, and for a singular G the delta or
    # G's pivoted Cholesky rows), so the energies ‖R u_j‖² are those of the definition.
    delta, basis, pathway = _rank_deficient(case) if singular else case[:3]
    gram = probes.residual_gram(delta, pathway=pathway)
    factor = probes.residual_factor(
        None if gram_only else delta, pathway=pathway, gram=gram if gram_only else None
    )
    scale = np.abs(gram).max()
    np.testing.assert_allclose(factor.matrix.T @ factor.matrix, gram, atol=1e-10 * scale)
    assert factor.total == pytest.approx(np.trace(gram), rel=1e-10)
    np.testing.assert_allclose(
        factor.energies(basis), np.einsum("ij,ij->j", basis, gram @ basis), atol=1e-10 * scale
    )
    if factor.triangular:
        assert np.array_equal(np.triu(factor.matrix), factor.matrix)


def test_each_residual_factor_route_is_taken_where_it_is_cheapest():
    rng = np.random.default_rng(0)
    narrow = rng.standard_normal((3, 8))  # other side 3 ≤ d/2: the delta is its own factor
    square = rng.standard_normal((8, 8))  # full rank: the Cholesky triangle
    low = np.outer(rng.standard_normal(12), rng.standard_normal(8))  # wide, rank 1
    assert not probes.residual_factor(narrow, pathway="read").triangular
    assert probes.residual_factor(square, pathway="read").triangular
    assert probes.residual_factor(square.T, pathway="write").triangular
    pivoted = probes.residual_factor(gram=low.T @ low, pathway="read")  # rank 1: one row
    assert not pivoted.triangular and pivoted.matrix.shape == (1, 8)
    np.testing.assert_allclose(pivoted.matrix.T @ pivoted.matrix, low.T @ low, atol=1e-10)
    assert probes.residual_factor(np.zeros((12, 8)), pathway="read").matrix.shape == (0, 8)


@given(delta_and_basis(), st.lists(st.integers(-1, 12), min_size=1, max_size=6))
def test_fractions_of_several_deltas_on_one_basis_equal_each_alone(case, ks):
    delta, basis, pathway, _, rng = case
    d = basis.shape[0]
    ks = np.array([min(k, d) for k in ks])
    deltas = [delta, rng.standard_normal(delta.shape), np.zeros(delta.shape)]
    factors = [probes.residual_factor(x, pathway=pathway) for x in deltas]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warn=False: no warning for the zero delta
        together = probes.fractions_at_many(factors, basis, ks, warn=False)
    for row, x in zip(together[:2], deltas[:2], strict=True):
        np.testing.assert_allclose(
            row, probes.fractions_at(x, basis, ks, pathway=pathway), rtol=1e-12, atol=1e-14
        )
    assert np.isnan(together[2]).all()
    if (ks >= 1).any():  # with no defined cutoff nothing is computed, so nothing is said
        with pytest.warns(RuntimeWarning, match="all-zero delta"):
            probes.fractions_at_many(factors[2:], basis, ks)
