"""`rsf calibrate`: a simulation study with planted truth for every test.

Pairs are generated in code, without a transformer, through the same probe
functions a real sweep uses (:mod:`probes`):

- every layer has a read-site and a write-site activation covariance with a
  few spikes along random directions, estimated from ``n_tokens`` Gaussian
  samples (so the activation bases carry estimation noise, as in a sweep);
  the unembedding ``W_U [V, d]`` has a spiked singular spectrum;
- the **isotropic null**: every delta (q, k, o, down; all ``d × d`` so the four
  are exchangeable) is a sum of outer products of isotropic Gaussian vectors;
- the **read plant** of strength β: read deltas accumulate ``Σ_t δ_t a_tᵀ``
  with inputs ``a_t ~ N(0, I + β·S_read)``, ``S_read`` the read site's spikes;
- the **write plant** of strength β: write deltas accumulate ``Σ_t u_t δ_tᵀ``
  with outputs ``u_t ~ N(0, I + β·S_pred)`` along the prediction subspace.

Reported, at level α: the type-I error of every test under the null, with
binomial (Clopper–Pearson) 95 % intervals; the rejection rate against each
plant's strength (power for the two-sided tests; for the joint tests, which
look for read > write, a write plant's rate is the wrong-direction rate); the coverage of the layer-cluster bootstrap intervals (the
studentized ones `rsf stats` reports, and BCa for comparison), whose target
(the population mean of the per-layer difference) is zero under the null and
estimated from many extra layers under a plant. Targets (full mode): type-I
error in [0.03, 0.07], coverage in [0.93, 0.97]; a miss is reported, never
hidden.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr
from statsmodels.stats.proportion import proportion_confint

import probes

from .asymmetry import layer_differences, spec_tests
from .provenance import provenance_attrs
from .specification import probe_scale

__all__ = ["CalibrationSettings", "run_calibration", "simulate_probe"]

TESTS = ("signflip", "perm", "bh_any", "wy_any", "joint_median", "joint_share", "joint_stouffer")
SPECS = [
    (c, k, n)
    for c in ("act_cov", "unembed")
    for k in ("k=4", "pr")
    for n in ("log_isotropic", "fraction")
]
# Per-specification rates (sign-flip, permutation, coverage) are counted on one
# specification, so that every trial is an independent pair and the binomial
# interval is honest; the joint tests use all of SPECS.
CALIBRATED = 0
# The interval rsf stats reports comes first; BCa is measured for comparison.
INTERVALS = ("bootstrap-t", "BCa")
TYPE1_TARGET = (0.03, 0.07)
COVERAGE_TARGET = (0.93, 0.97)


@dataclass(frozen=True)
class CalibrationSettings:
    n_null: int = 1000
    n_power: int = 200
    strengths: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    n_layers: int = 12
    d: int = 24
    n_tokens: int = 256
    vocab: int = 96
    layer_replicates: int = 999
    n_resamples: int = 999
    alpha: float = 0.05
    confidence_level: float = 0.95
    seed: int = 0

    @classmethod
    def fast(cls, seed: int = 0) -> CalibrationSettings:
        return cls(
            n_null=200,
            n_power=50,
            strengths=(0.05, 0.2),
            layer_replicates=499,
            n_resamples=499,
            seed=seed,
        )


def _spiked(d: int, rng, spikes=(12.0, 8.0, 5.0, 3.0)) -> tuple[np.ndarray, np.ndarray]:
    """Covariance ``I + S`` with ``S`` spikes along random orthonormal directions; returns (cov, S)."""
    q = probes.random_subspace(d, rng=rng, k=len(spikes)).basis
    spike = (q * np.asarray(spikes)) @ q.T
    return np.eye(d) + spike, spike


def _accumulated(d: int, rng, covariance: np.ndarray | None, side: str, n_terms: int) -> np.ndarray:
    """``Σ_t x_t y_tᵀ`` with the residual-side factor drawn from `covariance` (isotropic if None)."""
    residual = rng.standard_normal((n_terms, d))
    if covariance is not None:
        residual = residual @ np.linalg.cholesky(covariance).T
    other = rng.standard_normal((n_terms, d))
    return other.T @ residual if side == "read" else residual.T @ other


def simulate_probe(
    rng: np.random.Generator,
    settings: CalibrationSettings,
    *,
    read_strength: float = 0.0,
    write_strength: float = 0.0,
    n_layers: int | None = None,
) -> np.ndarray:
    """``s [layer, matrix (q, k, o, down), spec]`` on the statistics' scale for one planted pair."""
    d, n_layers = settings.d, n_layers or settings.n_layers
    _, pred_spike = _spiked(d, rng, spikes=(20.0, 10.0, 6.0))
    unembed_rows = (
        rng.standard_normal((settings.vocab, d)) @ np.linalg.cholesky(np.eye(d) + pred_spike).T
    )
    unembed = probes.unembedding_subspaces(unembed_rows)["unembed"]
    s = np.empty((n_layers, 4, len(SPECS)))
    cutoffs = sorted({cutoff for _, cutoff, _ in SPECS})
    for layer in range(n_layers):
        sites = {}
        for site in ("read", "write"):
            covariance, spike = _spiked(d, rng)
            x = rng.standard_normal((settings.n_tokens, d)) @ np.linalg.cholesky(covariance).T
            sites[site] = (probes.covariance_subspace(x.sum(0), x.T @ x, len(x)), spike)
        # One basis per (site, construction); its cutoffs resolved once.
        bases = {
            (site, c): sites[site][0] if c == "act_cov" else unembed
            for site in sites
            for c in ("act_cov", "unembed")
        }
        ks = {key: {c: probes.resolve_cutoff(c, d=d, spectrum=b.spectrum, n_samples=b.n_samples) for c in cutoffs}
              for key, b in bases.items()}  # fmt: skip
        for mi, matrix in enumerate(("q", "k", "o", "down")):
            pathway = probes.PATHWAY[matrix]
            if pathway == "read":
                plant = np.eye(d) + read_strength * sites["read"][1] if read_strength else None
            else:
                plant = np.eye(d) + write_strength * pred_spike if write_strength else None
            delta = _accumulated(d, rng, plant, pathway, n_terms=2 * d)
            profiles = {c: probes.fraction_profile(delta, bases[(pathway, c)].basis, pathway=pathway)
                        for c in ("act_cov", "unembed")}  # fmt: skip
            for j, (construction, cutoff, normalisation) in enumerate(SPECS):
                k = ks[(pathway, construction)][cutoff]
                value = probes.normalise(normalisation, profiles[construction][k - 1], k, d)
                s[layer, mi, j] = probe_scale(np.array([value]), normalisation)[0]
    return s


