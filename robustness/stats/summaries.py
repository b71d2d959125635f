"""The per-pair summaries and the pair model of ``stats.nc``: written as variables, read back as dicts.

`rsf stats` summarises each pair as a dict (:func:`robustness.stats.pair_tests.pair_statistics`:
sets, counts, a note, the joint tests, the variance decomposition, the ranking
stability, the expected shares) and fits the pair model per phase
(:func:`robustness.stats.pairs.phase_models`). :func:`per_pair_variables` and
:func:`pair_model_variables` store them as variables on their own dimensions
(listed in the datasets contract of the design note); :func:`read_per_pair` and
:func:`read_pair_model` rebuild the same dicts, key for key and in the same
order, and are the one way anything reads them. Files written before the
variables hold the dicts as JSON text in the attributes ``per_pair`` and
``pair_model``; the readers fall back to those.

What a pair or phase lacks is stored as −1 (counts and flags), ``""`` (text)
or NaN (numbers); where NaN can also be a computed value, a flag says what was
computed (``variance_component_fitted``, ``ranking_stability_computed``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import xarray as xr

from robustness.settings.specification import SPEC_DIMS
from robustness.stats.layers import MIN_LAYERS
from robustness.stats.pairs import DIFFERENCE_NULL, OVERALL_NULL

__all__ = [
    "AGREEMENTS",
    "EXPECTATIONS",
    "JOINT_DECISIONS",
    "JOINT_TESTS",
    "MODEL_STATISTICS",
    "VARIANCE_COMPONENTS",
    "joint_decision",
    "pair_model_variables",
    "per_pair_variables",
    "read_pair_model",
    "read_per_pair",
]

JOINT_TESTS = ("median_effect", "share_significant", "stouffer_z")
VARIANCE_COMPONENTS = (
    *SPEC_DIMS,
    *(f"{a}×{b}" for i, a in enumerate(SPEC_DIMS) for b in SPEC_DIMS[i + 1 :]),
    "residual",
)  # the order of the decomposition's terms (robustness.stats.curve.variance_shares)
AGREEMENTS = ("kendall_w", "icc_agreement", "icc_consistency")
EXPECTATIONS = ("under_null", "under_median_effect")
MODEL_STATISTICS = ("estimate", "ci_low", "ci_high", "p_value")
F_DEGREES = ("numerator", "denominator")


@dataclass(frozen=True)
class Field:
    """One key of a summary stored as a variable: ``count`` (−1 absent), ``flag`` (1/0, −1
    absent), ``text`` (``""`` absent) or ``number`` (NaN absent)."""

    key: str
    variable: str
    kind: str
    long_name: str

    def empty(self, shape) -> np.ndarray:
        if self.kind == "text":
            return np.full(shape, "", dtype=object)
        if self.kind == "number":
            return np.full(shape, np.nan)
        return np.full(shape, -1, dtype=np.int8 if self.kind == "flag" else np.int64)

    def value(self, stored):
        """The summary's value from the stored one (a plain Python value, as JSON held it)."""
        return {"count": int, "flag": bool, "text": str, "number": float}[self.kind](stored)


