"""``ds.robustness`` (robustness.accessor) and :class:`Specification`: one reader of what datasets hold.

Null hypothesis: the accessor returns exactly what the dataset stores (coordinates, attributes,
variables), enumerated by brute force here; it adds nothing and loses nothing. Assumption: the
datasets are built by hand with the attributes rsf writes (the same keys and formats), so each
expectation is written independently of the accessor's code.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

import robustness
import robustness.accessor  # noqa: F401  (registers ds.robustness)
from robustness.io.datasets import write_dataset
from robustness.settings.specification import DEFAULT_PREFERRED, Specification
from robustness.stats.summaries import JOINT_DECISIONS, joint_decision

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_=.0123456789|", min_size=1, max_size=12)


@given(names, names, names)
def test_a_specification_reads_back_from_either_written_form(c, k, n):
    spec = Specification(c, k, n)
    assert Specification.parse(str(spec)) == spec == (c, k, n)
    assert Specification.parse(spec.attribute()) == spec
    assert str(spec) == f"{c}/{k}/{n}"


@pytest.mark.parametrize("text", ["act_cov/k=8", "a,b", "", "a//b", "a/b/c/d"])
def test_a_malformed_specification_is_refused(text):
    with pytest.raises(ValueError, match="not a specification"):
        Specification.parse(text)


def _stats(per_pair: dict, alpha=0.05) -> xr.Dataset:
    constructions, cutoffs, norms = (
        ["act_cov", "unembed"],
        ["k=4", "pr"],
        ["fraction", "log_isotropic"],
    )
    shape = (len(per_pair), 2, 2, 2)
    return xr.Dataset(
        {"asymmetry": (("pair", "construction", "cutoff", "normalisation"), np.zeros(shape))},
        coords={
            "pair": list(per_pair),
            "construction": constructions,
            "cutoff": cutoffs,
            "normalisation": norms,
        },  # fmt: skip
        attrs={
            "kind": "stats",
            "alpha": alpha,
            "read_set": "q,k",
            "write_set": "o,down",
            "preferred_specification": "act_cov,k=4,log_isotropic",
            "per_pair": json.dumps(per_pair),
            "pair_model": "{}",
        },  # fmt: skip
    )


def test_the_accessor_reads_a_stats_dataset_as_stored(tmp_path):
    joint = {"median_effect": 0.4, "p_median_effect": 0.01, "p_share_significant": 0.02}
    per_pair = {"dpo": {"n_layers": 12, "joint": joint}, "few": {"n_layers": 3}}
    write_dataset(_stats(per_pair), tmp_path / "s.nc")
    stats = robustness.load(tmp_path / "s.nc", "stats")
    assert stats.robustness.kind == "stats"
    expected = [("act_cov", "k=4", "fraction"), ("act_cov", "k=4", "log_isotropic"),
                ("act_cov", "pr", "fraction"), ("act_cov", "pr", "log_isotropic"),
                ("unembed", "k=4", "fraction"), ("unembed", "k=4", "log_isotropic"),
                ("unembed", "pr", "fraction"), ("unembed", "pr", "log_isotropic")]  # fmt: skip
    assert stats.robustness.specifications() == expected
    assert stats.robustness.preferred == ("act_cov", "k=4", "log_isotropic")
    assert (stats.robustness.read_set, stats.robustness.write_set) == (("q", "k"), ("o", "down"))
    assert stats.robustness.per_pair() == per_pair and stats.robustness.pair_model() == {}
    verdict = stats.robustness.verdict()
    assert verdict.to_dict() == {"dpo": "read_greater", "few": "too_few_layers"}
    frame = stats.robustness.to_frame()
    assert len(frame) == 2 * 8 and set(frame.variable) == {"asymmetry"}


@given(
    st.floats(-2, 2),
    st.floats(0, 1),
    st.floats(0, 1),
    st.integers(1, 40),
)
def test_the_joint_decision_follows_its_stated_rule(median, p_median, p_share, n_layers):
    """Brute-force restatement of the documented rule, branch by branch."""
    joint = {"median_effect": median, "p_median_effect": p_median, "p_share_significant": p_share}
    decision = joint_decision(joint, n_layers, 0.05)
    assert decision in JOINT_DECISIONS
    if n_layers < 4:
        assert decision == "too_few_layers"
    elif median > 0 and p_median < 0.05 and p_share < 0.05:
        assert decision == "read_greater"
    elif median > 0 and (p_median < 0.05 or p_share < 0.05):
        assert decision == "suggestive"
    elif median < 0 and p_median > 0.95:
        assert decision == "write_greater"
    else:
        assert decision == "none"


def test_claims_verdicts_and_the_notebook_view_escape_labels():
    label = '<img src=x onerror="alert(1)">'
    claims = xr.Dataset(
        {"verdict": (("pair", "claim"), np.array([["supported", "not_tested"]], dtype=object))},
        coords={"pair": [label], "claim": ["read_concentration", "write_isotropy"]},
        attrs={"kind": "claims"},
    )
    table = claims.robustness.verdict()
    assert table.loc[label, "write_isotropy"] == "not_tested"
    shown = claims.robustness._repr_html_()
    assert "<img" not in shown and "&lt;img" in shown


def test_a_results_dataset_has_no_verdict_and_reads_its_notes():
    results = xr.Dataset(
        {"rsf": (("pair",), [1.0])},
        coords={"pair": ["a"]},
        attrs={"kind": "results", "notes": json.dumps(["a: loaded whole"])},
    )
    assert results.robustness.notes() == ["a: loaded whole"]
    with pytest.raises(ValueError, match="holds no verdict"):
        results.robustness.verdict()
    with pytest.raises(ValueError, match="no specifications"):
        results.robustness.specifications()


def test_the_default_preferred_specification_is_the_papers():
    assert str(DEFAULT_PREFERRED) == "act_cov/k=8/log_isotropic"
    assert list(itertools.chain(DEFAULT_PREFERRED)) == ["act_cov", "k=8", "log_isotropic"]
