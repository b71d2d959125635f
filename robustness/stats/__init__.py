"""The statistics of a results dataset: ``stats.nc``.

:mod:`.layers` (inference over correlated layers: the EWC test), :mod:`.asymmetry` (the
read/write asymmetry per specification and jointly), :mod:`.curve` (the specification curve's
bookkeeping), :mod:`.pair_tests` (one pair's counting, tests and summary), :mod:`.pairs`
(several pairs at once), :mod:`.diagnostics` (real-model diagnostics), :mod:`.statistics`
(the dataset) and :mod:`.summaries` (its per-pair summaries and pair model read back).
Imports :mod:`robustness.measure` and below.
"""
