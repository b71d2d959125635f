"""The probe corpus (robustness.measure.corpus): text, JSONL, ids used exactly as given, the built-in default."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import char_tokenizer

from robustness.measure.corpus import builtin_documents, load_corpus, select_sequences, tokenize
from robustness.settings.config import CorpusSpec


@pytest.fixture
def tokenizer_dir(tmp_path):
    path = tmp_path / "tok"
    char_tokenizer().save_pretrained(path)
    return str(path)


def test_text_is_tokenised_and_cut_into_sequences(tmp_path, tokenizer_dir):
    text = tmp_path / "a.txt"
    text.write_text("abc " * 50)
    corpus = load_corpus(
        CorpusSpec(paths=(str(text),), tokens=40, seq_len=10), tokenizer_source=tokenizer_dir
    )
    assert corpus.ids.shape == (4, 10) and corpus.ids.dtype == np.int64
    stream = tokenize(["abc " * 50], char_tokenizer())
    assert len(stream) == 201  # 200 characters and one end-of-text separator
    windows = stream[:200].reshape(20, 10)
    # Evenly spread over the 20 available windows: 0, 6, 13, 19.
    assert np.array_equal(corpus.ids, windows[[0, 6, 13, 19]])


def test_jsonl_uses_the_text_field(tmp_path, tokenizer_dir):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["ab", "cd"])))
    corpus = load_corpus(
        CorpusSpec(paths=(str(path),), tokens=6, seq_len=6), tokenizer_source=tokenizer_dir
    )
    tok = char_tokenizer()
    expected = tok("ab")["input_ids"] + [1] + tok("cd")["input_ids"] + [1]
    assert corpus.ids.tolist() == [expected]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 has no string `text` field"):
        load_corpus(CorpusSpec(paths=(str(bad),)), tokenizer_source=tokenizer_dir)


def test_ids_are_used_exactly_as_given(tmp_path):
    ids = np.arange(60).reshape(6, 10) % 50
    path = tmp_path / "ids.npy"
    np.save(path, ids)
    corpus = load_corpus(CorpusSpec(ids=str(path)), tokenizer_source="unused")
    assert np.array_equal(corpus.ids, ids) and corpus.seq_len == 10
    fewer = load_corpus(CorpusSpec(ids=str(path), tokens=30), tokenizer_source="unused")
    assert np.array_equal(fewer.ids, ids[[0, 2, 5]])
    with pytest.raises(ValueError, match="holds 60 tokens .6 sequences of 10.; 100 tokens need 10"):
        load_corpus(CorpusSpec(ids=str(path), tokens=100), tokenizer_source="unused")
    np.save(path, ids.astype(float))
    with pytest.raises(ValueError, match="integer ids"):
        load_corpus(CorpusSpec(ids=str(path)), tokenizer_source="unused")


def test_builtin_corpus_needs_no_download_and_is_deterministic(tokenizer_dir):
    documents = builtin_documents()
    assert len(documents) > 50 and sum(map(len, documents)) > 100_000
    spec = CorpusSpec(tokens=2048, seq_len=64)
    a = load_corpus(spec, tokenizer_source=tokenizer_dir)
    b = load_corpus(spec, tokenizer_source=tokenizer_dir)
    assert a.source == "builtin:pydoc_data.topics" and a.ids.shape == (32, 64)
    assert np.array_equal(a.ids, b.ids) and a.hash == b.hash


def test_too_little_text_says_how_many_tokens_were_found(tmp_path, tokenizer_dir):
    text = tmp_path / "short.txt"
    text.write_text("x" * 99)
    with pytest.raises(ValueError, match=r"has 100 tokens, 3 sequences of 32; 256 tokens need 8"):
        load_corpus(
            CorpusSpec(paths=(str(text),), tokens=256, seq_len=32), tokenizer_source=tokenizer_dir
        )


def test_missing_files_and_tokenizers_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        load_corpus(CorpusSpec(paths=(str(tmp_path / "nope.txt"),)), tokenizer_source=str(tmp_path))
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(ValueError, match="no tokenizer could be loaded.*--tokenizer"):
        load_corpus(CorpusSpec(paths=(str(tmp_path / "t.txt"),)), tokenizer_source=str(tmp_path))


def test_select_sequences_never_overlaps():
    stream = np.arange(100)
    out = select_sequences(stream, 50, 10, source="test")
    assert len(np.unique(out)) == out.size == 50


# ------------------------------------------------------- datasets corpora and chat templates
#
# Null hypothesis of each: reading a corpus through `datasets` (parquet, arrow) or rendering a
# conversation changes nothing but where the text comes from, so the ids equal those of the same
# documents tokenised by hand (the tokenizer's own apply_chat_template for conversations).
# Assumption: the `datasets` library returns a local file's rows in file order.

TEMPLATE = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
DOCS = ["ab cd", "ef gh", "ij kl"]
CHAT = [
    [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cd"}],
    [{"role": "user", "content": "ef"}, {"role": "assistant", "content": "gh"}],
]


def _ids(documents, tokens, seq_len=4):
    stream = tokenize(documents, char_tokenizer())
    return select_sequences(stream, tokens, seq_len, source="by hand")


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_parquet_and_arrow_files_read_their_text_column(tmp_path, tokenizer_dir, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"body": DOCS, "id": [0, 1, 2]})
    path = tmp_path / f"docs{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, path)
    else:  # the Arrow IPC stream format `datasets` writes and reads as .arrow
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    spec = CorpusSpec(paths=(str(path),), tokens=12, seq_len=4, text_column="body")
    corpus = load_corpus(spec, tokenizer_source=tokenizer_dir)
    assert np.array_equal(corpus.ids, _ids(DOCS, 12))
    assert corpus.origin == {"split": "train", "column": "body"}
    with pytest.raises(ValueError, match=r"docs.* row 1 has no string `text` field"):
        load_corpus(CorpusSpec(paths=(str(path),), tokens=12, seq_len=4),
                    tokenizer_source=tokenizer_dir)  # fmt: skip


def _chat_tokenizer(tmp_path, name="chat"):
    tokenizer = char_tokenizer()
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(tmp_path / name)
    return str(tmp_path / name), tokenizer


def test_conversations_are_rendered_with_the_base_template(tmp_path):
    base, tokenizer = _chat_tokenizer(tmp_path)
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"messages": m}) for m in CHAT))
    corpus = load_corpus(CorpusSpec(paths=(str(path),), tokens=8, seq_len=4), tokenizer_source=base)
    rendered = [tokenizer.apply_chat_template(m, tokenize=False) for m in CHAT]
    assert rendered[0] == "[user]ab[assistant]cd"
    assert np.array_equal(corpus.ids, _ids(rendered, 8))
    assert corpus.origin["chat_template"] == f"base ({base})"


def test_the_aligned_template_serves_when_the_base_has_none(tmp_path, tokenizer_dir):
    aligned, tokenizer = _chat_tokenizer(tmp_path, "aligned")
    path = tmp_path / "pairs.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["ab", "ef"], "response": ["cd", "gh"]}), path)
    corpus = load_corpus(CorpusSpec(paths=(str(path),), tokens=8, seq_len=4),
                         tokenizer_source=tokenizer_dir, template_source=aligned)  # fmt: skip
    rendered = [tokenizer.apply_chat_template(m, tokenize=False) for m in CHAT]
    assert np.array_equal(corpus.ids, _ids(rendered, 8))
    assert corpus.origin["chat_template"] == f"aligned ({aligned})"
    plain = load_corpus(CorpusSpec(paths=(str(path),), tokens=8, seq_len=4, chat_template="none"),
                        tokenizer_source=tokenizer_dir, template_source=aligned)  # fmt: skip
    assert np.array_equal(plain.ids, _ids(["ab\n\ncd", "ef\n\ngh"], 8))
    assert plain.origin["chat_template"] == "none: contents joined"


def test_a_hub_dataset_is_streamed_at_its_revision_and_split(tmp_path, tokenizer_dir, monkeypatch):
    """The call `datasets` receives (no network: its loader is replaced by a recorder)."""
    import datasets

    calls, pulled = [], []

    def rows():
        for document in DOCS * 100:
            pulled.append(document)
            yield {"text": document}

    def load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        return rows()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    spec = CorpusSpec(paths=("hf:org/corpus:en@v2",), tokens=12, seq_len=4, split="validation")
    corpus = load_corpus(spec, tokenizer_source=tokenizer_dir)
    assert calls == [("org/corpus", "en", {"split": "validation", "revision": "v2",
                                           "streaming": True})]  # fmt: skip
    assert corpus.source == "hf:org/corpus:en@v2"
    assert corpus.origin == {"revision": "v2", "split": "validation", "column": "text"}
    # Streaming stops once the text read reaches twice the tokens at 16 characters a token:
    # 384 characters, 77 rows of 5 (of the 300 offered).
    assert len(pulled) == 77 and corpus.ids.shape == (3, 4)
    assert np.array_equal(corpus.ids, _ids((DOCS * 100)[:77], 12))
    with pytest.raises(ValueError, match="not a datasets corpus"):
        load_corpus(CorpusSpec(paths=("hf:a/b/c",)), tokenizer_source=tokenizer_dir)
