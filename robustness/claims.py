"""The paper's claims, one by one: each tested as stated, with a verdict and its robustness.

Claim ids (a contract, ``docs/design.md`` §4) and what the paper says are in
:data:`CLAIMS`. Every **level** claim compares a log2 isotropic ratio with
**its Haar reference** (``probes.haar_reference``: the expected log2 ratio of
that delta under a Haar-random subspace of the same k, from its Gram purity),
not with 0: per layer, the mean over a matrix set of ``s − reference`` is the
level ``ℓ_l``, and its mean is tested with the dependence-robust EWC test over
layers (:mod:`robustness.layers`). The rules, written once here and in the
README, never tuned to a dataset's outcome:

- ``read_concentration``: the read set's level on an activation construction;
  supported when the one-sided test ``mean ℓ > 0`` rejects at α, contradicted
  when ``mean ℓ < 0`` does, inconclusive otherwise;
- ``write_isotropy``: **equivalence** (two one-sided tests at α): supported when
  the ``1 − 2α`` interval of the write set's level on an unembedding
  construction lies inside ``±margin`` (default 0.5 log2, a factor √2);
  contradicted when it lies wholly outside it; inconclusive otherwise (a
  non-significant difference is never support). Eligible cutoffs have
  ``k ≤ d/8`` at every layer, so the ratio can move at least eightfold;
- ``read_write_asymmetry``: per layer, the read level on the activation
  construction minus the write level on the prediction construction, each
  against its own reference; one-sided ``> 0`` as for ``read_concentration``;
- ``pretraining_writes_prediction``: for a ``pretrain`` pair, the write level
  on unembedding constructions ``> 0``, and greater than the alignment pair's
  (paired over layers, ``pretrain − align > 0``); supported when both
  one-sided tests reject, contradicted when either opposite one does. Stored
  on the alignment pair it compares;
- ``read_objective_agnostic``: ``read_concentration`` supported in every phase
  present (and for every contrastive variant given); contradicted where it is
  contradicted in any; needs a ``pretrain`` pair or a contrastive dataset;
- the claims on the mechanism read the extra datasets
  (:mod:`robustness.claims_mechanism`).

For ``phase = "pretrain"`` pairs the sweep takes the activation and
unembedding constructions from the trained (``aligned``) side, since the
initialisation has no structure (``results.construction_side``).

Each claim's **verdict** is decided at its preferred specification;
``robust_share`` is the share of the eligible specifications (the
constructions, cutoffs and normalisations the claim admits, duplicates on the
statistics' scale merged) whose own verdict equals the preferred one's, and
``p_joint`` the joint test across them (Stouffer's Z of the one-sided
p-values under one set of rotations of the EWC projections, as the
specification curve's joint tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

import probes

from .asymmetry import _stouffer
from .dataset import pair_phases
from .layers import RotationNull, layer_test, monte_carlo_p
from .specification import DEFAULT_READ, DEFAULT_WRITE, probe_scale

__all__ = [
    "ACTIVATION",
    "CLAIMS",
    "CLAIM_IDS",
    "Levels",
    "PREDICTION",
    "VERDICTS",
    "Claim",
    "Outcome",
    "level_claims",
    "pretrain_partner",
]

VERDICTS = ("supported", "contradicted", "inconclusive", "not_tested")
ACTIVATION = ("act_cov", "act_moment", "act_cov_aligned")
PREDICTION = ("unembed", "unembed_centered", "unembed_folded")
LEVEL_NORMALISATIONS = ("log_isotropic", "isotropic")  # the log2 ratio: margins are in its units


@dataclass(frozen=True)
class Claim:
    id: str
    says: str
    test: str
    preferred: str


CLAIMS = (
    Claim("read_concentration", "alignment deltas of the read matrices (q, k) concentrate along the "
          "principal directions of the activations they read",
          "level of the read set on activation constructions against its Haar reference, one-sided > 0",
          "act_cov, k=8, log_isotropic"),
    Claim("write_isotropy", "alignment deltas of the write matrices (o, down) stay near-isotropic relative "
          "to the prediction subspace",
          "equivalence: the 1 − 2α interval of the write set's level on unembedding constructions inside ±margin",
          "unembed, k=8, log_isotropic"),
    Claim("read_write_asymmetry", "read concentration on the activations exceeds write concentration on the "
          "prediction subspace",
          "per layer, read level on the activation construction minus write level on the prediction "
          "construction, one-sided > 0", "act_cov vs unembed, k=8, log_isotropic"),
    Claim("pretraining_writes_prediction", "cross-entropy pretraining imprints prediction geometry on the "
          "write pathway", "pretrain pair: write level on unembedding constructions > 0, and greater than the "
          "alignment pair's (paired over layers)", "unembed, k=8, log_isotropic"),
    Claim("read_objective_agnostic", "read concentration comes from the activations, whatever the objective",
          "read_concentration supported in both phases (and in the contrastive variants when given)",
          "act_cov, k=8, log_isotropic"),
    Claim("gradient_anisotropy", "cross-entropy's δ_t is more anisotropic than the alignment objective's",
          "entropy effective rank of δ_t at o_out and down_out, DPO − CE, paired intervals over layers: "
          "supported if CE's is lower at both sites, contradicted if higher at both", "–"),
    Claim("trajectory_consistent", "the pattern holds within the alignment trajectory",
          "asymmetry against the start: interval above 0 at every checkpoint (supported), below 0 at any "
          "(contradicted)", "the trajectory's specification"),
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
    """One claim's result on one pair (NaN where a number does not apply)."""

    verdict: str
    estimate: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    p_value: float = float("nan")
    reference: float = float("nan")
    robust_share: float = float("nan")
    n_specifications: int = 0
    p_joint: float = float("nan")
    method: str = ""
    reason: str = ""


