"""The rank-1 experiment (robustness.mechanism.rank1): its margin against
robustness.training.preferences.preference_margin on a copy with the update written into the weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import VOCAB, random_model

import probes
from probes import rank1_update
from robustness.measure.corpus import Corpus
from robustness.mechanism.rank1 import Rank1Settings, rank1_dataset
from robustness.training.preferences import preference_margin, preference_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rank1_dataset_margin_matches_preference_margin(tmp_path):
    model = random_model("llama")
    ids = np.random.default_rng(2).integers(0, VOCAB, (12, 12))
    settings = Rank1Settings(controls=3, layer=1, scale=0.5, replicates=200)
    ds = rank1_dataset(model, Corpus(ids, "test"), settings, progress=False)
    assert ds.attrs["kind"] == "rank1"
    assert ds.sizes["intervention"] == 1 + 2 * 3
    # The principal direction is the top eigenvector of the read site's covariance.
    stats = probes.collect_statistics(model, ids, sites=[(1, "attn_in")])
    top = stats.sites[(1, "attn_in")].subspace().basis[:, 0]
    direction = ds.direction.sel(matrix="q", intervention="principal").values
    assert abs(direction @ top) == pytest.approx(1, abs=1e-6)
    np.testing.assert_allclose(ds.alignment.sel(intervention="principal").values, 1.0, rtol=1e-9)
    matched = ds.alignment.where(ds.family == "matched", drop=True).values
    assert np.all(matched < 1 + 1e-9)
    # Independent check: write the principal update into a copy's weights, use preference_margin.
    pairs = preference_pairs(ids, prompt_len=6, rng=probes.construction_rng(0, "rank1", "pairs"))
    w = probes.canonical_weights(model, matrices=["q"], layers=[1])[(1, "q")]
    left = np.linalg.svd(w.double().numpy())[0][:, 0]
    u = left if left[np.argmax(np.abs(left))] > 0 else -left
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.model.layers[1].self_attn.q_proj.weight += rank1_update(
            u, direction, float(ds.update_norm.sel(matrix="q"))
        ).float()
    expected = preference_margin(edited, model, pairs, beta=0.1).mean()
    assert float(ds.margin_change.sel(matrix="q", intervention="principal")) == pytest.approx(
        expected, rel=1e-3, abs=1e-6
    )
    p = ds.p_margin.values
    assert np.all((p >= 1 / 7 - 1e-12) & (p <= 1))
    assert np.all(ds.kl.values >= -1e-7)
