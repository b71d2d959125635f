"""The level claims of `rsf claims` (robustness/claims/levels.py): each rule on hand-built results whose
per-layer levels are known, the equivalence test against its closed form, and planted pairs.

Hand-built results put the level ``ℓ_l`` (log2 ratio minus the Haar reference) where a test wants
it: the stored log2 ratio is ``ℓ_l + probes.haar_reference(k, d, purity)``, so a rule that forgot
the reference, or took the wrong matrices, layers or specification, reads other numbers. The EWC
test is recomputed here from its definition (cosine projections, ``scipy.stats.t``), not through
robustness.stats.layers.

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
from robustness.claims import levels as claims
from robustness.claims import registry
from robustness.claims.levels import level_claims
from robustness.claims.pair_levels import Levels
from robustness.claims.registry import CLAIM_IDS, CLAIMS
from robustness.io.datasets import open_dataset

MATRICES = ("q", "k", "o", "down")
D = 64


# ---------------------------------------------------------------------------- helpers


def ewc(values, confidence_level):
    """The EWC test from its definition: ``(mean, half-width, ω̂, K)`` of the layer mean of `values`."""
    d = np.asarray(values, dtype=np.float64)
    n = d.size
    k = max(2, round(0.4 * n ** (2 / 3)))
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
    excess=None,
):
    """A results dataset (the contract's variables) whose levels are ``level(pair, construction, cutoff, matrix)``.

    `level` returns the per-layer level (or a scalar); the stored probe is level + Haar
    reference (log2 ratio; ``isotropic`` holds 2**it). Gram purities differ by layer and matrix,
    so the references do too. `k_values` maps a cutoff to its k per layer (default: k=N's N);
    `layers` gives a pair fewer layers (NaN beyond, as build_dataset writes them). `excess`
    (same signature as `level`, default 0) sets the read matrices' log2 ratio minus their
    mechanical reference on the activation constructions (stored as ``mechanical_reference``).
    No spectrum is stored: the claims use the Beta law from the purity, as these references do.
    """
    phases = phases or ["align"] * len(pairs)
    shape = (len(pairs), n_layers, len(MATRICES), len(constructions), len(cutoffs))
    rsf = np.full((*shape, len(normalisations)), np.nan)
    mechanical = np.full(shape, np.nan)
    ks = np.full(shape, -1, dtype=np.int64)
    purity = np.empty(shape[:3])
    for p, pair in enumerate(pairs):
        own = (layers or {}).get(pair, n_layers)
        for m, matrix in enumerate(MATRICES):
            purity[p, :, m] = 1.5 / d + 0.05 * (1 + np.arange(n_layers) % 3) + 0.02 * m
            for c, construction in enumerate(constructions):
                for u, cutoff in enumerate(cutoffs):
                    k = (k_values or {}).get(cutoff)
                    k = np.asarray(int(cutoff[2:]) if k is None else k, dtype=np.int64)
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
                    if matrix in ("q", "k") and construction.startswith("act_"):
                        surplus = (excess or (lambda *a: 0.0))(pair, construction, cutoff, matrix)
                        surplus = np.broadcast_to(np.asarray(surplus, float), (n_layers,))[:own]
                        mechanical[p, :own, m, c, u] = s - surplus
        purity[p, own:] = np.nan
    return xr.Dataset(
        {
            "rsf": (("pair", "layer", "matrix", "construction", "cutoff", "normalisation"), rsf),
            "k": (("pair", "layer", "matrix", "construction", "cutoff"), ks),
            "mechanical_reference": (("pair", "layer", "matrix", "construction", "cutoff"), mechanical),
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
    assert registry.VERDICTS == ("supported", "contradicted", "inconclusive", "not_tested")
    assert all(c.says and c.test and c.preferred for c in CLAIMS)


# ---------------------------------------------------------------------------- levels


def test_level_is_log2_ratio_minus_the_haar_reference_by_hand(planted):
    """Levels.level on a real results dataset equals, by hand, the mean over the matrices of
    ``log2(isotropic ratio) − probes.haar_reference(k, d, spectrum)`` at each layer (the reference
    exact from each delta's stored Gram spectrum), from both normalisations; reference() is that
    reference's mean, and the spectrum's Σ g² is the stored purity."""
    results = planted["results"]
    lv = Levels(results, "read")
    d = int(results.d_model.sel(pair="read"))
    spectra = results.gram_spectrum.sel(pair="read")
    np.testing.assert_allclose(
        (spectra**2).sum("eigen").values, results.gram_purity.sel(pair="read").values, rtol=1e-9
    )
    for construction, cutoff in (("act_cov", "k=8"), ("unembed", "k=4")):
        cell = results.sel(pair="read", construction=construction, cutoff=cutoff)
        for matrices in (("q", "k"), ("o", "down"), ("q",)):
            expected, references = [], []
            for m in matrices:
                ratio = cell.rsf.sel(matrix=m, normalisation="isotropic").values
                reference = probes.haar_reference(
                    "isotropic", cell.k.sel(matrix=m).values, d,
                    spectrum=spectra.sel(matrix=m).values[:, :d],
                )  # fmt: skip
                expected.append(np.log2(ratio) - reference)
                references.append(reference)
            expected = np.mean(expected, axis=0)
            for normalisation in ("isotropic", "log_isotropic"):
                got = lv.level((construction, cutoff, normalisation), matrices)
                np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
            assert lv.reference((construction, cutoff, "log_isotropic"), matrices) == pytest.approx(
                np.mean(references)
            )
            assert np.all(np.asarray(references) < 0)  # the log is concave: a negative reference


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

HALF = ewc(PATTERN, 0.90)[1]  # the 90% EWC half-width of the noise pattern (0.064)


@pytest.mark.parametrize(
    "mean, verdict",
    [
        (0.5 + HALF + 0.01, "supported"),  # the 90% interval wholly above +0.5
        (0.5 + HALF - 0.01, "inconclusive"),  # it straddles +0.5
        (0.0, "contradicted"),  # wholly inside ±0.5: near-isotropic, not concentrated
        (-1.0, "contradicted"),  # wholly below −0.5
        (-0.5, "inconclusive"),  # straddles −0.5
    ],
)
def test_read_concentration_rule_with_the_margin_against_the_closed_form(mean, verdict):
    """H0 of support: the level of each read matrix (q, k) on act_cov is at most +0.5, one-sided at
    α = 0.05; contradiction: its 90% interval inside ±0.5 or below −0.5. The estimate, the interval
    and the p-value equal the EWC test computed by hand from the per-layer level; the write set's
    values and the unembedding construction do not enter."""
    read = mean + PATTERN
    results = hand_results(lambda p, c, u, m: read if (m in ("q", "k") and c == "act_cov") else 5.0)
    out = outcomes(results)["pair"]["read_concentration"]
    estimate, half, _, _ = ewc(read, 0.90)
    assert out.verdict == verdict
    assert out.estimate == pytest.approx(estimate, abs=1e-12)
    assert (out.ci_low, out.ci_high) == pytest.approx((estimate - half, estimate + half), abs=1e-12)
    assert out.ci_level == pytest.approx(0.90)
    p_support = one_sided_p(read, 0.5)[0]
    p_below, p_inside = (
        one_sided_p(read, -0.5)[1],
        max(one_sided_p(read, -0.5)[0], one_sided_p(read, 0.5)[1]),
    )
    assert out.decision.p_support == pytest.approx(p_support, rel=1e-9)
    # Two equal parts (q, k): Holm's union of their contradiction p-values doubles the smaller.
    assert out.decision.p_contradict == pytest.approx(
        min(1.0, 2 * min(p_below, p_inside)), rel=1e-9
    )
    assert out.margin_needed == pytest.approx(estimate - half, abs=1e-12)
    assert out.n_specifications == 2  # k=4, k=8; isotropic and log_isotropic merged (one quantity)
    assert "act_cov/k=8/log_isotropic" in out.method


def test_one_level_is_never_both_concentrated_and_near_isotropic():
    """The case the old rules got wrong: read and write levels both +0.3 over 24 layers at d = 256.
    With one margin, +0.3 inside ±0.5 contradicts concentration and supports isotropy: never both."""
    level = 0.3 + 0.1 * np.resize(PATTERN, 24)
    results = hand_results(lambda *a: level, n_layers=24, d=256, cutoffs=("k=8", "k=16"))
    out = outcomes(results)["pair"]
    assert out["write_isotropy"].verdict == "supported"
    assert out["read_concentration"].verdict == "contradicted"
    both = hand_results(lambda *a: 1.2 + 0.1 * np.resize(PATTERN, 24), n_layers=24, d=256,
                        cutoffs=("k=8", "k=16"))  # fmt: skip
    out = outcomes(both)["pair"]
    assert out["read_concentration"].verdict == "supported"
    assert out["write_isotropy"].verdict == "contradicted"


def test_read_concentration_compares_with_the_reference_not_with_zero():
    """A low-rank delta whose log2 ratio equals its (negative) Haar reference at every layer has
    level 0, although every raw log2 ratio is below 0: the estimate is the level, not the ratio."""
    results = hand_results(lambda *a: PATTERN * 0.1)
    raw = results.rsf.sel(
        pair="pair", construction="act_cov", cutoff="k=8", normalisation="log_isotropic"
    )
    assert np.all(raw.sel(matrix=["q", "k"]).values < 0.005) and float(raw.mean()) < -0.01
    out = outcomes(results)["pair"]["read_concentration"]
    assert out.estimate == pytest.approx(0.0, abs=1e-12) and out.reference < -0.01


def test_verdict_at_the_preferred_specification_and_robust_share():
    """The verdict is the preferred specification's (act_cov, k=8) even when another disagrees;
    robust_share counts the decisive specifications agreeing with it (1 of 2), the joint p-value is a
    Monte Carlo p in (0, 1]."""
    results = hand_results(lambda p, c, u, m: (1.6 if u == "k=8" else -1.6) + PATTERN)
    out = outcomes(results)["pair"]["read_concentration"]
    assert out.verdict == "supported"
    assert out.robust_share == 0.5 and out.robust_n == 2 and out.n_specifications == 2
    assert 1 / 200 <= out.p_joint <= 1


def test_robust_share_counts_decisive_verdicts_only_and_does_not_grow_with_the_grid():
    """Adding cutoffs whose verdict is inconclusive (k = 9, 10, 11 straddling the margin) leaves the
    share and its denominator alone (it used to rise from 0.33 to 0.67, agreeing on 'inconclusive');
    margin_needed, from the preferred specification alone, does not move either."""

    def level(p, c, u, m):
        return {"k=4": -1.6, "k=8": 1.6, "k=6": 1.6}.get(u, 0.5) + PATTERN

    small = outcomes(hand_results(level, cutoffs=("k=4", "k=6", "k=8")))["pair"][
        "read_concentration"
    ]
    large = outcomes(hand_results(level, cutoffs=("k=4", "k=6", "k=8", "k=9", "k=10", "k=11")))[
        "pair"
    ]["read_concentration"]
    assert (small.robust_share, small.robust_n) == (pytest.approx(2 / 3), 3)
    assert (large.robust_share, large.robust_n) == (pytest.approx(2 / 3), 3)
    assert small.margin_needed == pytest.approx(large.margin_needed)


def test_preferred_specification_found_in_an_isotropic_only_sweep():
    """A sweep with ``isotropic`` but no ``log_isotropic`` (the experiments' grid) holds the same log2
    ratio: the verdict is still taken at k=8, not at the first specification (k=4)."""
    results = hand_results(
        lambda p, c, u, m: (1.6 if u == "k=8" else -1.6) + PATTERN, normalisations=("isotropic",)
    )
    out = outcomes(results)["pair"]
    assert out["read_concentration"].verdict == "supported"
    assert "act_cov/k=8/isotropic" in out["read_concentration"].method
    assert "unembed/k=8/isotropic" in out["write_isotropy"].method


def test_a_missing_preferred_specification_is_not_tested_never_a_stand_in():
    """No k=8 in the sweep: every level claim is not_tested, naming the specification, whatever the
    order of the cutoffs in the file (before: the first cutoff stood in, so (k=4, k=16) gave
    'supported' and (k=16, k=4) 'contradicted')."""

    def level(p, c, u, m):
        return 1.6 + PATTERN if u == "k=4" else -1.6 + PATTERN

    for cutoffs in (("k=4", "k=16"), ("k=16", "k=4")):
        out = outcomes(hand_results(level, cutoffs=cutoffs, d=256))["pair"]
        for claim in ("read_concentration", "write_isotropy", "read_write_asymmetry"):
            assert out[claim].verdict == "not_tested", claim
            assert (
                "k=8" in out[claim].reason
                and "no other specification stands in" in out[claim].reason
            )


def test_verdicts_do_not_depend_on_the_order_of_any_coordinate():
    """Every coordinate of the file permuted (pairs, layers, matrices, constructions, cutoffs,
    normalisations): the same verdicts, estimates and p-values, claim by claim."""

    def level(p, c, u, m):
        base = {"q": 1.2, "k": 0.9, "o": 0.2, "down": -0.1}[m] + (0.3 if c == "act_cov" else 0.0)
        return base + (0.2 if u == "k=8" else 0.0) + (0.1 if p == "b" else 0.0) + PATTERN

    results = hand_results(
        level, pairs=("a", "b"), phases=["align", "pretrain"], cutoffs=("k=4", "k=8", "k=6"),
        excess=lambda p, c, u, m: 0.1 * PATTERN,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    shuffled = results.isel({dim: rng.permutation(results.sizes[dim])
                             for dim in ("pair", "layer", "matrix", "construction", "cutoff",
                                         "normalisation")})  # fmt: skip
    first, second = outcomes(results), outcomes(shuffled)
    for pair in ("a", "b"):
        for claim, row in first[pair].items():
            other = second[pair][claim]
            assert (row.verdict, row.reason) == (other.verdict, other.reason), (pair, claim)
            for name in (
                "estimate",
                "ci_low",
                "ci_high",
                "p_value",
                "robust_share",
                "margin_needed",
            ):
                np.testing.assert_allclose(getattr(row, name), getattr(other, name), rtol=1e-12)


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
    read_concentration still tested."""
    results = hand_results(lambda *a: 1.6 + PATTERN)
    rsf = results.rsf.values.copy()
    rsf[:, :, 2:] = np.nan  # o, down
    out = outcomes(results.assign(rsf=(results.rsf.dims, rsf)))["pair"]
    assert out["read_concentration"].verdict == "supported"
    for claim in ("write_isotropy", "read_write_asymmetry"):
        assert out[claim].verdict == "not_tested"
        assert "undefined at some layer in every specification" in out[claim].reason


# ---------------------------------------------------------------------------- write_isotropy


def test_write_isotropy_is_equivalence_by_two_one_sided_tests():
    """Equivalence at α = 0.05: supported iff each write matrix's 90% EWC interval lies inside ±0.5
    and every layer's own level does too; contradicted iff an interval lies wholly outside (Holm
    across the two matrices: just outside is not yet enough with two parts); the TOST
    p is the larger one-sided p against ±margin (by hand), and it equals α where the interval's end
    touches the margin."""
    margin, alpha, noise = 0.5, 0.05, 0.2 * PATTERN
    _, half, _, _ = ewc(noise, 1 - 2 * alpha)
    for shift, verdict in ((0.0, "supported"), (0.35, "supported"), (-0.35, "supported"),
                           (0.5, "inconclusive"), (margin + 3 * half, "contradicted"),
                           (-margin - 3 * half, "contradicted")):  # fmt: skip
        write = shift + noise
        results = hand_results(
            lambda p, c, u, m, w=write: w if (m in ("o", "down") and c == "unembed") else 9.0
        )
        out = outcomes(results, margin=margin, alpha=alpha)["pair"]["write_isotropy"]
        assert out.verdict == verdict, shift
        assert (out.ci_low, out.ci_high) == pytest.approx((shift - half, shift + half), abs=1e-9)
        p_tost = max(one_sided_p(write, -margin)[0], one_sided_p(write, margin)[1])
        assert out.p_value == pytest.approx(p_tost, rel=1e-7, abs=1e-12)
    inner = margin - half
    boundary = hand_results(lambda p, c, u, m: inner + noise if m in ("o", "down") else 0.0)
    assert outcomes(boundary)["pair"]["write_isotropy"].p_value == pytest.approx(alpha, rel=1e-6)


def test_equivalence_of_each_write_matrix_not_their_mean():
    """o at +0.9 and down at −0.9 on every layer: their mean is 0 (the old rule said 'supported',
    interval [−0.018, +0.006]); tested matrix by matrix, each lies wholly outside ±0.5: contradicted."""
    results = hand_results(lambda p, c, u, m: {"o": 0.9, "down": -0.9}.get(m, 0.0) + 0.1 * PATTERN)
    out = outcomes(results)["pair"]["write_isotropy"]
    assert abs(out.estimate) < 0.01  # the mean is isotropic …
    assert out.verdict == "contradicted"  # … the matrices are not
    assert "o +0.900" in out.method and "down -0.900" in out.method


def test_layers_that_depart_bar_support_though_the_mean_is_isotropic():
    """A write level alternating ±1.5 between layers: the cosine long-run variance does not see the
    alternation, so the mean's interval is tight around 0 (the old rule: 'supported'); each layer's
    own level lies outside ±0.5, so the claim cannot be supported: inconclusive, naming the layers."""
    alternating = np.resize([1.5, -1.5], 24)
    results = hand_results(lambda p, c, u, m: alternating if m in ("o", "down") else 0.0,
                           n_layers=24, d=256)  # fmt: skip
    out = outcomes(results)["pair"]["write_isotropy"]
    assert -0.5 < out.ci_low < out.ci_high < 0.5
    assert out.verdict == "inconclusive"
    assert "a layer's own level lies outside ±0.5: o at layer 0 (+1.50)" in out.reason
    assert out.margin_needed == pytest.approx(1.5)


def test_write_isotropy_margin_scales_the_verdict_and_a_wide_interval_is_not_support():
    """A level of 0.3 with a tight interval is supported at margin 0.5 and contradicted at 0.1; a noisy
    level around 0 whose interval straddles ±0.5 is inconclusive: a non-significant difference is
    never support."""
    tight = hand_results(lambda p, c, u, m: 0.3 + 0.1 * PATTERN)
    assert outcomes(tight, isotropy_margin=0.5)["pair"]["write_isotropy"].verdict == "supported"
    assert outcomes(tight, isotropy_margin=0.1)["pair"]["write_isotropy"].verdict == "contradicted"
    wide = hand_results(lambda p, c, u, m: 12 * PATTERN)
    out = outcomes(wide)["pair"]["write_isotropy"]
    assert out.ci_low < -0.5 < 0.5 < out.ci_high
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


def test_tost_equals_statsmodels_paired_tost_on_independent_layers():
    """With every cosine kept (K = L − 1) the EWC statistic is the one-sample t statistic, so the
    rule's TOST p-value on a series equals statsmodels' ttost_paired against ±margin."""
    from statsmodels.stats.weightstats import ttost_paired

    from robustness.claims.rules import part

    values = 0.15 + np.random.default_rng(3).normal(0, 0.3, 12)
    ours = part("x", values, margin=0.5, alpha=0.05, k=len(values) - 1)
    theirs = ttost_paired(values, np.zeros_like(values), -0.5, 0.5)[0]
    assert ours.p_inside == pytest.approx(theirs, rel=1e-10)


# ---------------------------------------------------------------------------- read_write_asymmetry


def test_read_write_asymmetry_is_the_paired_difference_of_levels():
    """The per-layer difference (read level on act_cov − write level on unembed) against +0.5. Read
    1.5 and write 0.4 at the matched cutoff give the difference 1.1 with the hand-computed interval;
    each side against its own reference (read on unembed or write on act_cov do not enter)."""
    read, write = 1.5 + PATTERN, 0.4 - PATTERN[::-1]

    def level(p, c, u, m):
        if m in ("q", "k"):
            return read if c == "act_cov" else -7.0
        return write if c == "unembed" else 7.0

    out = outcomes(hand_results(level))["pair"]["read_write_asymmetry"]
    estimate, half, _, _ = ewc(read - write, 0.90)
    assert out.verdict == "supported"
    assert out.estimate == pytest.approx(1.1, abs=1e-12) and out.reference == 0.0
    assert (out.ci_low, out.ci_high) == pytest.approx((estimate - half, estimate + half), abs=1e-9)
    assert out.p_value == pytest.approx(one_sided_p(read - write, 0.5)[0], rel=1e-7)
    flipped = outcomes(hand_results(lambda p, c, u, m: -level(p, c, u, m)))["pair"]
    assert flipped["read_write_asymmetry"].verdict == "contradicted"


def test_specifications_whose_read_and_write_ranks_differ_more_than_fourfold_are_left_out():
    """A var cutoff that picks k = 1 on the write side and k = 40 on the read side compares a direction
    with a subspace: it is left out of robust_share (and said so), as the statistics leave it out of
    the specification curve."""
    ks = {"var=0.9": np.full(8, 40)}
    results = hand_results(lambda p, c, u, m: 1.6 + PATTERN if m in ("q", "k") else 0.0,
                           cutoffs=("k=8", "var=0.9"), k_values=ks, d=512)  # fmt: skip
    k = results.k.values.copy()
    write = [list(results.matrix.values).index(m) for m in ("o", "down")]
    k[:, :, write, list(results.construction.values).index("unembed"),
      list(results.cutoff.values).index("var=0.9")] = 1  # fmt: skip
    out = outcomes(results.assign(k=(results.k.dims, k)))["pair"]["read_write_asymmetry"]
    assert out.n_specifications == 1 and out.robust_n == 1
    assert "more than 4-fold apart" in out.reason


# ---------------------------------------------------------------------------- pretraining, objective


def two_phases(pretrain_write, align_write, *, pretrain_read=1.6, layers=None, excess=0.0):
    def level(pair, c, u, m):
        if m in ("q", "k"):
            return pretrain_read + PATTERN if pair == "pre" else 1.6 + PATTERN
        return (
            pretrain_write + 0.5 * PATTERN if pair == "pre" else align_write + 0.5 * PATTERN[::-1]
        )

    def surplus(pair, c, u, m):
        return (excess if pair == "pre" else 0.0) + 0.2 * PATTERN

    return hand_results(level, pairs=("dpo", "pre"), phases=["align", "pretrain"], layers=layers,
                        excess=surplus)  # fmt: skip


@pytest.mark.parametrize(
    "pretrain_write, align_write, verdict",
    [
        (2.0, 0.0, "supported"),
        (1.0, 2.0, "contradicted"),  # below the alignment pair's
        (-1.0, -2.0, "contradicted"),  # the pretrain level below −0.5
        (0.05, 0.0, "contradicted"),  # the pretrain level inside ±0.5: no prediction geometry
        (0.52, -0.5, "inconclusive"),  # its interval straddles +0.5
    ],
)
def test_pretraining_writes_prediction_is_concentration_of_each_write_matrix(
    pretrain_write, align_write, verdict
):
    """Concentration parts, each against +0.5: the pretrain pair's level of o and of down on
    unembed/k=8, and its excess over the alignment pair's, paired over layers. Supported when every
    part is, contradicted when some part's interval lies inside ±0.5 or below −0.5 (Holm). Stored on
    the alignment pair; the estimate is the paired difference of the write set."""
    out = outcomes(two_phases(pretrain_write, align_write))
    row = out["dpo"]["pretraining_writes_prediction"]
    assert row.verdict == verdict
    assert row.estimate == pytest.approx(pretrain_write - align_write, abs=1e-12)
    own = pretrain_write + 0.5 * PATTERN
    paired = own - (align_write + 0.5 * PATTERN[::-1])
    assert row.decision.p_support == pytest.approx(
        max(one_sided_p(own, 0.5)[0], one_sided_p(paired, 0.5)[0])
    )
    assert "'pre'" in row.method
    assert out["pre"]["pretraining_writes_prediction"].verdict == "not_tested"
    assert (
        out["pre"]["pretraining_writes_prediction"].reason
        == "stored on the alignment pair it compares"
    )


def test_pretraining_claim_without_a_comparable_pretrain_pair():
    """No pretrain pair: not_tested, saying how to add one. A pretrain pair with other layers cannot be
    paired over layers: not_tested, naming its layers (not 'needs a pair with phase = pretrain');
    read_objective_agnostic still compares its phases."""
    alone = outcomes(hand_results(lambda *a: 0.0))["pair"]
    assert alone["pretraining_writes_prediction"].verdict == "not_tested"
    assert "needs a pair with phase = pretrain" in alone["pretraining_writes_prediction"].reason
    assert (
        "needs a pair with phase = pretrain or a contrastive dataset"
        in alone["read_objective_agnostic"].reason
    )
    other = outcomes(two_phases(2.0, 0.0, layers={"pre": 6}))["dpo"]
    assert other["pretraining_writes_prediction"].verdict == "not_tested"
    assert (
        "no pretrain pair with this pair's 8 layers (pretrain: pre (6))"
        in other["pretraining_writes_prediction"].reason
    )
    assert other["read_objective_agnostic"].verdict == "supported"


@pytest.mark.parametrize(
    "pretrain_read, excess, verdict",
    [
        (1.6, 0.0, "supported"),  # concentrated in both phases, at the mechanism's level
        (0.0, 0.0, "contradicted"),  # not concentrated in pretraining
        (1.6, 1.2, "contradicted"),  # concentrated beyond the mechanism in pretraining
        (1.6, 0.5, "inconclusive"),  # its excess straddles the margin
    ],
)
def test_read_objective_agnostic_needs_concentration_at_the_mechanisms_level(
    pretrain_read, excess, verdict
):
    """In every phase: read concentration supported and the excess over the mechanical reference
    equivalent to 0 within ±0.5; contradicted where either fails decisively in some phase (Holm).
    The reason lists each phase's concentration and excess."""
    row = outcomes(two_phases(2.0, 0.0, pretrain_read=pretrain_read, excess=excess))["dpo"][
        "read_objective_agnostic"
    ]
    assert row.verdict == verdict
    assert row.reason.startswith("align: concentration supported, excess ")
    assert row.n_specifications == 2


def test_agnostic_claim_with_contrastive_variants():
    """The variants count as phases: one whose concentration is not decided makes the claim
    inconclusive at most, one whose excess lies outside the margin contradicts it; without a
    mechanical reference the claim is not_tested, saying why."""
    from robustness.claims.rules import Decision, Part

    def phase(verdict, p_support, p_contradict, excess):
        e = Part("excess", excess, excess - 0.05, excess + 0.05, 1.0, 1.0, 0.001 if abs(excess) < 0.4 else 0.9,
                 1.0)  # fmt: skip
        if abs(excess) > 0.6:
            e = Part("excess", excess, excess - 0.05, excess + 0.05, 0.001, 0.9, 0.9, 0.9)
        return registry.Outcome(verdict, decision=Decision(verdict, p_support, p_contradict, 0.0),
                              excess_part=e, excess=excess)  # fmt: skip

    ok = phase("supported", 0.001, 0.9, 0.0)
    rules = {"margin": 0.5, "alpha": 0.05}
    assert (
        claims.agnostic_claim({"align": ok}, {"variant lam=0": ok}, **rules).verdict == "supported"
    )
    unsure = phase("inconclusive", 0.2, 0.4, 0.0)
    assert (
        claims.agnostic_claim({"align": ok}, {"variant lam=0": unsure}, **rules).verdict
        == "inconclusive"
    )
    beyond = phase("supported", 0.001, 0.9, 1.2)
    assert (
        claims.agnostic_claim({"align": ok}, {"variant lam=1": beyond}, **rules).verdict
        == "contradicted"
    )
    assert claims.agnostic_claim({"align": ok}, **rules).verdict == "not_tested"
    bare = registry.Outcome("supported", decision=Decision("supported", 0.001, 0.9, 0.0))
    assert (
        "no mechanical reference"
        in claims.agnostic_claim({"align": ok, "pretrain": bare}, **rules).reason
    )


# ---------------------------------------------------------------------------- the family


def test_holm_across_a_pairs_claims_matches_statsmodels(planted):
    """The claims tested on a pair form one family: their p-values of support are Holm-adjusted
    together (statsmodels' multipletests), as are their p-values of contradiction, and a claim is
    supported (contradicted) only when its adjusted p-value is below α. Intervals are at 1 − 2α."""
    from statsmodels.stats.multitest import multipletests

    from robustness.claims.paper import paper_claims

    results = planted["results"]
    ds = paper_claims(results, n_resamples=99)
    unadjusted = level_claims(results, n_resamples=99)
    for pair in ds.pair.values:
        decided = {
            c: o.decision for c, o in unadjusted[str(pair)].items() if o.decision is not None
        }
        names = list(decided)
        support = multipletests([decided[c].p_support for c in names], method="holm")[1]
        contradict = multipletests([decided[c].p_contradict for c in names], method="holm")[1]
        for claim, ps, pc in zip(names, support, contradict, strict=True):
            row = ds.sel(pair=pair, claim=claim)
            verdict = str(row.verdict.values)
            expected = pc if verdict == "contradicted" else ps
            assert float(row.p_adjusted) == pytest.approx(expected, rel=1e-12), (pair, claim)
            assert verdict == ("supported" if ps < 0.05 else "contradicted" if pc < 0.05
                               else "inconclusive") or "layer's own level" in str(row.reason.values)  # fmt: skip
            assert float(row.ci_level) == pytest.approx(0.90)


# ---------------------------------------------------------------------------- planted pairs


def _plant_deltas(base, ids, kind: str, seed: int):
    """``aligned − base`` for every canonical matrix of `base`, each of norm 5% of its weight.

    ``read``: q and k get ``ΔW = D X_rᵀ/T`` with ``X_r`` the activations the matrix reads (hooked in
    the base model on the probe corpus), centred and projected on their covariance's top 4
    eigenvectors, ``D`` Gaussian; ``mechanism``: the same with every direction kept (``Σ_t δ_t a_tᵀ``
    with isotropic ``δ_t`` independent of the centred ``a_t``: what the outer-product mechanism
    alone writes); ``lowest``: projected on the 4 eigenvectors of least variance; ``write``: o and
    down get ``ΔW = U_r Dᵀ`` with ``U_r`` the top 4 unembedding directions
    (probes.prediction_subspaces) on the output side; every other matrix (and every matrix of
    ``null``) a Gaussian delta.
    """
    generator = torch.Generator().manual_seed(seed)
    weights = probes.canonical_weights(base)
    n_layers = probes.model_dims(base).n_layers
    seen = {}
    if kind in ("read", "mechanism", "lowest"):
        keys = [(layer, "attn_in") for layer in range(n_layers)]

        def keep(key, tensor):
            seen.setdefault(key, []).append(tensor.detach().reshape(-1, tensor.shape[-1]).double())

        with torch.no_grad(), probes.site_hooks(base, keys, keep):
            base(torch.as_tensor(ids))
    unembed = torch.as_tensor(probes.prediction_subspaces(base)["unembed"].basis[:, :4])
    deltas = {}
    for (layer, matrix), w in weights.items():
        if kind in ("read", "mechanism", "lowest") and matrix in ("q", "k"):
            x = torch.cat(seen[(layer, "attn_in")])
            x = x - x.mean(dim=0)
            _, vectors = torch.linalg.eigh(x.T @ x / x.shape[0])  # ascending
            kept = {"read": vectors[:, -4:], "lowest": vectors[:, :4]}.get(kind)
            x_r = x if kept is None else x @ kept @ kept.T  # [T, d]
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
    """Six pairs on one tiny llama base (d = 64, 8 layers), swept by `rsf sweep --config` over
    act_cov, unembed, random × k=4, k=8 × log_isotropic, isotropic on a pre-tokenised corpus of
    1024 tokens: ``read`` (read plant), ``mechanism`` and ``lowest`` (the outer-product mechanism
    alone, and along the least-variance directions), ``write`` (write plant), ``null`` (every delta
    Gaussian), and ``pre`` (phase = "pretrain": from base − another write plant to the base, so the
    trained side is the base).
    ``{"results", "claims"}``.
    """
    root = tmp_path_factory.mktemp("planted")
    base = random_model("llama", 3, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                        intermediate_size=96, num_hidden_layers=8)  # fmt: skip
    ids = np.random.default_rng(0).integers(0, VOCAB, (64, 16))
    np.save(root / "ids.npy", ids)
    models = {
        "base": base,
        "read": _with(base, _plant_deltas(base, ids, "read", seed=1)),
        "write": _with(base, _plant_deltas(base, ids, "write", seed=2)),
        "null": _with(base, _plant_deltas(base, ids, "null", seed=3)),
        "mechanism": _with(base, _plant_deltas(base, ids, "mechanism", seed=5)),
        "lowest": _with(base, _plant_deltas(base, ids, "lowest", seed=6)),
        "init": _with(base, _plant_deltas(base, ids, "write", seed=4), sign=-1.0),
    }
    dirs = {}
    for name, model in models.items():
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        char_tokenizer().save_pretrained(dirs[name])
    pairs = [("read", "base", "read", "align"), ("write", "base", "write", "align"),
             ("null", "base", "null", "align"), ("mechanism", "base", "mechanism", "align"),
             ("lowest", "base", "lowest", "align"), ("pre", "init", "base", "pretrain")]  # fmt: skip
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


def test_the_mechanism_alone_has_no_excess_and_the_lowest_directions_a_negative_one(planted):
    """H0 of the mechanical reference: ``ΔW = Σ δ aᵀ`` with isotropic δ independent of the (centred)
    activations has, on act_cov, the activations' own top-k share, so its log2 ratio equals the
    mechanical reference up to sampling: the excess lies within ±0.1 of 0 (1024 tokens, d = 64). A
    delta along the activations' least-variance directions sits far below it: a negative excess.
    The read plant, projected on the top 4 directions, concentrates beyond the mechanism."""
    out = planted["claims"]
    mechanism = out["mechanism"]["read_concentration"]
    assert abs(mechanism.excess) < 0.1 and mechanism.excess_part.ci_low > -0.5
    assert mechanism.mechanical_reference > 0.2  # the activations are anisotropic at all
    lowest = out["lowest"]["read_concentration"]
    assert lowest.excess < -1.0 and lowest.verdict == "contradicted"
    read = out["read"]["read_concentration"]
    assert read.excess > 0.5 and read.verdict == "supported"
    assert np.isfinite(
        planted["results"].mechanical_reference.sel(matrix=["q", "k"], construction="act_cov")
    ).all()
    assert bool(planted["results"].mechanical_reference.sel(matrix=["o", "down"]).isnull().all())


def test_pretrain_pair_makes_pretraining_writes_prediction_tested(planted):
    """With a pair of phase = "pretrain" (its write delta along the prediction subspace) the claim is
    tested on the alignment pairs: supported where the alignment write delta is isotropic. Without
    that pair the same results leave it not_tested with the reason."""
    out = planted["claims"]
    for pair in ("read", "null", "mechanism", "lowest"):
        row = out[pair]["pretraining_writes_prediction"]
        assert row.verdict == "supported" and row.estimate > 2.0
    assert out["pre"]["pretraining_writes_prediction"].verdict == "not_tested"
    results = planted["results"]
    align_only = level_claims(
        results.sel(pair=["read", "write", "null", "mechanism"]), n_resamples=99
    )
    row = align_only["read"]["pretraining_writes_prediction"]
    assert row.verdict == "not_tested" and "needs a pair with phase = pretrain" in row.reason


def test_holm_equals_statsmodels_and_keeps_nan_out_of_the_family():
    """The step-down adjustment against statsmodels' multipletests(method="holm"), ties and a NaN
    (a claim not tested) included."""
    from statsmodels.stats.multitest import multipletests

    from robustness.claims.rules import holm

    rng = np.random.default_rng(4)
    for _ in range(8):
        p = rng.uniform(0, 0.2, rng.integers(1, 9))
        p[rng.random(p.size) < 0.2] = p[0]  # ties
        np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-14)
    got = holm([0.01, np.nan, 0.04])
    assert np.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2]], multipletests([0.01, 0.04], method="holm")[1])
