"""``real_pair_minutes``: the real SmolLM2-135M pair's bootstrapped sweep, in minutes.

The ``align`` pair of ``rsf demo --real`` (the GGUF of the ``real`` extra
against the DPO run from it; built once and cached, untimed), swept as ``rsf
sweep`` would sweep it: the real demo's grid, the built-in corpus, 16 384
tokens, 50 bootstrap replicates, CPU. Without the ``real`` extra the figure is
recorded as skipped; it never fails the benchmarks.
"""

from __future__ import annotations

import time

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
    return {
        "value": seconds / 60,
        "seconds": seconds,
        "timings": {k: float(v) for k, v in result.timings.items()},
        "tokens": corpus.n_tokens,
        "replicates": replicates,
        "pair": "align: SmolLM2-135M-Instruct (GGUF) -> its DPO run",
        "grid": f"{len(config.constructions)} constructions x {len(config.cutoffs)} cutoffs x "
        f"{len(config.normalisations)} normalisations",
    }
