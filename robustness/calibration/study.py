"""`rsf calibrate`: a simulation study with planted truth for every test the statistics report.

Pairs are generated in code (:mod:`robustness.calibration.simulation`), through the same
probe functions and the same tests (:func:`robustness.stats.asymmetry.spec_tests`,
references and counted specifications from :mod:`robustness.stats.curve`, the pair
model) that ``rsf stats`` runs. For each **null scenario** (isotropic;
correlated layers; shared read and write components; skewed ``D_l``; both
pathways equally concentrated; the demo's size and grid; 24 layers, past the
exact-enumeration limit; two pairs of one trajectory) the study reports each
test's type-I error with a Clopper–Pearson interval, and whether the test's
stated assumptions hold in that scenario (a column, never a dropped row); for
the **plants** (read deltas along the read site's activations, write deltas
along the prediction subspace) the rejection rate; and the **coverage** of the
intervals over layers. A scenario whose asymmetry is not zero by symmetry
(skewed) is tested against its true value, estimated from a run of 2000
layers: its type-I error is the rejection rate of the true value.

Assumptions, as the tests state them:

- EWC (``ewc``, the verdict's test; the joint tests, BH, Westfall–Young, the
  random control against its Haar reference, the pair model, the EWC
  interval): the autocorrelation of ``D_l`` at lag ``⌈L/(2K)⌉`` is at most 0.2;
- sign flips: independent layers (lag-1 autocorrelation at most 0.1) and
  ``D_l`` symmetric (skewness at most 0.5); the bootstrap intervals over
  layers (comparison only): independent layers;
- label permutation: the four matrices of a layer exchangeable (no shared
  components, independent layers).

:mod:`robustness.calibration.sequence` calibrates the sequence bootstrap. Targets
(full mode): type-I error in [0.03, 0.07], coverage in [0.93, 0.97] where the
assumptions hold; misses are listed, never hidden.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

from robustness.calibration.sequence import sequence_coverage
from robustness.calibration.simulation import Scenario, simulate
from robustness.io.provenance import provenance_attrs
from robustness.settings.options import CalibrationSettings
from robustness.stats import curve
from robustness.stats.asymmetry import bca_ci, layer_differences, spec_tests, studentized_interval
from robustness.stats.layers import projections_for
from robustness.stats.pairs import pair_model

__all__ = [
    "CALIBRATED",
    "INTERVALS",
    "SCENARIOS",
    "TESTS",
    "CalibrationSettings",
    "run_calibration",
    "scenarios",
]

CALIBRATED = ("act_cov", "k=4", "log_isotropic")
TESTS = (
    "ewc",
    "signflip",
    "perm",
    "random_reference",
    "bh_any",
    "wy_any",
    "joint_median",
    "joint_share",
    "joint_stouffer",
    "pair_overall",
    "pair_difference",
)
EWC_TESTS = {"ewc", "random_reference", "bh_any", "wy_any", "joint_median", "joint_share",
             "joint_stouffer", "pair_overall", "pair_difference"}  # fmt: skip
# The interval rsf stats reports comes first; the bootstrap intervals over layers for comparison.
INTERVALS = ("ewc", "bootstrap-t", "BCa")
TYPE1_TARGET = (0.03, 0.07)
COVERAGE_TARGET = (0.93, 0.97)
READ, WRITE = [0, 1], [2, 3]


def scenarios(n_layers: int = 12) -> list[Scenario]:
    """The null scenarios of the study (their seeds' AR(1) coefficients set their ``D_l``'s autocorrelation)."""
    return [
        Scenario("null", "isotropic deltas, independent layers", n_layers),
        Scenario("correlated ρ≈0.5", "layers' draws an AR(1) chain (ρ_draws 0.88): D_l lag-1 ≈ 0.5", n_layers, rho=0.88),
        Scenario("correlated ρ≈0.8", "layers' draws an AR(1) chain (ρ_draws 0.97): D_l lag-1 ≈ 0.8", n_layers, rho=0.97),
        Scenario("shared components", "q and k share 80% of their delta (a common one), o and down likewise: within-layer correlation ≈ 0.67", n_layers, shared=0.8),
        Scenario("skewed", "read plant of exponential strength per layer, write plant constant: D_l right-skewed", n_layers,
                 read_strength=0.15, write_site_strength=0.15, skew=True, truth_zero=False),
        Scenario("both concentrated", "read and write deltas planted alike along their own sites' activations", n_layers,
                 read_strength=0.15, write_site_strength=0.15),
        Scenario("demo size", "8 layers, the demo's grid (6 constructions × 5 cutoffs × 3 normalisations)", 8, grid="demo"),
        Scenario("24 layers", "24 layers: sign flips past the exact-enumeration limit (Monte Carlo)", 24),
        Scenario("two pairs", "two pairs sharing their layers' activations, independent deltas", n_layers, n_pairs=2),
    ]  # fmt: skip


SCENARIOS = tuple(s.name for s in scenarios())


def _rate(successes: int, trials: int) -> tuple[float, float, float]:
    if trials == 0:
        return math.nan, math.nan, math.nan
    low, high = proportion_confint(successes, trials, alpha=0.05, method="beta")
    return successes / trials, float(low), float(high)


def _long_run(rng, scenario: Scenario, settings: CalibrationSettings) -> dict:
    """Truth and dependence of ``D_l`` from many layers: per-spec mean, lag autocorrelations, skewness."""
    sim = simulate(rng, scenario, d=settings.d, n_tokens=settings.n_tokens, vocab=settings.vocab,
                   n_layers=settings.truth_layers)  # fmt: skip
    d = layer_differences(sim.s[0], READ, WRITE)
    j = scenario.specs.index(CALIBRATED)
    x = d[:, j] - d[:, j].mean()
    lag = math.ceil(scenario.n_layers / (2 * projections_for(scenario.n_layers)))

    def autocorrelation(m):
        return float(np.sum(x[m:] * x[:-m]) / np.sum(x * x))

    return {
        "truth": d.mean(axis=0),  # NaN where a cutoff is undefined (pr on random)
        "lag1": autocorrelation(1),
        "lag_m": autocorrelation(lag),
        "lag": lag,
        "skewness": float(scipy_stats.skew(x)),
    }


def _assumptions(scenario: Scenario, run: dict) -> dict[str, bool]:
    ewc = abs(run["lag_m"]) <= 0.2
    independent = abs(run["lag1"]) <= 0.1
    symmetric = abs(run["skewness"]) <= 0.5
    exchangeable = scenario.shared == 0 and scenario.rho == 0
    out = {test: ewc for test in EWC_TESTS}
    out.update(signflip=independent and symmetric, perm=exchangeable and independent)
    out.update(
        {"interval:ewc": ewc, "interval:bootstrap-t": independent, "interval:BCa": independent}
    )
    return out


def _one_study(rng, scenario: Scenario, settings: CalibrationSettings, reference_override=None):
    """One simulated study: ``{test: rejected}`` and ``{interval: (low, high)}`` on the calibrated spec."""
    sim = simulate(rng, scenario, d=settings.d, n_tokens=settings.n_tokens, vocab=settings.vocab)
    specs = scenario.specs
    s = sim.s[0]
    complete = np.isfinite(s).all(axis=(0, 1))
    duplicate_of = curve.duplicates(s, specs)
    matched, _ = curve.matched_k(sim.k[0], READ, WRITE)
    counted = curve.counted_mask(specs, duplicate_of, matched) & complete
    if reference_override is None:
        reference = curve.references(
            sim.k[0], sim.purity[0], specs, READ, WRITE, settings.d, spectrum=sim.spectrum[0]
        )
    else:
        reference = np.broadcast_to(reference_override, (s.shape[0], len(specs)))
    index = np.flatnonzero(complete)
    tests = spec_tests(
        s[:, :, complete], READ, WRITE, reference=reference[:, complete], counted=counted[complete],
        confidence_level=settings.confidence_level, n_resamples=settings.n_resamples,
        alpha=settings.alpha, rng=rng, n_null_draws=1,
    )  # fmt: skip
    a = settings.alpha
    j = int(np.flatnonzero(index == specs.index(CALIBRATED))[0])
    random_spec = ("random", "k=4", "log_isotropic")
    jr = np.flatnonzero(index == specs.index(random_spec)) if random_spec in specs else []
    joint = tests.joint
    rejected = {
        "ewc": tests.p_value[j] < a,
        "signflip": tests.p_signflip[j] < a,
        "perm": tests.p_perm[j] < a if scenario.truth_zero else math.nan,
        "random_reference": tests.p_value[jr[0]] < a if len(jr) else math.nan,
        "bh_any": bool(np.any(tests.p_adj[tests.counted] < a)),
        "wy_any": bool(np.any(tests.p_wy[tests.counted] < a)),
        "joint_median": joint["p_median_effect"] < a,
        "joint_share": joint["p_share_significant"] < a,
        "joint_stouffer": joint["p_stouffer_z"] < a,
        "pair_overall": math.nan,
        "pair_difference": math.nan,
    }
    if scenario.n_pairs > 1:
        jp = specs.index(CALIBRATED)
        columns = np.stack(
            [layer_differences(sim.s[p], READ, WRITE)[:, jp] for p in range(scenario.n_pairs)],
            axis=1,
        )
        model = pair_model(columns, [f"p{p}" for p in range(scenario.n_pairs)],
                           confidence_level=settings.confidence_level)  # fmt: skip
        rejected["pair_overall"] = model["overall"]["p_value"] < a
        rejected["pair_difference"] = model["difference"]["p_value"] < a
    d = (
        layer_differences(s, READ, WRITE)[:, specs.index(CALIBRATED)]
        - reference[:, specs.index(CALIBRATED)]
    )
    offset = reference[:, specs.index(CALIBRATED)].mean()
    boot_low, boot_high = studentized_interval(
        d[:, None],
        confidence_level=settings.confidence_level,
        replicates=settings.layer_replicates,
        rng=rng,
    )
    bca = bca_ci(d, settings.confidence_level, settings.layer_replicates, rng)
    intervals = {
        "ewc": (tests.ci_low[j], tests.ci_high[j]),
        "bootstrap-t": (boot_low[0] + offset, boot_high[0] + offset),
        "BCa": (bca[0] + offset, bca[1] + offset),
    }
    return rejected, intervals


def run_calibration(settings: CalibrationSettings, *, progress: bool = False) -> xr.Dataset:
    """Type-I error per scenario, power against the plants, coverage; the calibration dataset."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(settings.seed)
    null_scenarios = scenarios(settings.n_layers)
    plants = [
        Scenario(f"{side} plant β={b:g}", f"{side} deltas planted with strength {b:g}", settings.n_layers,
                 read_strength=b if side == "read" else 0.0, write_strength=b if side == "write" else 0.0,
                 truth_zero=False)
        for side in ("read", "write") for b in settings.strengths
    ]  # fmt: skip
    counts = {(t, s.name): [0, 0] for t in TESTS for s in null_scenarios + plants}
    covered = {(m, s.name): [0, 0] for m in INTERVALS for s in null_scenarios + plants}
    runs, holds = {}, {}
    for scenario in null_scenarios + plants:
        run = _long_run(rng, scenario, settings)
        runs[scenario.name] = run
        holds[scenario.name] = _assumptions(scenario, run)
        is_null = scenario in null_scenarios
        truth = (
            0.0 if scenario.truth_zero else float(run["truth"][scenario.specs.index(CALIBRATED)])
        )
        # A skewed null is tested against its true values; the plants against the usual references.
        override = run["truth"] if is_null and not scenario.truth_zero else None
        n_sims = settings.n_null if is_null else settings.n_power
        for _ in tqdm(range(n_sims), desc=scenario.name, disable=not progress, leave=False):
            rejected, intervals = _one_study(rng, scenario, settings, override)
            for test, flag in rejected.items():
                if isinstance(flag, float) and math.isnan(flag):
                    continue
                counts[(test, scenario.name)][0] += int(flag)
                counts[(test, scenario.name)][1] += 1
            for method, (low, high) in intervals.items():
                if np.isfinite(low) and np.isfinite(high):
                    covered[(method, scenario.name)][0] += int(low <= truth <= high)
                    covered[(method, scenario.name)][1] += 1
    sequence = sequence_coverage(rng, settings, progress=progress)
    tallies = Tallies(counts, covered, runs, holds)
    return _dataset(settings, null_scenarios, plants, tallies, sequence)