NOT_TESTED = "−1: the pair was not tested"
PAIR_FIELDS = (  # in the summary's key order
    Field("n_layers", "n_layers", "count", "layers tested"),
    Field("read_set", "pair_read_set", "text", "read matrices tested for the pair (a LoRA pair: "
          "those its adapter targets; empty: not tested)"),
    Field("write_set", "pair_write_set", "text", "write matrices tested for the pair (a LoRA pair: "
          "those its adapter targets; empty: not tested)"),
    Field("incomplete_specifications", "incomplete_specifications", "count",
          f"specifications undefined at some layer or matrix ({NOT_TESTED})"),
    Field("counted_specifications", "counted_specifications", "count",
          f"specifications in the joint tests: counted and complete ({NOT_TESTED})"),
    Field("k_mismatched_specifications", "k_mismatched_specifications", "count",
          f"complete specifications whose read and write ranks are more than 4-fold apart at some "
          f"layer ({NOT_TESTED})"),
    Field("projections", "projections", "count",
          f"cosine projections K of the EWC test over the pair's layers ({NOT_TESTED})"),
    Field("note", "pair_note", "text", "what the pair's tests could not do (empty: nothing)"),
)  # fmt: skip
TESTED_FIELDS = (  # after the joint tests, once a pair's specifications were tested
    Field("signflip_exact", "signflip_exact", "flag", "1: the sign-flip p-values enumerate every "
          "sign vector; 0: Monte Carlo; −1: not tested"),
    Field("perm_exact", "perm_exact", "flag", "1: the label-permutation p-values enumerate every "
          "arrangement; 0: Monte Carlo; −1: not tested"),
)  # fmt: skip
JOINT_FIELDS = (  # after the tests' statistics and p-values
    Field("n_specifications", "joint_n_specifications", "count",
          f"counted specifications the joint tests cover ({NOT_TESTED})"),
    Field("n_null", "joint_n_null", "count", "random rotations in the joint tests' null (−1: the "
          "joint tests did not run: nothing counted, or a p-value undefined)"),
    Field("exact", "joint_exact", "flag", "1: the joint p-values are exact (−1: not run)"),
    Field("method", "joint_method", "text", "how the joint tests' null was drawn (empty: not run)"),
)  # fmt: skip
STANDARDISED = Field("median_standardised_effect", "median_standardised_effect", "number",
                     "median over the counted specifications of the standardised effect A/ω "
                     "(the EWC scale) that expected_share assumes")  # fmt: skip


# ---------------------------------------------------------------------------------- per pair


def per_pair_variables(per_pair: dict[str, dict], *, joint_null: str) -> tuple[dict, dict]:
    """``(data_vars, coords)``: every pair's summary as variables on ``pair`` and their own dims.

    `joint_null` is the joint tests' null hypothesis (``joint_p``'s attribute).

    A key the layout does not know is an error, so that nothing is written
    that :func:`read_per_pair` could not give back.
    """
    n = len(per_pair)
    fields = (*PAIR_FIELDS, *TESTED_FIELDS, *JOINT_FIELDS, STANDARDISED)
    columns = {f.variable: f.empty(n) for f in fields}
    groups = {
        "joint_statistic": np.full((n, len(JOINT_TESTS)), np.nan),
        "joint_p": np.full((n, len(JOINT_TESTS)), np.nan),
        "variance_share": np.full((n, len(VARIANCE_COMPONENTS)), np.nan),
        "variance_component_fitted": np.zeros((n, len(VARIANCE_COMPONENTS)), dtype=np.int8),
        "ranking_stability": np.full((n, len(AGREEMENTS)), np.nan),
        "ranking_stability_computed": np.zeros(n, dtype=np.int8),
        "expected_share": np.full((n, len(EXPECTATIONS)), np.nan),
    }
    for i, (pair, info) in enumerate(per_pair.items()):
        rest = dict(info)
        for f in (*PAIR_FIELDS, *TESTED_FIELDS):
            if f.key in rest:
                columns[f.variable][i] = rest.pop(f.key)
        joint = dict(rest.pop("joint", {}))
        for j, name in enumerate(JOINT_TESTS):
            if name in joint:
                groups["joint_statistic"][i, j] = joint.pop(name)
                groups["joint_p"][i, j] = joint.pop(f"p_{name}")
        _take(columns, JOINT_FIELDS, joint, i, f"{pair}: joint")
        shares = dict(rest.pop("variance_shares", {}))
        for j, name in enumerate(VARIANCE_COMPONENTS):
            if name in shares:
                groups["variance_share"][i, j] = shares.pop(name)
                groups["variance_component_fitted"][i, j] = 1
        stability = dict(rest.pop("ranking_stability", {}))
        if stability:
            groups["ranking_stability"][i] = [stability.pop(name) for name in AGREEMENTS]
            groups["ranking_stability_computed"][i] = 1
        expected = dict(rest.pop("expected_share", {}))
        if expected:
            groups["expected_share"][i] = [expected.pop(name) for name in EXPECTATIONS]
        _take(columns, (STANDARDISED,), expected, i, f"{pair}: expected_share")
        _unknown({**rest, **shares, **stability}, f"the summary of pair {pair}")
    return _pair_data_vars(fields, columns, groups, joint_null), {
        "joint_test": list(JOINT_TESTS),
        "variance_component": list(VARIANCE_COMPONENTS),
        "agreement": list(AGREEMENTS),
        "expectation": list(EXPECTATIONS),
    }


