"""``real_pair_minutes``: the real SmolLM2-135M pair's bootstrapped sweep, in minutes.

The ``align`` pair of ``rsf demo --real`` (the GGUF of the ``real`` extra
against the DPO run from it; built once and cached, untimed), swept as ``rsf
sweep`` would sweep it: the real demo's grid, the built-in corpus, 16 384
tokens, 50 bootstrap replicates, CPU. Beside it: the bootstrap's share of the
time, one resampled row's seconds against its eigendecompositions alone (the
floor of ``bootstrap_vs_eigh_floor``, at the model's width), and the same sweep's
bootstrap with complete bases (``REPLICATE_SOLVER = "full"``). Without the
``real`` extra the figure is recorded as skipped; it never fails the benchmarks.
"""

from __future__ import annotations

import time

from .bootstrap import eigh_floor, full_solver_bootstrap

TOKENS = 16384
REPLICATES = 50


def real_pair_minutes(tokens: int = TOKENS, replicates: int = REPLICATES) -> dict:
    """Wall minutes of the bootstrapped sweep, or ``{"skipped": why}`` without the GGUF."""
    from robustness.demo.real import RealGrid, real_model_file, real_pair, real_sweep_config

    try:
        real_model_file()
    except ValueError as error:
        return {"skipped": f"the `real` extra is not installed (make demo-real): {error}"}
    from robustness.measure.models import prepare_corpus
    from robustness.measure.runner import run_sweep
    from robustness.settings.config import CorpusSpec

    pair = real_pair(progress=False)
    grid = RealGrid(tokens=tokens, replicates=replicates)
    config = real_sweep_config(pair, grid)
    config = config.with_options(
        pairs=config.pairs[:1], corpus=CorpusSpec(seq_len=grid.seq_len, tokens=tokens),
        device="cpu",
    )  # fmt: skip
    corpus = prepare_corpus(config, str(pair.base))
    start = time.perf_counter()
    (result,) = run_sweep(config, corpus, cache_root=None, progress=False)
    seconds = time.perf_counter() - start
    rows = len(result.bootstrap["weights"])  # replicates and jackknife rows
    eighs = replicate_eighs(result, config)
    floor = eigh_floor(result.gram_spectrum.shape[-1], eighs)  # d: the model's width
    full = full_solver_bootstrap(config, corpus, None)
    return {
        "value": seconds / 60,
        "seconds": seconds,
        "timings": {k: float(v) for k, v in result.timings.items()},
        "bootstrap_share": result.timings["bootstrap"] / seconds,
        "bootstrap_seconds_per_row": result.timings["bootstrap"] / rows,
        "resampled_rows": rows,
        # One row's eigendecompositions alone, as bootstrap_vs_eigh_floor's floor (random
        # Wishart matrices of the model's width through the sweep's pool).
        "eigh_floor_seconds_per_row": floor,
        "eighs_per_row": eighs,
        "bootstrap_row_vs_eigh_floor": result.timings["bootstrap"] / rows / floor,
        "full_solver_bootstrap_seconds": full,
        "auto_vs_full_solver": result.timings["bootstrap"] / full,
        "spectral_k": {
            cutoff: [int(result.k[..., i].min()), int(result.k[..., i].max())]
            for i, cutoff in enumerate(config.cutoffs)
            if not cutoff.startswith("k=")
        },
        "tokens": corpus.n_tokens,
        "replicates": replicates,
        "pair": "align: SmolLM2-135M-Instruct (GGUF) -> its DPO run",
        "grid": f"{len(config.constructions)} constructions x {len(config.cutoffs)} cutoffs x "
        f"{len(config.normalisations)} normalisations",
    }


def replicate_eighs(result, config) -> int:
    """The eigendecompositions one resampled row needs: layers × sites × activation constructions."""
    import probes
    from robustness.measure.grid import ACTIVATION_SOURCE

    sites = {probes.SITE_OF[m] for m in result.matrices}
    resampled = [c for c in config.constructions if c in ACTIVATION_SOURCE]
    return result.rsf.shape[0] * len(sites) * len(resampled)
