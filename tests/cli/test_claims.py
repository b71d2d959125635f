"""`rsf claims` (rsf/claims.py) end to end: a real sweep of three pairs (one of phase = "pretrain",
from a TOML config), its `rsf stats`, and the four extra datasets written by their own commands,
into claims.nc and the printed table; and every input problem as one line on stderr, exit status 2.

The extras measure the models of the results: `rsf gradients`, `rsf experiment rank1` and `rsf
experiment contrastive` (the shared `contrastive_run`) the base of the pair ``dpo``, `rsf experiment
trajectory` the checkpoints whose first and last make the pair ``run``. Tiny llama models of four
layers: the EWC test's minimum, so every test over layers is defined.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from rsf_commands import run_cli

from robustness.claims.paper import paper_claims
from robustness.claims.registry import CLAIM_IDS, VERDICTS
from robustness.io.datasets import open_dataset, write_dataset
from robustness.stats.statistics import results_fingerprint
from rsf.main import main

pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ("gradients", "trajectory", "contrastive", "rank1")


@pytest.fixture(scope="module")
def inputs(saved_pair, contrastive_run, checkpoints, tmp_path_factory):
    """``{"results", "stats", "gradients", "trajectory", "contrastive", "rank1", "root"}`` → paths."""
    base, aligned = saved_pair("llama", num_hidden_layers=4)
    assert contrastive_run[0] == base
    dirs, ids = checkpoints
    root = tmp_path_factory.mktemp("claims")
    paths = {"root": root, "contrastive": contrastive_run[2]}
    small = ["--tokens", "256", "--seq-len", "16", "--quiet"]
    paths["gradients"] = root / "gradients.nc"
    run_cli(
        [
            "gradients",
            "--model",
            base,
            "--objective",
            "ce,dpo",
            *small,
            "--out",
            str(paths["gradients"]),
        ]
    )
    paths["rank1"] = root / "rank1.nc"
    run_cli(
        [
            "experiment",
            "rank1",
            "--model",
            base,
            "--controls",
            "2",
            *small,
            "--out",
            str(paths["rank1"]),
        ]
    )
    paths["trajectory"] = root / "trajectory.nc"
    run_cli(["experiment", "trajectory", "--checkpoints", ",".join(dirs), "--corpus", ids, "--cutoffs", "k=4,k=8",
             "--cache-dir", str(root / "cache"), "--quiet", "--out", str(paths["trajectory"])])  # fmt: skip
    config = root / "sweep.toml"
    config.write_text(
        f'[[pair]]\nlabel = "dpo"\nbase = "{base}"\naligned = "{aligned}"\n'
        f'[[pair]]\nlabel = "run"\nbase = "{dirs[0]}"\naligned = "{dirs[2]}"\n'
        f'[[pair]]\nlabel = "pre"\nphase = "pretrain"\nbase = "{dirs[1]}"\naligned = "{base}"\n'
        f'[corpus]\nids = "{ids}"\n[probe]\nconstructions = ["act_cov", "unembed", "random"]\n'
        'cutoffs = ["k=4", "k=8"]\nnormalisations = ["log_isotropic", "isotropic"]\n'
    )
    paths["results"] = root / "results.nc"
    run_cli(["sweep", "--config", str(config), "--out", str(paths["results"]), "--cache-dir", str(root / "cache"),
             "--quiet"])  # fmt: skip
    paths["stats"] = root / "stats.nc"
    run_cli(
        [
            "stats",
            str(paths["results"]),
            "--out",
            str(paths["stats"]),
            "--resamples",
            "99",
            "--quiet",
        ]
    )
    return paths


def extras(inputs, kinds=KINDS) -> str:
    return ",".join(str(inputs[kind]) for kind in kinds)


def test_claims_end_to_end_with_every_extra(inputs, tmp_path):
    """The command writes claims.nc (the contract: kind "claims", pair × claim, verdicts among the four)
    equal to the library's paper_claims on the same files and options, and prints per pair a table with
    every claim and a summary line whose counts are the dataset's. Each extra's claims are tested on
    the pair whose models it measured (gradients, contrastive, rank1 on dpo; trajectory on run); the
    pretrain pair makes pretraining_writes_prediction tested on both alignment pairs."""
    out = tmp_path / "claims.nc"
    printed = run_cli(["claims", str(inputs["results"]), "--stats", str(inputs["stats"]), "--extra", extras(inputs),
                       "--resamples", "99", "--isotropy-margin", "0.4", "--out", str(out)])  # fmt: skip
    ds = open_dataset(out)
    assert ds.attrs["kind"] == "claims" and dict(ds.sizes) == {"pair": 3, "claim": len(CLAIM_IDS)}
    assert list(ds.claim.values) == list(CLAIM_IDS) and set(ds.verdict.values.ravel()) <= set(
        VERDICTS
    )
    assert ds.attrs["isotropy_margin"] == 0.4
    hashes = json.loads(ds.attrs["inputs"])
    assert (
        hashes["results"] == hashes["stats"] == results_fingerprint(open_dataset(inputs["results"]))
    )
    assert set(hashes) == {"results", "stats", *KINDS}
    library = paper_claims(
        open_dataset(inputs["results"]), stats=open_dataset(inputs["stats"]),
        extras=[open_dataset(inputs[k]) for k in KINDS], isotropy_margin=0.4, n_resamples=99,
    )  # fmt: skip
    np.testing.assert_array_equal(ds.verdict.values, library.verdict.values)
    np.testing.assert_allclose(ds.p_joint.values, library.p_joint.values, equal_nan=True)

    def verdict(pair, claim):
        return str(ds.verdict.sel(pair=pair, claim=claim).values)

    for claim in (
        "gradient_anisotropy",
        "graded_control",
        "rank1_causal",
        "pretraining_writes_prediction",
    ):
        assert verdict("dpo", claim) != "not_tested", claim
    assert verdict("run", "trajectory_consistent") != "not_tested"
    assert verdict("run", "pretraining_writes_prediction") != "not_tested"
    assert verdict("dpo", "trajectory_consistent") == "not_tested"
    assert "rsf experiment trajectory --checkpoints" in str(
        ds.reason.sel(pair="dpo", claim="trajectory_consistent").values
    )
    assert str(ds.reason.sel(pair="pre", claim="pretraining_writes_prediction").values) == (
        "stored on the alignment pair it compares"
    )
    # read_objective_agnostic on dpo: align, the pretrain pair and the three contrastive variants.
    assert int(ds.n_specifications.sel(pair="dpo", claim="read_objective_agnostic")) == 5
    lines = printed.splitlines()
    assert lines[0].startswith("margin ±0.5 log2; α = 0.05, decided per pair with Holm")
    assert lines[1] == "pair dpo (align)" and "pair pre (pretrain)" in lines
    assert lines[-1] == f"wrote {out}"
    for pair in ("dpo", "run", "pre"):
        counts = {v: int((ds.verdict.sel(pair=pair).values == v).sum()) for v in VERDICTS}
        summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        assert f"  {pair}: {summary}" in lines
    for claim in CLAIM_IDS:
        assert sum(line.startswith(f"  {claim} ") for line in lines) == 3
    assert "      stored on the alignment pair it compares" in lines


def test_claims_without_inputs_say_what_to_run(inputs, tmp_path):
    """Only the results of the two alignment pairs: every mechanism claim is not_tested with the
    command that would test it (printed under the claim), pretraining_writes_prediction needs a
    pair with phase = pretrain; --quiet drops the 'wrote' line."""
    results = open_dataset(inputs["results"]).sel(pair=["dpo", "run"])
    path = tmp_path / "results.nc"
    write_dataset(results, path)
    printed = run_cli(
        ["claims", str(path), "--resamples", "99", "--quiet", "--out", str(tmp_path / "c.nc")]
    )
    assert "wrote" not in printed
    assert "needs a pair with phase = pretrain" in printed
    for kind in KINDS:
        assert f"needs {kind}.nc of this pair's models" in printed
    ds = open_dataset(tmp_path / "c.nc")
    assert (
        ds.verdict.sel(claim=["gradient_anisotropy", "rank1_causal"]).values == "not_tested"
    ).all()


def one_line_error(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(("rsf: error: ", "rsf claims: error: ")), err
    assert "\n" not in err, err
    return err


def test_stats_of_other_results_refused_naming_both_fingerprints(inputs, tmp_path, capsys):
    """A real stats.nc of other results (the same sweep without the pretrain pair): exit 2, one line
    naming both fingerprints; nothing written."""
    other = tmp_path / "other.nc"
    write_dataset(open_dataset(inputs["results"]).sel(pair=["dpo", "run"]), other)
    run_cli(
        [
            "stats",
            str(other),
            "--out",
            str(tmp_path / "other-stats.nc"),
            "--resamples",
            "49",
            "--quiet",
        ]
    )
    out = tmp_path / "claims.nc"
    err = one_line_error(["claims", str(inputs["results"]), "--stats", str(tmp_path / "other-stats.nc"),
                          "--out", str(out)], capsys)  # fmt: skip
    assert "the statistics were made from other results" in err
    assert results_fingerprint(open_dataset(other)) in err
    assert results_fingerprint(open_dataset(inputs["results"])) in err
    assert not out.exists()


def test_extra_of_other_models_refused_naming_both_hashes(inputs, rank1_run, tmp_path, capsys):
    """The rank-1 dataset of a gpt2 model (rank1_run) measured none of the results' models: exit 2,
    one line naming its hash and the results'."""
    foreign = open_dataset(rank1_run[0]).attrs["model_hash"]
    err = one_line_error(["claims", str(inputs["results"]), "--extra", str(rank1_run[0]),
                          "--out", str(tmp_path / "c.nc")], capsys)  # fmt: skip
    assert err.startswith("rsf: error: the rank1 dataset measured other models")
    assert foreign in err
    for name in ("base_hash", "aligned_hash"):
        for value in open_dataset(inputs["results"])[name].values:
            assert str(value) in err


