"""GGUF checkpoints (probes.gguf) and the rounding grid of every storage type (probes.precision).

Tiny llamas are written with the ``gguf`` package's own writer (``tests/gguf_files.py``) and read
back one tensor at a time. The dequantisers are checked against decoders written here from the
format's block layout (ggml's ``block_q4_1`` and ``block_q4_K``), element by element; the grid
steps against the values those decoders produce.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf_files import GGUF_WIDTHS, llama_cpp_permute, write_gguf
from tiny_models import char_tokenizer, random_model

import probes
from probes.checkpoints import Checkpoint
from probes.precision import gguf_steps
from robustness.measure.corpus import load_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama and GGUF files of it: all F32, all F16, and linear weights in Q8_0."""
    root = tmp_path_factory.mktemp("gguf")
    model = random_model("llama", 5, **GGUF_WIDTHS)
    files = {
        kind: write_gguf(model, root / f"tiny-{kind}.gguf", default=kind)
        for kind in ("F32", "F16", "Q8_0")
    }
    return model, files, root


def test_every_tensor_reads_back_exactly_in_hugging_face_layout(tiny):
    """F32: the stored tensors, q and k permuted by llama.cpp's rule, come back as the model's."""
    model, files, _ = tiny
    checkpoint = Checkpoint(files["F32"])
    assert checkpoint.format == "gguf"
    state = model.state_dict()
    assert set(checkpoint.names()) == set(state)
    for name, tensor in state.items():
        assert checkpoint.shape(name) == tuple(tensor.shape)
        assert torch.equal(checkpoint.get(name), tensor), name
        assert checkpoint.storage(name) == "F32"


def test_the_llama_permutation_is_undone_not_ignored():
    """The writer's permutation is not the identity (else the previous test could not fail)."""
    rows = np.arange(16, dtype=np.float32).reshape(16, 1)
    assert not np.array_equal(llama_cpp_permute(rows, 2), rows)


def test_f16_tensors_are_float16_as_stored_and_hash_like_their_safetensors_twin(tiny):
    """Null: a GGUF F16 file is the model rounded to float16, nothing else; its weights hash is the
    one of the same float16 weights saved by save_pretrained."""
    model, files, root = tiny
    checkpoint = Checkpoint(files["F16"])
    half = {name: t.to(torch.float16) for name, t in model.state_dict().items()}
    for name in checkpoint.names():
        stored = checkpoint.get(name)
        expected = half[name] if half[name].ndim > 1 else model.state_dict()[name]
        assert stored.dtype == expected.dtype and torch.equal(stored, expected), name
    twin = random_model("llama", 5, **GGUF_WIDTHS)
    with torch.no_grad():
        for param in twin.parameters():
            if param.ndim > 1:
                param.copy_(param.to(torch.float16).to(torch.float32))
    mixed = {n: (p.to(torch.float16) if p.ndim > 1 else p) for n, p in twin.state_dict().items()}
    from safetensors.torch import save_file

    (root / "twin-f16").mkdir(exist_ok=True)
    twin.config.save_pretrained(root / "twin-f16")
    save_file(
        {n: t.contiguous() for n, t in mixed.items()}, root / "twin-f16" / "model.safetensors"
    )
    assert probes.weights_hash(files["F16"]) == probes.weights_hash(root / "twin-f16")
    assert probes.weights_hash(files["F16"]) != probes.weights_hash(files["F32"])


def test_q8_0_rounds_each_weight_to_its_blocks_grid_and_the_floor_predicts_the_error(tiny):
    """Null of the floor: each weight's rounding error is uniform on ±step/2 and independent, so
    ‖W_q − W‖² ≈ Σ step²/12. Assumption: weights are spread over many grid steps (true here: 8-bit
    codes). The error never exceeds half a step plus what the float16 rounding of the stored scale
    adds: |q| ≤ 127 codes times a relative 2^-11 of the step."""
    model, files, _ = tiny
    checkpoint = Checkpoint(files["Q8_0"])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.2.mlp.down_proj.weight"):
        assert checkpoint.storage(name) == "Q8_0"
        exact = model.state_dict()[name].numpy()
        error = checkpoint.get(name).numpy() - exact
        steps = checkpoint.steps(name)
        assert steps.shape == exact.shape
        assert np.all(np.abs(error) <= steps * (0.5 + 127 * 2.0**-11) + 1e-7)
        predicted = np.sqrt(np.sum(steps.astype(np.float64) ** 2 / 12))
        assert np.linalg.norm(error) == pytest.approx(predicted, rel=0.1)


