"""Memory of a real-size sweep: a random pair with Llama-3-8B's layer shapes, built on the fly.

    python -m benchmarks.run --only sweep_memory_ratio,bootstrap_memory_ratio,layers_memory_growth

The pair (d = 4096, intermediate 14336, GQA 32/8, vocabulary 128256, untied
embeddings, bfloat16; 8 layers) is written tensor by tensor as sharded
safetensors (one shard per layer, one for the embeddings) without ever
building the model, base weights ~N(0, 0.02²) and the aligned side the base
plus ~N(0, 0.002²). The 4-layer pair is the same shards under a config and
an index that stop at layer 3 (symbolic links: no second copy on disk).

Each figure is the peak RSS (``VmHWM``) of a fresh process running exactly
what ``rsf sweep`` runs (``act_cov, unembed, random × k=8, var=0.9 ×
isotropic`` on every matrix, 1024 tokens, ``--dtype auto``, CPU, no cache):

- ``sweep_memory_ratio``: the 4-layer sweep's peak ÷ one checkpoint's bytes;
- ``bootstrap_memory_ratio``: the same with ``--bootstrap 2``;
- ``layers_memory_growth``: 8-layer peak ÷ 4-layer peak. (Each less its
  checkpoint's bytes, the first definition, is recorded beside it as
  ``less_checkpoint_ratio``: it assumed a process holding the checkpoint, and
  turns negative once the peak is below one checkpoint, as it now is.)

The 8-layer run's seconds per layer (statistics pass, grid) are recorded
beside, for the README's extrapolation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SHAPE = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
    max_position_embeddings=8192,
    rope_theta=500000.0,
)
LAYERS = 8
TOKENS, SEQ_LEN = 1024, 128
SWEEP = ["--constructions", "act_cov,unembed,random", "--cutoffs", "k=8,var=0.9",
         "--normalisations", "isotropic", "--dtype", "auto", "--device", "cpu"]  # fmt: skip


def _config(n_layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(num_hidden_layers=n_layers, dtype="bfloat16", **SHAPE)


def _shapes(n_layers: int) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, from the model's skeleton (no storage)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(_config(n_layers), dtype=torch.bfloat16)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _shard_of(name: str) -> str:
    if name.startswith("model.layers."):
        return f"layer-{int(name.split('.')[2]):02d}.safetensors"
    return "embeddings.safetensors"


def write_pair(root: Path) -> dict[str, dict[int, Path]]:
    """The 8-layer base and aligned checkpoints, and 4-layer views of them: ``{side: {layers: dir}}``.

    A folder that already holds the pair (``--large-dir`` of an earlier run) is reused.
    """
    from safetensors.torch import save_file

    dirs = {side: {n: root / f"{side}-{n}" for n in (4, LAYERS)} for side in ("base", "aligned")}
    if (root / "complete").is_file():
        return dirs
    shapes = _shapes(LAYERS)
    shards: dict[str, list[str]] = {}
    for name in shapes:
        shards.setdefault(_shard_of(name), []).append(name)
    generator = torch.Generator().manual_seed(0)
    for side_dirs in dirs.values():
        for path in side_dirs.values():
            path.mkdir(parents=True, exist_ok=True)
    for shard, names in shards.items():
        base, aligned = {}, {}
        for name in names:
            shape = shapes[name]
            if len(shape) == 1:  # norm gains
                w = 1.0 + 0.02 * torch.randn(shape, generator=generator)
            else:
                w = 0.02 * torch.randn(shape, generator=generator)
            base[name] = w.to(torch.bfloat16)
            aligned[name] = (w + 0.002 * torch.randn(shape, generator=generator)).to(torch.bfloat16)
            del w
        save_file(base, dirs["base"][LAYERS] / shard, metadata={"format": "pt"})
        save_file(aligned, dirs["aligned"][LAYERS] / shard, metadata={"format": "pt"})
        del base, aligned
    for _side, side_dirs in dirs.items():
        for n, path in side_dirs.items():
            kept = {name: _shard_of(name) for name in _shapes(n)}
            if n != LAYERS:
                for shard in set(kept.values()):
                    target = side_dirs[LAYERS] / shard
                    link = path / shard
                    if not link.exists():
                        link.symlink_to(target)
            _config(n).save_pretrained(path)
            index = {"metadata": {}, "weight_map": kept}
            (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "complete").write_text("")
    return dirs


def checkpoint_bytes(path: Path) -> int:
    """The stored bytes of the tensors a checkpoint's index lists (8 header bytes aside)."""
    from safetensors import safe_open

    total = 0
    weight_map = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in sorted(set(weight_map.values())):
        with safe_open(path / shard, framework="pt") as handle:
            for name in handle.keys():
                if name in weight_map:
                    piece = handle.get_slice(name)
                    count = int(np.prod(piece.get_shape()))
                    total += count * torch.empty((), dtype=torch.bfloat16).element_size()
    return total


