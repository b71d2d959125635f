"""Sweeps, statistics, calibration and the command line, built on :mod:`probes`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rsf-robustness")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