# ---------------------------------------------------------------------------- levels


class Levels:
    """One pair's probe on the statistics' scale and each matrix's Haar reference, per specification."""

    def __init__(self, results: xr.Dataset, pair):
        self.pair = pair
        n_layers = (
            int(results.n_layers.sel(pair=pair))
            if "n_layers" in results
            else results.sizes["layer"]
        )
        self.n_layers = n_layers
        self.d = int(results.d_model.sel(pair=pair))
        self.matrices = [str(m) for m in results.matrix.values]
        self.results = results
        cut = {"layer": slice(0, n_layers)}
        self.rsf = results.rsf.sel(pair=pair).isel(cut)
        self.k = results.k.sel(pair=pair).isel(cut)
        if "gram_purity" not in results:
            raise ValueError(
                "the results carry no gram_purity (written before the Haar references existed): re-run rsf sweep"
            )
        self.purity = results.gram_purity.sel(pair=pair).isel(cut).values

    def specs(
        self, constructions, normalisations=LEVEL_NORMALISATIONS
    ) -> list[tuple[str, str, str]]:
        return [
            (c, str(k), n)
            for c in constructions
            if c in self.rsf.construction.values
            for k in self.rsf.cutoff.values
            for n in normalisations
            if n in self.rsf.normalisation.values
        ]

    def level(self, spec, matrices) -> np.ndarray:
        """``[L]``: mean over `matrices` of ``s − Haar reference`` (NaN where undefined)."""
        construction, cutoff, normalisation = spec
        columns = [self.matrices.index(m) for m in matrices if m in self.matrices]
        if not columns:
            return np.full(self.n_layers, np.nan)
        s = probe_scale(self.rsf.sel(construction=construction, cutoff=cutoff, normalisation=normalisation).values,
                        normalisation)[:, columns]  # fmt: skip
        k = self.k.sel(construction=construction, cutoff=cutoff).values[:, columns]
        reference = probes.haar_reference(normalisation, k, self.d, self.purity[:, columns])
        return np.mean(s - reference, axis=1)

    def reference(self, spec, matrices) -> float:
        construction, cutoff, normalisation = spec
        columns = [self.matrices.index(m) for m in matrices if m in self.matrices]
        k = self.k.sel(construction=construction, cutoff=cutoff).values[:, columns]
        return float(
            np.nanmean(probes.haar_reference(normalisation, k, self.d, self.purity[:, columns]))
        )

    def eligible_k(self, spec, matrices) -> bool:
        """``k ≤ d/8`` at every layer and matrix (so the ratio can move at least eightfold)."""
        construction, cutoff, _ = spec
        columns = [self.matrices.index(m) for m in matrices if m in self.matrices]
        k = self.k.sel(construction=construction, cutoff=cutoff).values[:, columns]
        return bool(np.all((k >= 1) & (k <= self.d / 8)))


def _merged(specs, values) -> tuple[list, np.ndarray]:
    """Specifications equal at every layer merged (the first kept); all-NaN ones dropped."""
    keep, columns = [], []
    for spec, column in zip(specs, values.T, strict=True):
        if not np.isfinite(column).all():
            continue
        if any(spec[:2] == other[:2] and np.allclose(column, seen, rtol=1e-12, atol=1e-12)
               for other, seen in zip(keep, columns, strict=True)):  # fmt: skip
            continue
        keep.append(spec)
        columns.append(column)
    return keep, (np.stack(columns, axis=1) if columns else np.zeros((values.shape[0], 0)))


