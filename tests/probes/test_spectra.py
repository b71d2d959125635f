"""Partial eigendecompositions (probes.spectra) against the full ``numpy.linalg.eigh`` path.

The full path is what the sweep does today: :func:`probes.covariance_subspace`
on the upper triangle, :func:`probes.resolve_cutoff` on its spectrum and
:func:`probes.fractions_at_many` on its complete basis. Subspaces are compared
through the fractions of random deltas (projector energies), never through
the eigenvectors themselves, whose signs and rotations inside an eigenspace
are arbitrary.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy.stats import ortho_group

import probes
from probes import spectra

TOLERANCE = 1e-10
SOLVERS = ("tridiagonal", "full", "auto")


def full_path(matrix, cutoffs, n_samples=None):
    """``(ks, basis, spectrum)`` as the sweep computes them today (upper triangle read)."""
    subspace = probes.covariance_subspace(
        np.zeros(len(matrix)), np.triu(matrix), 1, centred=False, upper_only=True
    )
    ks = np.array([
        probes.resolve_cutoff(c, d=len(matrix), spectrum=subspace.spectrum, n_samples=n_samples)
        for c in cutoffs
    ])  # fmt: skip
    return ks, subspace.basis, subspace.spectrum


def random_factors(rng, d, count=3):
    """Residual factors of random deltas: both pathways, wide and narrow (Cholesky and itself)."""
    shapes = [("read", (max(1, d // 3), d)), ("write", (d, 2 * d)), ("read", (2 * d, d))]
    return [
        probes.residual_factor(rng.standard_normal(shape) * rng.uniform(0.1, 3.0, d)[None, :]
                               if pathway == "read" else rng.standard_normal(shape),
                               pathway=pathway)
        for pathway, shape in shapes[:count]
    ]  # fmt: skip


def wishart(rng, d, samples=None, decay=0.05):
    """A covariance of Gaussian samples with a geometric spectrum (generic: no near-ties)."""
    samples = samples or 3 * d
    x = rng.standard_normal((samples, d)) * np.geomspace(1.0, decay, d)
    return x.T @ x / samples


def min_gap_at(spectrum, ks):
    """The smallest ``λ_k − λ_{k+1}`` over the defined cutoffs, relative to ``λ_1``."""
    gaps = [spectrum[k - 1] - spectrum[k] for k in ks if 1 <= k < len(spectrum)]
    return min(gaps, default=np.inf) / spectrum[0]


CUTOFF_LABELS = st.lists(
    st.sampled_from(["k=1", "k=2", "k=5", "frac=0.25", "frac=0.9", "var=0.5", "var=0.9",
                     "var=0.99", "pr", "mp"]),
    min_size=1, max_size=5, unique=True,
)  # fmt: skip


@given(
    d=st.integers(2, 40),
    cutoffs=CUTOFF_LABELS,
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-6, 1e6),
)
def test_fractions_equal_the_full_eigh_path(d, cutoffs, seed, scale):
    """Null: every solver's ks equal the full path's and its fractions agree to 1e-10.

    Assumption: the gap at each cutoff exceeds 1e-7·λ₁ (any two backward-stable
    solvers agree to about ε‖C‖/gap there; Wishart spectra repel, so this
    excludes almost nothing), and no cutoff sits within round-off of a tie
    (pr within 1e-9 of a half-integer), where the k itself is round-off.
    """
    cutoffs = [c for c in cutoffs if not (c.startswith("k=") and int(c[2:]) > d)]
    assume(cutoffs)
    rng = np.random.default_rng(seed)
    matrix = scale * wishart(rng, d)
    ks, basis, spectrum = full_path(matrix, cutoffs, n_samples=3 * d)
    assume(min_gap_at(spectrum, ks) > 1e-7)
    participation = spectrum.sum() ** 2 / (spectrum**2).sum()
    assume(abs(participation - np.floor(participation) - 0.5) > 1e-9)
    factors = random_factors(rng, d)
    expected = probes.fractions_at_many(factors, basis, ks, warn=False)
    for method in SOLVERS:
        # The lower triangle is never read: garbage there changes nothing.
        found = spectra.partial_eigh(
            np.triu(matrix) + np.tril(rng.standard_normal((d, d)), -1), cutoffs,
            n_samples=3 * d, method=method,
        )  # fmt: skip
        np.testing.assert_array_equal(found.ks, ks)
        np.testing.assert_allclose(found.fractions(factors), expected, rtol=0, atol=TOLERANCE)


@given(d=st.integers(2, 60), ks=st.lists(st.integers(-1, 60), min_size=1, max_size=6))
def test_needed_columns_are_the_columns_fractions_at_many_reads(d, ks):
    """Null: fractions on a basis whose other columns are NaN equal those on the whole basis,
    bit for bit (the rule is :func:`probes.fractions_at_many`'s for a complete basis)."""
    ks = np.array([min(k, d) for k in ks])
    rng = np.random.default_rng(d)
    basis = ortho_group.rvs(d, random_state=rng) if d > 1 else np.ones((1, 1))
    lo, hi = spectra.needed_columns(ks, d)
    holes = np.full_like(basis, np.nan)
    holes[:, :lo], holes[:, hi:] = basis[:, :lo], basis[:, hi:]
    factors = random_factors(rng, d, count=2)
    np.testing.assert_array_equal(
        probes.fractions_at_many(factors, holes, ks), probes.fractions_at_many(factors, basis, ks)
    )


@pytest.mark.parametrize("edge", ["1", "d-1", "d"])
@pytest.mark.parametrize("method", SOLVERS)
def test_the_extreme_cutoffs(edge, method):
    """Null: k_max = 1 (one top column), d − 1 (one bottom column: F = 1 − e_d) and d (no
    column: F = 1) agree with the full path to 1e-10. Assumption: a generic spectrum."""
    d = 50
    rng = np.random.default_rng(7)
    matrix = wishart(rng, d)
    cutoffs = [f"k={ {'1': 1, 'd-1': d - 1, 'd': d}[edge] }"]
    ks, basis, _ = full_path(matrix, cutoffs)
    factors = random_factors(rng, d)
    found = spectra.partial_eigh(np.triu(matrix), cutoffs, method=method)
    np.testing.assert_array_equal(found.ks, ks)
    expected = probes.fractions_at_many(factors, basis, ks)
    np.testing.assert_allclose(found.fractions(factors), expected, rtol=0, atol=TOLERANCE)
    assert found.head.shape[1] + found.tail.shape[1] == {"1": 1, "d-1": 1, "d": 0}[edge]


def planted(rng, d, k, gap):
    """``Q diag(λ) Qᵀ`` with ``λ_{k+1} = λ_k (1 − gap)`` (gap 0: an exactly repeated eigenvalue)."""
    values = np.sort(rng.uniform(0.01, 1.0, d))[::-1]
    values[k] = values[k - 1] * (1.0 - gap)
    rotation = ortho_group.rvs(d, random_state=rng)
    return (rotation * values) @ rotation.T


@pytest.mark.parametrize("gap", [1e-3, 1e-4, 1e-5])
@pytest.mark.parametrize("d", [12, 120])
def test_a_near_degenerate_pair_straddling_the_cutoff(gap, d):
    """Null: with λ_k − λ_{k+1} = gap·λ_k at the cutoff k, F(k) (and F(k ± 1)) agree with the
    full path to 1e-10. Assumption: gap ≥ 1e-5, where the top-k subspace of C is determined to
    about ε/gap ≈ 2e-11 (at 1e-6, d = 12, two solvers already differ by 1.5e-10)."""
    rng = np.random.default_rng(int(1 / gap) + d)
    k = d // 3
    for _ in range(5):
        matrix = planted(rng, d, k, gap)
        cutoffs = [f"k={k}", f"k={k - 1}", f"k={k + 1}", "var=0.5"]
        ks, basis, _ = full_path(matrix, cutoffs)
        factors = random_factors(rng, d)
        expected = probes.fractions_at_many(factors, basis, ks)
        for method in SOLVERS:
            found = spectra.partial_eigh(np.triu(matrix), cutoffs, method=method)
            np.testing.assert_array_equal(found.ks, ks)
            np.testing.assert_allclose(found.fractions(factors), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("gap", [1e-6, 1e-7, 1e-8, 1e-9])
@pytest.mark.parametrize("d", [12, 120])
def test_a_tighter_pair_is_as_close_as_another_full_solver(gap, d):
    """Below a gap of about 1e-5 the fraction at the cutoff is not determined to 1e-10 by C
    itself: two full solvers already differ by more (ε/gap). Null: over 10 such matrices the
    partial path is no farther from numpy's full path than 10 times the farther of two other
    full solvers (scipy's dsyevr and torch's eigh), or 1e-10."""
    rng = np.random.default_rng(d + int(1 / gap))
    k = d // 3
    mine, theirs = 0.0, 0.0
    for _ in range(10):
        matrix = np.triu(planted(rng, d, k, gap))
        factor = probes.residual_factor(rng.standard_normal((d, d)), pathway="read")
        reference = full_path(matrix, [f"k={k}"])[1]
        others = [
            scipy.linalg.eigh(matrix, lower=False, driver="evr")[1][:, ::-1],
            torch.linalg.eigh(torch.from_numpy(matrix), UPLO="U")[1].numpy()[:, ::-1],
        ]
        expected = probes.fractions_at_many([factor], reference, [k])[0, 0]
        found = spectra.partial_eigh(matrix, [f"k={k}"], method="tridiagonal")
        mine = max(mine, abs(found.fractions([factor])[0, 0] - expected))
        for other in others:
            theirs = max(
                theirs, abs(probes.fractions_at_many([factor], other, [k])[0, 0] - expected)
            )
    assert mine <= max(TOLERANCE, 10 * theirs)


@pytest.mark.parametrize("d", [12, 120])
def test_an_exactly_repeated_eigenvalue_at_the_cutoff(d):
    """With λ_k = λ_{k+1} the top-k subspace is any k-plane between the top k − 1 and the top
    k + 1 eigenspaces: F(k) is not a function of C, and no two solvers need agree on it.

    Null: F(k − 1) and F(k + 1) (well determined) agree with the full path to 1e-10, and each
    solver's F(k) lies, within 1e-10, between F(k − 1) plus the least and plus the largest
    energy share of G on the repeated eigenspace (the extreme choices of the k-th direction).
    """
    rng = np.random.default_rng(d)
    k = d // 3
    matrix = planted(rng, d, k, 0.0)
    cutoffs = [f"k={k - 1}", f"k={k}", f"k={k + 1}"]
    ks, basis, _ = full_path(matrix, cutoffs)
    delta = rng.standard_normal((d, d))
    factor = probes.residual_factor(delta, pathway="read")
    expected = probes.fractions_at_many([factor], basis, ks)[0]
    pair = basis[:, k - 1 : k + 1]  # the repeated eigenspace (well determined: 2-D)
    shares = np.linalg.eigvalsh(pair.T @ (delta.T @ delta) @ pair) / factor.total
    low, high = expected[0] + shares[0], expected[0] + shares[1]
    for method in SOLVERS:
        found = spectra.partial_eigh(np.triu(matrix), cutoffs, method=method).fractions([factor])[0]
        np.testing.assert_allclose(found[[0, 2]], expected[[0, 2]], rtol=0, atol=TOLERANCE)
        assert low - TOLERANCE <= found[1] <= high + TOLERANCE
    assert low - TOLERANCE <= expected[1] <= high + TOLERANCE


@pytest.mark.parametrize("hint", [None, 160])
@pytest.mark.parametrize("k_max", [4, 40, 140])
def test_both_ways_to_the_tridiagonal_eigenvectors(k_max, hint):
    """Null: one MRRR call per index range (few columns) and divide and conquer for all of T's
    vectors (beyond ALL_VECTORS_SHARE of d; with a `hint` of many columns, before any
    spectrum, which then comes from it) give the full path's ks and fractions to 1e-10, on a
    bootstrap-like covariance (chunk-reweighted samples, two massive directions), with the
    spectrum cutoffs var, pr and mp beside k. Assumption: a generic spectrum."""
    rng = np.random.default_rng(k_max)
    d, tokens = 160, 640
    x = rng.standard_normal((tokens, d)) / np.sqrt(np.arange(1, d + 1))
    x[:, :2] *= [8.0, 4.0]
    weights = np.repeat(rng.multinomial(32, np.full(32, 1 / 32)), tokens // 32).astype(float)
    mean = weights @ x / weights.sum()
    matrix = x.T @ (x * weights[:, None]) / weights.sum() - np.outer(mean, mean)
    cutoffs = [f"k={k_max}", "var=0.5", "pr", "mp"]
    ks, basis, _ = full_path(matrix, cutoffs, n_samples=tokens)
    factors = random_factors(rng, d)
    expected = probes.fractions_at_many(factors, basis, ks)
    found = spectra.partial_eigh(
        np.triu(matrix), cutoffs, n_samples=tokens, method="tridiagonal", hint=hint
    )
    np.testing.assert_array_equal(found.ks, ks)
    np.testing.assert_allclose(found.fractions(factors), expected, rtol=0, atol=TOLERANCE)


def test_full_is_the_sweeps_own_numbers_bit_for_bit():
    """Null: the fallback changes no number: spectrum and columns equal
    :func:`probes.covariance_subspace`'s exactly."""
    rng = np.random.default_rng(3)
    matrix = wishart(rng, 30)
    ks, basis, spectrum = full_path(matrix, ["k=3", "var=0.9"])
    found = spectra.partial_eigh(np.triu(matrix), ["k=3", "var=0.9"], method="full")
    np.testing.assert_array_equal(found.values, spectrum)
    np.testing.assert_array_equal(found.head, basis[:, : found.lo])
    np.testing.assert_array_equal(found.tail, basis[:, found.hi :])


@given(d=st.integers(2, 30), seed=st.integers(0, 2**32 - 1))
def test_participation_ratio_from_the_moments(d, seed):
    """Null: ``pr`` from ``(tr C, ‖C‖_F²)`` is ``pr`` from the spectrum. Assumption: the ratio
    is not within 1e-9 of a half-integer (where round-off decides the rounding)."""
    matrix = wishart(np.random.default_rng(seed), d)
    _, _, spectrum = full_path(matrix, ["pr"])
    participation = spectrum.sum() ** 2 / (spectrum**2).sum()
    assume(abs(participation - np.floor(participation) - 0.5) > 1e-9)
    moments = spectra.upper_moments(np.triu(matrix))
    assert spectra.resolve_ks(["pr"], d, moments=moments)[0] == probes.resolve_cutoff(
        "pr", d=d, spectrum=spectrum
    )
    reduction = spectra.reduce_tridiagonal(np.triu(matrix))
    np.testing.assert_allclose(reduction.moments, moments, rtol=1e-12)


def test_a_batch_of_tensors_on_a_pool_equals_one_by_one():
    """Null: torch input, per-matrix n_samples and a thread pool change no number."""
    rng = np.random.default_rng(4)
    batch = np.stack([np.triu(wishart(rng, 25)) for _ in range(4)])
    cutoffs = ["k=2", "var=0.9", "mp"]
    serial = [spectra.partial_eigh(m, cutoffs, n_samples=75) for m in batch]
    with ThreadPoolExecutor(max_workers=2) as pool:
        pooled = spectra.partial_eighs(torch.from_numpy(batch), cutoffs, n_samples=[75] * 4,
                                       pool=pool)  # fmt: skip
    for one, other in zip(serial, pooled, strict=True):
        np.testing.assert_array_equal(one.ks, other.ks)
        np.testing.assert_array_equal(one.head, other.head)
        np.testing.assert_array_equal(one.values, other.values)


def test_the_batched_device_path():
    """Null: one batched torch eigh on a device (here the CPU, as on a GPU) gives the full
    path's ks and its fractions to 1e-10 (another LAPACK, so not bit for bit)."""
    rng = np.random.default_rng(8)
    matrices = [wishart(rng, 30) for _ in range(3)]
    cutoffs = ["k=3", "var=0.9", "pr"]
    found = spectra.partial_eighs(np.stack([np.triu(m) for m in matrices]), cutoffs, device="cpu")
    for matrix, one in zip(matrices, found, strict=True):
        ks, basis, _ = full_path(matrix, cutoffs)
        factors = random_factors(rng, 30)
        np.testing.assert_array_equal(one.ks, ks)
        expected = probes.fractions_at_many(factors, basis, ks)
        np.testing.assert_allclose(one.fractions(factors), expected, rtol=0, atol=TOLERANCE)


def test_lobpcg_from_a_warm_start():
    """Null: warm-started from the eigenvectors of a nearby matrix, LOBPCG's top-k fractions
    equal the full path's to 1e-10. Assumption: a wide gap at k (a spiked spectrum), the
    case where an iterative solver converges to that accuracy at all."""
    rng = np.random.default_rng(5)
    d, k = 60, 3
    values = np.r_[[50.0, 30.0, 20.0], rng.uniform(0.1, 1.0, d - k)]
    rotation = ortho_group.rvs(d, random_state=rng)
    matrix = (rotation * values) @ rotation.T
    nearby = matrix + 0.05 * wishart(rng, d)
    start = np.linalg.eigh(nearby)[1][:, ::-1][:, :k]  # pr may ask more: LOBPCG fills the block
    ks, basis, _ = full_path(matrix, [f"k={k}", "pr"])
    factors = random_factors(rng, d)
    found = spectra.partial_eigh(np.triu(matrix), [f"k={k}", "pr"], method="lobpcg", start=start)
    np.testing.assert_array_equal(found.ks, ks)
    expected = probes.fractions_at_many(factors, basis, ks)
    np.testing.assert_allclose(found.fractions(factors), expected, rtol=0, atol=TOLERANCE)


def test_what_each_solver_refuses():
    """The solvers without a spectrum or bottom columns say so instead of guessing."""
    matrix = np.triu(wishart(np.random.default_rng(6), 20))
    with pytest.raises(ValueError, match="no spectrum"):
        spectra.partial_eigh(matrix, ["var=0.9"], method="subset")
    with pytest.raises(ValueError, match="bottom"):
        spectra.partial_eigh(matrix, ["k=19"], method="subset")
    with pytest.raises(ValueError, match="start"):
        spectra.partial_eigh(matrix, ["k=2"], method="lobpcg")
    with pytest.raises(ValueError, match="method"):
        spectra.partial_eigh(matrix, ["k=2"], method="eig")
    with pytest.raises(ValueError, match="square"):
        spectra.partial_eigh(matrix[:3], ["k=2"])
    with pytest.raises(ValueError, match="needs the spectrum"):
        spectra.resolve_ks(["mp"], 20, moments=(1.0, 1.0))


def test_the_policy_is_the_measured_crossover():
    """The tridiagonal solver up to the measured share of d columns, the full one beyond; with
    the columns unknown, the tridiagonal one wherever it wins at all."""
    widths, shares = zip(*spectra.CROSSOVER, strict=True)
    for d, share in spectra.CROSSOVER:
        assert spectra.tridiagonal_share(d) == share
    assert spectra.tridiagonal_share(64) == shares[0] == 0.0
    assert spectra.tridiagonal_share(2 * widths[-1]) == shares[-1] == 1.0
    assert spectra.tridiagonal_share(1408) == pytest.approx((shares[3] + shares[4]) / 2)
    assert spectra.choose_solver(2048, int(0.65 * 2048), spectrum=True) == "tridiagonal"
    assert spectra.choose_solver(2048, int(0.65 * 2048) + 1, spectrum=False) == "full"
    assert spectra.choose_solver(4096, 4096, spectrum=True) == "tridiagonal"
    assert spectra.choose_solver(768, None, spectrum=True) == "tridiagonal"
    assert spectra.choose_solver(128, None, spectrum=True) == "full"
    assert spectra.choose_solver(128, 1, spectrum=False) == "full"
