"""Files in and out: safe atomic output, provenance on every dataset, long-table export.

:mod:`.files` checks an output before any work and writes it atomically; :mod:`.provenance`
stamps every dataset the same way; :mod:`.export` writes a dataset as a tidy table. The lowest
floor of :mod:`robustness` beside :mod:`robustness.settings`: it imports neither.
"""