def test_the_rounding_floor_of_a_layer_joins_both_sides(tiny, tmp_path):
    """layer_precision: each side's storage type, and sqrt(Σ var_base + Σ var_aligned)."""
    _, files, _ = tiny
    base = probes.LayerwiseModel.from_checkpoint(str(files["Q8_0"]))
    aligned = probes.LayerwiseModel.from_checkpoint(str(files["F32"]))
    found = probes.layer_precision(base, aligned, 1, ["q", "down"])
    for matrix, module in (("q", "self_attn.q_proj"), ("down", "mlp.down_proj")):
        name = f"model.layers.1.{module}.weight"
        q_steps = Checkpoint(files["Q8_0"]).steps(name).astype(np.float64)
        f_steps = Checkpoint(files["F32"]).steps(name).astype(np.float64)
        expected = np.sqrt(np.sum(q_steps**2 / 12) + np.sum(f_steps**2 / 12))
        assert found[matrix].base == "Q8_0" and found[matrix].aligned == "F32"
        assert found[matrix].floor == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------ the formats' references


def _f16(value: float) -> bytes:
    return np.float16(value).tobytes()


def reference_q4_1(block: bytes) -> list[float]:
    """ggml's block_q4_1, read as the format defines it: d (f16), m (f16), 16 bytes of nibbles;
    element j < 16 is the low nibble of byte j, element j + 16 its high nibble; x = d·q + m."""
    d = float(np.frombuffer(block[0:2], np.float16)[0])
    m = float(np.frombuffer(block[2:4], np.float16)[0])
    out = [0.0] * 32
    for j in range(16):
        byte = block[4 + j]
        out[j] = d * (byte & 0x0F) + m
        out[j + 16] = d * (byte >> 4) + m
    return out


def _k_scale_min(j: int, scales: bytes) -> tuple[int, int]:
    """ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j from 12 packed bytes."""
    if j < 4:
        return scales[j] & 63, scales[j + 4] & 63
    sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4)
    mn = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4)
    return sc, mn


def reference_q4_k(block: bytes) -> tuple[list[float], list[float]]:
    """ggml's block_q4_K (256 values): d, dmin (f16), scales[12], qs[128]. Sub-blocks of 32 in
    pairs: for each 32 bytes of qs, the low nibbles are sub-block 2i, the high ones 2i + 1;
    x = d·sc·q − dmin·mn. Returns the values and each value's step d·sc."""
    d = float(np.frombuffer(block[0:2], np.float16)[0])
    dmin = float(np.frombuffer(block[2:4], np.float16)[0])
    scales, qs = block[4:16], block[16:144]
    values, steps = [], []
    for pair in range(4):
        chunk = qs[32 * pair : 32 * pair + 32]
        for half, shift in ((2 * pair, 0), (2 * pair + 1, 4)):
            sc, mn = _k_scale_min(half, scales)
            for byte in chunk:
                values.append(d * sc * ((byte >> shift) & 0x0F) - dmin * mn)
                steps.append(abs(d * sc))
    return values, steps


def random_blocks(kind: str, n: int, seed: int) -> np.ndarray:
    """`n` random blocks of `kind`: random bytes, with every f16 scale field a finite small value."""
    rng = np.random.default_rng(seed)
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    scale_fields = {"Q4_1": (0, 2), "Q4_K": (0, 2), "Q8_0": (0,), "Q5_K": (0, 2), "Q6_K": (208,),
                    "Q2_K": (80, 82), "Q4_0": (0,), "Q5_0": (0,), "Q5_1": (0, 2)}[kind]  # fmt: skip
    for offset in scale_fields:
        values = rng.uniform(1e-3, 0.05, size=n).astype(np.float16)
        raw[:, offset : offset + 2] = values.view(np.uint8).reshape(n, 2)
    return raw, block


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_K"])
def test_the_dequantiser_matches_the_formats_reference_on_random_blocks(kind):
    raw, block = random_blocks(kind, 64, seed=11)
    got = gguf.dequantize(raw.reshape(1, -1), gguf.GGMLQuantizationType[kind]).reshape(-1, block)
    for row, data in zip(got, raw, strict=True):
        if kind == "Q4_1":
            expected = reference_q4_1(bytes(data))
        else:
            expected, _ = reference_q4_k(bytes(data))
        np.testing.assert_allclose(
            row, np.asarray(expected, dtype=np.float32), rtol=1e-6, atol=1e-7
        )


