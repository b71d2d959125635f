"""The paper's claims, one by one: ``claims.nc``.

:mod:`.registry` (the claims' ids, statements and tests, and the outcome of a test),
:mod:`.rules` (three-way verdicts with one margin, parts, family-wise error), :mod:`.pair_levels`
(a pair's levels against their Haar references, read across specifications), :mod:`.levels` (the
claims on a pair's levels: concentration, isotropy, asymmetry, pretraining, objective),
:mod:`.mechanism` (the claims on the experiments' datasets) and :mod:`.paper` (the dataset).
Imports :mod:`robustness.stats` and below.
"""