def _decisions(
    s: np.ndarray, settings: CalibrationSettings, rng
) -> tuple[dict, np.ndarray, np.ndarray]:
    tests = spec_tests(s, [0, 1], [2, 3], confidence_level=settings.confidence_level,
                       layer_replicates=settings.layer_replicates, n_resamples=settings.n_resamples,
                       alpha=settings.alpha, rng=rng, n_null_draws=1, with_bca=True)  # fmt: skip
    a, joint = settings.alpha, tests.joint
    rejected = {
        "signflip": tests.p_signflip[[CALIBRATED]] < a,
        "perm": tests.p_perm[[CALIBRATED]] < a,
        "bh_any": np.array([np.any(tests.p_adj < a)]),  # family-wise over specifications
        "wy_any": np.array([np.any(tests.p_wy < a)]),
        "joint_median": np.array([joint["p_median_effect"] < a]),
        "joint_share": np.array([joint["p_share_significant"] < a]),
        "joint_stouffer": np.array([joint["p_stouffer_z"] < a]),
    }
    intervals = {
        "bootstrap-t": (tests.ci_low[CALIBRATED], tests.ci_high[CALIBRATED]),
        "BCa": (tests.bca_low[CALIBRATED], tests.bca_high[CALIBRATED]),
    }
    return rejected, intervals


def _rate(successes: int, trials: int) -> tuple[float, float, float]:
    low, high = proportion_confint(successes, trials, alpha=0.05, method="beta")
    return successes / trials, float(low), float(high)