def probe(base: str, aligned: str, ids: str, out: str, *extra: str) -> None:
    """Run in a fresh process: what ``rsf sweep`` runs, then print peak RSS and timings."""
    from robustness.io.datasets import write_dataset
    from robustness.measure.models import prepare_corpus
    from robustness.measure.results import build_dataset
    from robustness.measure.runner import run_sweep
    from rsf.main import build_parser, quiet_libraries
    from rsf.sweep import config_from_args

    quiet_libraries()
    args = build_parser().parse_args(
        ["sweep", "--base", base, "--aligned", aligned, "--corpus", ids, "--out", out,
         "--no-cache", "--quiet", *SWEEP, *extra]
    )  # fmt: skip
    config = config_from_args(args)
    corpus = prepare_corpus(config, base)
    start = time.perf_counter()
    (result,) = run_sweep(config, corpus, cache_root=None, progress=False)
    write_dataset(build_dataset([result], config, corpus), out)
    wall = time.perf_counter() - start
    peak = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    print(json.dumps({"peak_rss": peak, "seconds": wall, "timings": result.timings}))


def _run(dirs, n_layers: int, root: Path, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.large", str(dirs["base"][n_layers]),
         str(dirs["aligned"][n_layers]), str(root / "ids.npy"), str(root / f"r{n_layers}.nc"), *extra],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(
    root: Path, wanted=("sweep_memory_ratio", "bootstrap_memory_ratio", "layers_memory_growth")
) -> dict:
    """The figures of `wanted` (see the module docstring), each with what it was computed from."""
    start = time.perf_counter()
    dirs = write_pair(root)
    build_s = time.perf_counter() - start
    ids = np.random.default_rng(0).integers(0, SHAPE["vocab_size"], (TOKENS // SEQ_LEN, SEQ_LEN))
    np.save(root / "ids.npy", ids)
    sizes = {n: checkpoint_bytes(dirs["base"][n]) for n in (4, LAYERS)}
    gb = 2**30
    shape = (
        "Llama-3-8B layer shapes (d=4096, intermediate 14336, GQA 32/8, vocab 128256, untied, bf16)"
    )
    common = {"model": shape, "tokens": TOKENS, "sweep": " ".join(SWEEP), "build_seconds": build_s}
    out = {}
    four = (
        _run(dirs, 4, root)
        if {"sweep_memory_ratio", "layers_memory_growth"} & set(wanted)
        else None
    )
    if "sweep_memory_ratio" in wanted:
        out["sweep_memory_ratio"] = {
            "value": four["peak_rss"] / sizes[4],
            "peak_rss_gb": four["peak_rss"] / gb,
            "checkpoint_gb": sizes[4] / gb,
            "layers": 4,
            "seconds": four["seconds"],
            **common,
        }
    if "bootstrap_memory_ratio" in wanted:
        boot = _run(dirs, 4, root, "--bootstrap", "2")
        out["bootstrap_memory_ratio"] = {
            "value": boot["peak_rss"] / sizes[4],
            "peak_rss_gb": boot["peak_rss"] / gb,
            "checkpoint_gb": sizes[4] / gb,
            "layers": 4,
            "replicates": 2,
            "seconds": boot["seconds"],
            **common,
        }
    if "layers_memory_growth" in wanted:
        eight = _run(dirs, LAYERS, root)
        timings = eight["timings"]
        out["layers_memory_growth"] = {
            # Peak at 8 layers ÷ at 4. Each peak "less its checkpoint's bytes" (the figure as
            # first defined, for an engine that held the checkpoint) is kept beside it: once
            # the peak is below one checkpoint that difference turns negative and means nothing.
            "value": eight["peak_rss"] / four["peak_rss"],
            "less_checkpoint_ratio": (eight["peak_rss"] - sizes[LAYERS])
            / (four["peak_rss"] - sizes[4]),
            "peak_rss_gb": {"4": four["peak_rss"] / gb, "8": eight["peak_rss"] / gb},
            "checkpoint_gb": {"4": sizes[4] / gb, "8": sizes[LAYERS] / gb},
            "seconds_8_layers": eight["seconds"],
            "seconds_per_layer_statistics": timings["statistics"] / LAYERS,
            "seconds_per_layer_grid": timings["grid"] / LAYERS,
            "seconds_prediction_bases": timings["prediction_bases"],
            "seconds_hashing": timings["hashing"],
            **common,
        }
    return out


if __name__ == "__main__":
    probe(*sys.argv[1:])
