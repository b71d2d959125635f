"""The demo pair (robustness.demo.pair): trained like any model, deterministic from the seed, cached
(and rebuilt on request), its checkpoints and held-out text; its settings checked."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from robustness.demo import pair as demo
from robustness.demo.pair import DemoSettings, demo_checkpoints, demo_pair, demo_token_windows
from robustness.measure.corpus import builtin_documents, load_tokenizer, tokenize

TINY = DemoSettings.tiny()


def weights(path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_the_pair_is_saved_like_any_model_with_checkpoints_and_a_manifest(tiny_demo):
    cache, pair = tiny_demo
    assert pair.trained and pair.root == cache / "demo" / TINY.key
    base, aligned = AutoModelForCausalLM.from_pretrained(pair.base), weights(pair.aligned)
    assert base.config.model_type == "llama" and base.config.num_hidden_layers == TINY.n_layers
    assert not base.config.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(pair.aligned)
    assert tokenizer.decode(tokenizer("def f(x): return x")["input_ids"]) == "def f(x): return x"
    assert any(not torch.equal(v, aligned[k]) for k, v in base.state_dict().items())
    pretrain = sorted(p.name for p in (pair.root / "checkpoints" / "pretrain").iterdir())
    align = sorted(p.name for p in (pair.root / "checkpoints" / "align").iterdir())
    assert pretrain == ["step-00000", "step-00003", "step-00006"]
    assert align == ["step-00000", "step-00002", "step-00004"]
    # The trajectories end where the pair is.
    last_pretrain = weights(pair.root / "checkpoints" / "pretrain" / "step-00006")
    last_align = weights(pair.root / "checkpoints" / "align" / "step-00004")
    assert all(torch.equal(v, last_pretrain[k]) for k, v in base.state_dict().items())
    assert all(torch.equal(v, last_align[k]) for k, v in aligned.items())
    manifest = json.loads((pair.root / "demo.json").read_text())
    assert manifest == pair.manifest
    assert manifest["seed"] == 0 and manifest["settings"]["n_layers"] == TINY.n_layers
    assert len(manifest["pretrain"]["losses"]) == TINY.pretrain_steps
    assert len(manifest["align"]["losses"]) == TINY.align_steps
    assert manifest["held_out"]["base"]["dpo_margin_mean"] == pytest.approx(0.0, abs=1e-9)
    assert "torch" in manifest["versions"]
    assert not [p for p in (cache / "demo").iterdir() if p.name.startswith(".")]  # no leftovers


def test_the_pair_is_deterministic_from_the_seed(tiny_demo, tmp_path):
    _, first = tiny_demo
    again = demo_pair(TINY, cache_root=tmp_path, progress=False)
    assert again.trained and again.root != first.root
    for role in ("base", "aligned"):
        a, b = weights(getattr(first, role)), weights(getattr(again, role))
        assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert again.manifest["tokenizer"] == first.manifest["tokenizer"]
    other = DemoSettings.tiny(seed=1)
    assert other.key != TINY.key


def test_the_cache_is_reused_and_retrain_rebuilds(tmp_path, monkeypatch):
    calls = []

    def counting(settings, out, *, progress=True):
        calls.append(out)
        return _fake(out, marker=len(calls))

    monkeypatch.setattr(demo, "train_demo_pair", counting)
    first = demo_pair(TINY, cache_root=tmp_path, progress=False)
    assert first.trained and first.manifest == {"marker": 1}
    second = demo_pair(TINY, cache_root=tmp_path, progress=False)
    assert len(calls) == 1 and not second.trained and second.root == first.root
    assert second.manifest == {"marker": 1}  # read back from the cached folder
    third = demo_pair(TINY, cache_root=tmp_path, retrain=True, progress=False)
    assert len(calls) == 2 and third.trained and third.root == first.root
    assert json.loads((third.root / "demo.json").read_text()) == {"marker": 2}
    # A half-built folder (no manifest) is not mistaken for a cached pair.
    (third.root / "demo.json").unlink()
    assert demo_pair(TINY, cache_root=tmp_path, progress=False).trained and len(calls) == 3
    # Training happens beside the final folder; nothing temporary is left behind.
    assert all(path.parent == tmp_path / "demo" and path.name.startswith(".") for path in calls)
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [TINY.key]


def test_a_failed_training_leaves_no_pair_behind(tmp_path, monkeypatch):
    def failing(settings, out, *, progress=True):
        _fake(out)
        raise FloatingPointError("the loss became nan")

    monkeypatch.setattr(demo, "train_demo_pair", failing)
    with pytest.raises(FloatingPointError):
        demo_pair(TINY, cache_root=tmp_path, progress=False)
    assert list((tmp_path / "demo").iterdir()) == []


def test_settings_are_validated():
    with pytest.raises(ValueError, match="n_heads"):
        DemoSettings.tiny(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="align_steps"):
        DemoSettings.tiny(align_steps=0)
    with pytest.raises(ValueError, match="vocab_size"):
        DemoSettings.tiny(vocab_size=100)


def test_the_cache_folder_follows_rsf_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RSF_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setattr(demo, "train_demo_pair", lambda settings, out, progress=True: _fake(out))
    pair = demo_pair(TINY, progress=False)
    assert pair.root == tmp_path / "env-cache" / "demo" / TINY.key
    assert os.path.isdir(pair.root)


def _fake(out, marker=0):
    """A stand-in training run that writes only what the cache check looks for."""
    for role in ("base", "aligned"):
        (out / role).mkdir(parents=True)
        (out / role / "config.json").write_text("{}")
    manifest = {"marker": marker}
    (out / "demo.json").write_text(json.dumps(manifest))
    return manifest


def test_demo_checkpoints_are_the_align_steps_and_the_held_out_windows_its_documents(
    tiny_demo, monkeypatch
):
    """demo_checkpoints finds the cached pair's alignment steps; demo_token_windows reads the
    held-out documents with the demo's tokenizer (the commands that use them:
    cli/test_experiment.py)."""
    cache, _ = tiny_demo
    settings = DemoSettings.tiny()
    monkeypatch.setattr(demo, "demo_pair", functools.partial(demo.demo_pair, settings))
    found = demo_checkpoints(cache_root=cache, progress=False)
    assert [Path(p).name for p in found.align] == ["step-00000", "step-00002", "step-00004"]
    held = demo_token_windows(found, held_out=True, length=16)
    # The held-out documents are every `held_out_every`-th one, tokenised by the demo's tokenizer.
    every = settings.held_out_every
    documents = [d for i, d in enumerate(builtin_documents()) if i % every == every // 2]
    stream = tokenize(documents, load_tokenizer(found.base))
    np.testing.assert_array_equal(held.ravel(), stream[: held.size])