@pytest.mark.parametrize(
    "options, message",
    [(["--isotropy-margin", "0"], "argument --isotropy-margin: must be positive, got 0.0"),
     (["--graded-margin", "-0.25"], "argument --graded-margin: must be positive, got -0.25"),
     (["--alpha", "0.5"], "argument --alpha: must lie in (0, 0.5), got 0.5")],
)  # fmt: skip
def test_bad_margins_and_alpha_are_one_line_errors(inputs, tmp_path, capsys, options, message):
    """A margin ≤ 0 or α outside (0, 0.5): exit 2 with one line; no claims.nc."""
    out = tmp_path / "c.nc"
    err = one_line_error(["claims", str(inputs["results"]), *options, "--out", str(out)], capsys)
    assert err == f"rsf claims: error: {message} (see rsf claims --help)"
    assert not out.exists()


def test_wrong_files_are_one_line_errors(inputs, tmp_path, capsys):
    """A stats.nc given as results, results without gram_purity (written before the Haar references),
    a results.nc given as an extra, a missing file: each exit 2 with one line saying what is wrong."""
    out = str(tmp_path / "c.nc")
    err = one_line_error(["claims", str(inputs["stats"]), "--out", out], capsys)
    assert "is a statistics dataset (from rsf stats), not a results dataset" in err
    old = tmp_path / "old.nc"
    write_dataset(open_dataset(inputs["results"]).drop_vars("gram_purity"), old)
    assert "re-run rsf sweep" in one_line_error(["claims", str(old), "--out", out], capsys)
    err = one_line_error(
        ["claims", str(inputs["results"]), "--extra", str(inputs["results"]), "--out", out], capsys
    )
    assert "an extra dataset of kind 'results'" in err
    err = one_line_error(["claims", str(tmp_path / "absent.nc"), "--out", out], capsys)
    assert "dataset not found" in err
