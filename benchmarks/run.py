"""Speed and memory benchmarks (``bench.json``); never part of ``make test``.

    python -m benchmarks.run --quick    # make bench: about 10 minutes on 2 cores
    python -m benchmarks.run            # make bench-full: everything, the 8B shapes included

Every figure is a ratio of two measurements taken side by side in one run on
the same machine, so machine noise cancels as far as it can. ``--quick`` runs
each at smaller token counts, replicates and repeats (:data:`QUICK`) and
records the figures whose ratio needs the full sizes (or a 30-minute build)
as skipped (:data:`FULL_ONLY`); a skipped figure is ``{"skipped": why}``.

- ``statistics_pass_tokens_per_second`` (alias ``collect_vs_forward``, for older
  readers): tokens/s of the statistics pass ÷ tokens/s of a plain full forward
  (logits included) of the same model on the same batches;
- ``memory_growth``: peak RSS collecting 128K tokens ÷ collecting 16K tokens,
  each in a fresh process;
- ``profile_speedup``: a naive per-k projection loop ÷ the all-k profile, for
  all 7 matrices of one layer, k = 1..d, checked identical to 1e-10;
- ``grid_overhead``: wall time of a whole sweep (8 constructions × 6 cutoffs ×
  5 normalisations, 32K tokens, dataset written) ÷ the statistics passes that
  sweep needs, run alone (base and aligned: ``act_cov_aligned`` reads the
  aligned model's activations);
- ``bootstrap_seconds``: the sequence bootstrap's cost for 1000 replicates of
  ``act_cov`` (the construction the corpus moves) over all 12 layers, cutoffs
  up to ``k=64`` plus ``var`` and ``pr``: the extra time of ``--bootstrap-replicates``
  replicates over 2 (both runs do the same statistics pass: chunk statistics
  are never cached), scaled to 1000, since every replicate costs the same. Its peak memory is
  read from a fresh process running that bootstrapped sweep, as a user's
  ``rsf sweep --bootstrap`` would (the timing process's own peak, which
  includes heap left by its earlier sweeps, is recorded beside it).
- ``bootstrap_vs_eigh_floor``: seconds per bootstrap replicate (above) ÷ the
  seconds of that replicate's eigendecompositions alone (36 ``numpy.linalg.eigh``
  of 768 × 768 through the same two-at-a-time pool, timed before and after the
  sweeps of the same run); beside it the replicate's fraction products alone
  (the triangular products its 144 F(k) profiles need) and the ratio to both,
  and the same sweep's bootstrap seconds with complete bases per replicate
  (``REPLICATE_SOLVER = "full"``) against partial spectra (``auto_vs_full_solver``);
- ``replicate_breakdown``: one replicate's seconds by stage (reweighting,
  eigenvalues, eigenvectors, fractions; and with the full ``eigh`` instead),
  each stage alone with the library's functions (:mod:`benchmarks.breakdown`);
  reported only;
- ``real_pair_minutes``: the real SmolLM2-135M pair's sweep with 50 replicates
  over 16 384 tokens (:mod:`benchmarks.real_pair`; skipped without the ``real``
  extra);
- ``dask_layer_speedup``: one GPT-2-small pair's bootstrapped sweep, serial
  seconds ÷ seconds on a 2-worker local cluster (layer blocks), reported only;
- ``sweep_memory_ratio``, ``bootstrap_memory_ratio``, ``layers_memory_growth``:
  peak RSS of fresh sweeps of a random pair with Llama-3-8B's layer shapes,
  built on the fly (``benchmarks/large.py``; about 11 GB of disk, ``--large-dir``
  keeps it between runs);
- ``help_seconds``: ``rsf --help`` and ``rsf sweep --help`` in a fresh process (the
  larger median of five), with a bare interpreter's start beside it: the command
  line describes itself from the option schema without importing torch;
- ``reduced_basis_error``: what the shortcut the bootstrap does *not* take
  would cost in accuracy. On a smaller model (GPT-2-shaped, d = 256, 4 layers),
  each replicate's ``act_cov`` fractions at ``k ≤ 64`` are computed twice: exactly
  (full eigendecomposition of the reweighted covariance) and by Rayleigh–Ritz in
  the full-sample top-128 basis (the chunk statistics kept in a reduced basis).
  The figure is the largest relative error; it is set beside the replicates' own
  spread, since an error of that size would narrow the intervals it feeds.

The model is GPT-2-small-shaped (d = 768, 12 layers, 12 heads, vocabulary
50257) with random weights, saved with ``save_pretrained`` and loaded back.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import probes

from .common import BATCH, gpt2_small, peak_rss_bytes, token_ids

TARGETS = {
    "statistics_pass_tokens_per_second": (">=", 0.9),
    "collect_vs_forward": (">=", 0.9),  # the same figure, under its first name
    "memory_growth": ("<=", 1.05),
    "profile_speedup": (">=", 50.0),
    "grid_overhead": ("<=", 1.3),
    "bootstrap_seconds": ("<=", 120.0),
    "bootstrap_vs_eigh_floor": ("<=", 0.8),
    "replicate_breakdown": ("reported", None),
    "real_pair_minutes": ("reported", None),
    "reduced_basis_error": ("<=", 1e-6),
    "dask_layer_speedup": ("reported", None),
    # benchmarks.large: an 8B-shaped pair built on the fly (about 11 GB of disk, 30 minutes).
    "sweep_memory_ratio": ("<=", 1.5),
    "bootstrap_memory_ratio": ("<=", 1.6),
    "layers_memory_growth": ("<=", 1.1),
    "help_seconds": ("<=", 1.0),
}
LARGE = ("sweep_memory_ratio", "bootstrap_memory_ratio", "layers_memory_growth")
ALIASES = {"collect_vs_forward": "statistics_pass_tokens_per_second",
           "bootstrap_vs_eigh_floor": "bootstrap_seconds"}  # fmt: skip
FULL_ONLY = {
    "grid_overhead": "its ratio needs the full 32K tokens (the grid's cost does not shrink with them)",
    "dask_layer_speedup": "two more bootstrapped sweeps",
    "real_pair_minutes": "a 50-replicate sweep of the real pair",
    **{name: "the 8B-shaped pair (about 11 GB of disk, 30 minutes)" for name in LARGE},
}


@dataclass(frozen=True)
class Sizes:
    """Token counts, replicates and repeats of one mode (``make bench-full``'s by default)."""

    forward_tokens: int = 8192
    repeats: int = 3
    memory_tokens: tuple[int, int] = (16 * 1024, 128 * 1024)
    grid_tokens: int = 32768
    bootstrap_replicates: int = 40
    fresh_bootstrap_peak: bool = True  # the bootstrapped sweep's peak in a fresh process
    reduced_tokens: int = 16384
    reduced_replicates: int = 50
    breakdown_tokens: int = 8192
    help_repeats: int = 5


FULL = Sizes()
QUICK = Sizes(forward_tokens=4096, repeats=2, memory_tokens=(8192, 32768), grid_tokens=8192,
              bootstrap_replicates=8, fresh_bootstrap_peak=False, reduced_tokens=8192,
              reduced_replicates=20, breakdown_tokens=4096, help_repeats=3)  # fmt: skip


def collect_vs_forward(model_dir: Path, n_tokens: int, repeats: int) -> dict:
    model = probes.load_model(str(model_dir))
    ids = token_ids(n_tokens)
    batches = [torch.as_tensor(ids[i : i + BATCH]) for i in range(0, len(ids), BATCH)]

    def plain_forward():
        with torch.inference_mode():
            for batch in batches:
                model(input_ids=batch, use_cache=False)

    def collect():
        probes.collect_statistics(model, ids, batch_size=BATCH)

    collect()  # warm-up both paths once
    plain_forward()
    forward_s, collect_s = [], []
    for _ in range(repeats):  # alternate so drifts in machine speed hit both alike
        start = time.perf_counter()
        plain_forward()
        forward_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        collect()
        collect_s.append(time.perf_counter() - start)
    forward, collected = statistics.median(forward_s), statistics.median(collect_s)
    return {
        "value": forward / collected,  # (tokens/collect_s) / (tokens/forward_s)
        "target_reads": "statistics pass tokens/s / plain forward tokens/s",
        "tokens": int(ids.size),
        "forward_tokens_per_s": ids.size / forward,
        "collect_tokens_per_s": ids.size / collected,
        "repeats": repeats,
    }


def memory_probe(model_dir: str, n_tokens: int) -> None:
    """Run in a fresh process: load, collect, print the peak RSS of the collection.

    Loading a model briefly holds extra copies of its weights; so that this
    transient does not mask the collection, the high-water mark is reset after
    loading (``/proc/self/clear_refs``, Linux) and read again after collecting.
    """
    model = probes.load_model(model_dir)
    ids = token_ids(n_tokens)
    gc.collect()
    load_peak = peak_rss_bytes()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    probes.collect_statistics(model, ids, batch_size=BATCH)
    print(json.dumps({"peak_rss": peak_rss_bytes(), "load_peak_rss": load_peak, "reset": reset}))


def memory_growth(model_dir: Path, small: int, large: int) -> dict:
    def probe(n_tokens):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.run",
                "--memory-probe",
                str(model_dir),
                f"{n_tokens}",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    a, b = probe(small), probe(large)
    return {
        "value": b["peak_rss"] / a["peak_rss"],
        "tokens_small": small,
        "tokens_large": large,
        "peak_rss_small_mb": a["peak_rss"] / 2**20,
        "peak_rss_large_mb": b["peak_rss"] / 2**20,
        "load_peak_rss_mb": b["load_peak_rss"] / 2**20,
        "peak_reset_after_load": a["reset"] and b["reset"],
    }


def help_seconds(repeats: int = 5) -> dict:
    """Seconds for ``rsf --help`` and ``rsf sweep --help`` in a fresh process (the median of
    `repeats`), beside a bare interpreter's start measured the same way in the same run."""

    def median_seconds(argv) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, *argv], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    bare = median_seconds(["-c", "pass"])
    top = median_seconds(["-m", "rsf", "--help"])
    command = median_seconds(["-m", "rsf", "sweep", "--help"])
    return {
        "value": max(top, command),
        "rsf_help_seconds": top,
        "rsf_sweep_help_seconds": command,
        "python_start_seconds": bare,
        "vs_python_start": max(top, command) / bare,
    }


