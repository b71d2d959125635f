"""Provenance, the same on every dataset: kind, version, creation time, seed, settings, inputs.

Every dataset the project writes (``results``, ``stats``, ``calibration``,
``gradients``, ``trajectory``, ``contrastive``, ``rank1``, …) starts its
attributes from :func:`provenance_attrs`, so a reader finds the same keys
everywhere: ``kind`` (what wrote it; the report dispatches on it),
``rsf_version``, ``created`` (UTC), ``package_versions``, and where they
apply ``seed``, ``settings`` (JSON), ``inputs`` (JSON: what it was made from,
by hash) and the corpus (``corpus_hash``, ``corpus_source``, ``n_tokens``,
``seq_len``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from . import __version__

__all__ = ["PACKAGES", "package_versions", "provenance_attrs"]

PACKAGES = (
    "torch",
    "transformers",
    "safetensors",
    "numpy",
    "scipy",
    "xarray",
    "netCDF4",
    "dask",
    "statsmodels",
    "pingouin",
)


def package_versions() -> dict[str, str]:
    versions = {"rsf-robustness": __version__}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def provenance_attrs(
    kind: str,
    *,
    title: str,
    corpus=None,
    seed: int | None = None,
    settings: dict | str | None = None,
    inputs: dict | None = None,
) -> dict:
    """The provenance attributes of a dataset of `kind` (see the module docstring)."""
    attrs: dict = {
        "kind": kind,
        "title": title,
        "rsf_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_versions": json.dumps(package_versions(), sort_keys=True),
    }
    if seed is not None:
        attrs["seed"] = int(seed)
    if settings is not None:
        attrs["settings"] = (
            settings if isinstance(settings, str) else json.dumps(settings, sort_keys=True)
        )
    if inputs is not None:
        attrs["inputs"] = json.dumps(inputs, sort_keys=True)
    if corpus is not None:
        attrs.update(
            corpus_hash=corpus.hash,
            corpus_source=corpus.source,
            n_tokens=corpus.n_tokens,
            seq_len=corpus.seq_len,
        )
    return attrs
