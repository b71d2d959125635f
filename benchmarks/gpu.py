"""The GPU figures (``bench_gpu.json``): one command, under 10 minutes, on a machine with CUDA.

    python -m benchmarks.gpu [--out bench_gpu.json] [--tokens 32768] [--replicates 40]

Without CUDA it prints one line saying so and exits 0 (``--device cpu`` runs
every step on the CPU instead, a dry run of this script: its figures are not
GPU figures). With CUDA, on the GPT-2-small-shaped random pair of
:mod:`benchmarks.run`:

- ``rsf_matches_cpu`` (first, so a mismatch is seen at once): a small pair
  (d = 128, 2 layers) swept with 4 bootstrap replicates on the GPU and on the
  CPU, both in float64 so the two statistics passes agree to round-off and
  what differs is the device's work: ``rsf`` and ``rsf_boot`` (the replicates)
  equal to 1e-9;
- ``statistics_pass_gpu``: the sweep's statistics pass on the device, tokens/s
  (its own timing), and its peak device memory (``torch.cuda.max_memory_allocated``)
  beside the README's formula for it, ``b·P_layer + 24·d²`` bytes (one layer's
  weights at b bytes per parameter, its site accumulators), which leaves out
  one batch's activations;
- ``bootstrap_seconds_gpu``: ``bootstrap_seconds`` with ``device="cuda"``
  (whose replicates' eigendecompositions run batched on the device), measured
  as the CPU figure is, the extra seconds of ``--replicates`` replicates over 2,
  scaled to 1000 (target ≤ 300 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .common import BATCH, bootstrap_setup, gpt2_small

TARGETS = {
    "rsf_matches_cpu": ("<=", 1e-9),
    "statistics_pass_gpu": ("reported", None),
    "bootstrap_seconds_gpu": ("<=", 300.0),
}


def largest_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference of two arrays, NaN where both are (a NaN against a number: inf)."""
    both = np.isnan(a) & np.isnan(b)
    if np.any(np.isnan(a) != np.isnan(b)):
        return float("inf")
    return float(np.max(np.abs(np.where(both, 0.0, a - b)), initial=0.0))


def rsf_matches_cpu(tmp: Path, device: str) -> dict:
    """A small float64 pair swept with a bootstrap on `device` and on the CPU: ``rsf``, ``rsf_boot``."""
    from robustness.measure.runner import run_sweep

    base_dir, aligned_dir = tmp / "small-base", tmp / "small-aligned"
    gpt2_small(base_dir, aligned_dir, d=128, layers=2)
    config, corpus = bootstrap_setup(base_dir, aligned_dir, 2048, 4, dtype="float64")
    (cpu,) = run_sweep(config, corpus, cache_root=None, progress=False)
    (gpu,) = run_sweep(config.with_options(device=device), corpus, cache_root=None, progress=False)
    rsf = largest_difference(cpu.rsf, gpu.rsf)
    boot = largest_difference(cpu.bootstrap["replicates"], gpu.bootstrap["replicates"])
    return {
        "value": max(rsf, boot),
        "rsf_max_abs_difference": rsf,
        "rsf_boot_max_abs_difference": boot,
        "case": "GPT-2-shaped random pair, d=128, 2 layers, float64, 2048 tokens, 4 replicates",
    }


def layer_parameters(model_dir: Path) -> int:
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir)
    return sum(p.numel() for p in model.transformer.h[0].parameters())


def statistics_pass_gpu(tmp: Path, device: str, n_tokens: int) -> dict:
    """The sweep's statistics pass on `device` (no bootstrap): tokens/s and peak device memory."""
    from robustness.measure.runner import run_sweep

    base_dir, aligned_dir = tmp / "gpu-base", tmp / "gpu-aligned"
    config, corpus = bootstrap_setup(base_dir, aligned_dir, n_tokens, 0, device=device)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    (result,) = run_sweep(config, corpus, cache_root=None, progress=False)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    d, per_layer = 768, layer_parameters(base_dir)
    formula = 4 * per_layer + 24 * d * d  # float32 weights
    seconds = result.timings["statistics"]
    return {
        "value": corpus.n_tokens / seconds,
        "tokens_per_second": corpus.n_tokens / seconds,
        "statistics_seconds": seconds,
        "tokens": corpus.n_tokens,
        "batch_size": config.batch_size,
        "peak_device_memory_mb": None if peak is None else peak / 2**20,
        "readme_formula_mb": formula / 2**20,
        "readme_formula": "b*P_layer + 24*d^2 bytes (b = 4, float32; one batch's activations aside)",
        "device": device,
    }


def bootstrap_seconds_gpu(tmp: Path, device: str, n_tokens: int, replicates: int) -> dict:
    """Seconds for 1000 replicates on `device`: ``replicates`` over 2, statistics cached, scaled."""
    from robustness.measure.runner import run_sweep

    base_dir, aligned_dir = tmp / "gpu-base", tmp / "gpu-aligned"
    config, corpus = bootstrap_setup(base_dir, aligned_dir, n_tokens, replicates, device=device)
    cache = tmp / "gpu-cache"
    few = config.with_options(replicates=2)
    run_sweep(few, corpus, cache_root=cache, progress=False)  # fills the cache
    times = {}
    for count, run in ((2, few), (replicates, config)):
        start = time.perf_counter()
        run_sweep(run, corpus, cache_root=cache, progress=False)
        times[count] = time.perf_counter() - start
    per_replicate = max(times[replicates] - times[2], 0.0) / (replicates - 2)
    return {
        "value": per_replicate * 1000,
        "seconds_per_replicate": per_replicate,
        "measured_replicates": replicates,
        "sweep_seconds_2_replicates": times[2],
        f"sweep_seconds_{replicates}_replicates": times[replicates],
        "tokens": corpus.n_tokens,
        "device": device,
    }


def judge(results: dict) -> None:
    for name, (op, target) in TARGETS.items():
        figure = results[name]
        if op == "reported":
            figure["target"], figure["meets_target"] = "reported", True
            continue
        figure["target"] = f"{op} {target}"
        figure["meets_target"] = bool(figure["value"] <= target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_gpu.json")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--replicates", type=int, default=40)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of every step")
    args = parser.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(
            "benchmarks.gpu: no CUDA device here (torch.cuda.is_available() is False); nothing measured"
        )
        return 0
    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("rsf_matches_cpu …", flush=True)
        results["rsf_matches_cpu"] = rsf_matches_cpu(tmp, args.device)
        gpt2_small(tmp / "gpu-base", tmp / "gpu-aligned")
        print("statistics_pass_gpu …", flush=True)
        results["statistics_pass_gpu"] = statistics_pass_gpu(tmp, args.device, args.tokens)
        print("bootstrap_seconds_gpu …", flush=True)
        results["bootstrap_seconds_gpu"] = bootstrap_seconds_gpu(
            tmp, args.device, args.tokens, args.replicates
        )
    judge(results)
    results["_meta"] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - start,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "batch": BATCH,
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results.items():
        if name != "_meta":
            verdict = "ok" if r["meets_target"] else "MISSED"
            print(f"{name:24s} {r['value']:12.4g}  target {r['target']:10s}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