@dataclass(frozen=True)
class Tallies:
    """What the simulated studies counted, and each scenario's long run."""

    counts: dict  # (test, scenario) → [rejections, trials]
    covered: dict  # (interval, scenario) → [intervals covering the truth, trials]
    runs: dict  # scenario → its long run (:func:`_long_run`)
    holds: dict  # scenario → {test or "interval:<method>": whether its assumptions hold}


@dataclass(frozen=True)
class Rates:
    """The rates as ``[..., (rate, ci_low, ci_high)]`` and where their assumptions hold."""

    names: list[str]  # the null scenarios
    all_names: list[str]  # the null scenarios, then the plants (coverage's scenarios)
    type1: np.ndarray  # [test, scenario, 3]
    power: np.ndarray  # [test, plant, strength, 3]
    coverage: np.ndarray  # [interval, coverage_scenario, 3]
    assumption: np.ndarray  # [test, scenario], int8
    interval_holds: np.ndarray  # [interval, coverage_scenario], int8


def _rates(settings, null_scenarios, plants, tallies: Tallies) -> Rates:
    """Type-I error, power and coverage with their Clopper–Pearson intervals (:func:`_rate`)."""
    counts, covered, holds = tallies.counts, tallies.covered, tallies.holds
    names = [s.name for s in null_scenarios]
    all_names = names + [s.name for s in plants]
    type1 = np.array([[_rate(*counts[(t, n)]) for n in names] for t in TESTS])
    power = np.array([[_rate(*counts[(t, p.name)]) for p in plants] for t in TESTS]).reshape(
        len(TESTS), 2, len(settings.strengths), 3
    )
    coverage = np.array([[_rate(*covered[(m, n)]) for n in all_names] for m in INTERVALS])
    assumption = np.array([[holds[n].get(t, False) for n in names] for t in TESTS], dtype=np.int8)
    interval_holds = np.array(
        [[holds[n][f"interval:{m}"] for n in all_names] for m in INTERVALS], dtype=np.int8
    )
    return Rates(names, all_names, type1, power, coverage, assumption, interval_holds)


