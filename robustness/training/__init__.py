"""Training in torch: preference data, objectives (CE, DPO, L_λ) and the loops.

Model training is not measurement: :mod:`.preferences` and :mod:`.loops` serve the demo and the
mechanism experiments. Imports :mod:`robustness.measure` and below, never the statistics.
"""
