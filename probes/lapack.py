"""LAPACK's symmetric tridiagonal routines, called with the GIL released.

:mod:`probes.spectra` runs ``dsytrd``, ``dsterf``, ``dstemr``, ``dstevd`` and
``dormtr`` on the sweep's pool (:func:`robustness.measure.grid.worker_pool`:
two threads, one BLAS thread each). ``scipy.linalg.lapack``'s wrappers of them
hold the GIL while LAPACK runs, so the two threads ran them one at a time
(measured at d = 768: ``dsytrd`` 25 ms alone and 46 ms each when two run side by
side, ``dstevd`` 29 and 57; ``numpy.linalg.eigh``, which releases it, 89 and 104).
Here the same routines, of the LAPACK scipy links, are reached through
``scipy.linalg.cython_lapack``'s exported function pointers and called by
:mod:`ctypes`, which releases the GIL for the call (the way numba reaches
them). Written by hand because no library offers these routines from Python
without the GIL.

Every array is float64 and Fortran-ordered where LAPACK writes a matrix; each
function checks LAPACK's ``info`` and raises :class:`numpy.linalg.LinAlgError`.
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np
import scipy.linalg.cython_lapack as cython_lapack

__all__ = ["dormtr", "dstemr", "dstevd", "dsterf", "dsytrd"]


@cache
def _routine(name: str):
    """The C function ``name`` of :mod:`scipy.linalg.cython_lapack`, every argument a pointer."""
    capsule = cython_lapack.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    # CFUNCTYPE, not PYFUNCTYPE: ctypes releases the GIL around the call.
    return ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * _ARITY[name])(address)


_ARITY = {"dsytrd": 10, "dsterf": 4, "dstevd": 11, "dstemr": 21, "dormtr": 13}


class _Call:
    """The pointer arguments of one call: scalars kept alive until it returns."""

    def __init__(self):
        self.kept = []

    def char(self, value: str) -> int:
        buffer = ctypes.create_string_buffer(value.encode())
        self.kept.append(buffer)
        return ctypes.addressof(buffer)

    def int(self, value: int = 0) -> ctypes.c_int:
        scalar = ctypes.c_int(value)
        self.kept.append(scalar)
        return scalar

    def double(self, value: float = 0.0) -> int:
        scalar = ctypes.c_double(value)
        self.kept.append(scalar)
        return ctypes.addressof(scalar)


def _ptr(value) -> int:
    if isinstance(value, np.ndarray):
        return value.ctypes.data
    if isinstance(value, ctypes._SimpleCData):
        return ctypes.addressof(value)
    return value


def _run(name: str, *arguments) -> None:
    info = arguments[-1]
    _routine(name)(*[_ptr(a) for a in arguments])
    if info.value != 0:
        raise np.linalg.LinAlgError(f"{name} failed (info={info.value})")


def dsytrd(lower: np.ndarray):
    """``(a, diagonal, off, tau)``: ``dsytrd`` of the lower triangle of the Fortran-ordered
    square `lower` (copied: the copy holds the reflectors below the subdiagonal)."""
    a = np.array(lower, dtype=np.float64, order="F", copy=True)
    n = a.shape[0]
    diagonal, off, tau = np.empty(n), np.empty(max(n - 1, 1)), np.empty(max(n - 1, 1))
    call = _Call()
    size = np.empty(1)
    args = (call.char("L"), call.int(n), a, call.int(max(n, 1)), diagonal, off, tau)
    _run("dsytrd", *args, size, call.int(-1), call.int())
    work = np.empty(max(int(size[0]), 1))
    _run("dsytrd", *args, work, call.int(work.size), call.int())
    return a, diagonal, off[: n - 1], tau[: n - 1]


def dsterf(diagonal: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Every eigenvalue of the tridiagonal ``(diagonal, off)``, ascending (``dsterf``)."""
    values = np.array(diagonal, dtype=np.float64, copy=True)
    e = np.array(off, dtype=np.float64, copy=True)
    call = _Call()
    _run("dsterf", call.int(values.size), values, e, call.int())
    return values


