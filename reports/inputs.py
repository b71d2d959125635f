"""The datasets a report is made from: opened, recognised, hashed and checked against each other.

A dataset's kind is its ``kind`` attribute when it has one, and otherwise is
recognised from its variables: ``rsf`` (a results dataset from ``rsf sweep``),
``asymmetry`` (statistics from ``rsf stats``), ``type1_error`` (a calibration
study from ``rsf calibrate``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from robustness.io.datasets import dataset_kind, open_dataset
from robustness.stats.statistics import results_fingerprint

__all__ = ["ReportInputs", "Source", "dataset_kind", "load_inputs", "load_source"]


@dataclass(frozen=True)
class Source:
    """One data file: its kind, name as given, SHA-256 of its bytes and the dataset."""

    kind: str
    path: Path
    sha256: str
    dataset: xr.Dataset

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def created(self) -> str:
        return str(self.dataset.attrs.get("created", "unknown"))


@dataclass(frozen=True)
class ReportInputs:
    results: Source
    stats: Source | None = None
    calibration: Source | None = None
    extra: tuple[Source, ...] = ()
    claims: Source | None = None

    @property
    def sources(self) -> tuple[Source, ...]:
        found = (self.results, self.stats, self.claims, self.calibration, *self.extra)
        return tuple(s for s in found if s is not None)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def load_source(path: str | Path, expected: str | None = None) -> Source:
    """Open `path` and check it is a dataset of kind `expected` (any known kind when ``None``)."""
    path = Path(path)
    dataset = open_dataset(path, expected)
    kind = dataset_kind(dataset)
    if kind is None:
        raise ValueError(f"{path} is not a dataset rsf knows: it has no `kind` attribute")
    return Source(kind, path, _sha256(path), dataset)


def _check_stats_match(results: Source, stats: Source) -> None:
    recorded = stats.dataset.attrs.get("results_fingerprint")
    rerun = f"re-run `rsf stats {results.path}`"
    if recorded:
        if recorded != results_fingerprint(results.dataset):
            raise ValueError(
                f"{stats.path} was made from a different results file than {results.path} "
                f"(fingerprints differ): {rerun}"
            )
        return
    # Older statistics files record the sweep's config and corpus, not a fingerprint.
    for attr, own in (("results_config", "config"), ("results_corpus_hash", "corpus_hash")):
        if stats.dataset.attrs.get(attr, "") != results.dataset.attrs.get(own, ""):
            raise ValueError(
                f"{stats.path} was made from a different results file than {results.path} "
                f"(its {own} differs): {rerun}"
            )
    for dim in ("pair", "construction", "cutoff", "normalisation"):
        if list(stats.dataset[dim].values) != list(results.dataset[dim].values):
            raise ValueError(
                f"{stats.path} does not match {results.path}: its {dim} labels differ: {rerun}"
            )


# What `rsf stats` has written since the EWC test became the verdict's test.
STATS_CONTRACT = ("p_value", "reference", "counted", "duplicate_of", "lag1_autocorrelation")


def _check_stats_contract(results: Source, stats: Source) -> None:
    missing = [name for name in STATS_CONTRACT if name not in stats.dataset]
    if missing:
        raise ValueError(
            f"{stats.path} was written by an older rsf stats (it has no {', '.join(missing)}): "
            f"re-run `rsf stats {results.path}`"
        )


def _check_claims_match(results: Source, claims: Source) -> None:
    recorded = claims.dataset.attrs.get("results_fingerprint", "")
    own = results_fingerprint(results.dataset)
    if recorded != own:
        raise ValueError(
            f"{claims.path} was made from other results than {results.path} (claims {recorded or 'unknown'} "
            f"vs results {own}): re-run `rsf claims {results.path}`"
        )


def load_inputs(
    results_path, *, stats_path=None, calibration_path=None, extra_paths=(), claims_path=None
) -> ReportInputs:
    """Open and cross-check every input; every problem is a one-line ``ValueError``."""
    results = load_source(results_path, "results")
    stats = load_source(stats_path, "stats") if stats_path is not None else None
    if stats is not None:
        _check_stats_match(results, stats)
        _check_stats_contract(results, stats)
    calibration = (
        load_source(calibration_path, "calibration") if calibration_path is not None else None
    )
    extra = tuple(load_source(path) for path in extra_paths)
    claims = load_source(claims_path, "claims") if claims_path is not None else None
    if claims is not None:
        _check_claims_match(results, claims)
    return ReportInputs(results, stats, calibration, extra, claims)
