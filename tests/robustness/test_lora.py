"""LoRA adapters as the aligned side (probes.lora through the sweep and rsf stats), against PEFT.

Null hypothesis: the delta the sweep measures for a PEFT LoRA adapter is the
one PEFT itself merges (``merge_and_unload``), ``(lora_alpha / r) · B A``
(``/ √r`` with rsLoRA), so a sweep of (base, adapter) gives the numbers of a
sweep of (base, merged model); matrices the adapter does not target have no
delta and the asymmetry is tested on the targeted matrices only. Assumes the
float32 rounding of ``W + s·BA`` (what the merged model stores) is the only
difference between the two routes, so they are compared to 1e-6, not exactly;
the adapter's own delta is compared with ``s · B A`` exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rsf_commands import SMALL, sweep
from tiny_models import char_tokenizer, random_model

import probes
from robustness.measure.models import open_layerwise
from rsf.main import main

peft = pytest.importorskip("peft")


def _adapter(tmp_path, model_type, targets, **options):
    """(base dir, adapter dir, merged dir) for a random LoRA adapter on a tiny model."""
    base = random_model(model_type, num_hidden_layers=4)
    base_dir, adapter_dir, merged_dir = (tmp_path / n for n in ("base", "adapter", "merged"))
    base.save_pretrained(base_dir)
    char_tokenizer().save_pretrained(base_dir)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, **options)
    model = peft.get_peft_model(random_model(model_type, num_hidden_layers=4), config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # PEFT starts B at zero: draw both factors
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.save_pretrained(adapter_dir)
    factors = {  # PEFT's own factors, before merging replaces the modules
        name.removeprefix("base_model.model.").removesuffix(".lora_A.default"): (
            module.weight.detach().clone(),
            model.get_submodule(name.replace("lora_A", "lora_B")).weight.detach().clone(),
        )
        for name, module in model.named_modules()
        if name.endswith("lora_A.default")
    }
    merged = model.merge_and_unload()
    merged.save_pretrained(merged_dir)
    char_tokenizer().save_pretrained(merged_dir)
    return str(base_dir), str(adapter_dir), str(merged_dir), factors


@pytest.mark.parametrize(
    ("model_type", "targets", "options"),
    [
        ("llama", ["q_proj", "k_proj", "o_proj", "down_proj"], {}),
        ("gpt2", ["c_attn", "c_proj"], {"use_rslora": True, "fan_in_fan_out": True}),
    ],
)
def test_the_adapter_delta_is_peft_merge(model_type, targets, options, tmp_path):
    """Contiguous and fused-Conv1D targets, plain and rank-stabilised scaling."""
    base_dir, adapter_dir, merged_dir, factors = _adapter(tmp_path, model_type, targets, **options)
    base, _ = open_layerwise(base_dir, dtype="float32")
    aligned, note = open_layerwise(base_dir, dtype="float32", adapter=adapter_dir)
    merged = probes.extract_deltas(probes.load_model(base_dir), probes.load_model(merged_dir))
    scale = 8 / (4**0.5 if options.get("use_rslora") else 4)
    for layer in range(4):
        deltas, _ = probes.layer_deltas(base, aligned, layer)
        for matrix, delta in deltas.items():
            torch.testing.assert_close(delta, merged[(layer, matrix)], rtol=0, atol=1e-6)
    # Exactly s·BA for one targeted module, from PEFT's own factors.
    module = (
        "model.layers.1.self_attn.q_proj" if model_type == "llama" else "transformer.h.1.mlp.c_proj"
    )
    lora = probes.LoraAdapter(adapter_dir)
    lora_a, lora_b = factors[module]
    expected = scale * (lora_b @ lora_a)
    assert lora.scale(module) == scale
    torch.testing.assert_close(lora.delta(module), expected.detach(), rtol=0, atol=0)
    assert "targets" in note


def test_an_adapter_sweeps_to_the_merged_models_numbers(tmp_path):
    """The adapter and its merged model, under two labels: the same numbers, the random control's
    and the bootstrap's included (their draws are keyed by the base's weights, never a label)."""
    base_dir, adapter_dir, merged_dir, _ = _adapter(
        tmp_path, "llama", ["q_proj", "k_proj", "o_proj", "down_proj"]
    )
    grid = ["--constructions", "act_cov,act_cov_aligned,unembed,random", "--cutoffs", "k=4,var=0.9",
            "--bootstrap", "4"]  # fmt: skip
    lora = sweep(tmp_path, base_dir, adapter_dir, *grid, "--label", "adapter", out="lora.nc")
    merged = sweep(tmp_path, base_dir, merged_dir, *grid, "--label", "merged", out="merged.nc")
    assert str(lora.targeted_matrices.values[0]) == "q,k,o,down"
    assert str(merged.targeted_matrices.values[0]) == ""
    targeted = ["q", "k", "o", "down"]
    for name in ("rsf", "rsf_boot"):
        np.testing.assert_allclose(
            lora[name].sel(matrix=targeted).values, merged[name].sel(matrix=targeted).values,
            rtol=1e-5,
        )  # fmt: skip
    assert np.isfinite(lora.rsf.sel(matrix=targeted, construction="random", cutoff="k=4")).all()
    assert bool(lora.rsf.sel(matrix=["v", "up", "gate"]).isnull().all())  # no delta, no fraction


def test_a_pathway_the_adapter_does_not_target_is_said_not_tested(tmp_path, capsys):
    base_dir, adapter_dir, _, _ = _adapter(tmp_path, "llama", ["q_proj", "v_proj"])
    sweep(tmp_path, base_dir, adapter_dir, "--constructions", "act_cov,unembed", out="r.nc")
    capsys.readouterr()
    assert main(["stats", str(tmp_path / "r.nc"), "--out", str(tmp_path / "s.nc")]) == 0
    err = capsys.readouterr().err
    assert "targets no write matrix (o, down): the asymmetry is not tested" in err
    from robustness.io.datasets import open_dataset

    assert bool(open_dataset(tmp_path / "s.nc").asymmetry.isnull().all())


def test_quiet_hides_progress_not_notes(tmp_path, capsys):
    """-q: no progress bars, but the adapter's note still prints (one line); -qq: no notes either."""
    base_dir, adapter_dir, _, _ = _adapter(tmp_path, "llama", ["q_proj", "o_proj"])
    args = ["sweep", "--base", base_dir, "--aligned", adapter_dir, "--tokens", "256", "--seq-len",
            "16", "--no-cache", "--constructions", "act_cov"]  # fmt: skip
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "a.nc"), "-q"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "LoRA adapter on the base" in notes[0], err
    assert "it/s" not in err  # no progress bar
    assert main([*args, "--out", str(tmp_path / "b.nc"), "-qq"]) == 0
    assert capsys.readouterr().err == ""


