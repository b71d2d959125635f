"""Fixtures for the command-line tests: runs that more than one command's tests read.

Session-scoped, so `rsf experiment`'s and `rsf report`'s tests (or `rsf sweep`'s
and `rsf stats`'s) share one run; the training runs use one torch thread.
"""

from __future__ import annotations

import pytest
from rsf_commands import run_cli
from tiny_models import single_torch_thread

from robustness.io.datasets import open_dataset
from rsf.main import main


@pytest.fixture(scope="session")
def boot_results(saved_pair, tmp_path_factory):
    """`rsf sweep --bootstrap 30 --bca` on a four-layer llama pair: (dataset, the argument list)."""
    base, aligned = saved_pair("llama", num_hidden_layers=4)
    out = tmp_path_factory.mktemp("boot") / "results.nc"
    args = [
        "sweep",
        "--base",
        base,
        "--aligned",
        aligned,
        "--out",
        str(out),
        "--tokens",
        "512",
        "--seq-len",
        "16",
        "--bootstrap",
        "30",
        "--bca",
        "--constructions",
        "act_cov,act_cov_aligned,unembed,random",
        "--cutoffs",
        "k=4,var=0.9",
        "--quiet",
        "--no-cache",
    ]
    assert main(args) == 0
    return open_dataset(out), args


@pytest.fixture(scope="session")
def contrastive_run(saved_pair, tmp_path_factory):
    """`rsf experiment contrastive` at λ = 0, 0.5, 1: (base, root, out, stdout).

    Four layers: the trend's test over layers needs at least four.
    """
    base, _ = saved_pair("llama", num_hidden_layers=4)
    root = tmp_path_factory.mktemp("contrastive")
    out = root / "contrastive.nc"
    with single_torch_thread():
        printed = run_cli([
            "experiment", "contrastive", "--base", base, "--lams", "0,0.5,1", "--steps", "2",
            "--train-batch", "4", "--prompt-len", "6", "--train-tokens", "480", "--gradient-pairs", "8",
            "--gradient-bootstrap", "5", "--tokens", "512", "--seq-len", "32", "--cutoffs", "k=4,k=8",
            "--variants-dir", str(root / "variants"), "--cache-dir", str(root / "cache"),
            "--quiet", "--out", str(out),
        ])  # fmt: skip
    return base, root, out, printed


@pytest.fixture(scope="session")
def rank1_run(saved_pair, tmp_path_factory):
    """`rsf experiment rank1` on a gpt2 model, up and down: (out, stdout)."""
    base, _ = saved_pair("gpt2")
    out = tmp_path_factory.mktemp("rank1") / "rank1.nc"
    with single_torch_thread():
        printed = run_cli([
            "experiment", "rank1", "--model", base, "--controls", "2", "--tokens", "256",
            "--seq-len", "16", "--read-matrix", "up", "--write-matrix", "down", "--quiet", "--out", str(out),
        ])  # fmt: skip
    return out, printed
