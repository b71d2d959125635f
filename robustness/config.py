"""Sweep configuration: one dataclass, read from TOML or from CLI flags, written back as TOML.

The TOML layout is a contract (``docs/design.md`` §4)::

    [[pair]]                 # one or more
    label = "demo"
    base = "path-or-id"
    aligned = "path-or-id"
    [corpus]
    paths = ["corpus.txt"]   # or ids = "tokens.npy"
    tokens = 65536
    seq_len = 128
    [probe]
    constructions = ["act_cov", "unembed", "random"]
    cutoffs = ["k=8", "var=0.9"]
    normalisations = ["isotropic"]
    matrices = ["q", "k", "v", "o", "up", "gate", "down"]
    [bootstrap]
    replicates = 200
    seed = 0
    bca = false              # true: jackknife rows for BCa intervals

A ``[run]`` table (device, dtype, batch_size, trust_remote_code) is optional.
Every name is checked here, before any model is loaded; an unknown one is an
error that lists the valid ones. Cutoff labels are stored in their canonical
spelling (``k = 8`` becomes ``k=8``), so every dataset spells them alike.
:func:`read_toml` is the one TOML reader (other commands' config tables,
such as ``[trajectory]``, use it too).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import tomli_w

import probes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

from .specification import (
    DEFAULT_CONSTRUCTIONS,
    DEFAULT_CUTOFFS,
    DEFAULT_NORMALISATIONS,
    canonical_cutoffs,
)

__all__ = [
    "DEVICES",
    "DTYPES",
    "PHASES",
    "CorpusSpec",
    "PairSpec",
    "SweepConfig",
    "config_from_document",
    "load_config",
    "read_toml",
]

PHASES = ("align", "pretrain")
DEFAULT_TOKENS = 65536
DEFAULT_SEQ_LEN = 128
DTYPES = ("auto", *probes.DTYPES)  # auto: each checkpoint's own stored dtype
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class PairSpec:
    """One pair: a delta from `base` to `aligned`; `phase` says which training produced it."""

    label: str
    base: str
    aligned: str
    phase: str = (
        "align"  # or "pretrain": a pretraining delta (initialisation or early checkpoint → base)
    )

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(
                f"pair {self.label!r}: unknown phase {self.phase!r}: valid are {', '.join(PHASES)}"
            )


@dataclass(frozen=True)
class CorpusSpec:
    """Where the probe text comes from; no paths and no ids means the built-in corpus."""

    paths: tuple[str, ...] = ()
    ids: str | None = None
    tokens: int | None = None  # None: DEFAULT_TOKENS for text, every row of an ids file
    seq_len: int = DEFAULT_SEQ_LEN
    tokenizer: str | None = None


@dataclass(frozen=True)
class SweepConfig:
    pairs: tuple[PairSpec, ...]
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    constructions: tuple[str, ...] = DEFAULT_CONSTRUCTIONS
    cutoffs: tuple[str, ...] = DEFAULT_CUTOFFS
    normalisations: tuple[str, ...] = DEFAULT_NORMALISATIONS
    matrices: tuple[str, ...] = probes.MATRICES
    replicates: int = 0
    seed: int = 0
    bca: bool = False  # leave-one-chunk-out rows for BCa's acceleration (C extra replicates)
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    trust_remote_code: bool = False

    def __post_init__(self):
        _validate(self)
        # Frozen: the canonical spelling is set through object.__setattr__, once.
        object.__setattr__(self, "cutoffs", canonical_cutoffs(self.cutoffs))
        if len(set(self.cutoffs)) != len(self.cutoffs):
            raise ValueError(f"repeated cutoff in {list(self.cutoffs)} (after canonical spelling)")

    def with_options(self, **changes) -> SweepConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_toml(self) -> str:
        """The full configuration, as TOML that :func:`load_config` reads back."""
        corpus = {k: v for k, v in asdict(self.corpus).items() if v not in (None, ())}
        if "paths" in corpus:
            corpus["paths"] = list(corpus["paths"])
        document = {
            "pair": [asdict(pair) for pair in self.pairs],
            "corpus": corpus,
            "probe": {
                "constructions": list(self.constructions),
                "cutoffs": list(self.cutoffs),
                "normalisations": list(self.normalisations),
                "matrices": list(self.matrices),
            },
            "bootstrap": {"replicates": self.replicates, "seed": self.seed, "bca": self.bca},
            "run": {
                "device": self.device,
                "dtype": self.dtype,
                "batch_size": self.batch_size,
                "trust_remote_code": self.trust_remote_code,
            },
        }
        return tomli_w.dumps(document)


def _names(kind: str, given, valid) -> None:
    unknown = [name for name in given if name not in valid]
    if unknown:
        raise ValueError(
            f"unknown {kind} {', '.join(map(repr, unknown))}: valid are {', '.join(valid)}"
        )
    if len(set(given)) != len(given):
        raise ValueError(f"repeated {kind} in {list(given)}")
    if not given:
        raise ValueError(f"no {kind} given: choose from {', '.join(valid)}")


def _validate(config: SweepConfig) -> None:
    if not config.pairs:
        raise ValueError(
            "no pair given: pass --base and --aligned, or a config with [[pair]] tables"
        )
    labels = [pair.label for pair in config.pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"pair labels must be unique, got {labels}")
    _names("construction", config.constructions, probes.CONSTRUCTIONS)
    _names("normalisation", config.normalisations, probes.NORMALISATIONS)
    _names("matrix", config.matrices, probes.MATRICES)
    if len(set(config.cutoffs)) != len(config.cutoffs) or not config.cutoffs:
        raise ValueError(
            f"cutoffs must be a non-empty list without repeats, got {list(config.cutoffs)}"
        )
    for label in config.cutoffs:
        probes.parse_cutoff(label)  # raises with the allowed syntax
    if config.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {config.dtype!r}: valid are {', '.join(DTYPES)}")
    if config.device not in DEVICES and not config.device.startswith("cuda:"):
        raise ValueError(f"unknown device {config.device!r}: valid are {', '.join(DEVICES)}")
    corpus = config.corpus
    if corpus.paths and corpus.ids:
        raise ValueError("[corpus] takes either `paths` (text) or `ids` (.npy), not both")
    if corpus.seq_len < 1:
        raise ValueError(f"`seq_len` must be positive, got {corpus.seq_len}")
    if corpus.tokens is not None and corpus.tokens < corpus.seq_len:
        raise ValueError(
            f"`tokens` ({corpus.tokens}) must be at least one sequence ({corpus.seq_len})"
        )
    for name in ("replicates", "batch_size"):
        value = getattr(config, name)
        if value < (0 if name == "replicates" else 1):
            raise ValueError(
                f"`{name}` must be {'non-negative' if name == 'replicates' else 'positive'}"
            )


def _table(document: dict, name: str, allowed: set[str]) -> dict:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise ValueError(f"[{name}] must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise ValueError(
            f"unknown key(s) {sorted(unknown)} in [{name}]: valid are {sorted(allowed)}"
        )
    return table


def read_toml(path: str | Path) -> dict:
    """A TOML file as a dict, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None


