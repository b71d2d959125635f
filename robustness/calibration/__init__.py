"""``rsf calibrate``: the simulation study of every test the statistics report.

:mod:`.simulation` (planted-truth pairs), :mod:`.sequence` (coverage of the sequence bootstrap)
and :mod:`.study` (the study and its dataset). Imports :mod:`robustness.stats` and below.
"""
