"""One pair's levels against their Haar references, and how the claims read them across specifications.

A **level** is a log2 isotropic ratio minus its Haar reference
(:func:`probes.haar_reference`, exact from the delta's stored Gram spectrum):
:class:`Levels` holds a pair's probe on the statistics' scale and gives each
matrix's level per specification (construction, cutoff, normalisation), the
mechanical reference's excess and the ranks. Across specifications, the
claims of :mod:`robustness.claims.levels` merge duplicates
(:func:`merged_specifications`), decide at the preferred one
(:func:`preferred_index`), and report the share of decisive verdicts agreeing
with it (:func:`robust_share`) and Stouffer's Z under one set of rotations
(:func:`joint_stouffer`).
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

import probes
from robustness.measure.experts import ExpertSpectra
from robustness.settings.specification import probe_scale
from robustness.stats.asymmetry import stouffer
from robustness.stats.layers import RotationNull, layer_test, monte_carlo_p

__all__ = [
    "LEVEL_NORMALISATIONS",
    "Levels",
    "joint_stouffer",
    "merged_specifications",
    "preferred_index",
    "robust_share",
]

LEVEL_NORMALISATIONS = ("log_isotropic", "isotropic")  # the log2 ratio: margins are in its units


class Levels:
    """One pair's probe on the statistics' scale and each matrix's references, per specification."""

    def __init__(self, results: xr.Dataset, pair):
        results = results.sortby("layer")  # a file's layer order never changes a test over layers
        self.pair = pair
        n_layers = (
            int(results.n_layers.sel(pair=pair))
            if "n_layers" in results
            else results.sizes["layer"]
        )
        self.n_layers = n_layers
        self.d = int(results.d_model.sel(pair=pair))
        self.matrices = [str(m) for m in results.matrix.values]
        cut = {"layer": slice(0, n_layers)}
        self.rsf = results.rsf.sel(pair=pair).isel(cut)
        self.k = results.k.sel(pair=pair).isel(cut)
        if "gram_purity" not in results:
            raise ValueError(
                "the results carry no gram_purity (written before the Haar references existed): re-run rsf sweep"
            )
        self.purity = results.gram_purity.sel(pair=pair).isel(cut).values
        self.spectrum = (
            results.gram_spectrum.sel(pair=pair).isel(cut).values[..., : self.d]
            if "gram_spectrum" in results
            else None
        )
        self.experts = ExpertSpectra.of(results, pair, n_layers, self.d)
        self.mechanical_ref = (
            results.mechanical_reference.sel(pair=pair).isel(cut)
            if "mechanical_reference" in results
            else None
        )
        self.hashes = tuple(
            str(results[name].sel(pair=pair).values)
            for name in ("base_hash", "aligned_hash")
            if name in results
        )
        self._references: dict = {}

    def specs(
        self, constructions, normalisations=LEVEL_NORMALISATIONS
    ) -> list[tuple[str, str, str]]:
        return [
            (c, str(k), n)
            for c in constructions
            if c in self.rsf.construction.values
            for k in self.rsf.cutoff.values
            for n in normalisations
            if n in self.rsf.normalisation.values
        ]

    def _columns(self, matrices) -> list[int]:
        return [self.matrices.index(m) for m in matrices if m in self.matrices]

    def _reference(self, normalisation, k, columns) -> np.ndarray:
        """``[L, M']``: each cell's Haar reference (exact from the spectrum; cached by k)."""
        key = (normalisation, k.tobytes(), tuple(columns))
        if key not in self._references:
            if self.spectrum is not None:
                value = probes.haar_reference(
                    normalisation, k, self.d, spectrum=self.spectrum[:, columns]
                )
            else:
                value = probes.haar_reference(normalisation, k, self.d, self.purity[:, columns])
            if self.experts is not None:  # an expert mean's reference: the mean of the experts'
                value = self.experts.override(np.asarray(value), normalisation, k, self.d, columns)
            self._references[key] = np.asarray(value)
        return self._references[key]

    def matrix_levels(self, spec, matrices) -> np.ndarray:
        """``[L, M']``: each matrix's ``s − Haar reference`` (NaN where undefined)."""
        construction, cutoff, normalisation = spec
        columns = self._columns(matrices)
        if not columns:
            return np.full((self.n_layers, 0), np.nan)
        cell = self.rsf.sel(construction=construction, cutoff=cutoff, normalisation=normalisation)
        s = probe_scale(cell.values, normalisation)[:, columns]
        k = self.k.sel(construction=construction, cutoff=cutoff).values[:, columns]
        return s - self._reference(normalisation, k, columns)

    def level(self, spec, matrices) -> np.ndarray:
        """``[L]``: mean over `matrices` of ``s − Haar reference``."""
        levels = self.matrix_levels(spec, matrices)
        return levels.mean(axis=1) if levels.shape[1] else np.full(self.n_layers, np.nan)

    def reference(self, spec, matrices) -> float:
        construction, cutoff, normalisation = spec
        columns = self._columns(matrices)
        k = self.k.sel(construction=construction, cutoff=cutoff).values[:, columns]
        return float(np.nanmean(self._reference(normalisation, k, columns)))

    def excess(self, spec, matrices) -> tuple[np.ndarray, float]:
        """``[L]``: mean over `matrices` of the log2 ratio minus the mechanical reference, and that
        reference's mean (NaN without one)."""
        construction, cutoff, normalisation = spec
        columns = self._columns(matrices)
        if self.mechanical_ref is None or not columns:
            return np.full(self.n_layers, np.nan), math.nan
        cell = self.rsf.sel(construction=construction, cutoff=cutoff, normalisation=normalisation)
        s = probe_scale(cell.values, normalisation)[:, columns]
        mechanical = self.mechanical_ref.sel(construction=construction, cutoff=cutoff).values[
            :, columns
        ]
        return (s - mechanical).mean(axis=1), float(np.nanmean(mechanical))

    def ranks(self, spec, matrices) -> np.ndarray:
        construction, cutoff, _ = spec
        return self.k.sel(construction=construction, cutoff=cutoff).values[
            :, self._columns(matrices)
        ]

    def eligible_k(self, spec, matrices) -> bool:
        """``k ≤ d/8`` at every layer and matrix (so the ratio can move at least eightfold)."""
        k = self.ranks(spec, matrices)
        return bool(np.all((k >= 1) & (k <= self.d / 8)))


