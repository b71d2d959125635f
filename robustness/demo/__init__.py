"""``rsf demo``: the demo pair (trained here) and the real-model demo.

:mod:`.training` trains the toy pair, :mod:`.pair` holds its settings, cache and runs,
:mod:`.real` builds the real-model pairs. The highest floor under :mod:`robustness.api`.
"""