def _take(columns: dict, fields, found: dict, i: int, where: str) -> None:
    for f in fields:
        if f.key in found:
            columns[f.variable][i] = found.pop(f.key)
    _unknown(found, where)


def _unknown(rest: dict, where: str) -> None:
    if rest:
        raise ValueError(f"{where} has keys stats.nc has no variable for: {', '.join(rest)}")


def _pair_data_vars(fields, columns: dict, groups: dict, joint_null: str) -> dict:
    data_vars = {
        f.variable: ("pair", columns[f.variable], {"long_name": f.long_name}) for f in fields
    }
    described = {
        "joint_statistic": ("joint_test", "each joint test's observed statistic over the counted "
                            "specifications (NaN: not run)"),
        "joint_p": ("joint_test", "each joint test's Monte Carlo p-value under the rotation null "
                    "(NaN: not run)"),
        "variance_share": ("variance_component", "share of the total sum of squares of effect_size "
                           "owed to the choice or pair of choices (attr variance_method)"),
        "variance_component_fitted": ("variance_component", "1 where the term was in the pair's "
                                      "variance decomposition"),
        "ranking_stability": ("agreement", "agreement of the per-layer differences across counted "
                              "specifications: Kendall's W, ICC(A,1), ICC(C,1)"),
        "expected_share": ("expectation", "share of counted specifications expected significant with "
                           "read > write: under the null (α/2), and if every one had the median "
                           "standardised effect (the EWC power)"),
    }  # fmt: skip
    for name, (dim, text) in described.items():
        data_vars[name] = (("pair", dim), groups[name], {"long_name": text})
    data_vars["joint_p"][2]["null_hypothesis"] = joint_null
    data_vars["ranking_stability_computed"] = (
        "pair",
        groups["ranking_stability_computed"],
        {
            "long_name": "1 when the ranking stability was computed (at least 3 layers and 2 counted "
            "specifications)"
        },
    )
    return data_vars


def read_per_pair(stats: xr.Dataset) -> dict[str, dict]:
    """The per-pair summary of a stats dataset: sets, counts, notes and the joint tests."""
    if "pair_note" not in stats:  # written before the variables: the JSON attribute
        return json.loads(stats.attrs.get("per_pair", "{}") or "{}")
    return {str(pair): _pair_summary(stats.sel(pair=pair)) for pair in stats.pair.values}


def _pair_summary(row: xr.Dataset) -> dict:
    """One pair's summary dict from its row of the variables."""

    def read(f: Field):
        return f.value(row[f.variable].item())

    info = {}
    tested = int(row.counted_specifications) >= 0
    for f in PAIR_FIELDS:
        if f.key == "n_layers" or (tested and f.key != "note"):
            info[f.key] = read(f)
    if str(row.pair_note.item()):
        info["note"] = str(row.pair_note.item())
    if int(row.signflip_exact) < 0:
        return info
    joint = {}
    if int(row.joint_n_null) >= 0:
        for name in JOINT_TESTS:
            joint[name] = float(row.joint_statistic.sel(joint_test=name))
            joint[f"p_{name}"] = float(row.joint_p.sel(joint_test=name))
        joint.update({f.key: read(f) for f in JOINT_FIELDS})
    else:
        joint["n_specifications"] = read(JOINT_FIELDS[0])
    info["joint"] = joint
    info.update({f.key: read(f) for f in TESTED_FIELDS})
    fitted = row.variance_component_fitted.values
    info["variance_shares"] = {
        str(name): float(share)
        for name, share, used in zip(row.variance_component.values, row.variance_share.values,
                                     fitted, strict=True) if used
    }  # fmt: skip
    computed = int(row.ranking_stability_computed)
    info["ranking_stability"] = (
        {name: float(row.ranking_stability.sel(agreement=name)) for name in AGREEMENTS}
        if computed
        else {}
    )
    info["expected_share"] = {
        **{name: float(row.expected_share.sel(expectation=name)) for name in EXPECTATIONS},
        STANDARDISED.key: read(STANDARDISED),
    }
    return info


# -------------------------------------------------------------------------------- pair model


