"""Adapters (probes.adapters) on every supported family, checked against the models' own forward.

The reference splits below are written from each architecture's modelling code
(how *the model* cuts its fused projections), independently of the adapter
table, so a wrong split in the table fails here.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import FAMILY_NAMES, MIXTURE_OF_EXPERTS, random_model, tiny_config
from transformers import AutoModelForCausalLM
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

import probes
from probes.adapters import FAMILIES, layer_modules

QKV = ("q", "k", "v")
# Fused projections, per the modelling code (not the adapter table).
FUSED = {
    "gpt2": {"q", "k", "v"},
    "gpt_neox": {"q", "k", "v"},
    "phi3": {"q", "k", "v", "gate", "up"},
}


def model_split(model, name: str, output: torch.Tensor) -> torch.Tensor:
    """The slice of a source module's output that the model itself treats as `name`."""
    config, model_type = model.config, model.config.model_type
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    if name not in FUSED.get(model_type, ()):
        return output
    if model_type == "gpt2":  # GPT2Attention: c_attn(x).split(embed_dim, dim=2)
        return output.split(config.n_embd, dim=-1)[QKV.index(name)]
    if model_type == "gpt_neox":  # view(..., H, 3*hd).chunk(3, dim=-1), heads flattened back
        hd = output.shape[-1] // (3 * n_heads)
        parts = output.view(*output.shape[:-1], n_heads, 3 * hd).chunk(3, dim=-1)
        return parts[QKV.index(name)].flatten(-2)
    if model_type == "phi3" and name in QKV:
        hd = output.shape[-1] // (n_heads + 2 * n_kv)
        q_end, k_end = n_heads * hd, n_heads * hd + n_kv * hd
        return {"q": output[..., :q_end], "k": output[..., q_end:k_end], "v": output[..., k_end:]}[
            name
        ]
    if model_type == "phi3":  # gate, up = gate_up_proj(x).chunk(2, dim=-1)
        return output.chunk(2, dim=-1)[("gate", "up").index(name)]
    raise AssertionError((model_type, name))


def plant(model, layer: int, name: str, delta: torch.Tensor) -> None:
    """Add `delta` (Linear layout) to the stored parameter the model uses as `name`."""
    config, model_type = model.config, model.config.model_type
    if model_type in MIXTURE_OF_EXPERTS and name in ("up", "gate", "down"):
        # The experts' modelling code: gate, up = linear(x, gate_up_proj[e]).chunk(2, -1);
        # linear(h, down_proj[e]). `delta` is [E, out, in].
        experts = layer_modules(model)[layer].mlp.experts
        with torch.no_grad():
            if name == "down":
                experts.down_proj += delta
            else:
                half = experts.gate_up_proj.shape[1] // 2
                start = 0 if name == "gate" else half
                experts.gate_up_proj[:, start : start + half] += delta
        return
    source = FAMILIES[model_type].matrices[name]
    module = layer_modules(model)[layer].get_submodule(source.module)
    weight = module.weight
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    with torch.no_grad():
        fused = name in FUSED.get(model_type, ())
        if isinstance(module, Conv1D):  # stored [in, out]: q|k|v are column blocks
            cols = weight.shape[1] // 3 if fused else weight.shape[1]
            start = QKV.index(name) * cols if fused else 0
            weight[:, start : start + cols] += delta.T
        elif fused and model_type == "gpt_neox":
            hd = weight.shape[0] // (3 * n_heads)
            view = weight.view(n_heads, 3, hd, weight.shape[1])
            view[:, QKV.index(name)] += delta.view(n_heads, hd, -1)
        elif fused and name in QKV:  # phi3: q | k | v with GQA sizes
            hd = weight.shape[0] // (n_heads + 2 * n_kv)
            sizes = [n_heads * hd, n_kv * hd, n_kv * hd]
            start = sum(sizes[: QKV.index(name)])
            weight[start : start + sizes[QKV.index(name)]] += delta
        elif fused:  # phi3: gate | up
            half = weight.shape[0] // 2
            start = 0 if name == "gate" else half
            weight[start : start + half] += delta
        else:
            weight += delta


