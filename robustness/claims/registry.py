"""The registry of the paper's claims and the outcome each test returns.

:data:`CLAIMS` lists every claim once, in the order of ``claims.nc``'s ``claim``
coordinate: its id (a contract, ``docs/design.md`` §4), what the paper says,
the test as written in the dataset's ``rules`` attribute, and its preferred
specification. :class:`Outcome` is one claim's result on one pair, made by
:func:`not_tested` or :func:`decided`; :data:`VERDICTS` names its verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robustness.claims.rules import Decision, Part

__all__ = ["CLAIMS", "CLAIM_IDS", "VERDICTS", "Claim", "Outcome", "decided", "not_tested"]

VERDICTS = ("supported", "contradicted", "inconclusive", "not_tested")


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: its id, what the paper says, how it is tested, at which specification."""

    id: str
    says: str
    test: str
    preferred: str


CLAIMS = (
    Claim("read_concentration", "alignment deltas of the read matrices (q, k) concentrate along the "
          "principal directions of the activations they read",
          "concentration: every read matrix's level on activation constructions (against its Haar "
          "reference) with its 1 − 2α interval above +margin", "act_cov, k=8, log_isotropic"),
    Claim("write_isotropy", "alignment deltas of the write matrices (o, down) stay near-isotropic relative "
          "to the prediction subspace",
          "isotropy: every write matrix's level on unembedding constructions with its 1 − 2α interval "
          "inside ±margin, and no layer's value outside it", "unembed, k=8, log_isotropic"),
    Claim("read_write_asymmetry", "read concentration on the activations exceeds write concentration on the "
          "prediction subspace",
          "concentration: per layer, read level on the activation construction minus write level on the "
          "prediction construction, 1 − 2α interval above +margin", "act_cov vs unembed, k=8, log_isotropic"),
    Claim("pretraining_writes_prediction", "cross-entropy pretraining imprints prediction geometry on the "
          "write pathway", "concentration: the pretrain pair's level of every write matrix on unembedding "
          "constructions above +margin, and above the alignment pair's by more than the margin (paired "
          "over layers)", "unembed, k=8, log_isotropic"),
    Claim("read_objective_agnostic", "read concentration comes from the activations, whatever the objective",
          "in every phase (and contrastive variant given): read_concentration supported and the excess "
          "over the mechanical reference inside ±margin", "act_cov, k=8, log_isotropic"),
    Claim("gradient_anisotropy", "cross-entropy's δ_t is more anisotropic than the alignment objective's",
          "entropy effective rank of δ_t at o_out and down_out, DPO − CE per layer, 1 − 2α intervals over "
          "layers: supported if above 0 at both sites at every checkpoint, contradicted if below 0 at both "
          "at some checkpoint (Holm)", "–"),
    Claim("trajectory_consistent", "the pattern holds within the alignment trajectory",
          "concentration: the asymmetry against the start above +margin at every checkpoint; contradicted "
          "where it is inside ±margin or below −margin at some checkpoint (Holm)",
          "the trajectory's specification"),
    Claim("graded_control", "alignment objectives add little write-side concentration",
          "non-inferiority: the upper bound of the slope of write concentration in λ below the margin "
          "supports; a lower bound above it contradicts", "–"),
    Claim("rank1_causal", "a rank-1 update along the principal activation direction changes behaviour more "
          "than matched directions", "read intervention against the pooled controls: p on |Δmargin| and on "
          "KL both < α", "–"),
)  # fmt: skip
CLAIM_IDS = tuple(c.id for c in CLAIMS)


@dataclass(frozen=True)
class Outcome:
    """One claim's result on one pair (NaN where a number does not apply).

    `decision` carries the claim's unadjusted verdict and its p-values for
    support and contradiction; :func:`robustness.claims.rules.family` adjusts them
    across a pair's claims. `excess` is the read claims' Part against the
    mechanical reference.
    """

    verdict: str
    estimate: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    ci_level: float = float("nan")
    p_value: float = float("nan")
    p_adjusted: float = float("nan")
    reference: float = float("nan")
    robust_share: float = float("nan")
    robust_n: int = 0
    n_specifications: int = 0
    p_joint: float = float("nan")
    margin_needed: float = float("nan")
    mechanical_reference: float = float("nan")
    excess: float = float("nan")
    method: str = ""
    reason: str = ""
    decision: Decision | None = field(default=None, compare=False)
    excess_part: Part | None = field(default=None, compare=False)


def not_tested(reason: str) -> Outcome:
    """An outcome that is ``not_tested``, with the reason (and the command that would test it)."""
    return Outcome("not_tested", reason=reason)


def decided(decision: Decision, alpha: float, **values) -> Outcome:
    """An outcome carrying `decision` (its unadjusted verdict, p of support, margin needed)."""
    values.setdefault("p_value", decision.p_support)
    values.setdefault("margin_needed", decision.margin_needed)
    values.setdefault("ci_level", 1 - 2 * alpha)
    return Outcome(decision.verdict, decision=decision, **values)