def _preferred_index(specs, preferred) -> int:
    """The preferred specification's column; its ``isotropic`` twin (the same log2 ratio on the
    statistics' scale) when the sweep has no ``log_isotropic``; else the first."""
    for candidate in (tuple(preferred), (*preferred[:2], "isotropic")):
        if candidate in specs:
            return specs.index(candidate)
    return 0


def _undefined(what: str) -> Outcome:
    return Outcome("not_tested", reason=f"{what} is undefined at some layer in every specification (an "
                   "all-zero delta has no direction)")  # fmt: skip


def _one_sided(test, j, alpha) -> str:
    if test.p_greater[j] < alpha:
        return "supported"
    if test.p_less[j] < alpha:
        return "contradicted"
    return "inconclusive"


def _equivalence(test, j, alpha, margin, confidence) -> str:
    low, high = test.ci_low[j], test.ci_high[j]
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if -margin < low and high < margin:
        return "supported"
    if low > margin or high < -margin:
        return "contradicted"
    return "inconclusive"


def _joint_stouffer(values: np.ndarray, test, alternative: str, *, n_resamples: int, rng) -> float:
    """Stouffer's Z of the one-sided p-values under one set of rotations (the curve's joint analogue)."""
    if values.shape[1] < 2 or not np.isfinite(test.p_value).all():
        return float("nan")
    rotations = RotationNull.draw(test.df, values.shape[0], n_resamples=n_resamples, rng=rng)
    observed = test.p_greater if alternative == "greater" else test.p_less
    z = float(_stouffer(observed))
    null = _stouffer(rotations.p_values(test.projections, alternative))
    return float(monte_carlo_p(np.sum(null >= z - 1e-12), rotations.n))


def _spec_label(spec) -> str:
    return "/".join(spec)


def level_claims(
    results: xr.Dataset,
    *,
    read=DEFAULT_READ,
    write=DEFAULT_WRITE,
    isotropy_margin: float = 0.5,
    alpha: float = 0.05,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, dict[str, Outcome]]:
    """``{pair: {claim: Outcome}}`` for the claims tested from ``results.nc`` alone."""
    rng = np.random.default_rng(seed)
    phases = dict(zip([str(p) for p in results.pair.values], pair_phases(results), strict=True))
    levels = {pair: Levels(results, pair) for pair in phases}
    out = {pair: {} for pair in phases}
    for pair, lv in levels.items():
        out[pair]["read_concentration"] = _level_claim(
            lv, ACTIVATION, read, ("act_cov", "k=8", "log_isotropic"), "greater", alpha=alpha,
            confidence_level=confidence_level, n_resamples=n_resamples, rng=rng,
        )  # fmt: skip
        out[pair]["write_isotropy"] = _isotropy_claim(
            lv, write, isotropy_margin, alpha=alpha, n_resamples=n_resamples, rng=rng
        )
        out[pair]["read_write_asymmetry"] = _asymmetry_claim(
            lv,
            read,
            write,
            alpha=alpha,
            confidence_level=confidence_level,
            n_resamples=n_resamples,
            rng=rng,
        )
    aligns = [p for p, ph in phases.items() if ph == "align"]
    pretrains = [p for p, ph in phases.items() if ph == "pretrain"]
    for pair in aligns:
        partner = pretrain_partner(results, pair, paired=True)
        if partner is None and pretrains:
            shown = ", ".join(f"{q} ({levels[q].n_layers})" for q in pretrains)
            out[pair]["pretraining_writes_prediction"] = Outcome("not_tested", reason=(
                f"no pretrain pair with this pair's {levels[pair].n_layers} layers (pretrain: {shown}): the "
                "comparison is paired over layers"))  # fmt: skip
        else:
            out[pair]["pretraining_writes_prediction"] = _pretraining_claim(
                levels[pair], levels[partner] if partner else None, partner, write, alpha=alpha,
                confidence_level=confidence_level,
            )  # fmt: skip
        phases_seen = {"align": out[pair]["read_concentration"]}
        seen = pretrain_partner(results, pair, paired=False)
        if seen:
            phases_seen["pretrain"] = out[seen]["read_concentration"]
        out[pair]["read_objective_agnostic"] = _agnostic_claim(phases_seen)
    for pair in pretrains:
        out[pair]["pretraining_writes_prediction"] = Outcome(
            "not_tested", reason="stored on the alignment pair it compares"
        )
        out[pair]["read_objective_agnostic"] = Outcome(
            "not_tested", reason="stored on the alignment pair it compares"
        )
    return out


