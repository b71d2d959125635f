"""One layer at a time (probes.layerwise) against the hooked full pass and the loaded models.

Null hypothesis of every comparison: the layer-sequential pass, the streamed
deltas and the skeleton's prediction bases are the same numbers as the hooked
full forward, ``extract_deltas`` and ``prediction_subspaces`` of the model
loaded whole. Assumes only that both run the same batches on the same device
in the same dtype; the comparisons are then exact (float32 sums of the same
products in the same order), so they are checked for equality, not closeness.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import FAMILY_NAMES, MIXTURE_OF_EXPERTS, aligned_copy, random_model

import probes
from robustness.measure.models import open_layerwise


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(model_type)`` → (base model, base dir, aligned model, aligned dir), cached."""
    root = tmp_path_factory.mktemp("layerwise")
    cache = {}

    def get(model_type):
        if model_type not in cache:
            base = random_model(model_type, seed=3)
            aligned = aligned_copy(base, seed=4)
            base.save_pretrained(root / f"{model_type}-base")
            aligned.save_pretrained(root / f"{model_type}-aligned")
            cache[model_type] = (
                base,
                str(root / f"{model_type}-base"),
                aligned,
                str(root / f"{model_type}-aligned"),
            )
        return cache[model_type]

    return get


IDS = np.random.default_rng(0).integers(0, 61, size=(10, 12))


def _materialised(layerwise) -> int:
    return sum(not p.is_meta for p in layerwise.model.parameters())


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_the_layer_sequential_pass_reproduces_the_hooked_full_pass(model_type, saved):
    """Every family, with bootstrap chunks and batches that do not divide them: equal sums, per chunk too."""
    base, base_dir, _, _ = saved(model_type)
    full = probes.collect_statistics(base, IDS, batch_size=3, chunk_size=4)
    # transformers stores MoE experts one tensor each and fuses them on loading: such a
    # checkpoint does not stream (NotStreamable) and is loaded whole, as the sweep does.
    layerwise, note = open_layerwise(base_dir, dtype="float32")
    assert (note is not None) == (model_type in MIXTURE_OF_EXPERTS)
    seen = []
    for layer, stats in probes.layerwise_statistics(
        {"base": layerwise}, IDS, sites=probes.SITES, batch_size=3, chunk_size=4
    ):
        seen.append(layer)
        if layerwise.streamed:
            assert _materialised(layerwise) == 0  # the layer is released before the next is read
        if model_type in MIXTURE_OF_EXPERTS:  # the routing the pass saw, token for token
            load = stats["base"].expert_load[layer]
            np.testing.assert_array_equal(load, full.expert_load[layer])
            # Each token hands out its top-k softmax probabilities: at most 1 (1 where
            # the family renormalises them, as Mixtral does).
            assert load.shape == (4,) and 0 < load.sum() <= IDS.size * (1 + 1e-6)  # float32 weights
            if model_type == "mixtral":
                assert load.sum() == pytest.approx(IDS.size)
        else:
            assert stats["base"].expert_load == {} and full.expert_load == {}
        for key, site in stats["base"].sites.items():
            reference = full.sites[key]
            assert site.n == reference.n
            np.testing.assert_array_equal(site.sum_x, reference.sum_x)
            np.testing.assert_array_equal(site.sum_xx, reference.sum_xx)
            chunks, chunks_ref = stats["base"].chunks[key], full.chunks[key]
            np.testing.assert_array_equal(chunks.n, chunks_ref.n)
            np.testing.assert_array_equal(chunks.sum_xx_packed, chunks_ref.sum_xx_packed)
        assert stats["base"].chunk_sequences == full.chunk_sequences
    assert seen == list(range(len(probes.layer_modules(base))))


def test_hidden_states_on_disk_give_the_same_numbers(saved):
    base, base_dir, _, _ = saved("llama")
    layerwise = probes.LayerwiseModel.from_checkpoint(base_dir, dtype="float32")
    in_memory = dict(probes.layerwise_statistics({"b": layerwise}, IDS, sites=["attn_in"]))
    on_disk = dict(
        probes.layerwise_statistics({"b": layerwise}, IDS, sites=["attn_in"], hidden_in_memory=0)
    )
    for layer, stats in in_memory.items():
        for key, site in stats["b"].sites.items():
            np.testing.assert_array_equal(site.sum_xx, on_disk[layer]["b"].sites[key].sum_xx)