def figure_tasks(tmp: Path, sizes: Sizes, large_dir: str | None) -> dict:
    """``{figure: () -> its dict}`` in the order they run (a ``bootstrap_seconds`` run measures
    ``bootstrap_vs_eigh_floor`` too; the 8B-shaped figures are measured together)."""
    from .bootstrap import bootstrap_seconds, dask_layer_speedup, reduced_basis_error
    from .breakdown import replicate_breakdown
    from .grid import grid_overhead, profile_speedup
    from .real_pair import real_pair_minutes

    model_dir = tmp / "gpt2-small-random"

    def with_model(task):
        def run():
            if not model_dir.is_dir():
                gpt2_small(model_dir)
            return task()

        return run

    def large():
        from .large import measure

        root = Path(large_dir or tmp) / "large"
        root.mkdir(parents=True, exist_ok=True)
        return measure(root, LARGE)

    return {
        "statistics_pass_tokens_per_second": with_model(
            lambda: collect_vs_forward(model_dir, sizes.forward_tokens, sizes.repeats)
        ),
        "memory_growth": with_model(lambda: memory_growth(model_dir, *sizes.memory_tokens)),
        "grid_overhead": lambda: grid_overhead(tmp, sizes.grid_tokens),
        "bootstrap_seconds": lambda: bootstrap_seconds(
            tmp, sizes.grid_tokens, sizes.bootstrap_replicates, fresh=sizes.fresh_bootstrap_peak
        ),
        "replicate_breakdown": lambda: replicate_breakdown(tmp, sizes.breakdown_tokens),
        "real_pair_minutes": real_pair_minutes,
        "reduced_basis_error": lambda: reduced_basis_error(
            tmp, sizes.reduced_tokens, sizes.reduced_replicates
        ),
        "dask_layer_speedup": lambda: dask_layer_speedup(tmp),
        "large": large,
        "profile_speedup": profile_speedup,
        "help_seconds": lambda: help_seconds(sizes.help_repeats),
    }