def dstevd(diagonal: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, vectors)``, ascending: every eigenpair of the tridiagonal (divide and conquer)."""
    n = diagonal.size
    values = np.array(diagonal, dtype=np.float64, copy=True)
    e = np.zeros(max(n - 1, 1))
    e[: n - 1] = off
    vectors = np.empty((n, n), order="F")
    call = _Call()
    size, isize = np.empty(1), np.empty(1, dtype=np.intc)
    head = (call.char("V"), call.int(n), values, e, vectors, call.int(max(n, 1)))
    _run("dstevd", *head, size, call.int(-1), isize, call.int(-1), call.int())
    work, iwork = np.empty(max(int(size[0]), 1)), np.empty(max(int(isize[0]), 1), dtype=np.intc)
    _run("dstevd", *head, work, call.int(work.size), iwork, call.int(iwork.size), call.int())
    return values, vectors


def dstemr(diagonal: np.ndarray, off: np.ndarray, first: int, last: int) -> np.ndarray:
    """The eigenvectors ``first … last`` (0-based, ascending, inclusive) of the tridiagonal
    (MRRR, ``dstemr``), as columns ``[n, last − first + 1]``."""
    n, count = diagonal.size, last - first + 1
    if not 0 <= first <= last < n:  # checked here: LAPACK would print to stderr, then refuse
        raise ValueError(f"eigenvectors {first}…{last} of a {n} × {n} tridiagonal matrix")
    d = np.array(diagonal, dtype=np.float64, copy=True)
    e = np.zeros(n)
    e[: n - 1] = off
    values, vectors = np.empty(n), np.empty((n, max(count, 1)), order="F")
    support = np.empty(2 * max(count, 1), dtype=np.intc)
    call = _Call()
    found, tryrac = call.int(), call.int(1)
    head = (call.char("V"), call.char("I"), call.int(n), d, e, call.double(), call.double(),
            call.int(first + 1), call.int(last + 1), found, values, vectors, call.int(n),
            call.int(count), support, tryrac)  # fmt: skip
    size, isize = np.empty(1), np.empty(1, dtype=np.intc)
    _run("dstemr", *head, size, call.int(-1), isize, call.int(-1), call.int())
    d[:], e[: n - 1], e[n - 1 :] = diagonal, off, 0.0  # a query may have touched them
    work, iwork = np.empty(max(int(size[0]), 1)), np.empty(max(int(isize[0]), 1), dtype=np.intc)
    _run("dstemr", *head, work, call.int(work.size), iwork, call.int(iwork.size), call.int())
    if found.value != count:
        raise np.linalg.LinAlgError(f"dstemr found {found.value} of {count} eigenvectors")
    return vectors[:, :count]


def dormtr(reflectors: np.ndarray, tau: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``Q c`` for each column of `columns` ``[n, m]``, Q from :func:`dsytrd` (lower)."""
    n, m = columns.shape
    # LAPACK reads these through raw pointers: Fortran order and float64, whatever was passed.
    reflectors = np.asfortranarray(reflectors, dtype=np.float64)
    tau = np.ascontiguousarray(tau, dtype=np.float64)
    if reflectors.shape != (n, n) or tau.size < n - 1:
        raise ValueError(f"reflectors {reflectors.shape} and tau {tau.shape} for {n} rows")
    c = np.array(columns, dtype=np.float64, order="F", copy=True)
    call = _Call()
    size = np.empty(1)
    head = (call.char("L"), call.char("L"), call.char("N"), call.int(n), call.int(m), reflectors,
            call.int(max(n, 1)), tau, c, call.int(max(n, 1)))  # fmt: skip
    _run("dormtr", *head, size, call.int(-1), call.int())
    work = np.empty(max(int(size[0]), 1))
    _run("dormtr", *head, work, call.int(work.size), call.int())
    return c
