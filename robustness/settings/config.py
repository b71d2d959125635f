"""Sweep configuration: pairs, corpus, probe grid, bootstrap and run, each option declared once.

The TOML layout is a contract (``docs/design.md`` §4)::

    [[pair]]                 # one or more
    label = "demo"
    base = "path-or-id"
    aligned = "path-or-id"
    phase = "align"          # or "pretrain"
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
    [run]
    device = "auto"
    dtype = "auto"
    batch_size = 8
    trust_remote_code = false

Every field below is an :func:`robustness.settings.schema.option`: its type, default,
allowed values, flag and table are declared once, and the command line's
flags, the strict TOML reading, the validation and :meth:`SweepConfig.to_toml`
all derive from it. A value of the wrong TOML type is refused with the file,
the table and the key (``sweep.toml: [run] trust_remote_code must be true or
false, got "no"``), so nothing but a TOML ``true`` (or ``--trust-remote-code``)
turns on remote code. Cutoff labels are stored in their canonical spelling
(``k = 8`` becomes ``k=8``). :func:`read_toml` is the one TOML reader (other
commands' tables, such as ``[trajectory]``, use it too).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from probes.names import CONSTRUCTIONS, DTYPE_NAMES, MATRICES, NORMALISATIONS
from robustness.settings.schema import OptionError, option, read_table, to_table, validate
from robustness.settings.specification import (
    DEFAULT_CONSTRUCTIONS,
    DEFAULT_CUTOFFS,
    DEFAULT_NORMALISATIONS,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

__all__ = [
    "DEFAULT_SEQ_LEN",
    "DEFAULT_TOKENS",
    "DEVICES",
    "DTYPES",
    "PHASES",
    "CorpusSpec",
    "PairSpec",
    "SweepConfig",
    "batch_size_option",
    "check_device",
    "config_from_document",
    "cutoffs_option",
    "device_option",
    "dtype_option",
    "load_config",
    "read_toml",
    "trust_remote_code_option",
]

PHASES = ("align", "pretrain")
DEFAULT_TOKENS = 65536
DEFAULT_SEQ_LEN = 128
DTYPES = ("auto", *DTYPE_NAMES)  # auto: each checkpoint's own stored dtype
DEVICES = ("auto", "cpu", "cuda")


# ------------------------------------------------------------------ checks of one value


def check_device(device: str) -> str:
    if device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ValueError(f"unknown device {device!r}: valid are {', '.join(DEVICES)} or cuda:N")


def _distinct(kind: str):
    def check(values: tuple) -> tuple:
        if not values:
            raise ValueError(f"no {kind} given")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"repeated {kind} {', '.join(map(repr, repeated))}")
        return values

    return check


def _canonical_cutoffs(labels: tuple) -> tuple:
    from robustness.settings.specification import canonical_cutoffs

    return _distinct("cutoff")(canonical_cutoffs(labels))


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


# ------------------------------------------------------- options shared by several commands


def device_option(default: str = "auto"):
    return option(default, "auto (a GPU when present), cpu, cuda or cuda:N", table="run",
                  check=check_device)  # fmt: skip


def dtype_option(default: str = "auto"):
    return option(default, "weights' dtype: auto (each checkpoint's stored dtype), "
                  + ", ".join(DTYPE_NAMES), table="run", choices=DTYPES, noun="dtype")  # fmt: skip


def batch_size_option(default: int = 8):
    return option(default, "sequences per forward pass", table="run", low=1)


def trust_remote_code_option():
    return option(False, "allow a model's own code from the hub (off unless given)", table="run")


def cutoffs_option(default: tuple, help: str = "rank cutoffs: k=N, frac=x, var=x, pr, mp"):
    return option(default, help, table="probe", check=_canonical_cutoffs)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PairSpec:
    """One pair: a delta from `base` to `aligned`; `phase` says which training produced it."""

    label: str = option(help="pair label (default: the aligned model's folder name)",
                        table="pair", check=_non_empty)  # fmt: skip
    base: str = option(help="base model: a save_pretrained directory or a hub id",
                       table="pair", check=_non_empty)  # fmt: skip
    aligned: str = option(help="aligned model: a directory, a hub id or a LoRA adapter on the base",
                          table="pair", path=True, check=_non_empty)  # fmt: skip
    phase: str = option("align", "training phase of the delta: align, or pretrain "
                        "(initialisation or early checkpoint → base)", flag=None, table="pair",
                        choices=PHASES, noun="phase")  # fmt: skip

    def __post_init__(self):
        validate(self, where=lambda name: f"pair {self.label!r}: `{name}`")


@dataclass(frozen=True)
class CorpusSpec:
    """Where the probe text comes from; no paths and no ids means the built-in corpus.

    ``seq_len`` ``None`` is 128 for text and the ids file's own width for
    ``.npy`` ids, which fix it: a ``seq_len`` given beside them must agree.
    One ``.npy`` among `paths` is taken as `ids`.
    """

    paths: tuple[str, ...] = option((), "text, JSONL, parquet or arrow files or hf:org/name"
                                    "[:config][@revision] datasets (a comma list), or one .npy "
                                    "of token ids [n_seq, seq_len]", flag="--corpus", table="corpus",
                                    path=True, metavar="FILES")  # fmt: skip
    ids: str | None = option(None, "pre-tokenised ids, a .npy [n_seq, seq_len]", flag=None,
                             table="corpus", path=True)  # fmt: skip
    tokens: int | None = option(None, "tokens to use", table="corpus", low=1)
    seq_len: int | None = option(None, "sequence length (default 128; an .npy's own width)",
                                 table="corpus", low=2)  # fmt: skip
    tokenizer: str | None = option(None, "tokenizer for text (default: the base model's)",
                                   table="corpus", path=True)  # fmt: skip
    split: str = option("train", "split of a datasets corpus (hf:org/name, parquet, arrow)",
                        table="corpus")  # fmt: skip
    text_column: str = option("text", "column (or JSONL field) holding the text", table="corpus")
    chat_template: str = option("auto", "conversations (a messages column, or prompt and "
                                "response) rendered with the base's chat template (the aligned "
                                "side's when the base has none): auto, or none to join their "
                                "texts", choices=("auto", "none"), table="corpus")  # fmt: skip

    def __post_init__(self):
        validate(self)
        id_files = [p for p in self.paths if str(p).endswith(".npy")]
        if id_files:
            if len(self.paths) > 1 or self.ids is not None:
                raise OptionError(
                    "the corpus takes one .npy id file, or text/JSONL files, not a mix"
                )
            object.__setattr__(self, "ids", id_files[0])
            object.__setattr__(self, "paths", ())
        if self.paths and self.ids:
            raise OptionError("[corpus] takes either `paths` (text) or `ids` (.npy), not both")
        length = self.seq_len if self.seq_len is not None else DEFAULT_SEQ_LEN
        if self.ids is None and self.tokens is not None and self.tokens < length:
            raise OptionError(
                f"`tokens` ({self.tokens}) must be at least one sequence of `seq_len` ({length})"
            )

    @property
    def length(self) -> int:
        """The sequence length of text (128 unless `seq_len` says otherwise)."""
        return self.seq_len if self.seq_len is not None else DEFAULT_SEQ_LEN


def default_label(aligned: str) -> str:
    """A pair's label when none is given: the aligned model's folder name (or its hub id's)."""
    return Path(str(aligned).rstrip("/")).name or "pair"


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs besides the models' weights; see the module docstring."""

    pairs: tuple[PairSpec, ...]
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    constructions: tuple[str, ...] = option(DEFAULT_CONSTRUCTIONS, "subspace constructions: "
                                            + ", ".join(CONSTRUCTIONS), table="probe",
                                            choices=CONSTRUCTIONS, noun="construction",
                                            check=_distinct("construction"))  # fmt: skip
    cutoffs: tuple[str, ...] = cutoffs_option(DEFAULT_CUTOFFS)
    normalisations: tuple[str, ...] = option(DEFAULT_NORMALISATIONS, "normalisations: "
                                             + ", ".join(NORMALISATIONS), table="probe",
                                             choices=NORMALISATIONS, noun="normalisation",
                                             check=_distinct("normalisation"))  # fmt: skip
    # None: every matrix each pair's family has; a list names matrices every pair must have.
    matrices: tuple[str, ...] | None = option(None, "matrices: " + ", ".join(MATRICES)
                                              + " (default: every one the family has)",
                                              table="probe", choices=MATRICES, noun="matrix",
                                              check=_distinct("matrix"))  # fmt: skip
    replicates: int = option(0, "sequence-bootstrap replicates over chunks of corpus sequences "
                             "(0: none)", flag="--bootstrap", table="bootstrap", low=0)  # fmt: skip
    seed: int = option(0, "seed of the random bases and the resampling", table="bootstrap", low=0)
    bca: bool = option(False, "also compute the leave-one-chunk-out rows BCa intervals need",
                       table="bootstrap")  # fmt: skip
    device: str = device_option()
    dtype: str = dtype_option()
    batch_size: int = batch_size_option()
    trust_remote_code: bool = trust_remote_code_option()

    def __post_init__(self):
        validate(self)
        if not self.pairs:
            raise OptionError(
                "no pair given: pass --base and --aligned, or a config with [[pair]] tables"
            )
        if not all(isinstance(pair, PairSpec) for pair in self.pairs):
            raise TypeError("`pairs` must be PairSpec objects")
        object.__setattr__(self, "pairs", tuple(self.pairs))
        labels = [pair.label for pair in self.pairs]
        if len(set(labels)) != len(labels):
            raise OptionError(f"pair labels must be unique, got {labels}")

    def with_options(self, **changes) -> SweepConfig:
        """A copy with `changes` applied; a change of ``None`` keeps the value."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_toml(self) -> str:
        """The full configuration, as TOML that :func:`load_config` reads back."""
        import tomli_w

        document = {
            "pair": [to_table(pair, "pair") for pair in self.pairs],
            "corpus": to_table(self.corpus, "corpus"),
            **{table: to_table(self, table) for table in ("probe", "bootstrap", "run")},
        }
        return tomli_w.dumps({k: v for k, v in document.items() if v})


# --------------------------------------------------------------------------- reading


def read_toml(path: str | Path) -> dict:
    """A TOML file as a dict, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    if not path.is_file():
        raise ValueError(f"config {path} is not a regular file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None


def load_config(path: str | Path) -> SweepConfig:
    """Read a TOML sweep configuration; relative paths are resolved against its folder."""
    path = Path(path)
    return config_from_document(read_toml(path), path.parent, source=path.name)


def config_from_document(document: dict, root: Path, *, source: str = "the config") -> SweepConfig:
    """A parsed TOML document as a config; relative paths are resolved against `root`.

    Every value is checked strictly by the option schema and every error
    names `source`, the table and the key.
    """
    unknown = sorted(set(document) - {"pair", "corpus", "probe", "bootstrap", "run"})
    if unknown:
        raise OptionError(
            f"{source}: unknown table(s) {', '.join(unknown)}: valid are pair, corpus, probe, "
            "bootstrap, run"
        )
    root = Path(root)
    entries = document.get("pair", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise OptionError(f"{source}: pairs are [[pair]] tables (an array of tables)")
    pairs = []
    for i, entry in enumerate(entries):
        label = f"[[pair]] number {i + 1}"
        missing = sorted({"base", "aligned"} - set(entry))
        if missing:
            raise OptionError(f"{source}: {label} lacks {', '.join(missing)}")
        values = read_table(PairSpec, entry, "pair", source=source, root=root, label=label)
        values.setdefault("label", f"pair{i}")
        pairs.append(_built(PairSpec, values, source))
    corpus = _built(CorpusSpec, read_table(CorpusSpec, document, "corpus", source=source,
                                           root=root), source)  # fmt: skip
    values = {}
    for table in ("probe", "bootstrap", "run"):
        values.update(read_table(SweepConfig, document, table, source=source))
    return _built(SweepConfig, {"pairs": tuple(pairs), "corpus": corpus, **values}, source)


def _built(cls, values: dict, source: str):
    """`cls(**values)`, a cross-field error prefixed with the file it came from."""
    try:
        return cls(**values)
    except OptionError as error:
        message = str(error)
        raise OptionError(
            message if message.startswith(source) else f"{source}: {message}"
        ) from None