def quick_skip(name: str) -> dict:
    """What ``--quick`` records for a figure it does not measure."""
    if name == "real_pair_minutes":
        from robustness.demo.real import real_model_file

        try:
            real_model_file()
        except ValueError:
            return {"skipped": "the `real` extra is not installed (make demo-real)"}
    return {"skipped": f"make bench-full only: {FULL_ONLY[name]}"}


def measure(wanted: set, sizes: Sizes, quick: bool, large_dir: str | None) -> dict:
    """Every figure of `wanted` (names of :data:`TARGETS`, aliases resolved), measured in turn."""
    from .bootstrap import eigh_floor_figure

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, task in figure_tasks(Path(tmp), sizes, large_dir).items():
            names = (
                [n for n in LARGE if n in wanted] if name == "large" else [name] * (name in wanted)
            )
            if not names:
                continue
            if quick and (name in FULL_ONLY or name == "large"):
                results.update({n: quick_skip(n) for n in names})
                continue
            print(f"{', '.join(names)} …", flush=True)
            start = time.perf_counter()
            found = task()
            found = found if name == "large" else {name: found}
            for figure in found.values():
                figure.setdefault("wall_seconds", time.perf_counter() - start)
            results.update(found)
    if "statistics_pass_tokens_per_second" in results:
        results["collect_vs_forward"] = {
            **results["statistics_pass_tokens_per_second"],
            "alias_of": "statistics_pass_tokens_per_second",
        }
    if "bootstrap_seconds" in results:
        results["bootstrap_vs_eigh_floor"] = eigh_floor_figure(results["bootstrap_seconds"])
    return results


