"""The measurement: the relative-subspace fraction of transformer weight deltas.

Pure tensor maths and model access; nothing here knows of datasets or the CLI.
"""

from .activations import (
    ActivationStatistics,
    ChunkStatistics,
    SiteStatistics,
    collect_statistics,
    site_hooks,
)
from .adapters import (
    FAMILIES,
    MATRICES,
    PATHWAY,
    SITE_OF,
    SITES,
    SUPPORTED_MODEL_TYPES,
    canonical_biases,
    canonical_weights,
    family_of,
    final_norm_gain,
    model_dims,
    tied_embeddings,
    unembedding,
)
from .cutoffs import CUTOFF_RULES, Cutoff, parse_cutoff, resolve_cutoff, validate_cutoffs
from .fraction import (
    energy_profile,
    fraction_profile,
    gram_purity,
    gram_spectrum,
    haar_mean,
    haar_variance,
    residual_gram,
)
from .heads import head_blocks, head_fraction_profiles
from .models import check_pair, extract_deltas, load_model
from .normalise import NORMALISATIONS, RATIO_NORMALISATIONS, normalise
from .subspaces import (
    ACTIVATION_CONSTRUCTIONS,
    CONSTRUCTIONS,
    Subspace,
    construction_rng,
    covariance_subspace,
    gram_subspace,
    random_subspace,
    unembedding_subspace,
    unembedding_subspaces,
    weight_subspace,
)

__all__ = [
    "ACTIVATION_CONSTRUCTIONS",
    "CONSTRUCTIONS",
    "CUTOFF_RULES",
    "FAMILIES",
    "MATRICES",
    "NORMALISATIONS",
    "PATHWAY",
    "RATIO_NORMALISATIONS",
    "SITES",
    "SITE_OF",
    "SUPPORTED_MODEL_TYPES",
    "ActivationStatistics",
    "ChunkStatistics",
    "Cutoff",
    "SiteStatistics",
    "Subspace",
    "canonical_biases",
    "canonical_weights",
    "check_pair",
    "collect_statistics",
    "construction_rng",
    "covariance_subspace",
    "gram_subspace",
    "energy_profile",
    "extract_deltas",
    "family_of",
    "final_norm_gain",
    "fraction_profile",
    "gram_purity",
    "gram_spectrum",
    "haar_mean",
    "haar_variance",
    "head_blocks",
    "head_fraction_profiles",
    "load_model",
    "model_dims",
    "normalise",
    "parse_cutoff",
    "random_subspace",
    "residual_gram",
    "resolve_cutoff",
    "site_hooks",
    "tied_embeddings",
    "unembedding",
    "unembedding_subspace",
    "unembedding_subspaces",
    "validate_cutoffs",
    "weight_subspace",
]