def load_config(path: str | Path) -> SweepConfig:
    """Read a TOML sweep configuration; relative paths are resolved against its folder."""
    path = Path(path)
    return config_from_document(read_toml(path), path.parent, source=str(path))


def config_from_document(document: dict, root: Path, *, source: str = "the config") -> SweepConfig:
    """A parsed TOML document as a config; relative paths are resolved against `root`."""
    unknown = set(document) - {"pair", "corpus", "probe", "bootstrap", "run"}
    if unknown:
        raise ValueError(f"unknown table(s) {sorted(unknown)} in {source}")
    root = Path(root)

    def local(value: str) -> str:
        # A relative path is relative to the config file; a hub id stays as written.
        candidate = root / value
        return str(candidate) if not Path(value).is_absolute() and candidate.exists() else value

    pairs = []
    for i, entry in enumerate(document.get("pair", [])):
        missing = {"base", "aligned"} - set(entry)
        if missing:
            raise ValueError(f"[[pair]] number {i + 1} lacks {sorted(missing)}")
        unknown = set(entry) - {"label", "base", "aligned", "phase"}
        if unknown:
            raise ValueError(
                f"unknown key(s) {sorted(unknown)} in [[pair]] number {i + 1}: "
                "valid are label, base, aligned, phase"
            )
        label = entry.get("label", f"pair{i}")
        pairs.append(
            PairSpec(
                str(label),
                local(entry["base"]),
                local(entry["aligned"]),
                str(entry.get("phase", "align")),
            )
        )
    corpus = _table(document, "corpus", {"paths", "ids", "tokens", "seq_len", "tokenizer"})
    probe = _table(document, "probe", {"constructions", "cutoffs", "normalisations", "matrices"})
    boot = _table(document, "bootstrap", {"replicates", "seed", "bca"})
    run = _table(document, "run", {"device", "dtype", "batch_size", "trust_remote_code"})
    corpus_spec = CorpusSpec(
        paths=tuple(
            str(root / p) if not Path(p).is_absolute() else p for p in corpus.get("paths", [])
        ),
        ids=(
            str(root / corpus["ids"])
            if "ids" in corpus and not Path(corpus["ids"]).is_absolute()
            else corpus.get("ids")
        ),
        tokens=corpus.get("tokens"),
        seq_len=corpus.get("seq_len", DEFAULT_SEQ_LEN),
        tokenizer=local(corpus["tokenizer"]) if "tokenizer" in corpus else None,
    )
    return SweepConfig(
        pairs=tuple(pairs),
        corpus=corpus_spec,
        constructions=tuple(probe.get("constructions", DEFAULT_CONSTRUCTIONS)),
        cutoffs=tuple(probe.get("cutoffs", DEFAULT_CUTOFFS)),
        normalisations=tuple(probe.get("normalisations", DEFAULT_NORMALISATIONS)),
        matrices=tuple(probe.get("matrices", probes.MATRICES)),
        replicates=int(boot.get("replicates", 0)),
        seed=int(boot.get("seed", 0)),
        bca=bool(boot.get("bca", False)),
        **run,
    )