def pair_model_variables(models: dict, pairs: list[str]) -> tuple[dict, dict]:
    """``(data_vars, coords)``: the pair model per phase on dim ``pair_model_phase`` (none with one pair).

    An entry holds the fitted model or, when none could be fitted, its pairs
    and a note. `pairs` are the dataset's pair labels; the specification the
    models use is an attribute of the ``pair_model_phase`` coordinate.
    """
    if not models:
        return {}, {}
    rest = dict(models)
    specification = rest.pop("specification")
    model = _ModelArrays.empty(len(rest), len(pairs))
    for i, (phase, entry) in enumerate(rest.items()):
        model.fill(i, dict(entry), pairs, f"the pair model of phase {phase}")
    coords = {
        "pair_model_phase": (
            "pair_model_phase",
            np.asarray(list(rest), dtype=object),
            {
                "long_name": "phases with a pair model (two or more tested pairs)",
                "specification": ",".join(specification),
            },
        ),
        "pair_model_statistic": list(MODEL_STATISTICS),
        "f_degrees": list(F_DEGREES),
    }
    return model.data_vars(), coords


@dataclass(frozen=True)
class _ModelArrays:
    """The pair-model variables' arrays, one row per phase, filled phase by phase."""

    arrays: dict[str, np.ndarray]

    @classmethod
    def empty(cls, n_phases: int, n_pairs: int) -> _ModelArrays:
        s = len(MODEL_STATISTICS)
        return cls({
            "member": np.zeros((n_phases, n_pairs), dtype=np.int8),
            "n_layers": np.full(n_phases, -1, dtype=np.int64),
            "projections": np.full(n_phases, -1, dtype=np.int64),
            "note": np.full(n_phases, "", dtype=object),
            "overall": np.full((n_phases, s), np.nan),
            "per_pair": np.full((n_phases, n_pairs, s), np.nan),
            "difference_f": np.full(n_phases, np.nan),
            "difference_p": np.full(n_phases, np.nan),
            "difference_df": np.zeros((n_phases, len(F_DEGREES)), dtype=np.int64),
            "difference_note": np.full(n_phases, "", dtype=object),
        })  # fmt: skip

    def fill(self, i: int, entry: dict, pairs: list[str], where: str) -> None:
        a = self.arrays
        members = entry.pop("pairs")
        if members != [p for p in pairs if p in members]:
            raise ValueError(f"{where}: its pairs {members} are not in the dataset's order")
        a["member"][i, [pairs.index(p) for p in members]] = 1
        a["note"][i] = entry.pop("note", "")
        if "n_layers" not in entry:  # no model fitted: its pairs and the note say why
            _unknown(entry, where)
            return
        a["n_layers"][i], a["projections"][i] = entry.pop("n_layers"), entry.pop("projections")
        a["overall"][i] = _statistics(entry.pop("overall"), OVERALL_NULL, f"{where}: overall")
        per_pair = entry.pop("per_pair")
        if list(per_pair) != members:
            raise ValueError(f"{where}: per_pair names {list(per_pair)}, not its pairs {members}")
        for label, values in per_pair.items():
            a["per_pair"][i, pairs.index(label)] = _statistics(values, None, f"{where}: {label}")
        difference = dict(entry.pop("difference"))
        if difference.pop("null") != DIFFERENCE_NULL:
            raise ValueError(f"{where}: the difference test's null is not {DIFFERENCE_NULL!r}")
        a["difference_df"][i] = difference.pop("df")
        a["difference_f"][i], a["difference_p"][i] = difference.pop("F"), difference.pop("p_value")
        a["difference_note"][i] = difference.pop("note", "")
        _unknown({**entry, **difference}, where)

    def data_vars(self) -> dict:
        a, phase = self.arrays, "pair_model_phase"
        fitted = " (−1: none fitted, see pair_model_note)"
        described = {
            "member": ((phase, "pair"), "1 where the pair is in the phase's pair model", {}),
            "n_layers": (phase, "layers of the phase's pairs" + fitted, {}),
            "projections": (phase, "cosine projections K over those layers" + fitted, {}),
            "note": (phase, "why no pair model was fitted (empty: fitted)", {}),
            "overall": ((phase, "pair_model_statistic"), "the overall asymmetry: the EWC test "
                        "of the pairs' mean D at each layer", {"null_hypothesis": OVERALL_NULL}),
            "per_pair": ((phase, "pair", "pair_model_statistic"), "each pair's EWC test of its "
                         "mean D on the model's specification", {}),
            "difference_f": (phase, "the difference between pairs: the orthonormal-series F "
                             "statistic", {"null_hypothesis": DIFFERENCE_NULL}),
            "difference_p": (phase, "the difference between pairs: its p-value",
                             {"null_hypothesis": DIFFERENCE_NULL}),
            "difference_df": ((phase, "f_degrees"), "degrees of freedom of the F law (P − 1, "
                              "K − P + 2); meaningful where pair_model_n_layers ≥ 0", {}),
            "difference_note": (phase, "why the difference test could not be computed (empty: "
                                "it was)", {}),
        }  # fmt: skip
        return {
            f"pair_model_{name}": (dims, a[name], {"long_name": text, **attrs})
            for name, (dims, text, attrs) in described.items()
        }