def _misses(rates: Rates) -> list[str]:
    """Type-I errors and coverages outside their targets, each with whether its assumptions hold."""
    misses = []
    for ti, test in enumerate(TESTS):
        for si, name in enumerate(rates.names):
            value = rates.type1[ti, si, 0]
            if np.isfinite(value) and not TYPE1_TARGET[0] <= value <= TYPE1_TARGET[1]:
                note = "" if rates.assumption[ti, si] else " (its assumptions do not hold here)"
                misses.append(f"type-I error of {test}, {name}: {value:.3f}{note}")
    for mi, method in enumerate(INTERVALS):
        for si, name in enumerate(rates.all_names):
            value = rates.coverage[mi, si, 0]
            if np.isfinite(value) and not COVERAGE_TARGET[0] <= value <= COVERAGE_TARGET[1]:
                role = "" if method == INTERVALS[0] else ", comparison only"
                note = "" if rates.interval_holds[mi, si] else ", its assumptions do not hold here"
                misses.append(f"coverage of {method} intervals, {name}: {value:.3f}{role}{note}")
    return misses


def _variables(rates: Rates) -> dict:
    """The dataset's variables: each rate and its interval's bounds, and where assumptions hold."""
    type1, power, coverage = rates.type1, rates.power, rates.coverage
    return {
        "type1_error": (("test", "scenario"), type1[..., 0]),
        "type1_ci_low": (("test", "scenario"), type1[..., 1]),
        "type1_ci_high": (("test", "scenario"), type1[..., 2]),
        "assumptions_hold": (("test", "scenario"), rates.assumption,
                             {"long_name": "1 where the test's stated assumptions hold in the scenario"}),
        "power": (("test", "plant", "strength"), power[..., 0]),
        "power_ci_low": (("test", "plant", "strength"), power[..., 1]),
        "power_ci_high": (("test", "plant", "strength"), power[..., 2]),
        "coverage": (("interval", "coverage_scenario"), coverage[..., 0]),
        "coverage_ci_low": (("interval", "coverage_scenario"), coverage[..., 1]),
        "coverage_ci_high": (("interval", "coverage_scenario"), coverage[..., 2]),
        "coverage_assumptions_hold": (("interval", "coverage_scenario"), rates.interval_holds),
    }  # fmt: skip


