"""Gradients under each objective (robustness.mechanism.gradients): measure_objective, the replicates.

The dataset along checkpoints is tested in test_gradient_dataset.py.

References: the activation spectra under cross-entropy against a plain
statistics pass; the vectorised bootstrap replicates against one replicate at
a time.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import VOCAB, random_model

import probes
from robustness.mechanism.gradients import (
    measure_objective,
    parse_objectives,
)
from robustness.training.preferences import preference_pairs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reference_passes_without_gradients_are_not_recorded():
    model = random_model("llama")
    ids = np.random.default_rng(2).integers(0, VOCAB, (6, 10))
    pairs = preference_pairs(ids, prompt_len=4, rng=np.random.default_rng(0))
    dpo = measure_objective(model, ids, lam=1.0, pairs=pairs, chunks=[(0, 3), (3, 6)])
    ce = measure_objective(model, ids, lam=None, chunks=[(0, 3), (3, 6)])
    # DPO reads prompt ++ chosen and prompt ++ rejected with gradients: 2 × 6 × 10 vectors;
    # the reference (the model itself, under no_grad) adds none.
    assert dpo.sites[(0, "o_out")].n == 2 * ids.size
    assert ce.sites[(0, "o_out")].n == ids.size
    # The DPO gradient of a policy equal to its reference is −β/2 ∇(log π(c) − log π(r)):
    # not zero, and different from cross-entropy's.
    assert dpo.sites[(1, "down_out")].sum_xx.trace() > 0
    assert not np.allclose(dpo.sites[(1, "down_out")].sum_xx, ce.sites[(1, "down_out")].sum_xx)


def test_frozen_parameters_still_give_gradients():
    model = random_model("llama").requires_grad_(False)
    ids = np.random.default_rng(3).integers(0, VOCAB, (2, 8))
    stats = measure_objective(model, ids, lam=None)
    assert stats.sites[(0, "o_out")].sum_xx.trace() > 0


def test_parse_objectives():
    assert parse_objectives(["ce", "dpo", "mixed"], (0.25, 0.5)) == [
        ("ce", None),
        ("dpo", 1.0),
        ("lam=0.25", 0.25),
        ("lam=0.5", 0.5),
    ]
    with pytest.raises(ValueError, match="unknown objective 'sft'"):
        parse_objectives(["sft"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parse_objectives(["lam=1.5"])


def test_vectorised_replicates_equal_one_at_a_time():
    from robustness.measure.resampling import bootstrap_weights
    from robustness.mechanism.gradients import _replicate_summaries, _site_summary

    model = random_model("llama")
    ids = np.random.default_rng(5).integers(0, VOCAB, (6, 10))
    stats = measure_objective(model, ids, lam=None, chunks=[(0, 2), (2, 4), (4, 6)])
    basis = probes.random_subspace(32, rng=np.random.default_rng(0)).basis
    ks = np.array([1, 4, 9])
    weights = bootstrap_weights(3, 5, 0, "test")
    chunks = stats.chunks[(1, "down_out")]
    pr, er, fraction = _replicate_summaries(chunks, weights, basis, ks)
    for b in range(len(weights)):
        _, pr_b, er_b, fraction_b = _site_summary(chunks.reweighted(weights[b]), basis, ks)
        assert pr[b] == pytest.approx(pr_b, rel=1e-9)
        assert er[b] == pytest.approx(er_b, rel=1e-9)
        np.testing.assert_allclose(fraction[b], fraction_b, rtol=1e-9)
