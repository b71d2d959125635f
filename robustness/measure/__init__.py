"""The sweep: from a pair of models and a corpus to ``results.nc``.

:mod:`.corpus` (the probe corpus), :mod:`.models` (configs, preflight, loading), :mod:`.cache`
(activation statistics on disk), :mod:`.resampling` (the sequence bootstrap's chunks and
weights), :mod:`.grid` (one layer's bases, profiles, cutoffs and normalisations),
:mod:`.experts` (mixture-of-experts layers), :mod:`.statistics_pass` (a pair's layer-sequential
statistics pass), :mod:`.layer_job` (one layer's deltas, fractions and replicates, here or as a
Dask task), :mod:`.engine` (every layer of one pair), :mod:`.runner` (every pair, serially or on
Dask) and :mod:`.results` (the results dataset). Imports :mod:`robustness.settings`,
:mod:`robustness.io` and :mod:`probes` only.
"""
