"""Planted-truth pairs for the calibration study, generated through the probe's own functions.

A simulated pair has ``L`` layers with four ``d × d`` matrices (``q, k`` read,
``o, down`` write) and a pair-level unembedding. Every layer has a read-site
and a write-site activation covariance ``I + S`` with spikes ``S`` along random
directions, estimated from ``n_tokens`` samples (so the activation bases carry
estimation noise, as in a sweep); the unembedding ``W_U [V, d]`` has a spiked
spectrum. A delta accumulates outer products ``Σ_t δ_t a_tᵀ`` of Gaussian
vectors, its residual-side factor drawn from ``N(0, I + β S)`` where a plant of
strength β concentrates it. The probe values then go through exactly the
functions a sweep uses (:mod:`probes`): bases, cutoffs, fractions,
normalisations, the statistics' scale.

A :class:`Scenario` sets what departs from the isotropic null:

- ``rho``: every layer's random draws (spike directions, activation samples,
  delta factors) follow an AR(1) chain across layers, so neighbouring layers'
  probe values and their differences ``D_l`` are correlated;
- ``shared``: q and k deltas share a component (a common delta of weight
  ``shared``: their input site), o and down another (their output site): the
  matrices of a layer are not exchangeable;
- ``read_strength`` / ``write_strength``: read deltas planted along the read
  site's activation spikes, write deltas along the prediction subspace;
- ``write_site_strength``: write deltas planted along their own site's
  activation spikes (with an equal read plant: both pathways concentrated,
  a null that is not isotropic);
- ``skew``: the read plant's strength is exponential from layer to layer
  (its mean ``read_strength``), so ``D_l`` is right-skewed;
- ``grid``: the calibration grid or the demo's; ``n_pairs``: pairs sharing
  their layers' activations (a trajectory), with their own deltas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import probes
from robustness.settings.specification import probe_scale

__all__ = ["GRIDS", "MATRICES", "Scenario", "Simulation", "simulate"]

MATRICES = ("q", "k", "o", "down")
GRIDS = {
    # Two substantive constructions and the random control; fixed and spectral cutoffs.
    "calibration": [
        (c, k, n)
        for c in ("act_cov", "unembed", "random")
        for k in ("k=4", "pr")
        for n in ("log_isotropic", "fraction")
    ],
    # The demo's grid (robustness.demo.pair.DemoGrid), at the simulation's width.
    "demo": [
        (c, k, n)
        for c in ("act_cov", "act_moment", "unembed", "unembed_centered", "weight_svd", "random")
        for k in ("k=4", "k=8", "k=16", "var=0.9", "pr")
        for n in ("isotropic", "log_isotropic", "null_z")
    ],
}


@dataclass(frozen=True)
class Scenario:
    """One simulated world (see the module docstring); ``truth_zero`` when its asymmetry is 0 by symmetry."""

    name: str
    description: str
    n_layers: int = 12
    rho: float = 0.0
    shared: float = 0.0
    read_strength: float = 0.0
    write_strength: float = 0.0
    write_site_strength: float = 0.0
    skew: bool = False
    grid: str = "calibration"
    n_pairs: int = 1
    truth_zero: bool = True

    @property
    def specs(self) -> list[tuple[str, str, str]]:
        return GRIDS[self.grid]


@dataclass(frozen=True)
class Simulation:
    """One simulated study: ``s [P, L, M, J]`` on the statistics' scale, ``k [P, L, M, J]``,
    ``purity [P, L, M]`` and the deltas' normalised Gram spectra ``spectrum [P, L, M, d]``."""

    s: np.ndarray
    k: np.ndarray
    purity: np.ndarray
    spectrum: np.ndarray


class _Chain:
    """Gaussian draws that follow an AR(1) chain across layers: ``G_l = ρ G_{l−1} + √(1−ρ²) E_l``."""

    def __init__(self, rng: np.random.Generator, rho: float):
        self.rng, self.rho, self.previous = rng, rho, {}

    def draw(self, key, shape) -> np.ndarray:
        fresh = self.rng.standard_normal(shape)
        if self.rho and key in self.previous:
            fresh = self.rho * self.previous[key] + math.sqrt(1 - self.rho**2) * fresh
        self.previous[key] = fresh
        return fresh


SPIKES = (12.0, 8.0, 5.0, 3.0)


def _spike(gaussian: np.ndarray) -> np.ndarray:
    """``S`` with :data:`SPIKES` along the orthonormal directions of a Gaussian ``[d, r]`` (QR)."""
    q, r = np.linalg.qr(gaussian)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    return (q * np.asarray(SPIKES)) @ q.T


def _unembedding(rng, d: int, vocab: int) -> dict:
    spike = _spike(rng.standard_normal((d, len(SPIKES))))
    rows = rng.standard_normal((vocab, d)) @ np.linalg.cholesky(np.eye(d) + 2.0 * spike).T
    rows = rows + 0.5 * rng.standard_normal(d)  # a shared mean row: unembed_centered differs
    bases = probes.unembedding_subspaces(rows)
    return {
        "spike": spike,
        "unembed": bases["unembed"],
        "unembed_centered": bases["unembed_centered"],
    }


