"""The specification curve's bookkeeping: which specifications count, their references, what moves them.

- **Counted** specifications enter the joint tests, the adjusted p-values and
  the variance decomposition: a substantive construction (the controls
  ``random`` and ``weight_svd`` ask other questions: the null, and whether ΔW
  follows W), counted once. Two specifications are **duplicates** when their
  probe values are equal on the statistics' scale at every layer and matrix
  (``isotropic`` and ``log_isotropic`` are the same specification once the
  ratio is taken in log2); the preferred specification is kept, else the
  ``log_isotropic`` one, else the first in the contract's order of
  normalisations (never the dataset's order). A specification whose read and
  write sides chose ranks more than :data:`K_MISMATCH` apart at some layer
  compares unlike subspaces (a massive activation direction makes ``var`` or
  ``pr`` pick k = 1 on one side and hundreds on the other): it is not counted
  either (:func:`matched_k`).
- **References**: the value of ``D_l`` under each specification's own null.
  Zero for a real basis (no difference between the pathways); for ``random``
  the Haar expectation of each matrix's probe from its Gram purity
  (:func:`probes.haar_reference`), read set minus write set, so the control
  is tested against what a random basis gives, not against zero.
- **Variance decomposition**: shares of the total sum of squares of the
  effect sizes owed to each analytic choice and each pair of choices.
- **Ranking stability**: Kendall's W and ICCs of the per-layer differences
  across specifications (pingouin).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

import probes
from robustness.settings.specification import CONTROLS, SPEC_DIMS

__all__ = [
    "K_MISMATCH",
    "counted_mask",
    "duplicates",
    "matched_k",
    "ranks_matched",
    "ranking_stability",
    "references",
    "variance_shares",
]

K_MISMATCH = 4.0  # read and write ranks further apart than this factor are not compared


def duplicates(
    s: np.ndarray, specs: list[tuple[str, str, str]], preferred: tuple | None = None
) -> list[str]:
    """For each specification, the ``c/k/n`` label of the one it duplicates and that is kept, or ``""``.

    ``s [L, M, J]`` is one pair's probe on the statistics' scale. Only
    specifications of the same construction and cutoff are compared (different
    bases or ranks cannot be the same question), and only defined ones (a
    specification NaN everywhere is undefined, not a duplicate). Of a set of
    equal specifications the one kept is the `preferred` one if it is among
    them, else a ``log_isotropic`` one (the scale the statistics use), else
    the first in the dataset's order.
    """

    def rank(j):
        spec = specs[j]
        order = probes.NORMALISATIONS.index(spec[2]) if spec[2] in probes.NORMALISATIONS else j
        return (spec != tuple(preferred or ()), spec[2] != "log_isotropic", order, j)

    out = [""] * len(specs)
    kept: list[int] = []
    for j in sorted(range(len(specs)), key=rank):
        a = s[..., j]
        if np.isnan(a).all():
            continue
        for i in kept:
            if specs[i][:2] != specs[j][:2]:
                continue
            b = s[..., i]
            same = np.array_equal(np.isnan(a), np.isnan(b)) and np.allclose(
                a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-12, atol=1e-12
            )
            if same:
                out[j] = "/".join(specs[i])
                break
        else:
            kept.append(j)
    return out


def counted_mask(
    specs: list[tuple[str, str, str]], duplicate_of: list[str], matched=None
) -> np.ndarray:
    """Substantive (not a control), not a duplicate, and (given `matched`) with matched ranks."""
    mask = np.array(
        [c not in CONTROLS and not dup for (c, _, _), dup in zip(specs, duplicate_of, strict=True)]
    )
    return mask if matched is None else mask & np.asarray(matched, dtype=bool)


def ranks_matched(read_k: np.ndarray, write_k: np.ndarray) -> str:
    """Why ranks ``[L, M_read]`` and ``[L, M_write]`` compare unlike subspaces, or ``""``.

    They do when, at some layer, a read and a write matrix's ranks are more
    than :data:`K_MISMATCH` apart (undefined ranks, −1, are ignored): an
    asymmetry between ``F(1)`` on one side and ``F(250)`` on the other
    compares a direction with a subspace, whatever the data say.
    """
    for layer in range(read_k.shape[0]):
        r, w = read_k[layer], write_k[layer]
        r, w = r[r >= 1], w[w >= 1]
        if not (r.size and w.size):
            continue
        ratio = max(r.max() / w.min(), w.max() / r.min())
        if ratio > K_MISMATCH:
            return (
                f"read and write ranks differ {ratio:.0f}-fold at layer {layer} (read k = "
                f"{int(r.min())}–{int(r.max())}, write k = {int(w.min())}–{int(w.max())}): "
                f"more than {K_MISMATCH:g}-fold, unlike subspaces"
            )
    return ""


def matched_k(k: np.ndarray, read: list[int], write: list[int]) -> tuple[np.ndarray, list[str]]:
    """For `k` ``[L, M, J]`` (each cutoff's rank per layer, matrix and specification): whether each
    specification's read and write ranks are matched (:func:`ranks_matched`), and why not."""
    reasons = [ranks_matched(k[:, read, j], k[:, write, j]) for j in range(k.shape[-1])]
    return np.array([not reason for reason in reasons], dtype=bool), reasons


def references(
    k: np.ndarray,
    purity: np.ndarray,
    specs: list[tuple[str, str, str]],
    read: list[int],
    write: list[int],
    d: int,
    spectrum: np.ndarray | None = None,
    experts=None,
) -> np.ndarray:
    """``[L, J]``: each specification's reference for ``D_l`` (0 except for ``random``).

    `k` ``[L, M, J]`` is the rank each cutoff chose per layer, matrix and
    specification; `purity` ``[L, M]`` the deltas' Gram purity and `spectrum`
    ``[L, M, r]`` their normalised Gram spectra, from which the Haar reference
    is exact (:func:`probes.haar_reference`; without them, its Beta law).
    `experts` (:class:`robustness.measure.experts.ExpertSpectra`) gives the expert
    matrices of a mixture-of-experts pair the reference of their mean.
    """
    out = np.zeros((k.shape[0], len(specs)))
    for j, (construction, _, normalisation) in enumerate(specs):
        if construction != "random":
            continue
        ref = probes.haar_reference(normalisation, k[..., j], d, purity, spectrum=spectrum)
        if experts is not None:
            ref = experts.override(np.asarray(ref), normalisation, k[..., j], d)
        out[:, j] = ref[:, read].mean(axis=1) - ref[:, write].mean(axis=1)
    return out


def variance_shares(frame: pd.DataFrame) -> dict[str, float]:
    """Share of the total sum of squares of the effect size owed to each choice and pair of choices.

    OLS of ``effect_size`` on the analytic choices (those with more than one
    level) and their two-way interactions; each term's sequential (type I)
    sum of squares over the total ``Σ (y − ȳ)²``, in the order construction,
    cutoff, normalisation, then the interactions; the residual (the three-way
    interaction, with one specification per cell) takes the rest. On a
    complete grid the terms are orthogonal and the order does not matter; on
    an incomplete one the shares depend on it, and the attrs say so.
    """
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    factors = [f for f in SPEC_DIMS if frame[f].nunique() > 1]
    if not factors:
        return {}
    total = float(np.sum((frame["effect_size"] - frame["effect_size"].mean()) ** 2))
    if total == 0:
        return {}
    terms = [f"C({f})" for f in factors]
    interactions = [f"C({a}):C({b})" for i, a in enumerate(factors) for b in factors[i + 1 :]]
    for candidate in (terms + interactions, terms):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = smf.ols("effect_size ~ " + " + ".join(candidate), data=frame).fit()
        if model.df_resid >= 1:
            break
    else:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = anova_lm(model, typ=1)
    shares = {}
    for term in table.index:
        if term == "Residual":
            continue
        name = term.replace("C(", "").replace(")", "").replace(":", "×")
        shares[name] = float(table.loc[term, "sum_sq"]) / total
    shares["residual"] = float(table.loc["Residual", "sum_sq"]) / total
    return shares


def ranking_stability(differences: np.ndarray) -> dict[str, float]:
    """Kendall's W and ICC (agreement, consistency) of per-layer differences across specifications."""
    import pingouin

    n_layers, n_specs = differences.shape
    if n_layers < 3 or n_specs < 2:
        return {}
    frame = pd.DataFrame({
        "layer": np.repeat(np.arange(n_layers), n_specs),
        "spec": np.tile(np.arange(n_specs), n_layers),
        "d": differences.ravel(),
    })  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        friedman = pingouin.friedman(data=frame, dv="d", within="layer", subject="spec")
        icc = pingouin.intraclass_corr(
            data=frame, targets="layer", raters="spec", ratings="d"
        ).set_index("Type")
    return {
        "kendall_w": float(friedman["W"].iloc[0]),
        "icc_agreement": float(icc.loc["ICC(A,1)", "ICC"]),  # ICC(2,1): absolute agreement
        "icc_consistency": float(icc.loc["ICC(C,1)", "ICC"]),  # ICC(3,1): consistency
    }
