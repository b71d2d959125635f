"""The probe's names, defined once and importable without torch (``docs/design.md`` §1).

Matrices, pathways, activation sites, subspace constructions, normalisations
and weight dtypes are contracts: every dataset and every option uses these
spellings. The modules that implement them (``adapters``, ``subspaces``,
``normalise``, ``models``) import their names from here, and the command
line's option schema reads them here, so ``rsf --help`` never loads torch.
"""

from __future__ import annotations

__all__ = [
    "ACTIVATION_CONSTRUCTIONS",
    "PREDICTION_CONSTRUCTIONS",
    "CONSTRUCTIONS",
    "DTYPE_NAMES",
    "MATRICES",
    "NORMALISATIONS",
    "PATHWAY",
    "PATHWAYS",
    "RATIO_NORMALISATIONS",
    "SITES",
    "SITE_OF",
]

# ``router``: a mixture-of-experts layer's router (it reads the MLP's input, like up and gate).
MATRICES = ("q", "k", "v", "o", "up", "gate", "down", "router")
PATHWAYS = ("read", "write")
PATHWAY = {
    "q": "read",
    "k": "read",
    "v": "read",
    "up": "read",
    "gate": "read",
    "router": "read",
    "o": "write",
    "down": "write",
}
# Residual-side activation site of each matrix (docs/design.md §1).
SITES = ("attn_in", "mlp_in", "resid_post")
SITE_OF = {
    "q": "attn_in",
    "k": "attn_in",
    "v": "attn_in",
    "up": "mlp_in",
    "gate": "mlp_in",
    "router": "mlp_in",
    "o": "resid_post",
    "down": "resid_post",
}
CONSTRUCTIONS = (
    "act_cov",
    "act_moment",
    "act_cov_aligned",
    "unembed",
    "unembed_centered",
    "unembed_folded",
    "weight_svd",
    "random",
)
ACTIVATION_CONSTRUCTIONS = ("act_cov", "act_moment", "act_cov_aligned")
PREDICTION_CONSTRUCTIONS = ("unembed", "unembed_centered", "unembed_folded")
NORMALISATIONS = ("fraction", "isotropic", "log_isotropic", "base_relative", "null_z")
# Ratios: the statistics take them on the log2 scale.
RATIO_NORMALISATIONS = ("isotropic", "base_relative")
# Weight dtypes a model may be loaded in (``probes.models.DTYPES`` maps them to torch's).
DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")