def pretrain_partner(results: xr.Dataset, pair, *, paired: bool) -> str | None:
    """The pretrain pair an alignment pair is compared with: the first with as many layers
    (``pretraining_writes_prediction`` is paired over layers); with ``paired=False``
    (``read_objective_agnostic``, which compares verdicts only) that one, else the first pretrain pair."""
    labels = [str(p) for p in results.pair.values]
    pretrains = [
        p for p, phase in zip(labels, pair_phases(results), strict=True) if phase == "pretrain"
    ]

    def layers(label):
        return (
            int(results.n_layers.sel(pair=label))
            if "n_layers" in results
            else results.sizes["layer"]
        )

    same = next((q for q in pretrains if layers(q) == layers(pair)), None)
    if same is not None or paired:
        return same
    return pretrains[0] if pretrains else None


def _level_claim(
    lv,
    constructions,
    matrices,
    preferred,
    alternative,
    *,
    alpha,
    confidence_level,
    n_resamples,
    rng,
):
    specs = lv.specs(constructions)
    values = (
        np.stack([lv.level(spec, matrices) for spec in specs], axis=1)
        if specs
        else np.zeros((lv.n_layers, 0))
    )
    if not specs:
        return Outcome(
            "not_tested", reason=f"no {', '.join(constructions)} specification in the results"
        )
    specs, values = _merged(specs, values)
    if not specs:
        return _undefined(f"the level of {','.join(matrices)}")
    test = layer_test(values, confidence_level=confidence_level)
    j = _preferred_index(specs, preferred)
    verdicts = [_one_sided(test, i, alpha) for i in range(len(specs))]
    if not np.isfinite(test.p_value[j]):
        return Outcome(
            "inconclusive",
            reason=f"{lv.n_layers} layers: too few for the test over layers (4 needed)",
        )
    return Outcome(
        verdicts[j], estimate=float(test.estimate[j]), ci_low=float(test.ci_low[j]), ci_high=float(test.ci_high[j]),
        p_value=float(test.p_greater[j] if alternative == "greater" else test.p_less[j]),
        reference=lv.reference(specs[j], matrices),
        robust_share=float(np.mean([v == verdicts[j] for v in verdicts])), n_specifications=len(specs),
        p_joint=_joint_stouffer(values, test, alternative, n_resamples=n_resamples, rng=rng),
        method=f"EWC t-test over layers (one-sided), level = mean over {','.join(matrices)} of log2 ratio − Haar "
        f"reference; at {_spec_label(specs[j])}",
    )  # fmt: skip


def _isotropy_claim(lv, matrices, margin, *, alpha, n_resamples, rng):
    specs = [s for s in lv.specs(PREDICTION) if lv.eligible_k(s, matrices)]
    values = (
        np.stack([lv.level(s, matrices) for s in specs], axis=1)
        if specs
        else np.zeros((lv.n_layers, 0))
    )
    if not specs:
        return Outcome(
            "not_tested", reason=f"no unembedding specification with k ≤ d/8 = {lv.d / 8:g}"
        )
    specs, values = _merged(specs, values)
    if not specs:
        return _undefined(f"the level of {','.join(matrices)}")
    test = layer_test(values, confidence_level=1 - 2 * alpha)
    j = _preferred_index(specs, ("unembed", "k=8", "log_isotropic"))
    verdicts = [_equivalence(test, i, alpha, margin, 1 - 2 * alpha) for i in range(len(specs))]
    if not np.isfinite(test.ci_low[j]):
        return Outcome(
            "inconclusive",
            reason=f"{lv.n_layers} layers: too few for the test over layers (4 needed)",
        )
    # The TOST p-value: the larger of the two one-sided p-values against ±margin.
    lower = layer_test(values[:, [j]], null_mean=-margin)
    upper = layer_test(values[:, [j]], null_mean=margin)
    p_tost = float(max(lower.p_greater[0], upper.p_less[0]))
    return Outcome(
        verdicts[j], estimate=float(test.estimate[j]), ci_low=float(test.ci_low[j]),
        ci_high=float(test.ci_high[j]), p_value=p_tost, reference=lv.reference(specs[j], matrices),
        robust_share=float(np.mean([v == verdicts[j] for v in verdicts])), n_specifications=len(specs),
        method=f"two one-sided EWC tests at α = {alpha:g} against ±{margin:g} (the {1 - 2 * alpha:.0%} interval "
        f"inside the margin); eligible cutoffs k ≤ d/8; at {_spec_label(specs[j])}",
    )  # fmt: skip


