"""The claims on the mechanism (robustness/claims/mechanism.py), each rule on hand-built datasets laid
out as their writers lay them out: gradients.nc (robustness/mechanism/gradients.py), trajectory.nc,
contrastive.nc and rank1.nc (robustness/mechanism/).

The per-layer values are chosen so that each test knows its answer: a zero-mean pattern over eight
layers with a known EWC ω̂ plus a shift, the interval recomputed here from its definition (cosine
projections, ``scipy.stats.t``). Values the rule must ignore (other sites, references,
specifications, matrices) are set to numbers that would flip the verdict if read.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats

import probes
from robustness.claims import mechanism

SITES = ("attn_in", "mlp_in", "o_out", "down_out")
PATTERN = np.array([0.12, -0.05, 0.08, -0.11, 0.02, 0.07, -0.09, -0.04])
PATTERN = PATTERN - PATTERN.mean()
L = PATTERN.size


def ewc_half(values, confidence_level):
    """Half-width of the EWC interval of the layer mean, from the definition (K = max(2, L//8))."""
    d = np.asarray(values, dtype=np.float64)
    n = d.size
    k = max(2, round(0.4 * n ** (2 / 3)))
    position = (np.arange(1, n + 1) - 0.5) / n
    z = [math.sqrt(2 / n) * np.sum(d * np.cos(math.pi * j * position)) for j in range(1, k + 1)]
    omega = math.sqrt(np.mean(np.square(z)))
    return float(stats.t.ppf(0.5 + confidence_level / 2, k) * omega / math.sqrt(n)), omega, k


# ---------------------------------------------------------------------------- gradient_anisotropy


def gradients(o_diff, down_diff, *, checkpoints=None, objectives=("ce", "dpo")):
    """entropy_rank(objective, layer, site) as rsf gradients writes it (optionally × checkpoint):
    DPO − CE = `o_diff` at o_out and `down_diff` at down_out per layer (lists, one per checkpoint,
    with `checkpoints`); the read sites carry a large opposite difference the rule must ignore."""
    per = []
    for o, down in zip(
        *(([o_diff], [down_diff]) if checkpoints is None else (o_diff, down_diff)), strict=True
    ):
        ce = 20.0 + np.arange(L)[:, None] * np.ones(len(SITES))
        dpo = ce.copy()
        dpo[:, 2], dpo[:, 3] = ce[:, 2] + o, ce[:, 3] + down
        dpo[:, :2] = ce[:, :2] - 50.0
        rank = np.stack([ce, dpo, ce + 1.0][: len(objectives)])
        per.append(rank)
    dims = ("objective", "layer", "site")
    values = per[0] if checkpoints is None else np.stack(per)
    if checkpoints is not None:
        dims = ("checkpoint", *dims)
    coords = {"objective": list(objectives), "layer": np.arange(L), "site": list(SITES)}
    if checkpoints is not None:
        coords["checkpoint"] = list(checkpoints)
    return xr.Dataset({"entropy_rank": (dims, values)}, coords=coords, attrs={"kind": "gradients"})


def test_gradient_anisotropy_supported_when_dpo_minus_ce_is_above_zero_at_both_sites():
    """H0 per site: mean over layers of rank(DPO) − rank(CE) ≤ 0, one-sided at α; supported when the
    90% EWC interval lies above 0 at o_out and at down_out (CE's δ_t lower-rank). Estimate and
    interval: o_out's, from the definition; the read sites (a large negative difference) do not enter."""
    o, down = 2.0 + PATTERN, 1.0 - PATTERN
    out = mechanism.gradient_claim(gradients(o, down), alpha=0.05)
    half, _, _ = ewc_half(o, 0.90)
    assert out.verdict == "supported"
    assert out.estimate == pytest.approx(2.0, abs=1e-12)
    assert (out.ci_low, out.ci_high) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-9)
    assert "the model: supported" in out.reason and "down_out +1.00" in out.reason


def test_gradient_anisotropy_switches_where_the_interval_crosses_zero():
    """At both sites the same series shifted by the hand-computed half-width ± ε: the interval's lower
    end crosses 0 there, and the verdict switches between inconclusive and supported (and, mirrored,
    contradicted)."""
    half, _, _ = ewc_half(PATTERN, 0.90)
    for shift, verdict in ((half + 1e-6, "supported"), (half - 1e-6, "inconclusive"),
                           (-half - 1e-6, "contradicted"), (-half + 1e-6, "inconclusive")):  # fmt: skip
        series = shift + PATTERN
        assert mechanism.gradient_claim(gradients(series, series), alpha=0.05).verdict == verdict


def test_gradient_anisotropy_needs_both_sites_and_both_objectives():
    """Above 0 at o_out only: inconclusive (both sites are required); below at both: contradicted;
    no dpo objective: not_tested with the command that measures it."""
    assert mechanism.gradient_claim(gradients(2.0 + PATTERN, PATTERN), alpha=0.05).verdict == (
        "inconclusive"
    )
    assert mechanism.gradient_claim(
        gradients(-2.0 + PATTERN, -1.0 + PATTERN), alpha=0.05
    ).verdict == ("contradicted")
    out = mechanism.gradient_claim(
        gradients(PATTERN, PATTERN, objectives=("ce", "lam=0.5")), alpha=0.05
    )
    assert out.verdict == "not_tested" and "--objective ce,dpo" in out.reason


def test_gradient_anisotropy_over_checkpoints():
    """With a checkpoint dimension: supported when supported at every checkpoint; one contradicted
    checkpoint contradicts (Holm across the checkpoints); one inconclusive (the rest supported) is
    inconclusive. The reason says where it holds; the estimate is o_out at the last checkpoint."""
    up, flat, down = 2.0 + PATTERN, PATTERN, -2.0 + PATTERN
    every = mechanism.gradient_claim(
        gradients([up, up + 1], [up, up], checkpoints=["a", "b"]), alpha=0.05
    )
    assert every.verdict == "supported" and every.estimate == pytest.approx(3.0)
    one_bad = mechanism.gradient_claim(
        gradients([up, down], [up, down], checkpoints=["a", "b"]), alpha=0.05
    )
    assert (
        one_bad.verdict == "contradicted"
        and "a: supported" in one_bad.reason
        and "b: contradicted" in one_bad.reason
    )
    one_flat = mechanism.gradient_claim(
        gradients([up, flat], [up, flat], checkpoints=["a", "b"]), alpha=0.05
    )
    assert one_flat.verdict == "inconclusive"


# ---------------------------------------------------------------------------- trajectory_consistent


def trajectory(shifts, *, normalisations=("log_isotropic", "isotropic"), n_layers=L):
    """read_rsf_layer and write_rsf_layer(reference, checkpoint, layer, construction, cutoff,
    normalisation) as the trajectory writer lays them out (per-layer pathway means on the statistics'
    scale): at start/act_cov/k=8 (both normalisations) their difference is ``shift_c + pattern`` at
    checkpoint c; everywhere else (the previous reference, other specifications) a contradicting −3."""
    shifts = np.asarray(shifts, float)
    pattern = np.resize(PATTERN, n_layers)
    shape = (2, shifts.size, n_layers, 2, 2, len(normalisations))
    write = np.full(shape, 1.0)
    read = write - 3.0
    read[0, :, :, 0, 1, :] = 1.0 + shifts[:, None, None] + pattern[None, :, None]
    dims = ("reference", "checkpoint", "layer", "construction", "cutoff", "normalisation")
    return xr.Dataset(
        {"read_rsf_layer": (dims, read), "write_rsf_layer": (dims, write)},
        coords={"reference": ["start", "previous"], "checkpoint": [f"step-{i}" for i in range(shifts.size)],
                "layer": np.arange(n_layers), "construction": ["act_cov", "unembed"], "cutoff": ["k=4", "k=8"],
                "normalisation": list(normalisations)},
        attrs={"kind": "trajectory"},
    )  # fmt: skip


@pytest.mark.parametrize(
    "shifts, verdict",
    [([1.2, 1.5, 0.9], "supported"), ([1.2, 0.5, 0.9], "inconclusive"), ([1.2, 0.0, 0.9], "contradicted"),
     ([1.2, -1.5, 0.9], "contradicted")],
)  # fmt: skip
def test_trajectory_consistent_rule(shifts, verdict):
    """Against the start at the trajectory's specification (act_cov, k=8, log_isotropic), the per-layer
    asymmetry a concentration part per checkpoint: supported when its 90% EWC interval lies above +0.5
    at every checkpoint, contradicted when inside ±0.5 or below −0.5 at some (Holm across the
    checkpoints), else inconclusive. The estimate and interval are the last checkpoint's, by hand; the
    previous reference and other specifications (all −3) do not enter."""
    out = mechanism.trajectory_claim(trajectory(shifts), margin=0.5, alpha=0.05)
    half, _, _ = ewc_half(PATTERN, 0.90)
    assert out.verdict == verdict
    assert (out.ci_low, out.ci_high) == pytest.approx(
        (shifts[-1] - half, shifts[-1] + half), abs=1e-9
    )
    assert out.estimate == pytest.approx(shifts[-1])
    assert out.n_specifications == 3 and "act_cov/k=8/log_isotropic" in out.method


def test_trajectory_reads_isotropic_without_log_isotropic_and_needs_k8_and_four_layers():
    """A trajectory swept with ``isotropic`` only (the experiments' grid) is read at that normalisation
    (the same log2 ratio); one without k=8 is not_tested (no other cutoff stands in); three layers
    are too few for the test over layers."""
    out = mechanism.trajectory_claim(trajectory([1.2, 1.4], normalisations=("isotropic",)),
                                     margin=0.5, alpha=0.05)  # fmt: skip
    assert out.verdict == "supported" and "act_cov/k=8/isotropic" in out.method
    no_k8 = trajectory([1.2, 1.4]).sel(cutoff=["k=4"])
    assert mechanism.trajectory_claim(no_k8, margin=0.5, alpha=0.05).verdict == "not_tested"
    short = mechanism.trajectory_claim(trajectory([1.2, 1.4], n_layers=3), margin=0.5, alpha=0.05)
    assert short.verdict == "inconclusive" and "needs at least 4 layers" in short.reason


# ---------------------------------------------------------------------------- graded_control


D = 64
LAMS = np.array([0.0, 0.5, 1.0])
MATRICES = ("q", "k", "o", "down")


def contrastive(write_slopes, *, read_levels=None, with_purity=True, normalisations=("isotropic",)):
    """A contrastive dataset as robustness/mechanism/contrastive.py writes it: rsf(lam_label, layer,
    matrix, construction, cutoff, normalisation), k, gram_purity, the lam coordinate and the attrs
    write_set, read_set, write_construction, read_construction, d_model.

    The write level (o, down on unembed, against its Haar reference) is ``λ·slope_l + 0.3`` at each
    layer; the read level (q, k on act_cov) is ``read_levels[λ]`` (a per-layer array). Gram purities
    change with λ, so the Haar reference does too: a rule that skipped it would see another slope.
    """
    write_slopes = np.asarray(write_slopes, float)
    read_levels = read_levels if read_levels is not None else [PATTERN] * len(LAMS)
    constructions, cutoffs = ("act_cov", "unembed"), ("k=4", "k=8")
    shape = (len(LAMS), L, len(MATRICES), len(constructions), len(cutoffs))
    rsf = np.full((*shape, len(normalisations)), np.nan)
    ks = np.empty(shape, dtype=np.int64)
    purity = np.empty(shape[:3])
    for i, lam in enumerate(LAMS):
        for m, matrix in enumerate(MATRICES):
            purity[i, :, m] = 0.05 + 0.3 * lam + 0.02 * m + 0.01 * np.arange(L)
            for c, construction in enumerate(constructions):
                for u, cutoff in enumerate(cutoffs):
                    k = int(cutoff[2:])
                    ks[i, :, m, c, u] = k
                    if matrix in ("o", "down"):
                        level = (
                            lam * write_slopes + 0.3 if construction == "unembed" else -9.0 * lam
                        )
                    else:
                        level = read_levels[i] if construction == "act_cov" else 9.0
                    s = level + probes.haar_reference(
                        "isotropic", np.full(L, k), D, purity[i, :, m]
                    )
                    for n, normalisation in enumerate(normalisations):
                        rsf[i, :, m, c, u, n] = s if normalisation == "log_isotropic" else 2.0**s
    labels = [f"lam={lam:g}" for lam in LAMS]
    data = {
        "rsf": (("lam_label", "layer", "matrix", "construction", "cutoff", "normalisation"), rsf),
        "k": (("lam_label", "layer", "matrix", "construction", "cutoff"), ks),
    }
    if with_purity:
        data["gram_purity"] = (("lam_label", "layer", "matrix"), purity)
    return xr.Dataset(
        data,
        coords={"lam_label": labels, "lam": ("lam_label", LAMS), "layer": np.arange(L), "matrix": list(MATRICES),
                "construction": list(constructions), "cutoff": list(cutoffs), "normalisation": list(normalisations)},
        attrs={"kind": "contrastive", "write_set": "o,down", "read_set": "q,k", "write_construction": "unembed",
               "read_construction": "act_cov", "d_model": D},
    )  # fmt: skip


def test_graded_control_switches_where_the_upper_bound_crosses_the_margin():
    """Non-inferiority: H0 slope ≥ margin (0.25 log2 per unit λ), one-sided at α = 0.05. The layers' own
    slopes are ``c + pattern``; the upper end of their 90% EWC interval is c + half (half by hand), so
    the verdict switches at c = margin − half (supported below) and at c = margin + half (contradicted
    above). The estimate is c exactly (the Haar references, which move with λ, are subtracted), and
    the p-value is the one-sided p of slope < margin."""
    margin, alpha = 0.25, 0.05
    half, omega, k = ewc_half(PATTERN, 1 - 2 * alpha)
    for c, verdict in ((margin - half - 1e-6, "supported"), (margin - half + 1e-6, "inconclusive"),
                       (margin + half - 1e-6, "inconclusive"), (margin + half + 1e-6, "contradicted"),
                       (-1.0, "supported")):  # fmt: skip
        out = mechanism.graded_claim(contrastive(c + PATTERN), margin=margin, alpha=alpha)
        assert out.verdict == verdict, c
        assert out.estimate == pytest.approx(c, abs=1e-9)
        assert out.ci_high == pytest.approx(c + half, abs=1e-9) and out.reference == margin
        t = (c - margin) * math.sqrt(L) / omega
        assert out.p_value == pytest.approx(stats.t.cdf(t, k), rel=1e-6, abs=1e-12)


def test_graded_control_subtracts_the_haar_reference_and_needs_what_it_is_made_from():
    """The slope is of the level against the Haar reference (= c; the purities and so the references
    change with λ, so a skipped reference would show another slope); a file with neither the
    spectra nor the purities (written before the references) is not_tested, never the raw ratio."""
    with_ref = mechanism.graded_claim(contrastive(0.1 + PATTERN), margin=0.25, alpha=0.05)
    assert with_ref.estimate == pytest.approx(0.1, abs=1e-9)
    bare = mechanism.graded_claim(
        contrastive(0.1 + PATTERN).drop_vars("gram_purity"), margin=0.25, alpha=0.05
    )
    assert bare.verdict == "not_tested" and "re-run rsf experiment contrastive" in bare.reason


def test_graded_control_prefers_log_isotropic_at_k8():
    """With both normalisations and both cutoffs it reads k=8 and log_isotropic (the method says so)."""
    out = mechanism.graded_claim(
        contrastive(PATTERN, normalisations=("isotropic", "log_isotropic")), margin=0.25, alpha=0.05
    )
    assert "k=8, log_isotropic" in out.method and out.verdict == "supported"


def test_variant_read_levels_one_verdict_per_lambda():
    """Each variant's read concentration (q and k on act_cov, against the reference, each against
    +0.5): 1.6 supported, 0.5 inconclusive (its interval straddles the margin), −1.6 contradicted,
    keyed by the variant's label."""
    ds = contrastive(PATTERN, read_levels=[1.6 + PATTERN, 0.5 + PATTERN, -1.6 + PATTERN])
    out = mechanism.variant_read_levels(ds, margin=0.5, alpha=0.05)
    assert {k: v.verdict for k, v in out.items()} == {
        "variant lam=0": "supported", "variant lam=0.5": "inconclusive", "variant lam=1": "contradicted",
    }  # fmt: skip
    assert out["variant lam=0"].excess_part is None  # no mechanical reference in this file


# ---------------------------------------------------------------------------- rank1_causal


def rank1(read_p, *, write_p=(0.01, 0.01), roles=("read", "write"), controls=1):
    """rank1.nc's layout: p_margin/p_kl(matrix, control), role(matrix), margin_change and its interval
    (matrix, intervention), with `controls` random and `controls` matched directions. `read_p` =
    (p_margin, p_kl) at control "all" of the read matrix; the random/matched controls and the write
    matrix carry other p-values the rule must ignore."""
    p_margin = np.array([[0.5, 0.5, read_p[0]], [0.01, 0.01, write_p[0]]])
    p_kl = np.array([[0.5, 0.5, read_p[1]], [0.01, 0.01, write_p[1]]])
    names = ["principal", *[f"random-{i:02d}" for i in range(controls)],
             *[f"matched-{i:02d}" for i in range(controls)]]  # fmt: skip
    change = np.zeros((2, len(names)))
    change[:, 0] = (0.3, 0.9)
    return xr.Dataset(
        {"p_margin": (("matrix", "control"), p_margin), "p_kl": (("matrix", "control"), p_kl),
         "margin_change": (("matrix", "intervention"), change),
         "margin_change_ci_low": (("matrix", "intervention"), change - 0.1),
         "margin_change_ci_high": (("matrix", "intervention"), change + 0.1)},
        coords={"matrix": ["q", "o"], "role": ("matrix", list(roles)), "intervention": names,
                "family": ("intervention", ["principal", *["random"] * controls, *["matched"] * controls]),
                "control": ["random", "matched", "all"]},
        attrs={"kind": "rank1", "layer": 2},
    )  # fmt: skip


@pytest.mark.parametrize(
    "p, verdict",
    [((0.01, 0.02), "supported"), ((0.01, 0.5), "inconclusive"), ((0.05, 0.01), "inconclusive"),
     ((0.99, 0.995), "contradicted"), ((0.99, 0.94), "inconclusive")],
)  # fmt: skip
def test_rank1_causal_rule_at_its_boundaries(p, verdict):
    """The read intervention against 198 pooled controls: both upper-tail p < α supported (p = α
    exactly is not); both lower-tail p-values, 1 − p + 1/(1 + B), below α contradicted (the
    principal direction below nearly every control), else inconclusive. The write matrix's p-values
    (always small here) never enter; the estimate is the read principal direction's Δmargin with
    its interval, p the p the verdict rests on."""
    out = mechanism.rank1_claim(rank1(p, controls=99), alpha=0.05)
    assert out.verdict == verdict
    assert (out.estimate, out.ci_low, out.ci_high) == pytest.approx((0.3, 0.2, 0.4))
    lower = max(1 - q + 1 / 199 for q in p)
    assert out.decision.p_support == max(p) and out.decision.p_contradict == pytest.approx(lower)


def test_rank1_with_few_controls_cannot_be_decided_either_way():
    """With two controls neither tail's p can fall below 1/3: inconclusive, and the reason says so."""
    out = mechanism.rank1_claim(rank1((0.99, 0.995)), alpha=0.05)
    assert out.verdict == "inconclusive" and "raise --controls" in out.reason
    assert "'q' at layer 2" in out.method


def test_rank1_without_a_read_intervention_is_not_tested():
    """A rank-1 dataset of two write interventions tests nothing about the read pathway."""
    out = mechanism.rank1_claim(rank1((0.01, 0.01), roles=("write", "write")), alpha=0.05)
    assert out.verdict == "not_tested" and "no read intervention" in out.reason