def _coordinates(settings, null_scenarios, runs: dict, rates: Rates) -> dict:
    """The tests, scenarios (with their descriptions, sizes and dependence), plants and intervals."""
    names = rates.names
    return {
        "test": np.asarray(TESTS, dtype=object),
        "scenario": np.asarray(names, dtype=object),
        "description": (
            "scenario",
            np.asarray([s.description for s in null_scenarios], dtype=object),
        ),
        "n_layers": ("scenario", np.asarray([s.n_layers for s in null_scenarios], dtype=np.int64)),
        "lag1_autocorrelation": ("scenario", np.asarray([runs[n]["lag1"] for n in names])),
        "skewness": ("scenario", np.asarray([runs[n]["skewness"] for n in names])),
        "strength": np.asarray(settings.strengths, dtype=np.float64),
        "plant": np.asarray(["read", "write"], dtype=object),
        "interval": np.asarray(INTERVALS, dtype=object),
        "coverage_scenario": np.asarray(rates.all_names, dtype=object),
    }


def _attributes(settings, sequence_description: str, misses: list[str]) -> dict:
    """Provenance, the targets, the interval method and the assumption rules; the misses as JSON."""
    return {
        **provenance_attrs(
            "calibration",
            title="rsf calibration: planted-truth simulation study",
            seed=settings.seed,
            settings=asdict(settings),
        ),
        "alpha": settings.alpha,
        "type1_target": json.dumps(TYPE1_TARGET),
        "coverage_target": json.dumps(COVERAGE_TARGET),
        "interval_method": "Clopper-Pearson 95% (statsmodels proportion_confint, method='beta')",
        "calibrated_specification": ",".join(CALIBRATED),
        "assumption_rules": json.dumps(
            {
                "ewc": "autocorrelation of D_l at lag ceil(L/(2K)) at most 0.2 (long run of the scenario)",
                "signflip": "lag-1 autocorrelation at most 0.1 and skewness at most 0.5",
                "perm": "no shared components and independent layers",
                "bootstrap intervals": "lag-1 autocorrelation at most 0.1",
            }
        ),  # fmt: skip
        "unit": "one simulated study per trial; single-specification rates and coverage on the calibrated "
        "specification, family-wise rates over the counted specifications",
        "sequence_bootstrap": sequence_description,
        "misses": json.dumps(misses),
    }


def _dataset(settings, null_scenarios, plants, tallies: Tallies, sequence) -> xr.Dataset:
    """The calibration dataset: the rates of `tallies`, merged with the sequence bootstrap's `sequence`."""
    rates = _rates(settings, null_scenarios, plants, tallies)
    misses = _misses(rates) + sequence.attrs.get("misses_list", [])
    coords = _coordinates(settings, null_scenarios, tallies.runs, rates)
    dataset = xr.Dataset(_variables(rates), coords=coords)
    description = sequence.attrs.get("description", "")  # read before the attributes are dropped
    sequence = sequence.copy()
    sequence.attrs = {}
    dataset = xr.merge([dataset, sequence], combine_attrs="drop")
    dataset.attrs = _attributes(settings, description, misses)
    return dataset
