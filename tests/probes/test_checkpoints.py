"""The weights hash over a checkpoint's stored tensors (probes.checkpoints).

Checked against a naive reference written here from the safetensors file
itself, and for the properties that make it one hash: the same for a sharded
and an unsharded save, for safetensors and PyTorch pickles, whatever order
the tensors are read in; different when the stored dtype differs.
"""

from __future__ import annotations

import hashlib
import random

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import random_model

import probes
from probes.checkpoints import Checkpoint, combine_digests, tensor_digest


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = random_model("llama", seed=3)
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, kwargs in {"single": {}, "sharded": {"max_shard_size": "20KB"}}.items():
        model.save_pretrained(root / name, **kwargs)
        paths[name] = root / name
    # An older checkpoint: the config and a PyTorch pickle of the state dict, no safetensors.
    (root / "pickle").mkdir()
    model.config.save_pretrained(root / "pickle")
    torch.save(model.state_dict(), root / "pickle" / "pytorch_model.bin")
    paths["pickle"] = root / "pickle"
    model.to(torch.bfloat16).save_pretrained(root / "bf16")
    paths["bf16"] = root / "bf16"
    return paths


def test_hash_equals_a_naive_hash_of_the_stored_file(llama):
    """Reference: every tensor of model.safetensors, by sorted name, hashed from its raw bytes."""
    tensors = load_file(llama["single"] / "model.safetensors")
    lines = []
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(bytes(t.reshape(-1).view(torch.uint8).tolist()))
        lines.append(f"{name}:{digest.hexdigest()}")
    expected = "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert probes.weights_hash(llama["single"]) == expected


def test_sharding_and_the_file_format_do_not_change_the_hash(llama):
    sharded = Checkpoint(llama["sharded"])
    assert len(set(sharded.files.values())) > 1  # really sharded, through the index
    single = probes.weights_hash(llama["single"])
    assert probes.weights_hash(llama["sharded"]) == single
    assert Checkpoint(llama["pickle"]).format == "pickle"
    assert probes.weights_hash(llama["pickle"]) == single


def test_the_stored_dtype_is_part_of_the_hash(llama):
    assert probes.weights_hash(llama["bf16"]) != probes.weights_hash(llama["single"])
    assert Checkpoint(llama["bf16"]).get("model.norm.weight").dtype == torch.bfloat16


def test_the_hash_does_not_depend_on_the_reading_order(llama):
    checkpoint = Checkpoint(llama["single"])
    names = checkpoint.names()
    random.Random(0).shuffle(names)
    streamed = {name: tensor_digest(name, checkpoint.get(name)) for name in names}
    assert combine_digests(streamed) == checkpoint.weights_hash()


def test_a_changed_tensor_changes_the_hash(tmp_path):
    model = random_model("llama", seed=3)
    model.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    model.save_pretrained(tmp_path / "b")
    assert probes.weights_hash(tmp_path / "a") != probes.weights_hash(tmp_path / "b")


def test_missing_or_empty_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        probes.weights_hash(tmp_path / "absent/")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no weights"):
        probes.weights_hash(tmp_path / "empty")