def run_calibration(settings: CalibrationSettings, *, progress: bool = False) -> xr.Dataset:
    """Type-I error, power and coverage; returns the calibration dataset."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(settings.seed)
    plants = [
        (f"{side} plant β={b:g}", side, b) for side in ("read", "write") for b in settings.strengths
    ]
    scenarios = [("null", "none", 0.0), *plants]
    counts = {(t, name): [0, 0] for t in TESTS for name, _, _ in scenarios}
    covered = {(m, name): [0, 0] for m in INTERVALS for name, _, _ in scenarios}
    for name, side, beta in scenarios:
        strengths = {
            "read_strength": beta if side == "read" else 0.0,
            "write_strength": beta if side == "write" else 0.0,
        }
        if side == "none":
            truth, n_sims = 0.0, settings.n_null  # the null's asymmetry is 0 by symmetry
        else:
            # A plant's true asymmetry: the mean per-layer difference over 1000 extra layers.
            many = simulate_probe(rng, settings, n_layers=1000, **strengths)
            truth = layer_differences(many, [0, 1], [2, 3]).mean(axis=0)[CALIBRATED]
            n_sims = settings.n_power
        for _ in tqdm(range(n_sims), desc=name, disable=not progress):
            rejected, intervals = _decisions(
                simulate_probe(rng, settings, **strengths), settings, rng
            )
            for test, flags in rejected.items():
                counts[(test, name)][0] += int(flags.sum())
                counts[(test, name)][1] += flags.size
            for method, (low, high) in intervals.items():
                covered[(method, name)][0] += int(low <= truth <= high)
                covered[(method, name)][1] += 1

    names = [name for name, _, _ in scenarios]
    rates = np.array(
        [[_rate(*counts[(t, name)]) for name in names] for t in TESTS]
    )  # [test, scenario, 3]
    coverage = np.array([[_rate(*covered[(m, name)]) for name in names] for m in INTERVALS])
    type1 = rates[:, 0]
    power = rates[:, 1:].reshape(
        len(TESTS), 2, len(settings.strengths), 3
    )  # [test, plant, strength, 3]
    misses = [f"type-I error of {t}: {type1[i, 0]:.3f}" for i, t in enumerate(TESTS)
              if not TYPE1_TARGET[0] <= type1[i, 0] <= TYPE1_TARGET[1]]  # fmt: skip
    for mi, method in enumerate(INTERVALS):
        for si, (name, _, _) in enumerate(scenarios):
            value = coverage[mi, si, 0]
            if not COVERAGE_TARGET[0] <= value <= COVERAGE_TARGET[1]:
                role = "" if method == INTERVALS[0] else " (comparison only: not used by rsf stats)"
                misses.append(f"coverage of {method} intervals, {name}: {value:.3f}{role}")
    return xr.Dataset(
        {
            "type1_error": ("test", type1[:, 0]),
            "type1_ci_low": ("test", type1[:, 1]),
            "type1_ci_high": ("test", type1[:, 2]),
            "power": (("test", "plant", "strength"), power[..., 0]),
            "power_ci_low": (("test", "plant", "strength"), power[..., 1]),
            "power_ci_high": (("test", "plant", "strength"), power[..., 2]),
            "coverage": (("interval", "scenario"), coverage[..., 0]),
            "coverage_ci_low": (("interval", "scenario"), coverage[..., 1]),
            "coverage_ci_high": (("interval", "scenario"), coverage[..., 2]),
        },
        coords={
            "test": np.asarray(TESTS, dtype=object),
            "strength": np.asarray(settings.strengths, dtype=np.float64),
            "scenario": np.asarray([name for name, _, _ in scenarios], dtype=object),
            "plant": np.asarray(["read", "write"], dtype=object),
            "interval": np.asarray(INTERVALS, dtype=object),
        },
        attrs={
            **provenance_attrs(
                "calibration",
                title="rsf calibration: planted-truth simulation study",
                seed=settings.seed,
                settings=asdict(settings),
            ),
            "specifications": json.dumps(SPECS),
            "alpha": settings.alpha,
            "type1_target": json.dumps(TYPE1_TARGET),
            "coverage_target": json.dumps(COVERAGE_TARGET),
            "interval_method": "Clopper-Pearson 95% (statsmodels proportion_confint, method='beta')",
            "calibrated_specification": ",".join(SPECS[CALIBRATED]),
            "unit": "one simulated pair per trial; sign-flip, permutation and coverage on the calibrated specification",
            "misses": json.dumps(misses),
        },
    )
