"""Sweeps, statistics, claims and calibration of the RSF probe, built on :mod:`probes`.

The pipeline as functions (:mod:`robustness.api`), loaded when first used so
that importing the package stays light::

    results = robustness.sweep(base, aligned)              # results.nc
    stats = robustness.statistics(results)                 # stats.nc
    claims = robustness.paper_claims(results, stats=stats)  # claims.nc
    claims.robustness.verdict()                                   # ds.robustness: robustness.accessor
    stats = robustness.load("stats.nc")                    # a file, ds.robustness ready
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rsf-robustness")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "calibrate",
    "contrastive",
    "load",
    "measure_gradients",
    "paper_claims",
    "rank1",
    "run_demo",
    "statistics",
    "sweep",
    "trajectory",
]

_API = tuple(name for name in __all__ if name != "__version__")  # loaded from .api when used


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'robustness' has no attribute {name!r}")
    value = getattr(importlib.import_module(".api", __name__), name)
    globals()[name] = value
    return value
