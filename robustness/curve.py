"""The specification curve's bookkeeping: which specifications count, their references, what moves them.

- **Counted** specifications enter the joint tests, the adjusted p-values and
  the variance decomposition: a substantive construction (the controls
  ``random`` and ``weight_svd`` ask other questions: the null, and whether ΔW
  follows W), counted once. Two specifications are **duplicates** when their
  probe values are equal on the statistics' scale at every layer and matrix
  (``isotropic`` and ``log_isotropic`` are the same specification once the
  ratio is taken in log2); the preferred specification is kept, else the
  ``log_isotropic`` one, else the first in the dataset's order.
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

from .specification import CONTROLS, SPEC_DIMS

__all__ = ["duplicates", "ranking_stability", "references", "variance_shares"]


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
        return (spec != tuple(preferred or ()), spec[2] != "log_isotropic", j)

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


def counted_mask(specs: list[tuple[str, str, str]], duplicate_of: list[str]) -> np.ndarray:
    """Substantive (not a control) and not a duplicate."""
    return np.array(
        [c not in CONTROLS and not dup for (c, _, _), dup in zip(specs, duplicate_of, strict=True)]
    )


def references(
    k: np.ndarray,
    purity: np.ndarray,
    specs: list[tuple[str, str, str]],
    read: list[int],
    write: list[int],
    d: int,
) -> np.ndarray:
    """``[L, J]``: each specification's reference for ``D_l`` (0 except for ``random``).

    `k` ``[L, M, J]`` is the rank each cutoff chose per layer, matrix and
    specification; `purity` ``[L, M]`` the deltas' Gram purity.
    """
    out = np.zeros((k.shape[0], len(specs)))
    for j, (construction, _, normalisation) in enumerate(specs):
        if construction != "random":
            continue
        ref = probes.haar_reference(normalisation, k[..., j], d, purity)  # [L, M]
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
