"""``claims.nc`` (robustness/claims/paper.py): the input checks (a stats.nc by the results' fingerprint, each
extra dataset by the weights hashes of the models it measured), where the extras' claims attach,
the not_tested reasons, and the dataset contract (dims pair × claim, the variables, the claim ids,
the attributes), written and read back as netCDF.

Inputs are hand-built: a results dataset with the contract's variables (levels known by
construction, as in test_claims.py) and small extra datasets carrying the hashes their writers
record (gradients: attrs model_hash and inputs; trajectory: base_hash/aligned_hash variables;
contrastive: attrs base_hash and inputs; rank1: attrs model_hash).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import probes
from robustness.claims.paper import paper_claims
from robustness.claims.registry import CLAIM_IDS, VERDICTS
from robustness.io.datasets import open_dataset, write_dataset
from robustness.stats.statistics import results_fingerprint

MATRICES = ("q", "k", "o", "down")
PATTERN = np.array([0.12, -0.05, 0.08, -0.11, 0.02, 0.07, -0.09, -0.04])
PATTERN = PATTERN - PATTERN.mean()
L, D = 8, 64
PAIRS = ("dpo", "sft", "pre")
PHASES = ("align", "align", "pretrain")


def results(shift=0.0):
    """Three pairs (two alignment, one pretrain) of eight layers over act_cov, unembed × k=4, k=8 ×
    log_isotropic; read level 1.6, write level 0 (+ a pattern), the read matrices at their
    mechanical reference (excess 0 + a small pattern), every hash distinct by pair and role."""
    shape = (len(PAIRS), L, len(MATRICES), 2, 2, 1)
    purity = np.full(shape[:3], 0.2)
    ks = np.broadcast_to(np.array([4, 8]), shape[:5]).astype(np.int64)
    reference = probes.haar_reference("log_isotropic", ks, D, purity[..., None, None])
    level = np.zeros(shape[:5]) + PATTERN[None, :, None, None, None]
    level[:, :, :2] += 1.6 + shift
    rsf = (level + reference)[..., None]
    mechanical = np.full(shape[:5], np.nan)
    mechanical[:, :, :2, 0] = rsf[:, :, :2, 0, :, 0] - 0.1 * PATTERN[None, :, None, None]
    return xr.Dataset(
        {"rsf": (("pair", "layer", "matrix", "construction", "cutoff", "normalisation"), rsf),
         "k": (("pair", "layer", "matrix", "construction", "cutoff"), ks),
         "mechanical_reference": (("pair", "layer", "matrix", "construction", "cutoff"), mechanical),
         "gram_purity": (("pair", "layer", "matrix"), purity),
         "n_layers": ("pair", np.full(3, L)), "d_model": ("pair", np.full(3, D)),
         **{f"{role}_{what}": ("pair", np.asarray([f"{'sha256:' if what == 'hash' else ''}{role}-{p}" for p in PAIRS],
                                                  dtype=object))
            for role in ("base", "aligned") for what in ("hash", "id")},
         "construction_side": ("pair", np.asarray(["base", "base", "aligned"], dtype=object))},
        coords={"pair": list(PAIRS), "phase": ("pair", list(PHASES)), "layer": np.arange(L),
                "matrix": list(MATRICES), "construction": ["act_cov", "unembed"], "cutoff": ["k=4", "k=8"],
                "normalisation": ["log_isotropic"]},
    )  # fmt: skip


def stats_for(res):
    return xr.Dataset(attrs={"kind": "stats", "results_fingerprint": results_fingerprint(res),
                             "per_pair": json.dumps({p: {"joint": {"p_median": 0.5}} for p in PAIRS})})  # fmt: skip


def gradients(model_hash):
    ce = 10.0 + np.zeros((L, 4))
    dpo = ce + 2.0 + PATTERN[:, None]
    return xr.Dataset(
        {"entropy_rank": (("objective", "layer", "site"), np.stack([ce, dpo]))},
        coords={"objective": ["ce", "dpo"], "layer": np.arange(L), "site": ["attn_in", "mlp_in", "o_out", "down_out"]},
        attrs={"kind": "gradients", "model_hash": model_hash,
               "inputs": json.dumps({"model": model_hash, "reference": ""})},
    )  # fmt: skip


def trajectory(start_hash, end_hash):
    """Per-layer pathway means (the statistics' scale): read − write = 1.2 + a pattern against the start."""
    dims = ("reference", "checkpoint", "layer", "construction", "cutoff", "normalisation")
    shape = (2, 1, L, 1, 1, 1)
    read = np.zeros(shape) + 1.2 + PATTERN[None, None, :, None, None, None]
    return xr.Dataset(
        {"read_rsf_layer": (dims, read), "write_rsf_layer": (dims, np.zeros(shape)),
         "base_hash": (("reference", "checkpoint"), np.full((2, 1), start_hash, dtype=object)),
         "aligned_hash": (("reference", "checkpoint"), np.full((2, 1), end_hash, dtype=object))},
        coords={"reference": ["start", "previous"], "checkpoint": ["end"], "layer": np.arange(L),
                "construction": ["act_cov"], "cutoff": ["k=8"], "normalisation": ["isotropic"]},
        attrs={"kind": "trajectory"},
    )  # fmt: skip


def contrastive(base_hash, read=1.6):
    """Three variants: read level `read` on act_cov (at its mechanical reference), write level
    λ·(pattern − 0.2) on unembed (a slope of −0.2 per unit λ), log_isotropic at k = 8 with purities."""
    lams = np.array([0.0, 0.5, 1.0])
    shape = (3, L, len(MATRICES), 2, 1, 1)
    level = np.zeros(shape) + PATTERN[None, :, None, None, None, None]
    level[:, :, :2] += read
    level[:, :, 2:] += (
        lams[:, None, None, None, None, None] * (PATTERN - 0.2)[None, :, None, None, None, None]
    )
    purity = np.full(shape[:3], 0.2)
    reference = probes.haar_reference(
        "log_isotropic", np.full(shape[:5], 8), D, purity[..., None, None]
    )
    rsf = level + reference[..., None]
    mechanical = np.full(shape[:5], np.nan)
    mechanical[:, :, :2, 0] = rsf[:, :, :2, 0, :, 0]
    return xr.Dataset(
        {"rsf": (("lam_label", "layer", "matrix", "construction", "cutoff", "normalisation"), rsf),
         "k": (("lam_label", "layer", "matrix", "construction", "cutoff"), np.full(shape[:5], 8)),
         "gram_purity": (("lam_label", "layer", "matrix"), purity),
         "mechanical_reference": (("lam_label", "layer", "matrix", "construction", "cutoff"), mechanical)},
        coords={"lam_label": [f"lam={x:g}" for x in lams], "lam": ("lam_label", lams), "layer": np.arange(L),
                "matrix": list(MATRICES), "construction": ["act_cov", "unembed"], "cutoff": ["k=8"],
                "normalisation": ["log_isotropic"]},
        attrs={"kind": "contrastive", "base_hash": base_hash, "write_set": "o,down", "read_set": "q,k",
               "write_construction": "unembed", "read_construction": "act_cov", "d_model": D,
               "inputs": json.dumps({"base": base_hash, "lam=0": "sha256:variant-0"})},
    )  # fmt: skip


def rank1(model_hash):
    return xr.Dataset(
        {"p_margin": (("matrix", "control"), [[0.01, 0.01, 0.01], [0.9, 0.9, 0.9]]),
         "p_kl": (("matrix", "control"), [[0.01, 0.01, 0.02], [0.9, 0.9, 0.9]]),
         **{name: (("matrix", "intervention"), [[0.3, 0.0], [0.1, 0.0]])
            for name in ("margin_change", "margin_change_ci_low", "margin_change_ci_high")}},
        coords={"matrix": ["q", "o"], "role": ("matrix", ["read", "write"]), "intervention": ["principal", "random-00"],
                "control": ["random", "matched", "all"]},
        attrs={"kind": "rank1", "model_hash": model_hash, "layer": 4},
    )  # fmt: skip


def claims(res=None, **kwargs):
    return paper_claims(results() if res is None else res, n_resamples=99, **kwargs)


# ---------------------------------------------------------------------------- input checks


def test_stats_from_other_results_is_refused_naming_both_fingerprints():
    """A stats.nc records the fingerprint of the results it was made from; another one (or none) is a
    one-line ValueError naming the stats' fingerprint and these results'. The matching one passes."""
    mine, other = results(), results(shift=0.1)
    with pytest.raises(ValueError) as error:
        claims(mine, stats=stats_for(other))
    message = str(error.value)
    assert "\n" not in message and "re-run rsf stats" in message
    assert results_fingerprint(other) in message and results_fingerprint(mine) in message
    with pytest.raises(ValueError, match="without a fingerprint"):
        claims(mine, stats=xr.Dataset(attrs={"kind": "stats"}))
    out = claims(mine, stats=stats_for(mine))
    assert json.loads(out.attrs["inputs"])["stats"] == results_fingerprint(mine)
    assert json.loads(out.attrs["stats_joint"])["dpo"] == {"p_median": 0.5}


@pytest.mark.parametrize("kind", ["gradients", "trajectory", "contrastive", "rank1"])
def test_an_extra_dataset_of_other_models_is_refused_naming_both_hashes(kind):
    """Each extra dataset must have measured a model of the results (by weights hash, wherever its
    writer records it); one of other models is a one-line ValueError naming its hashes and the results'."""
    foreign = "sha256:someone-else"
    ds = {"gradients": gradients(foreign), "trajectory": trajectory(foreign, "sha256:another"),
          "contrastive": contrastive(foreign), "rank1": rank1(foreign)}[kind]  # fmt: skip
    with pytest.raises(ValueError) as error:
        claims(extras=[ds])
    message = str(error.value)
    assert message.startswith(f"the {kind} dataset measured other models") and "\n" not in message
    assert foreign in message and "sha256:base-dpo" in message and "sha256:aligned-pre" in message


def test_extras_of_unknown_kind_twice_the_same_kind_or_without_hashes_are_refused():
    """rsf claims reads gradients, trajectory, contrastive, rank1, one of each; an extra without any
    recorded hash cannot be matched and says so."""
    with pytest.raises(
        ValueError, match="an extra dataset of kind 'results': rsf claims reads gradients"
    ):
        claims(extras=[xr.Dataset(attrs={"kind": "results"})])
    with pytest.raises(ValueError, match="two gradients datasets given"):
        claims(extras=[gradients("sha256:base-dpo"), gradients("sha256:base-dpo")])
    with pytest.raises(ValueError, match=r"measured other models \(none recorded\)"):
        claims(extras=[gradients("")])


@pytest.mark.parametrize("name", ["isotropy_margin", "graded_margin"])
@pytest.mark.parametrize("value", [0.0, -0.5, float("nan")])
def test_margins_must_be_positive_and_alpha_below_one_half(name, value):
    """A margin ≤ 0 (or NaN) makes equivalence / non-inferiority meaningless: a ValueError naming it;
    α must lie in (0, 0.5) (the equivalence interval is 1 − 2α)."""
    with pytest.raises(ValueError, match=f"`{name}` must be (positive|a finite number)"):
        claims(**{name: value})
    for alpha in (0.0, 0.5, 1.2):
        with pytest.raises(ValueError, match="`alpha` must lie in"):
            claims(alpha=alpha)


# ---------------------------------------------------------------------------- where the claims attach


def test_extras_attach_to_the_alignment_pairs_whose_models_they_measured():
    """Every extra measured dpo's base (trajectory: dpo's base → aligned): its claims are tested on
    dpo; sft (other models) gets not_tested with the command that would test it, naming sft's ids;
    the pretrain pair gets 'a claim about the alignment pairs'. The hand-built extras' verdicts are
    known: all supported."""
    extras = [gradients("sha256:base-dpo"), trajectory("sha256:base-dpo", "sha256:aligned-dpo"),
              contrastive("sha256:base-dpo"), rank1("sha256:base-dpo")]  # fmt: skip
    out = claims(extras=extras)
    dpo, sft, pre = (out.sel(pair=p) for p in PAIRS)
    for claim in ("gradient_anisotropy", "trajectory_consistent", "graded_control", "rank1_causal"):
        assert str(dpo.verdict.sel(claim=claim).values) == "supported", claim
        assert str(sft.verdict.sel(claim=claim).values) == "not_tested"
        assert str(pre.reason.sel(claim=claim).values) == "a claim about the alignment pairs"
    assert str(sft.reason.sel(claim="gradient_anisotropy").values) == (
        "needs gradients.nc of this pair's models: rsf gradients --model base-sft --out gradients.nc, then --extra"
    )
    assert "--checkpoints base-sft,…,aligned-sft" in str(
        sft.reason.sel(claim="trajectory_consistent").values
    )
    # The contrastive variants join read_objective_agnostic: align, the pretrain pair and λ = 0, 0.5, 1.
    agnostic = dpo.sel(claim="read_objective_agnostic")
    assert int(agnostic.n_specifications) == 5
    assert str(agnostic.reason.values).startswith("align: concentration supported, excess +0.000")
    assert "variant lam=0: concentration supported" in str(agnostic.reason.values)
    assert str(agnostic.verdict.values) == "supported"
    assert float(dpo.estimate.sel(claim="graded_control")) == pytest.approx(-0.2)
    inputs = json.loads(out.attrs["inputs"])
    assert (
        inputs["gradients"] == "sha256:base-dpo"
        and inputs["contrastive"] == "sha256:base-dpo,sha256:variant-0"
    )


def test_a_contradicting_contrastive_variant_contradicts_read_objective_agnostic():
    """read_concentration contradicted in one variant (read level −1.6 in every λ) contradicts the claim
    on the pair the contrastive dataset measured, and only there."""
    out = claims(extras=[contrastive("sha256:base-dpo", read=-1.6)])
    assert (
        str(out.verdict.sel(pair="dpo", claim="read_objective_agnostic").values) == "contradicted"
    )
    assert str(out.verdict.sel(pair="sft", claim="read_objective_agnostic").values) == "supported"


# ---------------------------------------------------------------------------- the contract


def test_claims_dataset_contract_round_trips_through_netcdf(tmp_path):
    """dims pair × claim; the variables (strings: verdict, method, reason; numbers: estimate, ci_low,
    ci_high, p_value, reference, robust_share, p_joint; int n_specifications); the claim ids in
    order; verdicts among supported|contradicted|inconclusive|not_tested; attrs kind "claims", the
    rules by claim, both margins, α, the confidence level and the inputs' hashes; written with
    write_dataset and read back unchanged."""
    res = results()
    out = claims(res, stats=stats_for(res), isotropy_margin=0.4, graded_margin=0.3, alpha=0.1)
    path = tmp_path / "claims.nc"
    write_dataset(out, path)
    back = open_dataset(path)
    assert dict(back.sizes) == {"pair": 3, "claim": len(CLAIM_IDS)}
    assert list(back.claim.values) == list(CLAIM_IDS) and list(back.pair.values) == list(PAIRS)
    assert list(back.phase.values) == list(PHASES)
    numbers = ("estimate", "ci_low", "ci_high", "ci_level", "p_value", "p_adjusted", "reference",
               "mechanical_reference", "excess", "margin_needed", "robust_share", "p_joint")  # fmt: skip
    for name in (*numbers, "verdict", "method", "reason", "n_specifications", "robust_n"):
        assert back[name].dims == ("pair", "claim"), name
    for name in numbers:
        assert back[name].dtype == np.float64
    assert np.issubdtype(back.n_specifications.dtype, np.integer)
    assert set(back.verdict.values.ravel()) <= set(VERDICTS)
    for c in ("says", "test", "preferred"):
        assert back[c].dims == ("claim",)
    attrs = back.attrs
    assert attrs["kind"] == "claims"
    assert set(json.loads(attrs["rules"])) == set(CLAIM_IDS)
    assert (attrs["isotropy_margin"], attrs["graded_margin"], attrs["alpha"]) == (0.4, 0.3, 0.1)
    assert attrs["confidence_level"] == pytest.approx(0.8)  # 1 − 2α: the decisions' intervals
    assert attrs["margin"] == 0.5
    assert json.loads(attrs["inputs"]) == {
        "results": results_fingerprint(res),
        "stats": results_fingerprint(res),
    }
    assert attrs["results_fingerprint"] == results_fingerprint(res)
    assert json.loads(attrs["construction_side"]) == {
        "dpo": "base",
        "sft": "base",
        "pre": "aligned",
    }
    np.testing.assert_array_equal(back.verdict.values, out.verdict.values)
    np.testing.assert_allclose(back.estimate.values, out.estimate.values, equal_nan=True)


def test_the_margins_reach_the_rules():
    """The margins and α given are the ones the rules use: a write level 0.3 with a tight interval
    is equivalent at margin 0.5, contradicted at 0.1 (its interval wholly above it)."""
    res = results()
    rsf = res.rsf.values.copy()
    rsf[:, :, 2:] += 0.3 - PATTERN[None, :, None, None, None, None] * 0.9
    res = res.assign(rsf=(res.rsf.dims, rsf))
    wide = claims(res, isotropy_margin=0.5).verdict.sel(pair="dpo", claim="write_isotropy")
    narrow = claims(res, isotropy_margin=0.1).verdict.sel(pair="dpo", claim="write_isotropy")
    assert (str(wide.values), str(narrow.values)) == ("supported", "contradicted")


def test_missing_inputs_are_not_tested_with_the_reason():
    """Without extras every mechanism claim is not_tested on each alignment pair, naming the input and
    the command; without a pretrain pair pretraining_writes_prediction says it needs one."""
    out = claims()
    for claim, kind in (("gradient_anisotropy", "gradients"), ("trajectory_consistent", "trajectory"),
                        ("graded_control", "contrastive"), ("rank1_causal", "rank1")):  # fmt: skip
        row = out.sel(pair="dpo", claim=claim)
        assert str(row.verdict.values) == "not_tested"
        assert str(row.reason.values).startswith(f"needs {kind}.nc of this pair's models: rsf ")
    align_only = claims(results().sel(pair=["dpo", "sft"]))
    reason = str(align_only.reason.sel(pair="dpo", claim="pretraining_writes_prediction").values)
    assert "needs a pair with phase = pretrain" in reason
    assert (
        str(out.verdict.sel(pair="dpo", claim="pretraining_writes_prediction").values)
        != "not_tested"
    )
