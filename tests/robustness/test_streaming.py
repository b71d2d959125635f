"""The sweep engine one layer at a time (robustness.measure.engine over probes.layerwise).

Null hypothesis: a sweep holds at most one decoder layer of one model in
memory at any moment, reads the aligned model's activations only when a
construction needs them, and computes jackknife rows only when BCa is asked
for. Checked by watching every materialisation the sweep makes (the
skeleton's parameters are on the meta device except while a part is
materialised), not by timing or by memory readings, which are benchmarks'.
"""

from __future__ import annotations

import numpy as np
import pytest
from rsf_commands import sweep

import probes


@pytest.fixture
def watched(monkeypatch):
    """Record, after every materialisation, which decoder layers of which models hold weights."""
    seen = {"models": [], "max_layers": 0, "stages": set()}
    original = probes.LayerwiseModel.materialise

    def materialise(self, *prefixes):
        original(self, *prefixes)
        if self not in seen["models"]:
            seen["models"].append(self)
        resident = set()
        for index, model in enumerate(seen["models"]):
            for name, param in model.model.named_parameters():
                if not param.is_meta and name.startswith(f"{model.family.layers}."):
                    resident.add((index, int(name.split(".")[len(model.family.layers.split("."))])))
        seen["max_layers"] = max(seen["max_layers"], len(resident))
        if any(p.endswith("embed_tokens.weight") or ".embed_tokens." in p for p in prefixes):
            seen["stages"].add(seen["models"].index(self))

    monkeypatch.setattr(probes.LayerwiseModel, "materialise", materialise)
    return seen


def test_a_sweep_holds_one_layer_of_one_model_at_a_time(saved_pair, tmp_path, watched):
    base, aligned = saved_pair("llama", num_hidden_layers=4)
    ds = sweep(
        tmp_path,
        base,
        aligned,
        "--constructions",
        "act_cov,act_cov_aligned,unembed",
        "--bootstrap",
        "3",
    )
    assert watched["max_layers"] == 1
    assert len(watched["stages"]) == 2  # act_cov_aligned: both models' embedding stages ran
    assert bool(ds.rsf.notnull().any())


def test_the_aligned_model_runs_no_forward_pass_unless_asked(saved_pair, tmp_path, watched):
    base, aligned = saved_pair("llama", num_hidden_layers=4)
    sweep(tmp_path, base, aligned, "--constructions", "act_cov,random")
    assert watched["max_layers"] == 1
    assert len(watched["stages"]) == 1  # the base's only


def test_jackknife_rows_only_with_bca(saved_pair, tmp_path):
    base, aligned = saved_pair("llama")
    plain = sweep(
        tmp_path, base, aligned, "--constructions", "act_cov", "--bootstrap", "4", out="a.nc"
    )
    assert "rsf_jack" not in plain and plain.sizes["replicate"] == 4
    bca = sweep(
        tmp_path,
        base,
        aligned,
        "--constructions",
        "act_cov",
        "--bootstrap",
        "4",
        "--bca",
        out="b.nc",
    )
    assert bca.sizes["jackknife"] == 16  # 16 sequences of 16 tokens → 16 chunks
    np.testing.assert_array_equal(plain.rsf_boot.values, bca.rsf_boot.values)


def test_quiet_silences_every_progress_bar(saved_pair, tmp_path, capfd):
    base, aligned = saved_pair("qwen2")
    sweep(tmp_path, base, aligned, "--bootstrap", "2")
    captured = capfd.readouterr()
    assert captured.err == ""


def test_batched_eigendecompositions_give_the_numpy_replicates(saved_pair, monkeypatch):
    """The bootstrap's batched torch.linalg.eigh (the path a GPU takes), run on the CPU here.

    Null hypothesis: its replicates equal those of NumPy's eigendecompositions;
    both are float64 LAPACK-quality solvers, so they agree to round-off (1e-9).
    """
    from robustness.measure import engine, runner
    from robustness.measure.corpus import Corpus
    from robustness.settings.config import PairSpec, SweepConfig

    base, aligned = saved_pair("llama", num_hidden_layers=4)
    config = SweepConfig(
        pairs=(PairSpec("p", base, aligned),),
        constructions=("act_cov", "act_moment", "act_cov_aligned"),
        cutoffs=("k=4", "var=0.9", "pr"),
        normalisations=("fraction", "log_isotropic"),
        replicates=5,
        device="cpu",
    )
    corpus = Corpus(np.random.default_rng(0).integers(0, 61, size=(12, 16)), "test")
    (numpy_run,) = runner.run_sweep(config, corpus, progress=False)
    monkeypatch.setattr(engine, "_eigh_device", lambda device: "cpu")
    (torch_run,) = runner.run_sweep(config, corpus, progress=False)
    np.testing.assert_allclose(
        torch_run.bootstrap["replicates"], numpy_run.bootstrap["replicates"], rtol=1e-9, atol=1e-12
    )
    assert np.isfinite(numpy_run.bootstrap["replicates"]).any()
