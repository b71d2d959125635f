"""Contrastive variants (robustness.mechanism.contrastive): the same settings find the saved
variants instead of training again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_models import VOCAB

from robustness.mechanism.contrastive import ContrastiveSettings, train_variants

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_variants_finds_the_saved_variants_instead_of_training_again(saved_pair, tmp_path):
    base, _ = saved_pair("llama")
    settings = ContrastiveSettings(lams=(0.0, 0.5, 1.0), steps=2, batch_size=4, prompt_len=6)
    train_ids = np.random.default_rng(0).integers(0, VOCAB, (4, 12))
    first = train_variants(
        base, train_ids, settings, variants_dir=tmp_path / "again", progress=False
    )
    stamps = [Path(p, "config.json").stat().st_mtime_ns for p in first]
    second = train_variants(
        base, train_ids, settings, variants_dir=tmp_path / "again", progress=False
    )
    assert second == first
    assert [Path(p, "config.json").stat().st_mtime_ns for p in second] == stamps
