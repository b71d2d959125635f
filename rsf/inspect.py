"""``rsf inspect M``: the adapter's view of a model, from its config alone (no weights read)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

import probes
from robustness.models import supported_config

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser("inspect", help="show the adapter's view of a model")
    parser.add_argument("model", help="a save_pretrained directory or a hub id")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.set_defaults(run=run)


def run(args) -> int:
    config = supported_config(args.model, trust_remote_code=args.trust_remote_code)
    with torch.device("meta"):  # shapes from the config alone: no weights are read
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=args.trust_remote_code)
    view = probes.describe(model)
    print(f"model        {args.model}")
    print(f"family       {view['model_type']}" + (f"  ({view['notes']})" if view["notes"] else ""))
    print(f"layers       {view['n_layers']}")
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
        print(
            f"  {m['matrix']:5s} {shape:>11s}  {m['pathway']:5s}  site {m['site']:10s} {m['module']}{fused}"
        )
    print("hook sites")
    for site, where in view["sites"].items():
        print(f"  {site:10s} {where}")
    return 0
