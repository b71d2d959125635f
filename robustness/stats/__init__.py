"""The statistics of a results dataset: ``stats.nc``.

:mod:`.layers` (inference over correlated layers: the EWC test), :mod:`.asymmetry` (the
read/write asymmetry per specification and jointly), :mod:`.curve` (the specification curve's
bookkeeping), :mod:`.pairs` (several pairs at once), :mod:`.diagnostics` (real-model
diagnostics) and :mod:`.statistics` (the dataset). Imports :mod:`robustness.measure` and below.
"""