def _statistics(values: dict, null: str | None, where: str) -> list[float]:
    """A test's ``estimate, ci_low, ci_high, p_value`` (and its null, checked) as a row."""
    rest = dict(values)
    if null is not None and rest.pop("null") != null:
        raise ValueError(f"{where}: the null is not {null!r}")
    row = [rest.pop(name) for name in MODEL_STATISTICS]
    _unknown(rest, where)
    return row


def read_pair_model(stats: xr.Dataset) -> dict:
    """The model across pairs, per phase, of a stats dataset (empty with one pair per phase)."""
    if "pair_model_n_layers" not in stats:
        if "pair_note" in stats:  # written with the variables: one pair, no pair model
            return {}
        return json.loads(stats.attrs.get("pair_model", "{}") or "{}")
    phases = stats.pair_model_phase
    out: dict = {"specification": str(phases.attrs["specification"]).split(",")}
    for phase in phases.values:
        out[str(phase)] = _phase_model(stats.sel(pair_model_phase=phase))
    return out


def _phase_model(row: xr.Dataset) -> dict:
    """One phase's entry of the pair model from its row of the variables."""
    pairs = [str(p) for p, member in zip(row.pair.values, row.pair_model_member.values,
                                         strict=True) if member]  # fmt: skip
    if int(row.pair_model_n_layers) < 0:
        return {"pairs": pairs, "note": str(row.pair_model_note.item())}

    def statistics(values: xr.DataArray) -> dict:
        return {name: float(values.sel(pair_model_statistic=name)) for name in MODEL_STATISTICS}

    difference = {
        "null": row.pair_model_difference_p.attrs["null_hypothesis"],
        "df": [int(v) for v in row.pair_model_difference_df.values],
        "F": float(row.pair_model_difference_f),
        "p_value": float(row.pair_model_difference_p),
    }
    if str(row.pair_model_difference_note.item()):
        difference["note"] = str(row.pair_model_difference_note.item())
    return {
        "pairs": pairs,
        "n_layers": int(row.pair_model_n_layers),
        "projections": int(row.pair_model_projections),
        "overall": {
            **statistics(row.pair_model_overall),
            "null": row.pair_model_overall.attrs["null_hypothesis"],
        },
        "per_pair": {p: statistics(row.pair_model_per_pair.sel(pair=p)) for p in pairs},
        "difference": difference,
    }


# -------------------------------------------------------------------------- joint decision


JOINT_DECISIONS = (
    "too_few_layers",
    "nothing_counted",
    "read_greater",
    "suggestive",
    "write_greater",
    "none",
)


def joint_decision(joint: dict, n_layers: int, alpha: float) -> str:
    """One pair's joint tests decided: one of :data:`JOINT_DECISIONS` (the report words them).

    ``read_greater`` when the median effect is positive and both the median-effect and
    share-of-significant tests reject at `alpha`; ``suggestive`` when only one does;
    ``write_greater`` when the median effect is negative and its one-sided p exceeds
    ``1 − alpha``; ``none`` otherwise.
    """
    if n_layers < MIN_LAYERS:
        return "too_few_layers"
    if "median_effect" not in joint:
        return "nothing_counted"
    positive = joint["median_effect"] > 0
    if positive and joint["p_median_effect"] < alpha and joint["p_share_significant"] < alpha:
        return "read_greater"
    if positive and min(joint["p_median_effect"], joint["p_share_significant"]) < alpha:
        return "suggestive"
    if joint["median_effect"] < 0 and joint["p_median_effect"] > 1 - alpha:
        return "write_greater"
    return "none"