def _asymmetry_claim(lv, read, write, *, alpha, confidence_level, n_resamples, rng):
    pairs_of_specs, columns = [], []
    for act in lv.specs(ACTIVATION):
        for pred in lv.specs(PREDICTION):
            if act[1:] != pred[1:]:
                continue
            pairs_of_specs.append((act, pred))
            columns.append(lv.level(act, read) - lv.level(pred, write))
    if not columns:
        return Outcome(
            "not_tested",
            reason="needs an activation and an unembedding construction in the results",
        )
    labels = [(a[0] + "|" + p[0], a[1], a[2]) for a, p in pairs_of_specs]
    values = np.stack(columns, axis=1)
    labels, values = _merged(labels, values)
    if not labels:
        return _undefined(f"the read ({','.join(read)}) − write ({','.join(write)}) level")
    test = layer_test(values, confidence_level=confidence_level)
    j = _preferred_index(labels, ("act_cov|unembed", "k=8", "log_isotropic"))
    if not np.isfinite(test.p_value[j]):
        return Outcome(
            "inconclusive",
            reason=f"{lv.n_layers} layers: too few for the test over layers (4 needed)",
        )
    verdicts = [_one_sided(test, i, alpha) for i in range(len(labels))]
    return Outcome(
        verdicts[j], estimate=float(test.estimate[j]), ci_low=float(test.ci_low[j]), ci_high=float(test.ci_high[j]),
        p_value=float(test.p_greater[j]), reference=0.0,
        robust_share=float(np.mean([v == verdicts[j] for v in verdicts])), n_specifications=len(labels),
        p_joint=_joint_stouffer(values, test, "greater", n_resamples=n_resamples, rng=rng),
        method=f"EWC t-test over layers (one-sided) of read level ({labels[j][0].split('|')[0]}) − write level "
        f"({labels[j][0].split('|')[1]}), each against its Haar reference; at {labels[j][1]}, {labels[j][2]}",
    )  # fmt: skip


def _pretraining_claim(align, pretrain, partner, write, *, alpha, confidence_level):
    if pretrain is None:
        return Outcome("not_tested", reason="needs a pair with phase = pretrain (an initialisation or early "
                       "checkpoint → base, [[pair]] phase = \"pretrain\"; rsf demo adds one)")  # fmt: skip
    specs = pretrain.specs(PREDICTION)
    spec = next((s for s in (("unembed", "k=8", "log_isotropic"), ("unembed", "k=8", "isotropic")) if s in specs),
                None)  # fmt: skip
    if spec is None:
        return Outcome(
            "not_tested", reason="needs unembed, k=8 and log_isotropic (or isotropic) in the sweep"
        )
    own = pretrain.level(spec, write)
    difference = own - align.level(spec, write)
    level = layer_test(own, confidence_level=confidence_level)
    paired = layer_test(difference, confidence_level=confidence_level)
    if not np.isfinite(paired.p_value[0]):
        return Outcome("inconclusive", reason="too few layers for the test over layers (4 needed)")
    if level.p_greater[0] < alpha and paired.p_greater[0] < alpha:
        verdict = "supported"
    elif level.p_less[0] < alpha or paired.p_less[0] < alpha:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return Outcome(
        verdict, estimate=float(paired.estimate[0]), ci_low=float(paired.ci_low[0]), ci_high=float(paired.ci_high[0]),
        p_value=float(max(level.p_greater[0], paired.p_greater[0])), reference=0.0, n_specifications=1,
        method=f"EWC tests over layers: pretrain pair {partner!r}'s write level on unembed/k=8 > 0 (estimate "
        f"{float(level.estimate[0]):+.3f}, p = {float(level.p_greater[0]):.3g}) and its excess over this "
        "alignment pair's, paired over layers (the estimate); p is the larger one-sided p",
    )  # fmt: skip


def _agnostic_claim(
    phases: dict[str, Outcome], variants: dict[str, Outcome] | None = None
) -> Outcome:
    seen = dict(phases) | dict(variants or {})
    if len(seen) < 2:
        return Outcome("not_tested", reason="needs a pair with phase = pretrain or a contrastive dataset "
                       "(rsf experiment contrastive) beside the alignment pair")  # fmt: skip
    verdicts = {name: o.verdict for name, o in seen.items()}
    if all(v == "supported" for v in verdicts.values()):
        verdict = "supported"
    elif any(v == "contradicted" for v in verdicts.values()):
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return Outcome(
        verdict, n_specifications=len(seen),
        method="read_concentration's rule in every phase and variant",
        reason="; ".join(f"{name}: {v}" for name, v in verdicts.items()),
    )  # fmt: skip