def test_bad_adapters_are_one_line(tmp_path, capsys):
    base_dir, adapter_dir, _, _ = _adapter(tmp_path, "llama", ["q_proj"])
    other = tmp_path / "other"
    random_model("llama", hidden_size=48, num_hidden_layers=4).save_pretrained(other)
    char_tokenizer().save_pretrained(other)
    args = ["sweep", "--base", str(other), "--aligned", adapter_dir, "--out", str(tmp_path / "x.nc"), *SMALL, "--no-cache"]  # fmt: skip
    assert main(args) == 2
    assert "the base's is" in capsys.readouterr().err
    dora = tmp_path / "adapter" / "adapter_config.json"
    dora.write_text(dora.read_text().replace('"use_dora": false', '"use_dora": true'))
    args[2] = base_dir
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsf: error:") and "DoRA" in err and err.count("\n") == 1


def test_inspect_shows_an_adapter_and_the_base_it_names(tmp_path, capsys):
    """`rsf inspect ADAPTER` (what `rsf sweep --aligned` takes): its rank and scale, the canonical
    matrices it targets, then its base's own view; a base it does not name is said, not guessed."""
    import json

    base_dir, adapter_dir, _, _ = _adapter(tmp_path, "llama", ["q_proj", "o_proj"])
    config = tmp_path / "adapter" / "adapter_config.json"
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": base_dir})
    )
    capsys.readouterr()
    assert main(["inspect", adapter_dir]) == 0
    out = capsys.readouterr().out
    assert "kind         LoRA  r=4 lora_alpha=8" in out
    assert "  q       4 × model.layers.0.self_attn.q_proj …" in out
    assert "  o       4 × model.layers.0.self_attn.o_proj …" in out
    assert f"model        {base_dir}" in out and "family       llama" in out
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "base_model_name_or_path": None})
    )
    assert main(["inspect", adapter_dir]) == 0
    out = capsys.readouterr().out
    assert "not named in adapter_config.json" in out and "family" not in out
