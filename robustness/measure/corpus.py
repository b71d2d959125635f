"""The probe corpus: text, JSONL or pre-tokenised ids, cut into fixed-length sequences.

- Text files are tokenised with the base model's tokenizer (or ``--tokenizer``);
  documents are encoded without special tokens and joined by the tokenizer's
  end-of-text token where it has one.
- JSONL files contribute the ``text`` field (``--text-column``) of every line.
- Hugging Face datasets: ``hf:org/name[:config][@revision]`` (``--split``,
  ``--text-column``; streamed, so only the documents used are read) and local
  ``.parquet`` / ``.arrow`` files, read by the ``datasets`` library. A
  streamed dataset is read in its own order until it holds twice the tokens
  asked for (at least the whole split when it is smaller), then the
  sequences are spread evenly over what was read, as for files.
- **Conversations** (a ``messages`` list of ``{role, content}``, or
  ``prompt`` and ``response`` columns) are rendered with the base model's
  chat template, or the aligned model's when the base has none
  (``--chat-template auto``; which one is recorded as ``chat_template``);
  with ``--chat-template none``, or when neither has a template, their
  contents are joined by blank lines (recorded too).
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
import logging
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustness.settings.config import DEFAULT_TOKENS, CorpusSpec

__all__ = [
    "BUILTIN_CORPUS",
    "Corpus",
    "builtin_documents",
    "conversation",
    "evenly_spaced",
    "load_corpus",
    "load_tokenizer",
    "parse_hub_dataset",
    "read_records",
    "render_documents",
    "select_sequences",
    "tokenize",
]

BUILTIN_CORPUS = "builtin:pydoc_data.topics"


@dataclass(frozen=True)
class Corpus:
    """Token ids ``[n_seq, seq_len]`` (int64), where they came from and their hash.

    `origin` holds what a datasets corpus or a chat template adds to the
    provenance: ``revision``, ``split``, ``column``, ``chat_template``.
    """

    ids: np.ndarray
    source: str
    origin: dict = field(default_factory=dict)

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


DATASET_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
HUB_PREFIX = "hf:"
STREAM_MARGIN = 2  # a streamed dataset is read until it holds this many times the tokens asked


def parse_hub_dataset(spec: str) -> tuple[str, str | None, str | None]:
    """``hf:org/name[:config][@revision]`` → ``(name, config, revision)``."""
    text = spec[len(HUB_PREFIX) :]
    text, _, revision = text.partition("@")
    name, _, config = text.partition(":")
    if not name or name.count("/") > 1 or (_ and not config):
        raise ValueError(
            f"{spec!r} is not a datasets corpus: write hf:org/name[:config][@revision]"
        )
    return name, config or None, revision or None


def _dataset_records(raw: str, spec: CorpusSpec, budget: int | None):
    """The records of a datasets corpus: a hub dataset (streamed) or a local parquet/arrow file."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency; kept for a broken install
        raise ValueError("reading a datasets corpus needs the `datasets` package") from None
    streaming = raw.startswith(HUB_PREFIX)
    # While reading, the library is quiet (its errors become our one line, not a log; no bars of
    # its own); its settings are restored after.
    library_log = logging.getLogger("datasets")
    level, bars = library_log.level, not datasets.are_progress_bars_disabled()
    library_log.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        if streaming:
            name, config, revision = parse_hub_dataset(raw)
            stream = datasets.load_dataset(
                name, config, split=spec.split, revision=revision, streaming=True
            )
            origin = {"revision": revision or "main"}
        else:
            path = Path(raw)
            if not path.is_file():
                raise FileNotFoundError(f"corpus file not found: {path}")
            kind = DATASET_SUFFIXES[path.suffix.lower()]
            stream = datasets.load_dataset(kind, data_files=str(path), split="train")
            origin = {}
        records, characters = [], 0
        for record in stream:
            records.append(record)
            characters += sum(len(str(v)) for v in record.values())
            if budget is not None and streaming and characters >= budget:  # enough: stop reading
                break
    except (FileNotFoundError, ValueError) as error:
        if isinstance(error, FileNotFoundError) and str(error).startswith("corpus file"):
            raise
        raise ValueError(f"cannot read the corpus {raw}: {_first(error)}") from None
    except Exception as error:  # datasets raises many types (hub, arrow, schema): one line each
        raise ValueError(f"cannot read the corpus {raw} ({type(error).__name__}): "
                         f"{_first(error)}") from None  # fmt: skip
    finally:
        library_log.setLevel(level)
        if bars:
            datasets.enable_progress_bars()
    return records, {**origin, "split": spec.split if raw.startswith(HUB_PREFIX) else "train"}