def capture_io(model, ids):
    """Inputs and outputs of every source module, and every site's tensor, in one forward."""
    family = FAMILIES[model.config.model_type]
    ios, sites, handles = {}, {}, []
    for index, block in enumerate(layer_modules(model)):
        for name, source in family.matrices.items():
            module = block.get_submodule(source.module)

            def hook(mod, args, kwargs, output, key=(index, name)):
                x = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
                if isinstance(output, tuple):  # an MoE router: (logits, top-k weights, indices)
                    output = output[0]
                ios[key] = (x.detach().clone(), output.detach().clone())

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    keys = [(layer, site) for layer in range(len(layer_modules(model))) for site in probes.SITES]

    def store(key, tensor):
        sites[key] = tensor.detach().clone()

    try:
        with torch.no_grad(), probes.site_hooks(model, keys, store):
            out = model(input_ids=ids, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return ios, sites, out


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_extracted_matrices_reproduce_module_outputs(model_type, saved_models, ids):
    model = probes.load_model(saved_models(model_type))
    weights = probes.canonical_weights(model)
    biases = probes.canonical_biases(model)
    ios, _, _ = capture_io(model, ids)
    expected_names = set(FAMILIES[model_type].matrices)
    assert {name for _, name in weights} == expected_names
    for (layer, name), weight in weights.items():
        if weight.ndim == 3:  # the experts' stacks: test_experts_reproduce_the_moe_output
            continue
        x, output = ios[(layer, name)]
        bias = biases.get((layer, name), 0.0)
        reproduced = x @ weight.T + bias
        torch.testing.assert_close(
            reproduced, model_split(model, name, output), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("model_type", MIXTURE_OF_EXPERTS)
def test_experts_reproduce_the_moe_output(model_type, saved_models, ids):
    """The experts' canonical up, gate and down, combined as the modelling code does
    (``Σ_e w_e · down_e(act(gate_e x) ⊙ up_e x)`` over the router's top-k), give the experts'
    output; the router's canonical matrix gives its logits. A swapped gate and up fail (the
    activation is not linear)."""
    model = probes.load_model(saved_models(model_type))
    weights = probes.canonical_weights(model)
    ios, _, _ = capture_io(model, ids)
    act = ACT2FN[model.config.hidden_act]
    assert probes.n_experts(model) == 4
    for layer, block in enumerate(layer_modules(model)):
        x, output = ios[(layer, "up")]
        up, gate, down = (weights[(layer, m)] for m in ("up", "gate", "down"))
        assert up.shape[0] == 4 and down.shape[0] == 4
        with torch.no_grad():
            logits, top_weights, top_index = block.mlp.gate(x)
        torch.testing.assert_close(x @ weights[(layer, "router")].T, logits, rtol=1e-5, atol=1e-5)
        expected = torch.zeros_like(x)
        for token in range(x.shape[0]):
            for slot in range(top_index.shape[1]):
                e = int(top_index[token, slot])
                hidden = act(gate[e] @ x[token]) * (up[e] @ x[token])
                expected[token] += top_weights[token, slot] * (down[e] @ hidden)
        torch.testing.assert_close(expected, output, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_hook_sites_see_exactly_what_each_matrix_reads(model_type, saved_models, ids):
    model = probes.load_model(saved_models(model_type))
    ios, sites, out = capture_io(model, ids)
    n_layers = len(layer_modules(model))
    for (layer, name), (x, _) in ios.items():
        if probes.PATHWAY[name] == "read":
            assert torch.equal(sites[(layer, probes.SITE_OF[name])], x), (layer, name)
    # Write site: the residual stream right after each layer (before the final norm).
    for layer in range(n_layers - 1):
        torch.testing.assert_close(sites[(layer, "resid_post")], out.hidden_states[layer + 1])
    final_norm = model.get_submodule(FAMILIES[model_type].final_norm)
    with torch.no_grad():
        normed = final_norm(sites[(n_layers - 1, "resid_post")])
    torch.testing.assert_close(normed, out.hidden_states[-1])


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_planted_delta_is_recovered_exactly(model_type, saved_models):
    base = probes.load_model(saved_models(model_type))
    with torch.no_grad():  # a 2^-10 grid makes W + ΔW and its difference exact in float32
        for param in base.parameters():
            param.copy_(torch.round(param * 1024) / 1024)
    aligned = copy.deepcopy(base)
    rng = np.random.default_rng(7)
    shapes = probes.model_dims(base).matrix_shapes
    planted = {}
    for name, layer in zip(shapes, [0, 1] * 4, strict=False):
        # Multiples of 1/16 add to and subtract from O(1) float32 weights exactly.
        delta = torch.as_tensor(rng.integers(-8, 9, size=shapes[name]) / 16.0, dtype=torch.float32)
        plant(aligned, layer, name, delta)
        planted[(layer, name)] = delta
    with pytest.warns(RuntimeWarning, match="all-zero delta"):
        deltas = probes.extract_deltas(base, aligned)
    assert set(deltas) == {(layer, name) for layer in (0, 1) for name in shapes}
    for key, delta in deltas.items():
        expected = planted.get(key, torch.zeros(shapes[key[1]]))
        assert torch.equal(delta, expected), key


def test_unsupported_model_type_lists_the_supported_ones():
    config = tiny_config("llama")
    model = AutoModelForCausalLM.from_config(config)
    model.config.model_type = "bloom"
    with pytest.raises(ValueError, match="unsupported model type 'bloom'.*gpt2.*qwen3"):
        probes.canonical_weights(model)


def test_nan_weight_is_an_error_naming_the_tensor():
    model = random_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj\.weight.*NaN"):
        probes.canonical_weights(model)


def test_final_norm_gain_and_unembedding_per_family():
    gemma = random_model("gemma2")
    torch.testing.assert_close(
        probes.final_norm_gain(gemma), 1.0 + gemma.model.norm.weight.detach()
    )
    assert probes.final_norm_gain(random_model("olmo")) is None  # parameter-free LayerNorm
    gpt2 = random_model("gpt2")
    torch.testing.assert_close(probes.final_norm_gain(gpt2), gpt2.transformer.ln_f.weight.detach())
    # Tied embeddings are one tensor: the unembedding *is* the input embedding.
    assert probes.tied_embeddings(gpt2)
    assert probes.unembedding(gpt2).data_ptr() == gpt2.transformer.wte.weight.data_ptr()
    llama = random_model("llama")
    assert not probes.tied_embeddings(llama)
    assert torch.equal(probes.unembedding(llama), llama.lm_head.weight.detach())


def test_opt_project_out_is_folded_into_the_unembedding():
    model = random_model("opt", word_embed_proj_dim=16)
    unembed = probes.unembedding(model)
    assert unembed.shape == (61, 32)
    expected = model.lm_head.weight.detach() @ model.model.decoder.project_out.weight.detach()
    torch.testing.assert_close(unembed, expected)
