"""The layer-sequential statistics pass of one pair, each layer's statistics cached on disk.

One pass per (model, corpus, settings) over the sides whose activations the
pair's constructions read (:func:`probes.layerwise_statistics`); each layer's
statistics are a cache entry of their own (:class:`robustness.measure.cache.
StatisticsCache`), read when that layer is reached, so an interrupted sweep
resumes and a finished one runs no forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import probes
from robustness.measure.cache import StatisticsCache
from robustness.measure.corpus import Corpus
from robustness.measure.resampling import bootstrap_chunk_size, sequence_chunks
from robustness.settings.config import SweepConfig

__all__ = ["CHUNK_CACHE_BYTES", "StatisticsPass"]

CHUNK_CACHE_BYTES = 512 << 20  # chunk statistics of a whole pass are cached only below this


@dataclass
class StatisticsPass:
    """Iterates ``(layer, {role: that layer's statistics})`` over a pair's layers, in order.

    Without `models` (no construction reads activations) each layer's
    statistics are ``{}``. After the iteration, :attr:`ran` says whether a
    forward pass computed any layer (else every one came from the cache).
    """

    models: dict  # role → probes.LayerwiseModel, the sides whose activations are read
    hashes: dict  # role → the weights key of its statistics in the cache
    corpus: Corpus
    sites: list[str]
    config: SweepConfig
    cache: StatisticsCache
    label: str
    n_layers: int
    progress: bool = True
    ran: bool = False

    def __iter__(self):
        if not self.models:
            yield from ((layer, {}) for layer in range(self.n_layers))
            return
        for layer, stats, ran in self._layers():
            self.ran = self.ran or ran
            yield layer, stats

    def _settings(self, lw, chunk_size, layer) -> dict:
        return {
            "sites": sorted(self.sites),
            "dtype": str(lw.dtype).removeprefix("torch."),
            "batch_size": self.config.batch_size,
            "device_type": torch.device(lw.device).type,
            "chunk_size": chunk_size,
            "layer": layer,
            "pass": "layerwise",
        }

    def _layers(self):
        """Yield ``(layer, {role: that layer's statistics}, whether a forward pass computed them)``.

        Bootstrap chunk statistics are cached only when a whole pass's come to
        less than :data:`CHUNK_CACHE_BYTES` (the demo's: 25 MB); a real model's
        (about 100 GB at 8B shapes) exist only while their layer is computed.
        """
        models, corpus, config, cache = self.models, self.corpus, self.config, self.cache
        n_seq = corpus.ids.shape[0]
        chunk_size = bootstrap_chunk_size(n_seq) if config.replicates else None
        first = next(iter(models.values())).model
        n_layers = len(probes.layer_modules(first))
        if chunk_size is not None:
            d = int(first.get_input_embeddings().weight.shape[1])
            n_chunks = len(sequence_chunks(n_seq))
            chunk_bytes = len(models) * n_layers * len(self.sites) * n_chunks * d * (d + 1) // 2 * 4
            if chunk_bytes > CHUNK_CACHE_BYTES:
                cache = StatisticsCache(None)
        keys = {
            (role, layer): StatisticsCache.key(
                weights_hash=self.hashes[role],
                corpus_hash=corpus.hash,
                settings=self._settings(lw, chunk_size, layer),
            )
            for role, lw in models.items()
            for layer in range(n_layers)
        }
        start = 0
        if all(cache.contains(key) for key in keys.values()):
            for layer in range(n_layers):
                stats = {role: cache.load(keys[(role, layer)]) for role in models}
                if any(value is None for value in stats.values()):
                    break  # a corrupt entry (warned about and removed): recompute from here
                yield layer, stats, False
                start = layer + 1
            if start == n_layers:
                return
        passes = probes.layerwise_statistics(
            models,
            corpus.ids,
            sites=self.sites,
            batch_size=config.batch_size,
            chunk_size=chunk_size,
            progress=self.progress,
            description=f"statistics {self.label}",
        )
        for layer, stats in passes:
            if layer < start:
                continue  # already yielded from the cache
            for role, layer_stats in stats.items():
                cache.store(keys[(role, layer)], layer_stats)
            yield layer, stats, True
