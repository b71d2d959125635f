"""The measurement: the relative-subspace fraction of transformer weight deltas.

Pure tensor maths and model access; nothing here knows of datasets or the CLI.

The public names are loaded on first use (PEP 562): ``import probes`` and
:mod:`probes.names` cost no torch import, so the command line can describe its
options (``rsf --help``) without loading the numerical stack. ``probes.X``
imports the submodule that defines ``X`` the first time it is read.
"""

from __future__ import annotations

import importlib

from .names import (
    ACTIVATION_CONSTRUCTIONS,
    CONSTRUCTIONS,
    MATRICES,
    NORMALISATIONS,
    PATHWAY,
    PREDICTION_CONSTRUCTIONS,
    RATIO_NORMALISATIONS,
    SITE_OF,
    SITES,
)

# Every other public name → the submodule that defines it.
_HOMES = {
    # activations
    "ActivationStatistics": "activations",
    "ChunkStatistics": "activations",
    "SiteStatistics": "activations",
    "collect_statistics": "activations",
    "expert_load_hooks": "activations",
    "site_hooks": "activations",
    # adapters
    "FAMILIES": "adapters",
    "SUPPORTED_MODEL_TYPES": "adapters",
    "canonical_biases": "adapters",
    "canonical_weights": "adapters",
    "describe": "adapters",
    "family_of": "adapters",
    "final_norm_gain": "adapters",
    "layer_modules": "adapters",
    "matrix_rows": "adapters",
    "model_dims": "adapters",
    "n_experts": "adapters",
    "tied_embeddings": "adapters",
    "unembedding": "adapters",
    # checkpoints
    "Checkpoint": "checkpoints",
    "resolve_checkpoint": "checkpoints",
    "tensor_digest": "checkpoints",
    "weights_hash": "checkpoints",
    # cutoffs
    "CUTOFF_RULES": "cutoffs",
    "Cutoff": "cutoffs",
    "parse_cutoff": "cutoffs",
    "resolve_cutoff": "cutoffs",
    "validate_cutoffs": "cutoffs",
    # fraction
    "ResidualFactor": "fraction",
    "energy_profile": "fraction",
    "fraction_profile": "fraction",
    "fractions_at": "fraction",
    "fractions_at_many": "fraction",
    "gram_purity": "fraction",
    "gram_spectrum": "fraction",
    "haar_log2_ratio_mean": "haar",
    "haar_mean": "haar",
    "haar_reference": "haar",
    "haar_variance": "haar",
    "residual_factor": "fraction",
    "residual_gram": "fraction",
    # hub
    "list_revisions": "hub",
    "resolve_source": "hub",
    "revision_step": "hub",
    "split_revision": "hub",
    # gguf
    "GGUFFile": "gguf",
    "find_gguf": "gguf",
    "open_gguf": "gguf",
    "pretrained_arguments": "gguf",
    # gradients
    "GRADIENT_SITES": "gradients",
    "GRADIENT_SITE_OF": "gradients",
    "GradientStatistics": "gradients",
    "collect_gradient_statistics": "gradients",
    "effective_ranks": "gradients",
    "entropy_effective_rank": "gradients",
    "participation_ratio": "gradients",
    "subspace_energy_fraction": "gradients",
    # heads
    "head_blocks": "heads",
    "head_fraction_profiles": "heads",
    # interventions
    "rank1_hook": "interventions",
    "rank1_update": "interventions",
    # layerwise
    "LayerwiseModel": "layerwise",
    "NotStreamable": "layerwise",
    # lora
    "LoraAdapter": "lora",
    "is_adapter": "lora",
    # models
    "DTYPES": "models",
    "check_pair": "models",
    "extract_deltas": "models",
    "load_model": "models",
    "quantisation_method": "models",
    "prediction_subspaces": "models",
    # normalise
    "normalise": "normalise",
    # precision
    "FLOAT_STORAGE": "precision",
    "REDUCED_STORAGE": "precision",
    "storage_of_dtype": "precision",
    # sequential_pass
    "HIDDEN_IN_MEMORY": "sequential_pass",
    "layerwise_statistics": "sequential_pass",
    # streamed_deltas
    "Precision": "streamed_deltas",
    "layer_deltas": "streamed_deltas",
    "layer_precision": "streamed_deltas",
    # spectra
    "PartialSpectrum": "spectra",
    "partial_eigh": "spectra",
    # subspaces
    "Subspace": "subspaces",
    "construction_rng": "subspaces",
    "covariance_moment": "subspaces",
    "covariance_subspace": "subspaces",
    "covariance_subspaces": "subspaces",
    "gram_subspace": "subspaces",
    "random_subspace": "subspaces",
    "unembedding_subspace": "subspaces",
    "unembedding_subspaces": "subspaces",
    "weight_subspace": "subspaces",
}

__all__ = [
    "ACTIVATION_CONSTRUCTIONS",
    "PREDICTION_CONSTRUCTIONS",
    "CONSTRUCTIONS",
    "CUTOFF_RULES",
    "DTYPES",
    "FAMILIES",
    "FLOAT_STORAGE",
    "GGUFFile",
    "GRADIENT_SITE_OF",
    "GRADIENT_SITES",
    "HIDDEN_IN_MEMORY",
    "MATRICES",
    "NORMALISATIONS",
    "PATHWAY",
    "RATIO_NORMALISATIONS",
    "REDUCED_STORAGE",
    "SITE_OF",
    "SITES",
    "SUPPORTED_MODEL_TYPES",
    "ActivationStatistics",
    "canonical_biases",
    "canonical_weights",
    "check_pair",
    "Checkpoint",
    "ChunkStatistics",
    "collect_gradient_statistics",
    "collect_statistics",
    "expert_load_hooks",
    "construction_rng",
    "covariance_moment",
    "covariance_subspace",
    "covariance_subspaces",
    "Cutoff",
    "describe",
    "effective_ranks",
    "energy_profile",
    "entropy_effective_rank",
    "extract_deltas",
    "family_of",
    "find_gguf",
    "final_norm_gain",
    "fraction_profile",
    "fractions_at",
    "fractions_at_many",
    "GradientStatistics",
    "gram_purity",
    "gram_spectrum",
    "gram_subspace",
    "haar_log2_ratio_mean",
    "haar_mean",
    "haar_reference",
    "haar_variance",
    "head_blocks",
    "head_fraction_profiles",
    "is_adapter",
    "layer_deltas",
    "layer_modules",
    "layer_precision",
    "layerwise_statistics",
    "LayerwiseModel",
    "list_revisions",
    "load_model",
    "LoraAdapter",
    "PartialSpectrum",
    "partial_eigh",
    "matrix_rows",
    "model_dims",
    "n_experts",
    "normalise",
    "NotStreamable",
    "open_gguf",
    "parse_cutoff",
    "participation_ratio",
    "prediction_subspaces",
    "Precision",
    "quantisation_method",
    "pretrained_arguments",
    "random_subspace",
    "rank1_hook",
    "rank1_update",
    "residual_factor",
    "residual_gram",
    "ResidualFactor",
    "resolve_checkpoint",
    "resolve_cutoff",
    "resolve_source",
    "revision_step",
    "split_revision",
    "site_hooks",
    "SiteStatistics",
    "storage_of_dtype",
    "Subspace",
    "subspace_energy_fraction",
    "tensor_digest",
    "tied_embeddings",
    "unembedding",
    "unembedding_subspace",
    "unembedding_subspaces",
    "validate_cutoffs",
    "weight_subspace",
    "weights_hash",
]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'probes' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # the next read is a plain attribute
    return value


def __dir__():
    return __all__
