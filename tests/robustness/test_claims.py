"""The level claims of `rsf claims` (robustness/claims.py): each rule on hand-built results whose
per-layer levels are known, the equivalence test against its closed form, and planted pairs.

Hand-built results put the level ``ℓ_l`` (log2 ratio minus the Haar reference) where a test wants
it: the stored log2 ratio is ``ℓ_l + probes.haar_reference(k, d, purity)``, so a rule that forgot
the reference, or took the wrong matrices, layers or specification, reads other numbers. The EWC
test is recomputed here from its definition (cosine projections, ``scipy.stats.t``), not through
robustness.layers.

Planted pairs are tiny random llama models (d = 64, 8 layers, so k = 8 ≤ d/8 is eligible and the
EWC test has K = 2 degrees of freedom) with deltas built in the test and swept by the real
``rsf sweep`` on a pre-tokenised corpus.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import xarray as xr
from rsf_commands import run_cli
from scipy import stats
from tiny_models import VOCAB, char_tokenizer, random_model

import probes
from robustness import claims
from robustness.claims import CLAIM_IDS, CLAIMS, Levels, level_claims
from robustness.dataset import open_dataset

MATRICES = ("q", "k", "o", "down")
D = 64


# ---------------------------------------------------------------------------- helpers


def ewc(values, confidence_level):
    """The EWC test from its definition: ``(mean, half-width, ω̂, K)`` of the layer mean of `values`."""
    d = np.asarray(values, dtype=np.float64)
    n = d.size
    k = max(2, n // 8)
    position = (np.arange(1, n + 1) - 0.5) / n
    z = [
        math.sqrt(2 / n) * float(np.sum(d * np.cos(math.pi * j * position)))
        for j in range(1, k + 1)
    ]
    omega = math.sqrt(np.mean(np.square(z)))
    half = stats.t.ppf(0.5 + confidence_level / 2, k) * omega / math.sqrt(n)
    return float(d.mean()), float(half), omega, k


def one_sided_p(values, null_mean=0.0):
    """``(p_greater, p_less)`` of the EWC t statistic against `null_mean`."""
    mean, _, omega, k = ewc(values, 0.95)
    t = (mean - null_mean) * math.sqrt(len(values)) / omega
    return float(stats.t.sf(t, k)), float(stats.t.cdf(t, k))


def hand_results(
    level,
    *,
    pairs=("pair",),
    phases=None,
    n_layers=8,
    d=D,
    constructions=("act_cov", "unembed"),
    cutoffs=("k=4", "k=8"),
    normalisations=("log_isotropic", "isotropic"),
    k_values=None,
    layers=None,
):
    """A results dataset (the contract's variables) whose levels are ``level(pair, construction, cutoff, matrix)``.

    `level` returns the per-layer level (or a scalar); the stored probe is level + Haar
    reference (log2 ratio; ``isotropic`` holds 2**it). Gram purities differ by layer and matrix,
    so the references do too. `k_values` maps a cutoff to its k per layer (default: k=N's N);
    `layers` gives a pair fewer layers (NaN beyond, as build_dataset writes them).
    """
    phases = phases or ["align"] * len(pairs)
    shape = (len(pairs), n_layers, len(MATRICES), len(constructions), len(cutoffs))
    rsf = np.full((*shape, len(normalisations)), np.nan)
    ks = np.full(shape, -1, dtype=np.int64)
    purity = np.empty(shape[:3])
    for p, pair in enumerate(pairs):
        own = (layers or {}).get(pair, n_layers)
        for m, matrix in enumerate(MATRICES):
            purity[p, :, m] = 1.5 / d + 0.05 * (1 + np.arange(n_layers) % 3) + 0.02 * m
            for c, construction in enumerate(constructions):
                for u, cutoff in enumerate(cutoffs):
                    k = np.asarray((k_values or {}).get(cutoff, int(cutoff[2:])), dtype=np.int64)
                    ks[p, :own, m, c, u] = np.broadcast_to(k, (n_layers,))[:own]
                    reference = probes.haar_reference(
                        "log_isotropic", ks[p, :, m, c, u], d, purity[p, :, m]
                    )
                    target = np.broadcast_to(
                        np.asarray(level(pair, construction, cutoff, matrix), float), (n_layers,)
                    )
                    s = (target + reference)[:own]
                    for n, normalisation in enumerate(normalisations):
                        rsf[p, :own, m, c, u, n] = s if normalisation == "log_isotropic" else 2.0**s
        purity[p, own:] = np.nan
    return xr.Dataset(
        {
            "rsf": (("pair", "layer", "matrix", "construction", "cutoff", "normalisation"), rsf),
            "k": (("pair", "layer", "matrix", "construction", "cutoff"), ks),
            "gram_purity": (("pair", "layer", "matrix"), purity),
            "n_layers": ("pair", np.asarray([(layers or {}).get(p, n_layers) for p in pairs], dtype=np.int64)),
            "d_model": ("pair", np.full(len(pairs), d, dtype=np.int64)),
            "base_hash": ("pair", np.asarray([f"sha256:base-{p}" for p in pairs], dtype=object)),
            "aligned_hash": ("pair", np.asarray([f"sha256:aligned-{p}" for p in pairs], dtype=object)),
            "base_id": ("pair", np.asarray([f"base-{p}" for p in pairs], dtype=object)),
            "aligned_id": ("pair", np.asarray([f"aligned-{p}" for p in pairs], dtype=object)),
        },
        coords={
            "pair": ("pair", np.asarray(pairs, dtype=object)),
            "phase": ("pair", np.asarray(phases, dtype=object)),
            "layer": np.arange(n_layers),
            "matrix": ("matrix", np.asarray(MATRICES, dtype=object)),
            "pathway": ("matrix", np.asarray(["read", "read", "write", "write"], dtype=object)),
            "construction": ("construction", np.asarray(constructions, dtype=object)),
            "cutoff": ("cutoff", np.asarray(cutoffs, dtype=object)),
            "normalisation": ("normalisation", np.asarray(normalisations, dtype=object)),
        },
    )  # fmt: skip


# A zero-mean pattern over 8 layers with a known ω̂ (the cosines see it): noise of the tests.
PATTERN = np.array([0.12, -0.05, 0.08, -0.11, 0.02, 0.07, -0.09, -0.04])
PATTERN = PATTERN - PATTERN.mean()


def by_pathway(read=0.0, write=0.0, *, construction=None):
    """A level function: `read` on q, k and `write` on o, down (optionally only at one construction)."""

    def level(pair, c, cutoff, matrix):
        if construction is not None and c != construction:
            return 0.0
        return read if matrix in ("q", "k") else write

    return level


def outcomes(results, **kwargs):
    return level_claims(results, n_resamples=199, **kwargs)


# ---------------------------------------------------------------------------- the claim table


def test_claim_table_ids_and_verdict_names():
    """The claim ids and verdict names are the claims.nc contract (docs/design.md §4), in order."""
    assert CLAIM_IDS == (
        "read_concentration", "write_isotropy", "read_write_asymmetry", "pretraining_writes_prediction",
        "read_objective_agnostic", "gradient_anisotropy", "trajectory_consistent", "graded_control",
        "rank1_causal",
    )  # fmt: skip
    assert claims.VERDICTS == ("supported", "contradicted", "inconclusive", "not_tested")
    assert all(c.says and c.test and c.preferred for c in CLAIMS)


# ---------------------------------------------------------------------------- levels


def test_level_is_log2_ratio_minus_the_haar_reference_by_hand(planted):
    """Levels.level on a real results dataset equals, by hand, the mean over the matrices of
    ``log2(isotropic ratio) − probes.haar_reference(k, d, purity)`` at each layer, from both
    normalisations (``log_isotropic`` is already log2); reference() is that reference's mean."""
    results = planted["results"]
    lv = Levels(results, "read")
    d = int(results.d_model.sel(pair="read"))
    for construction, cutoff in (("act_cov", "k=8"), ("unembed", "k=4")):
        cell = results.sel(pair="read", construction=construction, cutoff=cutoff)
        for matrices in (("q", "k"), ("o", "down"), ("q",)):
            expected = []
            for m in matrices:
                ratio = cell.rsf.sel(matrix=m, normalisation="isotropic").values
                k = cell.k.sel(matrix=m).values
                reference = probes.haar_reference(
                    "isotropic", k, d, cell.gram_purity.sel(matrix=m).values
                )
                expected.append(np.log2(ratio) - reference)
            expected = np.mean(expected, axis=0)
            for normalisation in ("isotropic", "log_isotropic"):
                got = lv.level((construction, cutoff, normalisation), matrices)
                np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
            references = [
                probes.haar_reference(
                    "isotropic",
                    cell.k.sel(matrix=m).values,
                    d,
                    cell.gram_purity.sel(matrix=m).values,
                )
                for m in matrices
            ]
            assert lv.reference((construction, cutoff, "log_isotropic"), matrices) == pytest.approx(
                np.mean(references)
            )
    assert np.all(
        np.asarray(references) < 0
    )  # the log is concave: a low-rank delta's reference is below 0


def test_levels_cut_a_shorter_pair_and_refuse_results_without_gram_purity():
    """A pair with fewer layers is tested over its own layers only (no NaN tail), and results written
    before the Haar references existed are refused in one line naming the cure."""
    results = hand_results(lambda *a: 1.0, pairs=("long", "short"), layers={"short": 5})
    assert Levels(results, "short").level(
        ("act_cov", "k=8", "log_isotropic"), ("q", "k")
    ).shape == (5,)
    np.testing.assert_allclose(
        Levels(results, "short").level(("act_cov", "k=8", "log_isotropic"), ("q", "k")), 1.0
    )
    with pytest.raises(ValueError, match="no gram_purity.*re-run rsf sweep"):
        Levels(results.drop_vars("gram_purity"), "long")


def test_eligible_cutoffs_need_k_at_most_d_over_8_at_every_layer():
    """``k ≤ d/8`` at every layer and matrix: k = 8 at d = 64 is eligible, k = 9 at one layer is not,
    an undefined k (−1) is not."""
    one_high = np.full(8, 8)
    one_high[3] = 9
    undefined = np.full(8, 8)
    undefined[0] = -1
    results = hand_results(
        lambda *a: 0.0, cutoffs=("k=8", "k=9", "k=7"), k_values={"k=9": one_high, "k=7": undefined}
    )
    lv = Levels(results, "pair")
    assert lv.eligible_k(("unembed", "k=8", "log_isotropic"), ("o", "down"))
    assert not lv.eligible_k(("unembed", "k=9", "log_isotropic"), ("o", "down"))
    assert not lv.eligible_k(("unembed", "k=7", "log_isotropic"), ("o", "down"))


# ---------------------------------------------------------------------------- read_concentration


@pytest.mark.parametrize(
    "mean, verdict", [(0.6, "supported"), (-0.6, "contradicted"), (0.0, "inconclusive")]
)
def test_read_concentration_one_sided_rule_against_the_closed_form(mean, verdict):
    """H0: mean ℓ = 0 for the read set (q, k) on act_cov, one-sided at α = 0.05. The estimate,
    interval and p-value equal the EWC test computed by hand from the per-layer level; the write
    set's values and the unembedding construction do not enter."""
    read = mean + PATTERN
    results = hand_results(lambda p, c, u, m: read if (m in ("q", "k") and c == "act_cov") else 5.0)
    out = outcomes(results)["pair"]["read_concentration"]
    estimate, half, _, _ = ewc(read, 0.95)
    p_greater, _ = one_sided_p(read)
    assert out.verdict == verdict
    assert out.estimate == pytest.approx(estimate, abs=1e-12)
    assert (out.ci_low, out.ci_high) == pytest.approx((estimate - half, estimate + half), abs=1e-12)
    assert out.p_value == pytest.approx(p_greater, rel=1e-9)
    assert out.n_specifications == 2  # k=4, k=8; isotropic and log_isotropic merged (one quantity)
    assert "act_cov/k=8/log_isotropic" in out.method


def test_read_concentration_compares_with_the_reference_not_with_zero():
    """A low-rank delta whose log2 ratio equals its (negative) Haar reference at every layer has level 0:
    inconclusive, although every raw log2 ratio is below 0 (a test against 0 would contradict)."""
    results = hand_results(lambda *a: PATTERN * 0.1)
    assert np.all(results.rsf.sel(pair="pair", construction="act_cov", cutoff="k=4", normalisation="log_isotropic")
                  .sel(matrix=["q", "k"]).values < 0)  # fmt: skip
    assert outcomes(results)["pair"]["read_concentration"].verdict == "inconclusive"


def test_verdict_at_the_preferred_specification_and_robust_share():
    """The verdict is the preferred specification's (act_cov, k=8) even when another disagrees;
    robust_share is the share of eligible specifications agreeing with it, the joint p-value is a
    Monte Carlo p in (0, 1]."""
    results = hand_results(lambda p, c, u, m: (0.6 if u == "k=8" else -0.6) + PATTERN)
    out = outcomes(results)["pair"]["read_concentration"]
    assert out.verdict == "supported"
    assert out.robust_share == 0.5 and out.n_specifications == 2
    assert 1 / 200 <= out.p_joint <= 1


def test_preferred_specification_found_in_an_isotropic_only_sweep():
    """A sweep with ``isotropic`` but no ``log_isotropic`` (the experiments' grid) holds the same log2
    ratio: the verdict is still taken at k=8, not at the first specification (k=4)."""
    results = hand_results(
        lambda p, c, u, m: (0.6 if u == "k=8" else -0.6) + PATTERN, normalisations=("isotropic",)
    )
    out = outcomes(results)["pair"]
    assert out["read_concentration"].verdict == "supported"
    assert "act_cov/k=8/isotropic" in out["read_concentration"].method
    assert "unembed/k=8/isotropic" in out["write_isotropy"].method


def test_joint_p_is_small_when_every_specification_is_strong_and_nan_for_one():
    """Stouffer's Z under one set of rotations: with every specification far above 0 the observed Z
    is beyond almost every rotation's ((1 + b)/(1 + B) ≤ 0.05); one specification has no joint test."""
    strong = hand_results(lambda *a: 3.0 + PATTERN)
    assert outcomes(strong)["pair"]["read_concentration"].p_joint <= 0.05
    single = hand_results(lambda *a: 3.0 + PATTERN, cutoffs=("k=8",))
    assert np.isnan(outcomes(single)["pair"]["read_concentration"].p_joint)


def test_too_few_layers_and_missing_constructions():
    """Three layers are too few for the EWC test (4 needed): inconclusive with that reason, never a
    verdict. No activation construction in the sweep: not_tested, saying which are needed."""
    short = outcomes(hand_results(lambda *a: 3.0, n_layers=3))["pair"]
    for claim in ("read_concentration", "write_isotropy", "read_write_asymmetry"):
        assert short[claim].verdict == "inconclusive"
        assert "3 layers: too few" in short[claim].reason
    no_act = outcomes(hand_results(lambda *a: 1.0, constructions=("unembed",)))["pair"]
    assert no_act["read_concentration"].verdict == "not_tested"
    assert "act_cov, act_moment, act_cov_aligned" in no_act["read_concentration"].reason
    assert no_act["read_write_asymmetry"].verdict == "not_tested"


def test_an_all_zero_write_delta_is_not_tested_not_a_crash():
    """A pair whose write matrices did not change (say a q, v adapter) has NaN write levels (an all-zero
    delta has no direction): write_isotropy and read_write_asymmetry are not_tested with that reason,
    read_concentration still tested. (Before the fix: an IndexError and a wrong 'no k ≤ d/8' reason.)"""
    results = hand_results(lambda *a: 0.6 + PATTERN)
    rsf = results.rsf.values.copy()
    rsf[:, :, 2:] = np.nan  # o, down
    out = outcomes(results.assign(rsf=(results.rsf.dims, rsf)))["pair"]
    assert out["read_concentration"].verdict == "supported"
    for claim in ("write_isotropy", "read_write_asymmetry"):
        assert out[claim].verdict == "not_tested"
        assert "undefined at some layer in every specification" in out[claim].reason


# ---------------------------------------------------------------------------- write_isotropy (TOST)


def test_write_isotropy_switches_exactly_where_the_90_interval_crosses_the_margin():
    """Equivalence by two one-sided tests at α = 0.05: supported iff the 90% EWC interval of the
    write level lies inside ±0.5, contradicted iff wholly outside, inconclusive otherwise. ω̂ does not
    depend on the mean (the cosines are orthogonal to the constant), so shifting the level moves the
    interval rigidly and the verdict must switch at the hand-computed means ±(margin − half),
    ±(margin + half). The TOST p is the larger one-sided p against ±margin, = α at the boundary."""
    margin, alpha = 0.5, 0.05
    _, half, _, _ = ewc(PATTERN, 1 - 2 * alpha)
    assert 0 < half < margin
    inner, outer, eps = margin - half, margin + half, 1e-6
    expected = [
        (inner - eps, "supported"), (inner + eps, "inconclusive"), (-inner + eps, "supported"),
        (-inner - eps, "inconclusive"), (outer - eps, "inconclusive"), (outer + eps, "contradicted"),
        (-outer - eps, "contradicted"), (0.0, "supported"),
    ]  # fmt: skip
    for shift, verdict in expected:
        write = shift + PATTERN
        results = hand_results(
            lambda p, c, u, m, w=write: w if (m in ("o", "down") and c == "unembed") else 9.0
        )
        out = outcomes(results, isotropy_margin=margin, alpha=alpha)["pair"]["write_isotropy"]
        assert out.verdict == verdict, shift
        assert (out.ci_low, out.ci_high) == pytest.approx((shift - half, shift + half), abs=1e-9)
        p_tost = max(one_sided_p(write, -margin)[0], one_sided_p(write, margin)[1])
        assert out.p_value == pytest.approx(p_tost, rel=1e-7, abs=1e-12)
        assert (out.p_value < alpha) == (verdict == "supported")
    boundary = hand_results(lambda p, c, u, m: inner + PATTERN if m in ("o", "down") else 0.0)
    assert outcomes(boundary)["pair"]["write_isotropy"].p_value == pytest.approx(alpha, rel=1e-6)


def test_write_isotropy_margin_scales_the_verdict_and_a_wide_interval_is_not_support():
    """A level of 0.3 with a tight interval is supported at margin 0.5 and contradicted at 0.1; a noisy
    level around 0 (not significantly different from 0) whose interval straddles ±0.5 is inconclusive:
    a non-significant difference is never support."""
    tight = hand_results(lambda p, c, u, m: 0.3 + 0.1 * PATTERN)
    assert outcomes(tight, isotropy_margin=0.5)["pair"]["write_isotropy"].verdict == "supported"
    assert outcomes(tight, isotropy_margin=0.1)["pair"]["write_isotropy"].verdict == "contradicted"
    wide = hand_results(lambda p, c, u, m: 12 * PATTERN)
    out = outcomes(wide)["pair"]["write_isotropy"]
    assert one_sided_p(12 * PATTERN)[0] > 0.05 and out.ci_low < -0.5 < 0.5 < out.ci_high
    assert out.verdict == "inconclusive"


def test_write_isotropy_counts_only_eligible_cutoffs():
    """k = 16 > d/8 = 8 is not eligible (the ratio could not move eightfold): it does not count and
    alone it leaves the claim not_tested, with the bound in the reason."""
    results = hand_results(
        lambda p, c, u, m: (5.0 if u == "k=16" else 0.0) + 0.1 * PATTERN,
        cutoffs=("k=4", "k=8", "k=16"),
    )
    out = outcomes(results)["pair"]["write_isotropy"]
    assert out.verdict == "supported" and out.n_specifications == 2 and out.robust_share == 1.0
    only = outcomes(hand_results(lambda *a: 0.0, cutoffs=("k=16",)))["pair"]["write_isotropy"]
    assert only.verdict == "not_tested" and "k ≤ d/8 = 8" in only.reason


# ---------------------------------------------------------------------------- read_write_asymmetry


def test_read_write_asymmetry_is_the_paired_difference_of_levels():
    """H0: mean (read level on act_cov − write level on unembed) = 0, one-sided > 0. Read 1.0 and
    write 0.4 at the matched cutoff give the difference 0.6 with the hand-computed interval; each
    side against its own reference (read 1.0 on unembed or write 0.4 on act_cov do not enter)."""
    read, write = 1.0 + PATTERN, 0.4 - PATTERN[::-1]

    def level(p, c, u, m):
        if m in ("q", "k"):
            return read if c == "act_cov" else -7.0
        return write if c == "unembed" else 7.0

    out = outcomes(hand_results(level))["pair"]["read_write_asymmetry"]
    estimate, half, _, _ = ewc(read - write, 0.95)
    assert out.verdict == "supported"
    assert out.estimate == pytest.approx(0.6, abs=1e-12) and out.reference == 0.0
    assert (out.ci_low, out.ci_high) == pytest.approx((estimate - half, estimate + half), abs=1e-9)
    assert out.p_value == pytest.approx(one_sided_p(read - write)[0], rel=1e-7)
    flipped = outcomes(hand_results(lambda p, c, u, m: -level(p, c, u, m)))["pair"][
        "read_write_asymmetry"
    ]
    assert flipped.verdict == "contradicted"


# ---------------------------------------------------------------------------- pretraining, objective


def two_phases(pretrain_write, align_write, *, pretrain_read=0.6, layers=None):
    def level(pair, c, u, m):
        if m in ("q", "k"):
            return pretrain_read + PATTERN if pair == "pre" else 0.6 + PATTERN
        return (
            pretrain_write + 0.5 * PATTERN if pair == "pre" else align_write + 0.5 * PATTERN[::-1]
        )

    return hand_results(level, pairs=("dpo", "pre"), phases=["align", "pretrain"], layers=layers)


@pytest.mark.parametrize(
    "pretrain_write, align_write, verdict",
    [
        (1.0, 0.0, "supported"),
        (1.0, 2.0, "contradicted"),
        (-1.0, -2.0, "contradicted"),
        (0.05, 0.0, "inconclusive"),
    ],
)
def test_pretraining_writes_prediction_needs_both_one_sided_tests(
    pretrain_write, align_write, verdict
):
    """Two one-sided EWC tests: the pretrain pair's write level on unembed/k=8 > 0 and its excess
    over the alignment pair's, paired over layers, > 0. Supported when both reject, contradicted when
    either opposite test does (the pretrain level below 0, or below the alignment pair's). Stored on
    the alignment pair; the estimate is the paired difference, p the larger one-sided p."""
    out = outcomes(two_phases(pretrain_write, align_write))
    row = out["dpo"]["pretraining_writes_prediction"]
    assert row.verdict == verdict
    assert row.estimate == pytest.approx(pretrain_write - align_write, abs=1e-12)
    own = pretrain_write + 0.5 * PATTERN
    paired = own - (align_write + 0.5 * PATTERN[::-1])
    assert row.p_value == pytest.approx(max(one_sided_p(own)[0], one_sided_p(paired)[0]))
    assert "'pre'" in row.method
    assert out["pre"]["pretraining_writes_prediction"].verdict == "not_tested"
    assert (
        out["pre"]["pretraining_writes_prediction"].reason
        == "stored on the alignment pair it compares"
    )


def test_pretraining_claim_without_a_comparable_pretrain_pair():
    """No pretrain pair: not_tested, saying how to add one. A pretrain pair with other layers cannot be
    paired over layers: not_tested, naming its layers (not 'needs a pair with phase = pretrain');
    read_objective_agnostic still compares its verdict (every phase present)."""
    alone = outcomes(hand_results(lambda *a: 0.0))["pair"]
    assert alone["pretraining_writes_prediction"].verdict == "not_tested"
    assert "needs a pair with phase = pretrain" in alone["pretraining_writes_prediction"].reason
    assert (
        "needs a pair with phase = pretrain or a contrastive dataset"
        in alone["read_objective_agnostic"].reason
    )
    other = outcomes(two_phases(1.0, 0.0, layers={"pre": 6}))["dpo"]
    assert other["pretraining_writes_prediction"].verdict == "not_tested"
    assert (
        "no pretrain pair with this pair's 8 layers (pretrain: pre (6))"
        in other["pretraining_writes_prediction"].reason
    )
    assert other["read_objective_agnostic"].verdict == "supported"


@pytest.mark.parametrize(
    "pretrain_read, verdict", [(0.6, "supported"), (-0.6, "contradicted"), (0.0, "inconclusive")]
)
def test_read_objective_agnostic_combines_the_phases(pretrain_read, verdict):
    """read_concentration's rule in both phases: supported in both → supported; contradicted in any →
    contradicted; otherwise inconclusive. The reason lists each phase's verdict."""
    row = outcomes(two_phases(1.0, 0.0, pretrain_read=pretrain_read))["dpo"][
        "read_objective_agnostic"
    ]
    assert row.verdict == verdict
    assert row.reason.startswith("align: supported; pretrain: ")
    assert row.n_specifications == 2


def test_agnostic_claim_with_contrastive_variants():
    """The variants (robustness.claims_mechanism.variant_read_levels) count as phases: one inconclusive
    variant makes it inconclusive, one contradicted one contradicted."""
    ok = claims.Outcome("supported")
    assert claims._agnostic_claim({"align": ok}, {"variant lam=0": ok}).verdict == "supported"
    assert (
        claims._agnostic_claim(
            {"align": ok}, {"variant lam=0": claims.Outcome("inconclusive")}
        ).verdict
        == "inconclusive"
    )
    mixed = {
        "variant lam=0": claims.Outcome("inconclusive"),
        "variant lam=1": claims.Outcome("contradicted"),
    }
    assert claims._agnostic_claim({"align": ok}, mixed).verdict == "contradicted"
    assert claims._agnostic_claim({"align": ok}).verdict == "not_tested"


# ---------------------------------------------------------------------------- planted pairs


def _plant_deltas(base, ids, kind: str, seed: int):
    """``aligned − base`` for every canonical matrix of `base`, each of norm 5% of its weight.

    ``read``: q and k get ``ΔW = D X_rᵀ/T`` with ``X_r`` the activations the matrix reads (hooked in
    the base model on the probe corpus), centred and projected on their covariance's top 4
    eigenvectors, ``D`` Gaussian; ``write``: o and down get ``ΔW = U_r Dᵀ`` with ``U_r`` the top 4
    unembedding directions (probes.prediction_subspaces) on the output side; every other matrix
    (and every matrix of ``null``) a Gaussian delta.
    """
    generator = torch.Generator().manual_seed(seed)
    weights = probes.canonical_weights(base)
    n_layers = probes.model_dims(base).n_layers
    seen = {}
    if kind == "read":
        keys = [(layer, "attn_in") for layer in range(n_layers)]

        def keep(key, tensor):
            seen.setdefault(key, []).append(tensor.detach().reshape(-1, tensor.shape[-1]).double())

        with torch.no_grad(), probes.site_hooks(base, keys, keep):
            base(torch.as_tensor(ids))
    unembed = torch.as_tensor(probes.prediction_subspaces(base)["unembed"].basis[:, :4])
    deltas = {}
    for (layer, matrix), w in weights.items():
        if kind == "read" and matrix in ("q", "k"):
            x = torch.cat(seen[(layer, "attn_in")])
            x = x - x.mean(dim=0)
            _, vectors = torch.linalg.eigh(x.T @ x / x.shape[0])
            top = vectors[:, -4:]
            x_r = x @ top @ top.T  # [T, d]
            delta = (
                torch.randn((w.shape[0], x.shape[0]), generator=generator, dtype=torch.float64)
                @ x_r
                / x.shape[0]
            )
        elif kind == "write" and matrix in ("o", "down"):
            delta = unembed @ torch.randn((4, w.shape[1]), generator=generator, dtype=torch.float64)
        else:
            delta = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        deltas[(layer, matrix)] = (delta * (0.05 * float(w.norm()) / float(delta.norm()))).to(
            w.dtype
        )
    return deltas


def _with(model, deltas, sign=1.0):
    out = copy.deepcopy(model)
    with torch.no_grad():
        for key, w in probes.canonical_weights(out).items():
            w.add_(sign * deltas[key])  # canonical weights are views of the llama's parameters
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory, one_thread):
    """Four pairs on one tiny llama base (d = 64, 8 layers), swept by `rsf sweep --config` over
    act_cov, unembed, random × k=4, k=8 × log_isotropic, isotropic on a pre-tokenised corpus:
    ``read`` (read plant), ``write`` (write plant), ``null`` (every delta Gaussian), and ``pre``
    (phase = "pretrain": from base − another write plant to the base, so the trained side is the base).
    ``{"results", "claims"}``.
    """
    root = tmp_path_factory.mktemp("planted")
    base = random_model("llama", 3, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                        intermediate_size=96, num_hidden_layers=8)  # fmt: skip
    ids = np.random.default_rng(0).integers(0, VOCAB, (16, 16))
    np.save(root / "ids.npy", ids)
    models = {
        "base": base,
        "read": _with(base, _plant_deltas(base, ids, "read", seed=1)),
        "write": _with(base, _plant_deltas(base, ids, "write", seed=2)),
        "null": _with(base, _plant_deltas(base, ids, "null", seed=3)),
        "init": _with(base, _plant_deltas(base, ids, "write", seed=4), sign=-1.0),
    }
    dirs = {}
    for name, model in models.items():
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        char_tokenizer().save_pretrained(dirs[name])
    pairs = [("read", "base", "read", "align"), ("write", "base", "write", "align"),
             ("null", "base", "null", "align"), ("pre", "init", "base", "pretrain")]  # fmt: skip
    config = "".join(
        f'[[pair]]\nlabel = "{label}"\nbase = "{dirs[b]}"\naligned = "{dirs[a]}"\nphase = "{phase}"\n'
        for label, b, a, phase in pairs
    )
    config += (
        f'[corpus]\nids = "{root / "ids.npy"}"\n[probe]\nconstructions = ["act_cov", "unembed", "random"]\n'
        'cutoffs = ["k=4", "k=8"]\nnormalisations = ["log_isotropic", "isotropic"]\n'
    )
    (root / "sweep.toml").write_text(config)
    run_cli(["sweep", "--config", str(root / "sweep.toml"), "--out", str(root / "results.nc"),
             "--cache-dir", str(root / "cache"), "--quiet"])  # fmt: skip
    results = open_dataset(root / "results.nc")
    return {"results": results, "claims": level_claims(results, n_resamples=999)}


def test_read_plant_supports_read_concentration_and_write_isotropy(planted):
    """Read deltas along the activations' principal directions, isotropic write deltas: the read
    level is far above its reference (F(8) ≈ 1: log2 ratio ≈ log2(64/8) = 3, at every specification)
    and the write level's 90% interval lies inside ±0.5."""
    out = planted["claims"]["read"]
    assert out["read_concentration"].verdict == "supported"
    assert (
        out["read_concentration"].estimate > 2.5 and out["read_concentration"].robust_share == 1.0
    )
    assert out["write_isotropy"].verdict == "supported"
    assert -0.5 < out["write_isotropy"].ci_low < out["write_isotropy"].ci_high < 0.5
    assert out["read_write_asymmetry"].verdict == "supported"


def test_write_plant_contradicts_write_isotropy(planted):
    """Write deltas along the top unembedding directions: the write level's interval lies wholly
    above +0.5 (≈ 3 at k = 8)."""
    out = planted["claims"]["write"]
    assert out["write_isotropy"].verdict == "contradicted"
    assert out["write_isotropy"].ci_low > 0.5
    assert out["read_write_asymmetry"].verdict == "contradicted"


def test_isotropic_null_does_not_support_read_concentration(planted):
    """Every delta Gaussian: nothing concentrates, so read_concentration must not be supported (its
    level is near its reference), and the write level is equivalent to isotropic."""
    out = planted["claims"]["null"]
    assert out["read_concentration"].verdict in ("inconclusive", "contradicted")
    assert abs(out["read_concentration"].estimate) < 0.25
    assert out["write_isotropy"].verdict == "supported"


def test_pretrain_pair_makes_pretraining_writes_prediction_tested(planted):
    """With a pair of phase = "pretrain" (its write delta along the prediction subspace) the claim is
    tested on the alignment pairs: supported where the alignment write delta is isotropic. Without
    that pair the same results leave it not_tested with the reason."""
    out = planted["claims"]
    for pair in ("read", "null"):
        row = out[pair]["pretraining_writes_prediction"]
        assert row.verdict == "supported" and row.estimate > 2.0
    assert out["pre"]["pretraining_writes_prediction"].verdict == "not_tested"
    results = planted["results"]
    align_only = level_claims(results.sel(pair=["read", "write", "null"]), n_resamples=99)
    row = align_only["read"]["pretraining_writes_prediction"]
    assert row.verdict == "not_tested" and "needs a pair with phase = pretrain" in row.reason