def judge(results: dict) -> None:
    """Each measured figure's ``target`` and ``meets_target`` (a skipped one gets neither)."""
    for name, (op, target) in TARGETS.items():
        figure = results.get(name)
        if figure is None or "skipped" in figure:
            continue
        if op == "reported":  # no target: the figure is reported
            figure["target"], figure["meets_target"] = "reported", True
            continue
        value = figure["value"]
        figure["target"] = f"{op} {target}"
        figure["meets_target"] = bool(value >= target if op == ">=" else value <= target)


def summary(results: dict) -> list[str]:
    """One line per figure of :data:`TARGETS` present, skipped ones with their reason."""
    lines = []
    for name in TARGETS:
        r = results.get(name)
        if r is None:
            continue
        if "skipped" in r:
            lines.append(f"{name:34s} {'skipped':>10s}  {r['skipped']}")
            continue
        verdict = "ok" if r["meets_target"] else "MISSED"
        lines.append(f"{name:34s} {r['value']:10.3f}  target {r['target']:8s}  {verdict}")
    return lines


def machine(quick: bool, wall: float) -> dict:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "wall_seconds": wall,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "model": "GPT-2-small-shaped random (d=768, 12 layers, vocab 50257), float32, CPU",
    }


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, full-only figures skipped (make bench)")  # fmt: skip
    parser.add_argument("--forward-tokens", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--grid-tokens", type=int)
    parser.add_argument("--bootstrap-replicates", type=int)
    parser.add_argument("--only", help="comma list of figures to measure (default: all)")
    parser.add_argument(
        "--large-dir", help="folder for the 8B-shaped pair (default: a temporary folder)"
    )
    parser.add_argument(
        "--memory-probe", nargs=2, metavar=("MODEL_DIR", "TOKENS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--bootstrap-probe", nargs=5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.memory_probe:
        memory_probe(args.memory_probe[0], int(args.memory_probe[1]))
        return 0
    if args.bootstrap_probe:
        from .bootstrap import bootstrap_probe

        base_dir, aligned_dir, cache, n_tokens, replicates = args.bootstrap_probe
        bootstrap_probe(base_dir, aligned_dir, cache, int(n_tokens), int(replicates))
        return 0
    sizes = replace(QUICK if args.quick else FULL, **{
        field: value for field, value in (
            ("forward_tokens", args.forward_tokens), ("repeats", args.repeats),
            ("grid_tokens", args.grid_tokens), ("bootstrap_replicates", args.bootstrap_replicates),
        ) if value is not None
    })  # fmt: skip
    wanted = set(args.only.split(",")) if args.only else set(TARGETS)
    wanted |= {ALIASES[name] for name in wanted if name in ALIASES}
    start = time.perf_counter()
    results = measure(wanted, sizes, args.quick, args.large_dir)
    judge(results)
    # A partial run (--only) updates the figures it measured and keeps the others.
    previous = (
        json.loads(Path(args.out).read_text()) if args.only and Path(args.out).is_file() else {}
    )
    results = {**previous, **results}
    results["_meta"] = machine(args.quick, time.perf_counter() - start)
    tmp_out = Path(args.out).with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print("\n".join(summary(results)))
    print(f"{results['_meta']['mode']} run: {results['_meta']['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
