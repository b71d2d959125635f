"""``rsf inspect M``: the adapter's view of a model, from its config and headers alone (no weights read).

`M` may also be a LoRA adapter directory (what ``rsf sweep --aligned`` takes):
then its rank, scale and targeted modules are shown, as canonical matrices
when its base model can be read, followed by the base model's own view.
"""

from __future__ import annotations

import os

from robustness.settings.options import RunOptions

from .options import add_options

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser("inspect", help="show the adapter's view of a model")
    parser.add_argument(
        "model",
        help="a save_pretrained directory, a hub id, a GGUF file or a LoRA adapter directory",
    )
    add_options(parser, RunOptions, ("trust_remote_code",))
    parser.set_defaults(run=run)


def run(args) -> int:
    import probes

    trust = bool(args.trust_remote_code)
    if probes.is_adapter(args.model):
        base = _adapter_lines(args.model, trust)
        if base is None:
            return 0
        print()
        return _model_lines(base, trust)
    return _model_lines(args.model, trust)


def _adapter_lines(path: str, trust: bool) -> str | None:
    """Print a LoRA adapter's view; return its base when that can be read, else ``None``."""
    import probes
    from robustness.measure.models import open_model_config

    adapter = probes.LoraAdapter(os.path.expanduser(path))
    config = adapter.config
    print(f"adapter      {path}")
    print(f"kind         LoRA  r={config.get('r', 8)} lora_alpha={config.get('lora_alpha', 8)}"
          f"{'  rsLoRA' if config.get('use_rslora') else ''}")  # fmt: skip
    print(f"base model   {adapter.base_model or 'not named in adapter_config.json'}")
    base = adapter.base_model
    family = None
    if base:
        try:
            family = probes.FAMILIES.get(
                open_model_config(base, trust_remote_code=trust).model_type
            )
        except (ValueError, OSError) as error:
            print(f"             (not readable here: {error})")
            base = None
    targeted: dict[str, list[str]] = {}
    for module in sorted(adapter.modules):
        canonical = next(
            (m for m, source in (family.matrices.items() if family else ())
             if module.endswith("." + source.module)),
            None,
        )  # fmt: skip
        targeted.setdefault(canonical or module.rsplit(".", 1)[-1], []).append(module)
    print(f"targets      {len(adapter.modules)} modules")
    for name, modules in targeted.items():
        print(f"  {name:5s} {len(modules):3d} × {modules[0]}{' …' if len(modules) > 1 else ''}")
    if adapter.ignored:
        print(
            f"not measured {', '.join(adapter.ignored[:4])}{' …' if len(adapter.ignored) > 4 else ''}"
        )
    return base


def _model_lines(model_id: str, trust: bool) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    import probes
    from robustness.measure.models import matrix_storage, supported_config

    config = supported_config(model_id, trust_remote_code=trust)
    with torch.device("meta"):  # shapes from the config alone: no weights are read
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust)
    view = probes.describe(model)
    storage = matrix_storage(model_id, model)
    print(f"model        {model_id}")
    print(f"family       {view['model_type']}" + (f"  ({view['notes']})" if view["notes"] else ""))
    print(f"layers       {view['n_layers']}")
    if view["n_experts"] > 1:
        print(f"experts      {view['n_experts']} per MLP (up, gate, down: one matrix per expert)")
    print(
        f"widths       d_model={view['d_model']} heads={view['n_heads']} "
        f"kv_heads={view['n_kv_heads']} head_dim={view['head_dim']} vocab={view['vocab_size']}"
    )
    print(
        f"parallel     attention and MLP {'in parallel' if view['parallel_attention_mlp'] else 'in sequence'}"
    )
    print(f"final norm   {view['final_norm']} (gain {view['final_norm_gain']})")
    print(
        f"embeddings   {'tied: unembed is the embedding subspace' if view['tied_embeddings'] else 'untied'}"
    )
    print("matrices")
    for m in view["matrices"]:
        fused = f" [fused {m['fused']}]" if m["fused"] else ""
        shape = "×".join(map(str, m["shape"]))
        stored = f"  stored {storage[m['matrix']]}" if storage.get(m["matrix"]) else ""
        print(
            f"  {m['matrix']:6s} {shape:>11s}  {m['pathway']:5s}  site {m['site']:10s} "
            f"{m['module']}{fused}{stored}"
        )
    print("hook sites")
    for site, where in view["sites"].items():
        print(f"  {site:10s} {where}")
    return 0
