"""Settings, declared once: the option schema, the sweep's config, every command's options, the paper's names.

:mod:`.schema` is the machinery (a field declared once gives its flag, its TOML key and its
check); :mod:`.config` declares the sweep's pairs, corpus and grid; :mod:`.options` every other
command's; :mod:`.specification` what a specification is and the defaults every module shares.
The lowest floor of :mod:`robustness` beside :mod:`robustness.io`: it imports neither.
"""