def _site(chain: _Chain, key, d: int, n_tokens: int) -> dict:
    """A site's spikes and its activation bases, estimated from `n_tokens` samples."""
    spike = _spike(chain.draw((key, "directions"), (d, len(SPIKES))))
    mean = 0.5 * np.linalg.eigh(spike)[1][:, -1]  # a mean along the top spike: act_moment differs
    x = chain.draw((key, "samples"), (n_tokens, d)) @ np.linalg.cholesky(np.eye(d) + spike).T + mean
    sum_x, sum_xx = x.sum(axis=0), x.T @ x
    return {
        "spike": spike,
        "act_cov": probes.covariance_subspace(sum_x, sum_xx, n_tokens, centred=True),
        "act_moment": probes.covariance_subspace(sum_x, sum_xx, n_tokens, centred=False),
    }


def _delta(chain: _Chain, key, d: int, plant, pathway: str) -> np.ndarray:
    """``Σ_t x_t y_tᵀ`` (2d terms) with the residual-side factor from ``N(0, plant)`` (isotropic if None)."""
    n_terms = 2 * d
    residual = chain.draw((key, "residual"), (n_terms, d))
    if plant is not None:
        residual = residual @ np.linalg.cholesky(plant).T
    other = chain.draw((key, "other"), (n_terms, d))
    return other.T @ residual if pathway == "read" else residual.T @ other


def simulate(
    rng: np.random.Generator,
    scenario: Scenario,
    *,
    d: int = 24,
    n_tokens: int = 256,
    vocab: int = 96,
    n_layers: int | None = None,
) -> Simulation:
    """One simulated study of `scenario` (``n_layers`` overrides the scenario's, e.g. for its truth)."""
    n_layers = n_layers or scenario.n_layers
    specs = scenario.specs
    cutoffs = sorted({cutoff for _, cutoff, _ in specs})
    constructions = sorted({c for c, _, _ in specs})
    chain = _Chain(rng, scenario.rho)
    unembed = _unembedding(rng, d, vocab)
    shape = (scenario.n_pairs, n_layers, len(MATRICES), len(specs))
    s, ks = np.full(shape, np.nan), np.full(shape, -1, dtype=np.int64)
    purity = np.full(shape[:3], np.nan)
    spectrum = np.full((*shape[:3], d), np.nan)
    for layer in range(n_layers):
        sites = {side: _site(chain, side, d, n_tokens) for side in ("read", "write")}
        strength = scenario.read_strength
        if scenario.skew:
            strength *= rng.exponential()
        plants = {
            "read": np.eye(d) + strength * sites["read"]["spike"] if strength else None,
            "write": None,
        }
        if scenario.write_strength:
            plants["write"] = np.eye(d) + scenario.write_strength * unembed["spike"]
        elif scenario.write_site_strength:
            plants["write"] = np.eye(d) + scenario.write_site_strength * sites["write"]["spike"]
        for p in range(scenario.n_pairs):
            # One shared delta per pathway and layer: q and k (o and down) both carry it.
            common = {
                side: _delta(chain, (p, side, "shared"), d, plants[side], side)
                for side in ("read", "write")
                if scenario.shared
            }
            for mi, matrix in enumerate(MATRICES):
                pathway = probes.PATHWAY[matrix]
                side = "read" if pathway == "read" else "write"
                delta = _delta(chain, (p, matrix), d, plants[side], pathway)
                if scenario.shared:
                    w = scenario.shared
                    delta = math.sqrt(1 - w) * delta + math.sqrt(w) * common[side]
                purity[p, layer, mi] = probes.gram_purity(delta)
                spectrum[p, layer, mi] = probes.gram_spectrum(delta)
                bases = _bases(rng, constructions, sites[side], unembed, pathway, d)
                _fill(s[p, layer, mi], ks[p, layer, mi], delta, bases, specs, cutoffs, pathway, d,
                      purity[p, layer, mi])  # fmt: skip
    return Simulation(s, ks, purity, spectrum)


def _bases(rng, constructions, site: dict, unembed: dict, pathway: str, d: int) -> dict:
    bases = {}
    for construction in constructions:
        if construction in ("act_cov", "act_moment"):
            bases[construction] = site[construction]
        elif construction in ("unembed", "unembed_centered"):
            bases[construction] = unembed[construction]
        elif construction == "weight_svd":
            # W_from: a random matrix with a spiked spectrum of its own (ΔW does not follow it).
            w = (
                rng.standard_normal((d, d))
                @ np.linalg.cholesky(np.eye(d) + _spike(rng.standard_normal((d, len(SPIKES))))).T
            )
            bases[construction] = probes.weight_subspace(w, pathway=pathway)
        else:
            bases[construction] = probes.random_subspace(d, rng=rng)
    return bases


def _fill(out, ks_out, delta, bases, specs, cutoffs, pathway, d, purity) -> None:
    """The probe of one delta at every specification, on the statistics' scale."""
    profiles = {
        c: probes.fraction_profile(delta, b.basis, pathway=pathway) for c, b in bases.items()
    }
    ks = {
        c: {
            cut: probes.resolve_cutoff(cut, d=d, spectrum=b.spectrum, n_samples=b.n_samples)
            for cut in cutoffs
        }
        for c, b in bases.items()
    }
    for j, (construction, cutoff, normalisation) in enumerate(specs):
        k = ks[construction][cutoff]
        ks_out[j] = k
        if k < 1:
            continue
        value = probes.normalise(normalisation, profiles[construction][k - 1], k, d, purity=purity)
        out[j] = probe_scale(np.array([value]), normalisation)[0]