def _first(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _jsonl_records(path: Path) -> list[tuple[str, dict]]:
    records = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not valid JSON: {error.msg}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number} is not a JSON object")
        records.append((f"{path}:{number}", record))
    return records


def conversation(record: dict, column: str) -> list[dict] | None:
    """A record's conversation as ``[{role, content}]``, or ``None`` when it holds plain text."""
    if isinstance(record.get(column), str):
        return None
    messages = record.get("messages")
    if isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        return messages
    if isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
        return [{"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["response"]}]  # fmt: skip
    return None


def read_records(spec: CorpusSpec, budget: int | None = None) -> tuple[list, str, dict]:
    """Every record of the corpus files (a text file is one ``str``), its source and origin."""
    records: list = []
    origin: dict = {}
    for raw in spec.paths:
        raw = str(raw)
        suffix = Path(raw).suffix.lower()
        if raw.startswith(HUB_PREFIX) or suffix in DATASET_SUFFIXES:
            found, origin = _dataset_records(raw, spec, budget)
            records.extend((f"{raw} row {i}", r) for i, r in enumerate(found, 1))
        elif suffix == ".jsonl":
            records.extend(_jsonl_records(Path(raw)))
        else:
            records.append((raw, read_text(Path(raw))))
    source = ",".join(p if str(p).startswith(HUB_PREFIX) else Path(p).name for p in spec.paths)
    return records, source, origin


def render_documents(records, spec: CorpusSpec, templates) -> tuple[list[str], str]:
    """Each record's text: its text column, or its conversation rendered (module docstring).

    `templates` is ``[(side, tokenizer), …]`` in order of preference; returns
    the documents and what rendered the conversations (``"none"`` without any).
    """
    documents, used = [], "none"
    template = None
    if spec.chat_template == "auto":
        template = next(((s, t) for s, t in templates if getattr(t, "chat_template", None)), None)
    for where, record in records:
        if isinstance(record, str):
            documents.append(record)
            continue
        messages = conversation(record, spec.text_column)
        if messages is None:
            if not isinstance(record.get(spec.text_column), str):
                raise ValueError(
                    f"{where} has no string `{spec.text_column}` field and no conversation "
                    "(messages, or prompt and response): name the text with --text-column"
                )
            documents.append(record[spec.text_column])
        elif template is None:
            documents.append("\n\n".join(m["content"] for m in messages))
            used = "none: contents joined" + (
                "" if spec.chat_template == "none" else " (neither tokenizer has a chat template)"
            )
        else:
            side, tokenizer = template
            documents.append(tokenizer.apply_chat_template(messages, tokenize=False))
            used = side
    return documents, used


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
    spec: CorpusSpec,
    *,
    tokenizer_source: str,
    trust_remote_code: bool = False,
    template_source: str | None = None,
) -> Corpus:
    """Read, tokenise and select the probe corpus described by `spec`.

    Conversations are rendered with `tokenizer_source`'s chat template, or
    `template_source`'s (the aligned model) when it has none.
    """
    if spec.ids is not None:
        return _load_ids(spec)
    tokens = spec.tokens if spec.tokens is not None else DEFAULT_TOKENS
    origin: dict = {}
    if spec.paths:  # read first: a missing file is named before any tokenizer is looked for
        # A rough character budget for streaming: tokens are rarely longer than 16 characters.
        records, source, origin = read_records(spec, budget=16 * STREAM_MARGIN * tokens)
    tokenizer = load_tokenizer(
        spec.tokenizer or tokenizer_source, trust_remote_code=trust_remote_code
    )
    if spec.paths:
        chats = any(not isinstance(r, str) and conversation(r, spec.text_column)
                    for _, r in records)  # fmt: skip
        templates = [(f"base ({tokenizer_source})", tokenizer)]
        if chats and template_source is not None and not getattr(tokenizer, "chat_template", None):
            with suppress(ValueError):  # an aligned side without a tokenizer (a LoRA adapter)
                templates.append((f"aligned ({template_source})", load_tokenizer(
                    template_source, trust_remote_code=trust_remote_code)))  # fmt: skip
        documents, rendered = render_documents(records, spec, templates)
        if chats:
            origin["chat_template"] = rendered
        if any(str(p).startswith(HUB_PREFIX) or Path(p).suffix.lower() in DATASET_SUFFIXES
               for p in spec.paths):  # fmt: skip
            origin["column"] = spec.text_column
    else:
        documents = builtin_documents()
        source = BUILTIN_CORPUS
    stream = tokenize(documents, tokenizer)
    return Corpus(select_sequences(stream, tokens, spec.length, source=source), source, origin)
