"""What every section needs to know, read once from the datasets: pairs, sets, levels, the preferred
specification, and each specification's place in the specification curve (:func:`spec_roles`)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

import robustness.accessor  # noqa: F401  (ds.robustness: the one reader of what the datasets hold as text)
from robustness.settings.specification import (
    DEFAULT_PREFERRED,
    DEFAULT_READ,
    DEFAULT_WRITE,
    SPEC_DIMS,
    Specification,
)

from .inputs import ReportInputs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ROLE_TEXT", "ReportContext", "build_context", "spec_roles"]

# What the report shows for each specification's place in the specification curve.
ROLE_TEXT = {
    "counted": "yes",
    "control": "control, not counted",
    "undefined": "undefined",
}


def spec_roles(stats: xr.Dataset, pair) -> dict[tuple[str, str, str], tuple[str, str]]:
    """``{spec: (role, text)}`` for one pair, from ``counted``, ``duplicate_of`` and ``control``.

    Roles, first match wins: ``undefined`` (no asymmetry: a cutoff the construction
    cannot define; `rsf stats` calls such specifications duplicates of each other,
    all being NaN, which says nothing), ``duplicate`` (shown as ``= c/k/n``, the
    specification it equals on the statistics' scale), ``control`` (a control
    construction: shown, not counted), ``counted`` (in the joint tests), else ``not counted``.
    """
    cell = stats.sel(pair=pair)
    asymmetry = cell.asymmetry.transpose(*SPEC_DIMS).values
    counted = cell.counted.transpose(*SPEC_DIMS).values
    duplicate = cell.duplicate_of.transpose(*SPEC_DIMS).values
    control = (
        stats.control.values
        if "control" in stats.coords
        else np.zeros(stats.sizes["construction"], dtype=int)
    )
    out = {}
    for i, c in enumerate(stats.construction.values):
        for j, k in enumerate(stats.cutoff.values):
            for m, n in enumerate(stats.normalisation.values):
                spec = (str(c), str(k), str(n))
                if not np.isfinite(asymmetry[i, j, m]):
                    out[spec] = ("undefined", ROLE_TEXT["undefined"])
                elif str(duplicate[i, j, m]):
                    out[spec] = ("duplicate", f"= {duplicate[i, j, m]}")
                elif int(control[i]):
                    out[spec] = ("control", ROLE_TEXT["control"])
                elif int(counted[i, j, m]):
                    out[spec] = ("counted", ROLE_TEXT["counted"])
                else:
                    out[spec] = ("not counted", "no")
    return out


@dataclass(frozen=True)
class ReportContext:
    inputs: ReportInputs
    pairs: tuple[str, ...]
    preferred: tuple[str, str, str]
    read: tuple[str, ...]
    write: tuple[str, ...]
    alpha: float
    confidence_level: float
    per_pair: dict = field(default_factory=dict)
    pair_model: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def results(self) -> xr.Dataset:
        return self.inputs.results.dataset

    @property
    def stats(self) -> xr.Dataset | None:
        return self.inputs.stats.dataset if self.inputs.stats else None

    @property
    def calibration(self) -> xr.Dataset | None:
        return self.inputs.calibration.dataset if self.inputs.calibration else None

    @property
    def claims(self) -> xr.Dataset | None:
        return self.inputs.claims.dataset if self.inputs.claims else None

    def n_layers(self, pair: str) -> int:
        if "n_layers" in self.results:
            return int(self.results.n_layers.sel(pair=pair))
        return self.results.sizes["layer"]

    def provenance(self, pair: str, name: str, default=None):
        if name in self.results:
            return self.results[name].sel(pair=pair).item()
        return default

    def phase(self, pair: str) -> str:
        for dataset in (self.stats, self.results):
            if dataset is not None and "phase" in dataset.coords:
                return str(dataset.phase.sel(pair=pair).item())
        return "align"

    def preferred_as(self, pair: str) -> tuple[str, str, str]:
        """The preferred specification, or the one it duplicates on the statistics' scale."""
        if self.stats is None:
            return self.preferred
        role, text = spec_roles(self.stats, pair)[self.preferred]
        return Specification.parse(text[2:]) if role == "duplicate" else self.preferred

    def has_spec(self, spec) -> bool:
        return all(v in self.results[d].values for v, d in zip(spec, SPEC_DIMS, strict=True))

    def chosen_specs(self) -> list[tuple[str, str, str]]:
        """The preferred specification, then the two ends of the first pair's specification curve
        (its counted specifications)."""
        chosen = [self.preferred] if self.has_spec(self.preferred) else []
        if self.stats is not None:
            effect = self.stats.effect_size.sel(pair=self.pairs[0])
            frame = effect.to_dataframe().reset_index().dropna(subset=["effect_size"])
            roles = spec_roles(self.stats, self.pairs[0])
            counted = [roles[tuple(str(r[d]) for d in SPEC_DIMS)][0] == "counted"
                       for _, r in frame.iterrows()]  # fmt: skip
            frame = frame[np.asarray(counted, dtype=bool)] if any(counted) else frame
            if len(frame):
                frame = frame.sort_values("effect_size", kind="stable")
                for index in (0, len(frame) - 1):
                    row = frame.iloc[index]
                    spec = tuple(str(row[d]) for d in SPEC_DIMS)
                    if spec not in chosen:
                        chosen.append(spec)
        return chosen


def _first_defined(results: xr.Dataset) -> tuple[str, str, str]:
    finite = np.isfinite(results.rsf).any(dim=("pair", "layer", "matrix"))
    for c in results.construction.values:
        for k in results.cutoff.values:
            for n in results.normalisation.values:
                if bool(finite.sel(construction=c, cutoff=k, normalisation=n)):
                    return (str(c), str(k), str(n))
    return tuple(str(results[d].values[0]) for d in SPEC_DIMS)


def build_context(inputs: ReportInputs) -> ReportContext:
    results = inputs.results.dataset
    stats = inputs.stats.dataset if inputs.stats else None
    matrices = [str(m) for m in results.matrix.values]
    if stats is not None:
        preferred, read, write = (
            stats.robustness.preferred,
            stats.robustness.read_set,
            stats.robustness.write_set,
        )
        alpha = float(stats.attrs["alpha"])
        level = float(stats.attrs["confidence_level"])
        per_pair, pair_model = stats.robustness.per_pair(), stats.robustness.pair_model()
    else:
        preferred = DEFAULT_PREFERRED
        read = tuple(m for m in DEFAULT_READ if m in matrices)
        write = tuple(m for m in DEFAULT_WRITE if m in matrices)
        alpha, level, per_pair, pair_model = 0.05, 0.95, {}, {}
    context = ReportContext(
        inputs=inputs,
        pairs=tuple(str(p) for p in results.pair.values),
        preferred=preferred,
        read=read,
        write=write,
        alpha=alpha,
        confidence_level=level,
        per_pair=per_pair,
        pair_model=pair_model,
        config=tomllib.loads(results.attrs.get("config", "")),
    )
    if not context.has_spec(preferred):
        context = dataclasses.replace(context, preferred=_first_defined(results))
    return context