def test_a_loaded_model_runs_the_same_pass(saved):
    """``LayerwiseModel.loaded`` (the fallback) reads nothing and gives the same statistics."""
    base, _, _, _ = saved("gpt2")
    full = probes.collect_statistics(base, IDS, batch_size=4)
    for _layer, stats in probes.layerwise_statistics(
        {"b": probes.LayerwiseModel.loaded(base)}, IDS, sites=probes.SITES, batch_size=4
    ):
        for key, site in stats["b"].sites.items():
            np.testing.assert_array_equal(site.sum_xx, full.sites[key].sum_xx)


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "phi3", "llama", "opt"])
def test_streamed_deltas_and_prediction_bases_equal_the_loaded_models(model_type, saved):
    """Conv1D, interleaved and contiguous fused splits, GQA, OPT's projection: deltas and bases exact."""
    base, base_dir, aligned, aligned_dir = saved(model_type)
    streamed_base = probes.LayerwiseModel.from_checkpoint(base_dir, dtype="float32")
    streamed_aligned = probes.LayerwiseModel.from_checkpoint(aligned_dir, dtype="float32")
    reference = probes.extract_deltas(base, aligned)
    weights = probes.canonical_weights(base)
    for layer in range(len(probes.layer_modules(base))):
        deltas, base_weights = probes.layer_deltas(
            streamed_base, streamed_aligned, layer, with_base=True
        )
        assert set(deltas) == {m for (lay, m) in reference if lay == layer}
        for matrix, delta in deltas.items():
            assert delta.dtype == torch.float32
            torch.testing.assert_close(delta, reference[(layer, matrix)], rtol=0, atol=0)
            torch.testing.assert_close(
                base_weights[matrix], weights[(layer, matrix)], rtol=0, atol=0
            )
        assert _materialised(streamed_base) == _materialised(streamed_aligned) == 0
    with streamed_base.parts(*streamed_base.prediction_prefixes()) as skeleton:
        streamed = probes.prediction_subspaces(skeleton)
    loaded = probes.prediction_subspaces(base)
    for name, subspace in loaded.items():
        np.testing.assert_allclose(streamed[name].spectrum, subspace.spectrum, rtol=1e-12)
        np.testing.assert_allclose(
            np.abs(streamed[name].basis[:, :4]), np.abs(subspace.basis[:, :4]), atol=1e-9
        )


def test_a_checkpoint_missing_a_tensor_is_refused_never_filled_at_random(saved, tmp_path):
    """A stored tensor under a name nothing maps: it cannot stream, and loading it whole would leave
    the model's own parameter at its random initialisation, so it is refused, naming the tensor."""
    from safetensors.torch import load_file, save_file

    _, base_dir, _, _ = saved("llama")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_bytes((Path(base_dir) / "config.json").read_bytes())
    tensors = load_file(f"{base_dir}/model.safetensors")
    tensors["model.norm.scale"] = tensors.pop("model.norm.weight")
    save_file(tensors, odd / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(probes.NotStreamable, match="no tensor for parameter 'model.norm.weight'"):
        probes.LayerwiseModel.from_checkpoint(str(odd))
    with pytest.raises(ValueError, match="'model.norm.weight': the checkpoint does not fit"):
        open_layerwise(str(odd), dtype="float32")
    with pytest.raises(ValueError, match="lacks model.norm.weight .* and its config.json disagree"):
        probes.load_model(str(odd))


def test_pickled_checkpoints_stream_memory_mapped_with_a_note(saved, tmp_path):
    base, base_dir, aligned, _ = saved("gpt2")
    pickled = tmp_path / "pickled"  # an older checkpoint: config.json beside pytorch_model.bin
    pickled.mkdir()
    (pickled / "config.json").write_bytes((Path(base_dir) / "config.json").read_bytes())
    stored = probes.Checkpoint(base_dir)
    torch.save({n: stored.get(n) for n in stored.names()}, pickled / "pytorch_model.bin")
    layerwise, note = open_layerwise(str(pickled), dtype="float32")
    assert layerwise.streamed and "no safetensors" in note
    streamed = probes.LayerwiseModel.from_checkpoint(base_dir, dtype="float32")
    deltas, _ = probes.layer_deltas(layerwise, streamed, 0, ["q", "o"])
    assert all(not torch.any(delta) for delta in deltas.values())  # the same weights either way


def test_auto_dtype_is_the_stored_one(tmp_path):
    model = random_model("qwen2").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    layerwise = probes.LayerwiseModel.from_checkpoint(str(tmp_path / "bf16"))
    assert layerwise.dtype == torch.bfloat16
    (_, stats), *_ = probes.layerwise_statistics({"b": layerwise}, IDS, sites=["attn_in"])
    full = probes.collect_statistics(model, IDS, sites=[(0, "attn_in")])
    np.testing.assert_array_equal(
        stats["b"].sites[(0, "attn_in")].sum_xx, full.sites[(0, "attn_in")].sum_xx
    )
