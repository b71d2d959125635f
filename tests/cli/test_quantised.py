"""GGUF and other quantised checkpoints through ``rsf sweep``, ``rsf inspect`` and the report.

Null hypothesis of the twin tests: reading a GGUF file changes nothing but the storage, so a pair
written as GGUF F32 (or F16) sweeps to exactly the numbers of the same weights saved by
``save_pretrained``, the random control included (its seed is the base's weights hash, which a
float GGUF shares with its twin). A pair quantised independently to Q8_0 differs from its float
twin by rounding: the report's caveat fires when the delta is not clearly above its rounding floor.
Assumption: tiny llamas written with the ``gguf`` package's own writer are what llama.cpp writes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf_files import GGUF_WIDTHS, write_gguf
from rsf_commands import run_cli
from safetensors.torch import save_file
from tiny_models import aligned_copy, char_tokenizer, random_model

from robustness.io.datasets import open_dataset
from rsf.main import main

SWEEP = ["--tokens", "256", "--seq-len", "16", "--quiet", "--no-cache"]


def _twin(model, path, *, half_linear=False):
    """`model` saved by save_pretrained (its linear weights as float16 when `half_linear`)."""
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    if half_linear:
        state = {n: (t.to(torch.float16) if t.ndim > 1 else t).contiguous()
                 for n, t in model.state_dict().items()}  # fmt: skip
        save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return str(path)


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    """A base, a near copy (δ ≈ 0.05 per weight) and a barely moved copy (δ ≈ 0.0005), each as
    save_pretrained folders and as folders holding a GGUF file (F32, F16, Q8_0) and the same
    tokenizer (the folder's tokenizer files take precedence over the GGUF's own)."""
    root = tmp_path_factory.mktemp("quantised")
    base = random_model("llama", 21, **GGUF_WIDTHS)
    models = {"base": base, "aligned": aligned_copy(base, 22), "tiny": aligned_copy(base, 23, 5e-4)}
    out = {}
    for name, model in models.items():
        out[f"{name}-st"] = _twin(model, root / f"{name}-st")
        out[f"{name}-f16st"] = _twin(model, root / f"{name}-f16st", half_linear=True)
        for kind in ("F32", "F16", "Q8_0"):
            # a folder holding the GGUF and the twin's tokenizer, so both read the same tokens
            folder = root / f"{name}-{kind}"
            folder.mkdir()
            write_gguf(model, folder / "model.gguf", default=kind)
            char_tokenizer().save_pretrained(folder)
            out[f"{name}-{kind}"] = str(folder)
    out["root"] = root
    return out


def _sweep(paths, base, aligned, name):
    target = paths["root"] / f"{name}.nc"
    args = ["sweep", "--base", paths[base], "--aligned", paths[aligned], "--out", str(target)]
    assert main([*args, *SWEEP]) == 0
    return open_dataset(target)


@pytest.mark.parametrize(("kind", "twin"), [("F32", "st"), ("F16", "f16st")])
def test_a_gguf_pair_sweeps_to_exactly_its_twins_numbers(quantised, kind, twin):
    gguf = _sweep(quantised, f"base-{kind}", f"aligned-{kind}", f"gguf-{kind}")
    saved = _sweep(quantised, f"base-{twin}", f"aligned-{twin}", f"twin-{kind}")
    np.testing.assert_array_equal(gguf.rsf.values, saved.rsf.values)
    np.testing.assert_array_equal(gguf.k.values, saved.k.values)
    assert gguf.base_hash.item() == saved.base_hash.item()
    linear = gguf.quantisation.sel(pair=gguf.pair.values[0]).values
    assert set(linear.ravel()) == {kind}
    np.testing.assert_array_equal(gguf.quantisation.values, saved.quantisation.values)


def test_independently_quantised_copies_carry_their_floor_and_the_caveat_says_so(quantised):
    """Q8_0 on both sides: the stored floor is about 5% of a δ ≈ 0.05 delta (no caveat beyond a
    note) and far above 10% of a δ ≈ 0.0005 one (the caveat fires); F32 GGUF pairs have none."""
    near = _sweep(quantised, "base-Q8_0", "aligned-Q8_0", "q8-near")
    tiny = _sweep(quantised, "base-Q8_0", "tiny-Q8_0", "q8-tiny")
    f32 = _sweep(quantised, "base-F32", "aligned-F32", "f32-again")
    assert float(near.quantisation_floor.max()) < 0.1
    assert float(tiny.quantisation_floor.min()) > 0.1
    assert float(f32.quantisation_floor.max()) < 1e-5
    root = quantised["root"]
    keys = {}
    for name in ("q8-near", "q8-tiny", "f32-again"):
        report = root / f"{name}.html"
        run_cli(["report", str(root / f"{name}.nc"), "--out", str(report)])
        keys[name] = report.read_text()
    pair = str(tiny.pair.values[0])
    assert f'data-caveat="quantisation-floor-{pair}"' in keys["q8-tiny"]
    assert (
        "quantisation-floor" not in keys["q8-near"] and 'data-caveat="precision-' in keys["q8-near"]
    )
    assert "quantisation-floor" not in keys["f32-again"] and "precision-" not in keys["f32-again"]


def test_the_dtype_caveat_appears_only_for_reduced_precision(quantised, tmp_path):
    """The old caveat fired on the flag's value (`--dtype auto`); now only what is stored or run
    counts: float32 run as auto says nothing, float32 run as bfloat16 does."""
    for dtype, expected in (("auto", False), ("bfloat16", True)):
        out = tmp_path / f"{dtype}.nc"
        args = ["sweep", "--base", quantised["base-st"], "--aligned", quantised["aligned-st"],
                "--dtype", dtype, "--out", str(out), *SWEEP]  # fmt: skip
        assert main(args) == 0
        run_cli(["report", str(out), "--out", str(tmp_path / f"{dtype}.html")])
        html = (tmp_path / f"{dtype}.html").read_text()
        assert ('data-caveat="precision-' in html) is expected, dtype


def test_inspect_names_each_matrix_storage(quantised):
    printed = run_cli(["inspect", quantised["base-Q8_0"]])
    assert "stored Q8_0" in printed and "q_proj" in printed


def test_a_dequantisable_quantization_config_sweeps_on_its_dequantised_weights(tmp_path):
    """FP8 blocks with scales (transformers' fine-grained FP8 format): transformers dequantises it
    on a CPU; the sweep then measures exactly the dequantised weights, so a pair of the FP8 base and
    a float model equals the pair of the dequantised base (saved as float32) and the same model."""
    base = random_model("llama", 31, **GGUF_WIDTHS)
    root, block = tmp_path, 32
    fp8 = _twin(base, root / "fp8")
    stored, dequantised = {}, {}
    for name, weight in base.state_dict().items():
        if weight.ndim == 2 and "proj" in name:
            o, i = weight.shape
            blocks = weight.reshape(o // block, block, i // block, block)
            scale = blocks.abs().amax(dim=(1, 3)) / 448.0
            codes = (blocks / scale[:, None, :, None]).reshape(o, i).to(torch.float8_e4m3fn)
            stored[name], stored[name.replace("weight", "weight_scale_inv")] = codes, scale
            dequantised[name] = (
                codes.float().reshape(o // block, block, i // block, block)
                * scale[:, None, :, None]
            ).reshape(o, i)
        else:
            stored[name] = dequantised[name] = weight.contiguous()
    save_file(stored, root / "fp8" / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((root / "fp8" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                     "weight_block_size": [block, block]}  # fmt: skip
    (root / "fp8" / "config.json").write_text(json.dumps(config))
    plain = random_model("llama", 31, **GGUF_WIDTHS)
    plain.load_state_dict(dequantised)
    float_base = _twin(plain, root / "float")
    aligned = _twin(aligned_copy(plain, 32), root / "aligned")
    results = {}
    for name, spec in (("fp8", fp8), ("float", float_base)):
        out = root / f"{name}.nc"
        assert main(["sweep", "--base", spec, "--aligned", aligned, "--out", str(out), *SWEEP]) == 0
        results[name] = open_dataset(out)
    keep = [c for c in results["fp8"].construction.values if c != "random"]  # keyed by the hash
    np.testing.assert_allclose(
        results["fp8"].rsf.sel(construction=keep).values,
        results["float"].rsf.sel(construction=keep).values,
        rtol=1e-6, atol=1e-9,
    )  # fmt: skip
    assert set(results["fp8"].quantisation.sel(side="base").values.ravel()) == {"fp8"}