def test_q4_k_steps_are_the_references_sub_block_scales():
    raw, block = random_blocks("Q4_K", 32, seed=12)
    values = gguf.dequantize(raw.reshape(1, -1), gguf.GGMLQuantizationType.Q4_K)
    steps = gguf_steps(raw.reshape(1, -1), "Q4_K", values).reshape(-1, block)
    for row, data in zip(steps, raw, strict=True):
        np.testing.assert_allclose(row, reference_q4_k(bytes(data))[1], rtol=1e-6)


@pytest.mark.parametrize(
    "kind", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q4_K", "Q5_K", "Q6_K"]
)
def test_values_within_a_sub_block_lie_on_a_grid_of_the_step(kind):
    """Whatever the layout, dequantised values of one sub-block differ by integer multiples of the
    step read for them (a step taken from the wrong bytes fails this)."""
    raw, block = random_blocks(kind, 16, seed=13)
    flat = raw.reshape(1, -1)
    values = gguf.dequantize(flat, gguf.GGMLQuantizationType[kind]).astype(np.float64).ravel()
    steps = gguf_steps(flat, kind, values.reshape(1, -1)).astype(np.float64).ravel()
    sub = 16 if kind in ("Q2_K", "Q6_K") else 32
    for start in range(0, values.size, sub):
        v, s = values[start : start + sub], steps[start]
        assert np.all(steps[start : start + sub] == s)
        if s == 0:
            continue
        multiples = (v - v.min()) / s
        np.testing.assert_allclose(multiples, np.round(multiples), atol=2e-3)


def test_types_without_a_linear_grid_have_no_step():
    assert gguf_steps(np.zeros((1, 66), np.uint8), "IQ2_XXS", np.zeros((1, 256))) is None


# ------------------------------------------------------------------ finding files, tokenizers


def test_a_folder_with_one_gguf_is_that_file_and_with_two_an_error(tmp_path, tiny):
    _, files, _ = tiny
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "m.gguf").write_bytes(files["F32"].read_bytes())
    assert probes.find_gguf(tmp_path / "one") == tmp_path / "one" / "m.gguf"
    (tmp_path / "one" / "n.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="holds 2 GGUF files .*give one of them"):
        probes.find_gguf(tmp_path / "one")
    (tmp_path / "folder").mkdir()
    random_model("llama").save_pretrained(tmp_path / "folder")
    (tmp_path / "folder" / "extra.gguf").write_bytes(b"")
    assert probes.find_gguf(tmp_path / "folder") is None  # a save_pretrained folder comes first


def test_the_tokenizer_is_the_ggufs_own_unless_its_folder_has_one(tmp_path, tiny):
    _, files, _ = tiny
    (tmp_path / "bare").mkdir()
    bare = tmp_path / "bare" / "m.gguf"
    bare.write_bytes(files["F32"].read_bytes())
    text = "abc de\n"
    expected = char_tokenizer()(text)["input_ids"]
    assert load_tokenizer(str(bare))(text)["input_ids"] == expected
    (tmp_path / "dressed").mkdir()
    dressed = tmp_path / "dressed" / "m.gguf"
    dressed.write_bytes(files["F32"].read_bytes())
    char_tokenizer().save_pretrained(tmp_path / "dressed")
    # The folder's own tokenizer lowercases ("ABC" → a, b, c); the GGUF's byte-level one cannot.
    assert load_tokenizer(str(dressed))("ABC")["input_ids"] == char_tokenizer()("abc")["input_ids"]
    assert load_tokenizer(str(bare))("ABC")["input_ids"] != char_tokenizer()("abc")["input_ids"]


def test_a_corrupt_gguf_is_one_line(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)
    with pytest.raises(ValueError, match=r"is not a readable GGUF file") as caught:
        Checkpoint(broken)
    assert "\n" not in str(caught.value)
