"""The statistics cache (robustness.measure.cache), through `rsf sweep`: a hit runs no forward pass, a
truncated or corrupted entry is detected (checksum), warned about and recomputed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rsf_commands import sweep
from tiny_models import VOCAB
from transformers import PreTrainedModel

from robustness.io.datasets import open_dataset
from rsf.main import main


class ForwardCounter:
    """Counts forward passes of whole transformers (any PreTrainedModel), however invoked."""

    def __init__(self):
        self.calls = 0

    def __enter__(self):
        def hook(module, args, output):
            if isinstance(module, PreTrainedModel):
                self.calls += 1

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_cache_hit_runs_no_forward_pass(saved_pair, tmp_path):
    base, aligned = saved_pair("qwen2")
    cache = tmp_path / "cache"
    with ForwardCounter() as first:
        a = sweep(tmp_path, base, aligned, cache=cache, out="a.nc")
    assert first.calls > 0
    with ForwardCounter() as second:
        b = sweep(
            tmp_path,
            base,
            aligned,
            "--cutoffs",
            "k=2,var=0.8",
            "--normalisations",
            "null_z",
            "--constructions",
            "act_cov,act_cov_aligned",
            cache=cache,
            out="b.nc",
        )
    assert second.calls == 0
    same = a.rsf.sel(
        construction=["act_cov", "act_cov_aligned"], cutoff=["var=0.9"], normalisation="null_z"
    )
    assert b.k.sel(cutoff="k=2").min() == 2 and same.notnull().all()


def test_corrupt_cache_entry_is_detected_and_recomputed(saved_pair, tmp_path):
    base, aligned = saved_pair("llama")
    cache = tmp_path / "cache"
    first = sweep(tmp_path, base, aligned, "--constructions", "act_cov", cache=cache, out="a.nc")
    entries = list((cache / "statistics").glob("*.npz"))
    assert len(entries) == 2  # one per layer of the two-layer model
    data = entries[0].read_bytes()
    entries[0].write_bytes(data[: len(data) // 2])  # a truncated write
    with (
        ForwardCounter() as counter,
        pytest.warns(RuntimeWarning, match="corrupt statistics cache"),
    ):
        args = [
            "sweep",
            "--base",
            base,
            "--aligned",
            aligned,
            "--out",
            str(tmp_path / "b.nc"),
            "--tokens",
            "256",
            "--seq-len",
            "16",
            "--constructions",
            "act_cov",
            "--cache-dir",
            str(cache),
        ]
        assert main(args) == 0
    assert counter.calls > 0
    second = open_dataset(tmp_path / "b.nc")
    assert np.array_equal(first.rsf.values, second.rsf.values, equal_nan=True)
    # A flipped byte that still unzips is caught by the checksum.
    entry = next((cache / "statistics").glob("*.npz"))
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    entry.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="corrupt statistics cache"):
        assert main(args) == 0


def test_gradient_statistics_round_trip_through_the_cache(saved_models, tmp_path):
    """`rsf gradients` keeps its statistics in the same cache: every sum, chunk sum, the loss and
    the batch count come back exactly, as GradientStatistics."""
    import probes
    from robustness.measure.cache import StatisticsCache
    from robustness.measure.models import load_model
    from robustness.mechanism.gradients import measure_objective

    model = load_model(saved_models("llama"))
    ids = np.random.default_rng(0).integers(0, VOCAB, (6, 8))
    stats = measure_objective(model, ids, lam=None, chunks=[(0, 3), (3, 6)], batch_size=2)
    cache = StatisticsCache(tmp_path)
    key = StatisticsCache.key(weights_hash="w", corpus_hash="c", settings={"kind": "gradients"})
    cache.store(key, stats)
    back = cache.load(key)
    assert isinstance(back, probes.GradientStatistics)
    assert (back.loss, back.n_batches) == (stats.loss, stats.n_batches)
    assert back.sites.keys() == stats.sites.keys() and back.chunks.keys() == stats.chunks.keys()
    for site in stats.sites:
        np.testing.assert_array_equal(back.sites[site].sum_xx, stats.sites[site].sum_xx)
        np.testing.assert_array_equal(back.chunks[site].sum_x, stats.chunks[site].sum_x)