def merged_specifications(specs, values) -> tuple[list, np.ndarray]:
    """`specs` and their columns of `values` ``[L, S]``, with specifications equal at every layer
    merged (the log_isotropic one kept) and those undefined at some layer dropped."""
    order = sorted(range(len(specs)), key=lambda j: (specs[j][2] != "log_isotropic", specs[j]))
    keep, columns = [], []
    for j in order:
        spec, column = specs[j], values[:, j]
        if not np.isfinite(column).all():
            continue
        if any(spec[:2] == other[:2] and np.allclose(column, seen, rtol=1e-12, atol=1e-12)
               for other, seen in zip(keep, columns, strict=True)):  # fmt: skip
            continue
        keep.append(spec)
        columns.append(column)
    return keep, (np.stack(columns, axis=1) if columns else np.zeros((values.shape[0], 0)))


def preferred_index(specs, preferred) -> int | None:
    """The preferred specification's column, or its ``isotropic`` twin (the same log2 ratio on the
    statistics' scale) when the sweep has no ``log_isotropic``; ``None`` when neither is there."""
    for candidate in (tuple(preferred), (*preferred[:2], "isotropic")):
        if candidate in specs:
            return specs.index(candidate)
    return None


def joint_stouffer(values: np.ndarray, *, alpha: float, n_resamples: int, rng) -> float:
    """Stouffer's Z of the one-sided p-values under one set of rotations (the curve's joint analogue)."""
    if values.shape[1] < 2:
        return float("nan")
    test = layer_test(values, confidence_level=1 - 2 * alpha)
    if not np.isfinite(test.p_value).all():
        return float("nan")
    rotations = RotationNull.draw(test.df, values.shape[0], n_resamples=n_resamples, rng=rng)
    z = float(stouffer(test.p_greater))
    null = stouffer(rotations.p_values(test.projections, "greater"))
    return float(monte_carlo_p(np.sum(null >= z - 1e-12), rotations.n))


def robust_share(verdicts: list[str], preferred: str) -> tuple[float, int]:
    """Among the decisive verdicts, the share equal to the preferred one's (NaN when it is not decisive)."""
    decisive = [v for v in verdicts if v in ("supported", "contradicted")]
    if preferred not in ("supported", "contradicted") or not decisive:
        return math.nan, len(decisive)
    return float(np.mean([v == preferred for v in decisive])), len(decisive)
