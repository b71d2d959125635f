"""Every pair of a sweep: serially, or on a Dask cluster, with identical results.

Pairs are independent units of work (:func:`robustness.measure.engine.sweep_pair`):
on Dask (``workers`` for a ``LocalCluster``, ``scheduler`` for an existing one)
each pair is a task, run with the client's thread counts; a single pair on a
cluster is split into layer blocks instead (the statistics pass on the client,
each layer's grid and bootstrap a task: :class:`robustness.measure.layer_job.
LayerBlocks`).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from robustness.measure.corpus import Corpus
from robustness.measure.engine import PairResult, sweep_pair
from robustness.measure.layer_job import blas_threads
from robustness.settings.config import SweepConfig

__all__ = ["run_sweep"]


def _sweep_pair_limited(pair, config, corpus, cache_root, threads, blas_limit):
    """A Dask worker's pair, with the client's thread counts (for identical results)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=blas_limit, user_api="blas"):
        return sweep_pair(
            pair, config, corpus, cache_root=cache_root, progress=False, threads=threads
        )


def run_sweep(
    config: SweepConfig,
    corpus: Corpus,
    *,
    cache_root=None,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
) -> list[PairResult]:
    """Every pair of `config`, serially or on Dask; results in the config's pair order.

    On Dask, several pairs are the tasks (each a whole sweep on one worker);
    a single pair is split into layer blocks (its statistics pass here, each
    layer's grid and bootstrap on a worker). Either way the results equal a
    serial run's.
    """
    if not workers and not scheduler:
        return [
            sweep_pair(pair, config, corpus, cache_root=cache_root, progress=progress)
            for pair in tqdm(
                config.pairs, desc="pairs", disable=not progress or len(config.pairs) == 1
            )
        ]
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        client = Client(cluster)
    try:
        if len(config.pairs) == 1:  # one pair: its layer blocks are the tasks
            return [
                sweep_pair(
                    config.pairs[0], config, corpus, cache_root=cache_root, progress=progress,
                    client=client,
                )
            ]  # fmt: skip
        corpus_future = client.scatter(corpus, broadcast=True)
        futures = [
            client.submit(
                _sweep_pair_limited,
                pair,
                config,
                corpus_future,
                cache_root,
                torch.get_num_threads(),
                blas_threads(),
                pure=False,
            )
            for pair in config.pairs
        ]
        for _ in tqdm(
            as_completed(futures), total=len(futures), desc="pairs", disable=not progress
        ):
            pass
        return client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
