"""The probe corpus: text, JSONL or pre-tokenised ids, cut into fixed-length sequences.

- Text files are tokenised with the base model's tokenizer (or ``--tokenizer``);
  documents are encoded without special tokens and joined by the tokenizer's
  end-of-text token where it has one.
- JSONL files contribute the ``text`` field of every line.
- ``.npy`` files hold ids ``[n_seq, seq_len]`` used exactly as given: no BOS,
  no padding, every position counts.
- With no corpus, the built-in one is the text of Python's own help topics
  (``pydoc_data.topics``, shipped with every CPython), so nothing is downloaded.

Selection is deterministic: the stream is cut into consecutive non-overlapping
sequences and ``tokens // seq_len`` of them are taken, evenly spread over the
whole corpus (an ids file: its rows, likewise).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DEFAULT_TOKENS, CorpusSpec

__all__ = [
    "BUILTIN_CORPUS",
    "Corpus",
    "builtin_documents",
    "evenly_spaced",
    "load_corpus",
    "load_tokenizer",
    "select_sequences",
    "tokenize",
]

BUILTIN_CORPUS = "builtin:pydoc_data.topics"


@dataclass(frozen=True)
class Corpus:
    """Token ids ``[n_seq, seq_len]`` (int64), where they came from and their hash."""

    ids: np.ndarray
    source: str

    @property
    def n_tokens(self) -> int:
        return int(self.ids.size)

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])

    @property
    def hash(self) -> str:
        digest = hashlib.sha256(f"{self.ids.shape}|int64|".encode())
        digest.update(np.ascontiguousarray(self.ids, dtype=np.int64).tobytes())
        return "sha256:" + digest.hexdigest()


def builtin_documents() -> list[str]:
    """Python's help topics (the language reference's text), in a fixed order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def read_text(path: Path) -> str:
    """A corpus file's text: UTF-8, and text at all (a binary file is refused, never replaced).

    A NUL byte or bytes that are not UTF-8 mean the file is not text: reading it
    with replacement characters would measure noise under a text file's name.
    """
    if not path.exists():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if path.is_dir():
        raise ValueError(f"corpus {path} is a directory: name its text or JSONL files")
    if not path.is_file():
        raise ValueError(f"corpus {path} is not a regular file")
    data = path.read_bytes()
    if b"\x00" in data:
        raise ValueError(
            f"corpus {path} is not text (it holds NUL bytes): give text, JSONL or .npy ids"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"corpus {path} is not UTF-8 text (byte {error.start}): give text, JSONL or .npy ids"
        ) from None


def read_documents(paths) -> list[str]:
    documents = []
    for raw in paths:
        path = Path(raw)
        text = read_text(path)
        if path.suffix == ".jsonl":
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number} is not valid JSON: {error.msg}") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f"{path}:{number} has no string `text` field")
                documents.append(record["text"])
        else:
            documents.append(text)
    return documents


def tokenize(documents: list[str], tokenizer) -> np.ndarray:
    """One id stream: documents without special tokens, separated by end-of-text."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for document in documents:
        stream.extend(tokenizer(document, add_special_tokens=False, verbose=False)["input_ids"])
        stream.extend(separator)
    return np.asarray(stream, dtype=np.int64)


def evenly_spaced(available: int, wanted: int) -> np.ndarray:
    """``min(wanted, available)`` indices into ``range(available)``, evenly spread, first and last included."""
    wanted = max(1, min(int(wanted), int(available)))
    return np.unique(np.linspace(0, available - 1, wanted).round().astype(np.int64))


def select_sequences(stream: np.ndarray, tokens: int, seq_len: int, *, source: str) -> np.ndarray:
    """``tokens // seq_len`` consecutive-window sequences, evenly spread over `stream`."""
    available = len(stream) // seq_len
    wanted = tokens // seq_len
    if wanted > available:
        raise ValueError(
            f"the corpus ({source}) has {len(stream)} tokens, {available} sequences of {seq_len}; "
            f"{tokens} tokens need {wanted}: add text or lower --tokens"
        )
    windows = stream[: available * seq_len].reshape(available, seq_len)
    return windows[evenly_spaced(available, wanted)]


def _load_ids(spec: CorpusSpec) -> Corpus:
    path = Path(spec.ids)
    if not path.exists():
        raise FileNotFoundError(f"token-id file not found: {path}")
    if not path.is_file():
        raise ValueError(f"token-id file {path} is not a regular file")
    try:
        ids = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a NumPy .npy array: {error}") from None
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
        raise ValueError(
            f"{path} must hold integer ids [n_seq, seq_len], got {ids.dtype} {ids.shape}"
        )
    if ids.min() < 0:
        raise ValueError(f"{path} holds negative token ids")
    if spec.seq_len is not None and spec.seq_len != ids.shape[1]:
        raise ValueError(
            f"{path} holds sequences of {ids.shape[1]} tokens, which fix the sequence length: "
            f"drop --seq-len {spec.seq_len} (or give {ids.shape[1]})"
        )
    if spec.tokens is not None:
        wanted = spec.tokens // ids.shape[1]
        if wanted > ids.shape[0]:
            raise ValueError(
                f"{path} holds {ids.size} tokens ({ids.shape[0]} sequences of {ids.shape[1]}); "
                f"{spec.tokens} tokens need {wanted} sequences: lower --tokens"
            )
        ids = ids[evenly_spaced(ids.shape[0], wanted)]
    return Corpus(np.ascontiguousarray(ids, dtype=np.int64), f"ids:{path.name}")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    """The tokenizer of a model folder, a hub id, or a GGUF file (its own, when its folder has none)."""
    from transformers import AutoTokenizer

    import probes

    path, extra = probes.pretrained_arguments(name_or_path)
    if extra and any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        extra = {}  # the folder's own tokenizer files come first
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, **extra
        )
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"no tokenizer could be loaded from {name_or_path!r} ({type(error).__name__}): "
            "pass --tokenizer, or pre-tokenised ids with --corpus ids.npy"
        ) from None
    return tokenizer


def load_corpus(
    spec: CorpusSpec, *, tokenizer_source: str, trust_remote_code: bool = False
) -> Corpus:
    """Read, tokenise and select the probe corpus described by `spec`."""
    if spec.ids is not None:
        return _load_ids(spec)
    if spec.paths:
        documents = read_documents(spec.paths)
        source = ",".join(Path(p).name for p in spec.paths)
    else:
        documents = builtin_documents()
        source = BUILTIN_CORPUS
    tokenizer = load_tokenizer(
        spec.tokenizer or tokenizer_source, trust_remote_code=trust_remote_code
    )
    stream = tokenize(documents, tokenizer)
    tokens = spec.tokens if spec.tokens is not None else DEFAULT_TOKENS
    return Corpus(select_sequences(stream, tokens, spec.length, source=source), source)
