"""probes.lapack: LAPACK's tridiagonal routines without the GIL, against scipy's wrappers and numpy.

Null hypothesis of each test: the routine reached through ``scipy.linalg.cython_lapack``
computes what scipy's own wrapper (or numpy) computes. Assumption: generic spectra (no
repeated eigenvalues), so eigenvectors are defined up to sign.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import scipy.linalg
import scipy.linalg.lapack as scipy_lapack

from probes import lapack

SIZES = [1, 2, 3, 17, 64]


def symmetric(d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((3 * d, d))
    return x.T @ x / (3 * d)


@pytest.mark.parametrize("d", SIZES)
def test_dsytrd_is_scipys_and_q_t_qt_is_the_matrix(d):
    matrix = symmetric(d, d)
    reflectors, diagonal, off, tau = lapack.dsytrd(matrix)
    expected = scipy_lapack.dsytrd(matrix, lower=1)
    np.testing.assert_allclose(diagonal, expected[1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(off, expected[2][: d - 1], rtol=0, atol=1e-12)
    if d > 1:  # Q from the reflectors, as dormtr applies them
        q = lapack.dormtr(reflectors, tau, np.eye(d))
        tridiagonal = np.diag(diagonal) + np.diag(off, 1) + np.diag(off, -1)
        np.testing.assert_allclose(q @ q.T, np.eye(d), rtol=0, atol=1e-12)
        np.testing.assert_allclose(q @ tridiagonal @ q.T, matrix, rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", SIZES)
def test_the_tridiagonal_solvers_are_numpys(d):
    _, diagonal, off, _ = lapack.dsytrd(symmetric(d, 10 + d))
    tridiagonal = np.diag(diagonal) + np.diag(off, 1) + np.diag(off, -1)
    values = np.linalg.eigvalsh(tridiagonal)
    np.testing.assert_allclose(lapack.dsterf(diagonal, off), values, rtol=0, atol=1e-12)
    found, vectors = lapack.dstevd(diagonal, off)
    np.testing.assert_allclose(found, values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(d), rtol=0, atol=1e-12)
    np.testing.assert_allclose(tridiagonal @ vectors, vectors * found, rtol=0, atol=1e-12)
    if d > 1:
        first = max(0, d - 3)
        some = lapack.dstemr(diagonal, off, first, d - 1)
        reference = scipy.linalg.eigh_tridiagonal(
            diagonal, off, select="i", select_range=(first, d - 1), lapack_driver="stemr"
        )[1]
        signs = np.sign(np.sum(some * reference, axis=0))
        np.testing.assert_allclose(some * signs, reference, rtol=0, atol=1e-10)


def test_an_index_range_beyond_the_matrix_is_refused():
    _, diagonal, off, _ = lapack.dsytrd(symmetric(5, 0))
    with pytest.raises(ValueError, match="eigenvectors 3…7 of a 5 × 5"):
        lapack.dstemr(diagonal, off, 3, 7)


def test_reflectors_of_another_size_are_refused():
    """LAPACK reads through raw pointers: a mismatched shape must not reach it."""
    reflectors, _, _, tau = lapack.dsytrd(symmetric(5, 0))
    with pytest.raises(ValueError, match="reflectors"):
        lapack.dormtr(reflectors, tau, np.eye(6))


def test_lapacks_info_reaches_the_caller():
    """Null: a non-zero ``info`` is an error, not a silent result (a NaN matrix: dsterf
    does not converge)."""
    with pytest.raises(np.linalg.LinAlgError, match="dsterf failed"):
        lapack.dsterf(np.array([np.nan, 1.0, 2.0]), np.array([1.0, np.nan]))


def test_the_calls_release_the_gil():
    """ctypes releases the GIL around a CFUNCTYPE call, not a PYFUNCTYPE one."""
    for name in ("dsytrd", "dsterf", "dstevd", "dstemr", "dormtr"):
        routine = lapack._routine(name)
        assert not routine._flags_ & ctypes._FUNCFLAG_PYTHONAPI
