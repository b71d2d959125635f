"""The mechanism behind the read/write asymmetry: gradients and experiments, one module each.

The paper explains the asymmetry by anisotropic gradient accumulation (an
update is ``Σ_t δ_t a_tᵀ``). Each experiment writes a dataset with intervals:

- :mod:`.trajectory`: RSF along an ordered list of checkpoints, relative to
  the start and to the previous checkpoint;
- :mod:`.contrastive`: variants aligned with ``L_λ = (1 − λ)·CE(chosen) + λ·DPO``
  for several λ, and the trend of read RSF, write RSF and the gradients'
  effective rank against λ (:mod:`.trend`);
- :mod:`.rank1`: closed-form rank-1 interventions along principal directions
  against matched controls (the intervention itself is
  :func:`probes.rank1_hook`).

:mod:`.gradients` and :mod:`.gradient_dataset` measure the anisotropy of δ_t and a_t
(``gradients.nc``, its trends along each phase in :mod:`.gradient_trends`);
:mod:`.summaries` holds the read/write layer summaries they share.
Imports :mod:`robustness.stats`, :mod:`robustness.training` and below.
"""
