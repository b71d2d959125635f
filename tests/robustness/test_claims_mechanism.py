"""The claims on the mechanism (robustness/claims_mechanism.py), each rule on hand-built datasets laid
out as their writers lay them out: gradients.nc (robustness/gradients.py), trajectory.nc,
contrastive.nc and rank1.nc (robustness/experiments/).

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
from robustness import claims_mechanism as mechanism

SITES = ("attn_in", "mlp_in", "o_out", "down_out")
PATTERN = np.array([0.12, -0.05, 0.08, -0.11, 0.02, 0.07, -0.09, -0.04])
PATTERN = PATTERN - PATTERN.mean()
L = PATTERN.size


def ewc_half(values, confidence_level):
    """Half-width of the EWC interval of the layer mean, from the definition (K = max(2, L//8))."""
    d = np.asarray(values, dtype=np.float64)
    n = d.size
    k = max(2, n // 8)
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
    """H0 per site: mean over layers of rank(DPO) − rank(CE) = 0; supported when the 95% EWC interval
    lies above 0 at o_out and at down_out (CE's δ_t lower-rank). Estimate and interval: o_out's, from
    the definition; the read sites (a large negative difference) do not enter."""
    o, down = 2.0 + PATTERN, 1.0 - PATTERN
    out = mechanism.gradient_claim(gradients(o, down), alpha=0.05, confidence_level=0.95)
    half, _, _ = ewc_half(o, 0.95)
    assert out.verdict == "supported"
    assert out.estimate == pytest.approx(2.0, abs=1e-12)
    assert (out.ci_low, out.ci_high) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-9)
    assert "the model: supported" in out.reason and "down_out +1.00" in out.reason


def test_gradient_anisotropy_switches_where_the_interval_crosses_zero():
    """At both sites the same series shifted by the hand-computed half-width ± ε: the interval's lower
    end crosses 0 there, and the verdict switches between inconclusive and supported (and, mirrored,
    contradicted)."""
    half, _, _ = ewc_half(PATTERN, 0.95)
    for shift, verdict in ((half + 1e-6, "supported"), (half - 1e-6, "inconclusive"),
                           (-half - 1e-6, "contradicted"), (-half + 1e-6, "inconclusive")):  # fmt: skip
        series = shift + PATTERN
        assert (
            mechanism.gradient_claim(
                gradients(series, series), alpha=0.05, confidence_level=0.95
            ).verdict
            == verdict
        )


def test_gradient_anisotropy_needs_both_sites_and_both_objectives():
    """Above 0 at o_out only: inconclusive (both sites are required); below at both: contradicted;
    no dpo objective: not_tested with the command that measures it."""
    assert (
        mechanism.gradient_claim(
            gradients(2.0 + PATTERN, PATTERN), alpha=0.05, confidence_level=0.95
        ).verdict
        == "inconclusive"
    )
    assert (
        mechanism.gradient_claim(
            gradients(-2.0 + PATTERN, -1.0 + PATTERN), alpha=0.05, confidence_level=0.95
        ).verdict
        == "contradicted"
    )
    out = mechanism.gradient_claim(
        gradients(PATTERN, PATTERN, objectives=("ce", "lam=0.5")), alpha=0.05, confidence_level=0.95
    )
    assert out.verdict == "not_tested" and "--objective ce,dpo" in out.reason


def test_gradient_anisotropy_over_checkpoints():
    """With a checkpoint dimension: supported when supported at every checkpoint; one contradicted
    checkpoint contradicts; one inconclusive (the rest supported) is inconclusive. The reason says
    where it holds; the estimate is o_out at the last checkpoint."""
    up, flat, down = 2.0 + PATTERN, PATTERN, -2.0 + PATTERN
    every = mechanism.gradient_claim(
        gradients([up, up + 1], [up, up], checkpoints=["a", "b"]), alpha=0.05, confidence_level=0.95
    )
    assert every.verdict == "supported" and every.estimate == pytest.approx(3.0)
    one_bad = mechanism.gradient_claim(
        gradients([up, down], [up, down], checkpoints=["a", "b"]), alpha=0.05, confidence_level=0.95
    )
    assert (
        one_bad.verdict == "contradicted"
        and "a: supported" in one_bad.reason
        and "b: contradicted" in one_bad.reason
    )
    one_flat = mechanism.gradient_claim(
        gradients([up, flat], [up, flat], checkpoints=["a", "b"]), alpha=0.05, confidence_level=0.95
    )
    assert one_flat.verdict == "inconclusive"


# ---------------------------------------------------------------------------- trajectory_consistent


def trajectory(low, high, *, normalisations=("log_isotropic", "isotropic")):
    """asymmetry(_ci_low/_ci_high)(reference, checkpoint, construction, cutoff, normalisation) as the
    trajectory writer lays them out; the given intervals at start/act_cov/k=8 (both normalisations),
    a contradicting interval everywhere else (previous reference, other specifications)."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    n = low.size
    shape = (2, n, 2, 2, len(normalisations))
    lows, highs = np.full(shape, -3.0), np.full(shape, -2.0)
    lows[0, :, 0, 1, :] = low[:, None]
    highs[0, :, 0, 1, :] = high[:, None]
    dims = ("reference", "checkpoint", "construction", "cutoff", "normalisation")
    return xr.Dataset(
        {"asymmetry": (dims, (lows + highs) / 2), "asymmetry_ci_low": (dims, lows), "asymmetry_ci_high": (dims, highs)},
        coords={"reference": ["start", "previous"], "checkpoint": [f"step-{i}" for i in range(n)],
                "construction": ["act_cov", "unembed"], "cutoff": ["k=4", "k=8"], "normalisation": list(normalisations)},
        attrs={"kind": "trajectory"},
    )  # fmt: skip


@pytest.mark.parametrize(
    "low, high, verdict",
    [([0.1, 0.2, 0.05], [0.5, 0.6, 0.3], "supported"), ([0.1, -0.1, 0.05], [0.5, 0.2, 0.3], "inconclusive"),
     ([0.1, -0.6, 0.05], [0.5, -0.1, 0.3], "contradicted")],
)  # fmt: skip
def test_trajectory_consistent_rule(low, high, verdict):
    """Against the start at the trajectory's specification (act_cov, k=8, log_isotropic): supported when
    the interval is above 0 at every checkpoint, contradicted when below 0 at any, else inconclusive.
    The estimate is the last checkpoint's; the previous reference and other specifications (all
    below 0) do not enter."""
    out = mechanism.trajectory_claim(trajectory(low, high))
    assert out.verdict == verdict
    assert (out.ci_low, out.ci_high) == (low[-1], high[-1])
    assert out.estimate == pytest.approx((low[-1] + high[-1]) / 2)
    assert out.n_specifications == 3 and "act_cov/k=8/log_isotropic" in out.method


def test_trajectory_falls_back_to_isotropic_and_an_undefined_interval_is_inconclusive():
    """A trajectory swept with ``isotropic`` only (the experiments' grid) is read at that normalisation
    (the same log2 ratio); a NaN interval (fewer than 4 layers) is inconclusive with the reason."""
    out = mechanism.trajectory_claim(
        trajectory([0.1, 0.2], [0.4, 0.5], normalisations=("isotropic",))
    )
    assert out.verdict == "supported" and "act_cov/k=8/isotropic" in out.method
    undefined = mechanism.trajectory_claim(trajectory([np.nan, 0.2], [np.nan, 0.5]))
    assert undefined.verdict == "inconclusive" and "fewer than 4 layers" in undefined.reason


# ---------------------------------------------------------------------------- graded_control


D = 64
LAMS = np.array([0.0, 0.5, 1.0])
MATRICES = ("q", "k", "o", "down")


def contrastive(write_slopes, *, read_levels=None, with_purity=True, normalisations=("isotropic",)):
    """A contrastive dataset as robustness/experiments/contrastive.py writes it: rsf(lam_label, layer,
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


def test_graded_control_subtracts_the_haar_reference_when_purity_is_known():
    """With gram_purity the slope is of the level against the reference (= c); a file without it
    (written before the references) slopes the raw log2 ratio, which here differs, since the
    purities and so the references change with λ: the test would notice a skipped reference."""
    with_ref = mechanism.graded_claim(contrastive(0.1 + PATTERN), margin=0.25, alpha=0.05)
    raw = mechanism.graded_claim(
        contrastive(0.1 + PATTERN).drop_vars("gram_purity"), margin=0.25, alpha=0.05
    )
    assert with_ref.estimate == pytest.approx(0.1, abs=1e-9)
    assert abs(raw.estimate - 0.1) > 0.01


def test_graded_control_prefers_log_isotropic_at_k8():
    """With both normalisations and both cutoffs it reads k=8 and log_isotropic (the method says so)."""
    out = mechanism.graded_claim(
        contrastive(PATTERN, normalisations=("isotropic", "log_isotropic")), margin=0.25, alpha=0.05
    )
    assert "k=8, log_isotropic" in out.method and out.verdict == "supported"


def test_variant_read_levels_one_verdict_per_lambda():
    """Each variant's read level (q, k on act_cov, against the reference) tested one-sided > 0 over
    layers: +0.6 supported, 0 inconclusive, −0.6 contradicted, keyed by the variant's label."""
    ds = contrastive(PATTERN, read_levels=[0.6 + PATTERN, PATTERN, -0.6 + PATTERN])
    out = mechanism.variant_read_levels(ds, alpha=0.05, confidence_level=0.95)
    assert {k: v.verdict for k, v in out.items()} == {
        "variant lam=0": "supported", "variant lam=0.5": "inconclusive", "variant lam=1": "contradicted",
    }  # fmt: skip
    assert out["variant lam=0"].estimate == pytest.approx(0.6)


# ---------------------------------------------------------------------------- rank1_causal


def rank1(read_p, *, write_p=(0.01, 0.01), roles=("read", "write")):
    """rank1.nc's layout: p_margin/p_kl(matrix, control), role(matrix), margin_change and its interval
    (matrix, intervention). `read_p` = (p_margin, p_kl) at control "all" of the read matrix; the
    random/matched controls and the write matrix carry other p-values the rule must ignore."""
    p_margin = np.array([[0.5, 0.5, read_p[0]], [0.01, 0.01, write_p[0]]])
    p_kl = np.array([[0.5, 0.5, read_p[1]], [0.01, 0.01, write_p[1]]])
    names = ["principal", "random-00", "matched-00"]
    change = np.array([[0.3, 0.01, 0.02], [0.9, 0.0, 0.0]])
    return xr.Dataset(
        {"p_margin": (("matrix", "control"), p_margin), "p_kl": (("matrix", "control"), p_kl),
         "margin_change": (("matrix", "intervention"), change),
         "margin_change_ci_low": (("matrix", "intervention"), change - 0.1),
         "margin_change_ci_high": (("matrix", "intervention"), change + 0.1)},
        coords={"matrix": ["q", "o"], "role": ("matrix", list(roles)), "intervention": names,
                "family": ("intervention", ["principal", "random", "matched"]), "control": ["random", "matched", "all"]},
        attrs={"kind": "rank1", "layer": 2},
    )  # fmt: skip


@pytest.mark.parametrize(
    "p, verdict",
    [((0.01, 0.02), "supported"), ((0.01, 0.5), "inconclusive"), ((0.05, 0.01), "inconclusive"),
     ((0.95, 0.97), "contradicted"), ((0.95, 0.94), "inconclusive")],
)  # fmt: skip
def test_rank1_causal_rule_at_its_boundaries(p, verdict):
    """The read intervention against the pooled controls: both p < α supported (p = α exactly is not),
    both p ≥ 1 − α contradicted (the principal direction below nearly every control), else
    inconclusive. The write matrix's p-values (always small here) never enter; the estimate is the
    read principal direction's Δmargin with its interval, p the larger p."""
    out = mechanism.rank1_claim(rank1(p), alpha=0.05)
    assert out.verdict == verdict
    assert (out.estimate, out.ci_low, out.ci_high) == pytest.approx((0.3, 0.2, 0.4))
    assert out.p_value == max(p)
    assert "'q' at layer 2" in out.method


def test_rank1_without_a_read_intervention_is_not_tested():
    """A rank-1 dataset of two write interventions tests nothing about the read pathway."""
    out = mechanism.rank1_claim(rank1((0.01, 0.01), roles=("write", "write")), alpha=0.05)
    assert out.verdict == "not_tested" and "no read intervention" in out.reason
