"""The ``rsf`` command line: one module per command, on top of the library.

``rsf.main.main(argv=None)`` is the entry point (tests call it in-process).
Only this package reads command-line arguments or prints for a person; the
library beneath (``reports``, ``robustness``, ``probes``) takes settings
objects and paths, and nothing imports ``rsf``.
"""
