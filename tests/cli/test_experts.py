"""Mixture-of-experts sweeps (robustness/measure/experts.py): each expert alone, then the load-weighted mean.

Null hypotheses, each checked against a computation written here: (1) the routing share of each
expert is what the model's own router hands out on the corpus (read by a plain hook on the router,
not the experts' hook the sweep uses); (2) a matrix's ``rsf`` is the mean of its experts'
``rsf_expert`` weighted by those shares (over the experts with a finite value); (3) the Haar
reference of that mean is the same mean of the experts' references, each from its own spectrum
(an expectation is linear). Assumption: a tiny random Mixtral routes every expert some tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rsf_commands import run_cli

import probes
from robustness.claims.pair_levels import Levels
from robustness.io.datasets import open_dataset
from robustness.measure.corpus import load_corpus
from robustness.measure.experts import expert_mean, mean_reference, routing_shares
from robustness.settings.config import CorpusSpec

SWEEP = ["--tokens", "256", "--seq-len", "16", "--no-cache", "-q", "--bootstrap", "5",
         "--cutoffs", "k=4,k=8,var=0.9", "--constructions", "act_cov,unembed,weight_svd,random"]  # fmt: skip


@pytest.fixture(scope="module")
def moe(saved_pair, tmp_path_factory):
    # 4 layers (the claims' test over layers needs 4) and d = 64 (write_isotropy's k = 8 ≤ d/8)
    base, aligned = saved_pair("mixtral", num_hidden_layers=4, hidden_size=64)
    root = tmp_path_factory.mktemp("moe")
    out = root / "results.nc"
    run_cli(["sweep", "--base", base, "--aligned", aligned, "--out", str(out), *SWEEP])
    return {"base": base, "aligned": aligned, "root": root, "results": out}


def test_the_routing_shares_are_the_routers_own(moe):
    results = open_dataset(moe["results"])
    corpus = load_corpus(CorpusSpec(tokens=256, seq_len=16), tokenizer_source=moe["base"])
    model = probes.load_model(moe["base"])
    sums = {}

    def hook(layer):
        def record(module, args, output):
            _, weights, index = output
            found = np.zeros(4)
            np.add.at(found, index.reshape(-1).numpy(), weights.reshape(-1).double().numpy())
            sums[layer] = sums.get(layer, 0) + found

        return record

    handles = [block.mlp.gate.register_forward_hook(hook(i))
               for i, block in enumerate(probes.layer_modules(model))]  # fmt: skip
    with torch.no_grad():
        for batch in np.array_split(corpus.ids, len(corpus.ids) // 8):  # the sweep's batches
            model.model(input_ids=torch.as_tensor(batch))
    for handle in handles:
        handle.remove()
    load = results.expert_load.isel(pair=0).values
    for layer, found in sums.items():
        # float32 forward passes of the same batches on another code path (the whole model, not
        # layer by layer): equal to float32 rounding.
        np.testing.assert_allclose(load[layer], found / found.sum(), rtol=1e-6)
        assert (load[layer] > 0).all()  # the assumption: every expert routes some tokens


def test_rsf_is_the_load_weighted_mean_of_the_experts(moe):
    results = open_dataset(moe["results"]).isel(pair=0)
    assert results.sizes["expert"] == 4
    load = results.expert_load.values
    for matrix in ("up", "gate", "down"):
        per_expert = results.rsf_expert.sel(matrix=matrix).values  # [L, E, C, K, N]
        mean = results.rsf.sel(matrix=matrix).values
        for layer in range(per_expert.shape[0]):
            values = per_expert[layer]
            weights = load[layer][:, None, None, None] * np.isfinite(values)
            total = weights.sum(axis=0)
            naive = np.full(total.shape, np.nan)
            np.divide(np.nansum(values * weights, axis=0), total, out=naive, where=total > 0)
            np.testing.assert_allclose(mean[layer], naive, rtol=1e-12, equal_nan=True)
        assert np.isfinite(results.gram_spectrum_expert.sel(matrix=matrix).values).all()
        assert np.isnan(results.gram_spectrum.sel(matrix=matrix).values).all()
    for matrix in ("q", "k", "v", "o", "router"):  # one matrix each: no expert values
        assert np.isnan(results.rsf_expert.sel(matrix=matrix).values).all()
        assert np.isfinite(results.rsf.sel(matrix=matrix, construction="act_cov").values).all()
    # The site's bases are shared: every expert's cutoff chose the same k (weight_svd: its own).
    assert (results.k.sel(matrix="down", construction="act_cov").values >= 1).all()
    assert "rsf_boot" in results and np.isfinite(results.rsf_boot.sel(matrix="down",
                                                                      construction="act_cov")).all()  # fmt: skip


def test_the_reference_of_a_mean_is_the_mean_of_the_references():
    rng = np.random.default_rng(0)
    d, n_layers, n_experts = 16, 3, 4
    spectra = rng.dirichlet(np.ones(d), size=(n_layers, 2, n_experts))
    spectra = -np.sort(-spectra, axis=-1)
    spectra[:, 0] = np.nan  # matrix 0 has no experts
    shares = rng.dirichlet(np.ones(n_experts), size=n_layers)
    k = np.full((n_layers, 2), 4)
    found = mean_reference("log_isotropic", k, d, spectra, shares)
    for layer in range(n_layers):
        each = [
            float(probes.haar_reference("log_isotropic", 4, d, spectrum=spectra[layer, 1, e]))
            for e in range(n_experts)
        ]
        assert found[layer, 1] == pytest.approx(np.dot(shares[layer], each), rel=1e-12)
    assert np.isnan(found[:, 0]).all()


def test_expert_mean_leaves_out_undefined_experts_and_idle_routers():
    values = np.array([1.0, np.nan, 3.0, 5.0])
    assert expert_mean(values, np.array([0.5, 0.3, 0.2, 0.0])) == pytest.approx(
        (0.5 * 1 + 0.2 * 3) / 0.7
    )
    assert np.isnan(expert_mean(np.full(3, np.nan), np.ones(3) / 3))
    np.testing.assert_allclose(routing_shares(np.zeros(4)), np.full(4, 0.25))


def test_stats_and_claims_run_on_a_moe_pair(moe):
    stats, claims = moe["root"] / "stats.nc", moe["root"] / "claims.nc"
    run_cli(["stats", str(moe["results"]), "--resamples", "99", "--out", str(stats)])
    run_cli(["claims", str(moe["results"]), "--stats", str(stats), "--resamples", "99",
             "--out", str(claims)])  # fmt: skip
    verdicts = open_dataset(claims).verdict.isel(pair=0).to_series()
    for claim in ("read_concentration", "write_isotropy", "read_write_asymmetry"):
        assert verdicts[claim] in ("supported", "contradicted", "inconclusive")
    # The claims' level of `down` is its expert mean less the mean of the experts' references.
    results = open_dataset(moe["results"])
    levels = Levels(results, str(results.pair.values[0]))
    spec = ("unembed", "k=8", "log_isotropic")
    one = results.isel(pair=0)
    k = one.k.sel(matrix=["down"], construction="unembed", cutoff="k=8").values
    reference = mean_reference("log_isotropic", k, levels.d,
                               one.gram_spectrum_expert.sel(matrix=["down"]).values[..., :levels.d],
                               one.expert_load.values)  # fmt: skip
    s = one.rsf.sel(matrix=["down"], construction="unembed", cutoff="k=8",
                    normalisation="log_isotropic").values  # fmt: skip
    np.testing.assert_allclose(levels.matrix_levels(spec, ["down"]), s - reference, rtol=1e-12)
    assert np.isfinite(reference).all()


def test_the_report_says_the_mlp_is_a_mean_over_experts(moe):
    report = moe["root"] / "report.html"
    run_cli(["report", str(moe["results"]), "--out", str(report)])
    page = report.read_text()
    label = str(open_dataset(moe["results"]).pair.values[0])
    assert f'data-caveat="experts-{label}"' in page and "a mixture of 4 experts" in page


def test_a_dense_sweep_has_no_expert_variables(boot_results):
    results, _ = boot_results
    assert "expert" not in results.dims and "expert_load" not in results


def test_each_expert_is_a_pair_of_its_own(moe):
    """``--experts each``: the pairs ``label/expert-e`` carry expert e's own values in up, gate
    and down (and its own spectrum, so the standard reference applies), the pair's own elsewhere;
    stats and claims made that way agree with each other and refuse the mean's statistics."""
    from robustness.measure.experts import each_expert

    results = open_dataset(moe["results"])
    split = each_expert(results)
    label = str(results.pair.values[0])
    assert list(split.pair.values) == [f"{label}/expert-{e}" for e in range(4)]
    assert "expert" not in split.dims and "rsf_boot" not in split
    for e in range(4):
        one = split.sel(pair=f"{label}/expert-{e}")
        np.testing.assert_array_equal(
            one.rsf.sel(matrix="down").values,
            results.rsf_expert.isel(pair=0, expert=e).sel(matrix="down").values,
        )
        np.testing.assert_array_equal(
            one.rsf.sel(matrix="q").values, results.rsf.isel(pair=0).sel(matrix="q").values
        )
        np.testing.assert_array_equal(
            one.gram_spectrum.sel(matrix="up").values,
            results.gram_spectrum_expert.isel(pair=0, expert=e).sel(matrix="up").values,
        )
    stats = moe["root"] / "stats-each.nc"
    run_cli(["stats", str(moe["results"]), "--experts", "each", "--resamples", "99",
             "--out", str(stats)])  # fmt: skip
    assert open_dataset(stats).sizes["pair"] == 4
    claims = moe["root"] / "claims-each.nc"
    run_cli(["claims", str(moe["results"]), "--stats", str(stats), "--experts", "each",
             "--resamples", "99", "--out", str(claims)])  # fmt: skip
    assert open_dataset(claims).sizes["pair"] == 4
    from rsf.main import main

    assert main(["claims", str(moe["results"]), "--stats", str(stats), "--resamples", "99",
                 "--out", str(moe["root"] / "mixed.nc")]) == 2  # fmt: skip


def test_each_on_dense_results_is_one_line(boot_results, tmp_path, capsys):
    from rsf.main import main

    _, args = boot_results
    results = args[args.index("--out") + 1]
    assert main(["stats", results, "--experts", "each", "--out", str(tmp_path / "s.nc")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--experts each needs a mixture-of-experts sweep" in err and "\n" not in err
