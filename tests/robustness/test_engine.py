"""The sweep engine (robustness.measure.engine): its values against an independent computation, seeds,
and the sequence bootstrap (replicates reweight chunk statistics, no forward pass each).

The value and seed checks sweep through `rsf sweep` (rsf_commands.sweep); the bootstrap ones
call run_sweep directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rsf_commands import sweep
from transformers import AutoModelForCausalLM

import probes
from robustness.measure.corpus import Corpus
from robustness.measure.runner import run_sweep
from robustness.settings.config import PairSpec, SweepConfig


@pytest.fixture
def ids_file(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.random.default_rng(11).integers(0, 61, size=(16, 16)))
    return path


def test_values_match_an_independent_computation(saved_pair, tmp_path, ids_file):
    """act_cov, unembed and weight_svd recomputed with plain torch hooks and NumPy SVDs."""
    base_dir, aligned_dir = saved_pair("llama")
    ds = sweep(
        tmp_path,
        base_dir,
        aligned_dir,
        "--corpus",
        str(ids_file),
        "--constructions",
        "act_cov,unembed,weight_svd",
        "--cutoffs",
        "k=3,pr",
    )
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    aligned = AutoModelForCausalLM.from_pretrained(aligned_dir)
    layer = 1
    q_in = []
    handle = base.model.layers[layer].self_attn.q_proj.register_forward_pre_hook(
        lambda module, args: q_in.append(args[0].double().reshape(-1, 32))
    )
    with torch.no_grad():
        base(torch.as_tensor(np.load(ids_file)))
    handle.remove()
    x = torch.cat(q_in).numpy()
    values, vectors = np.linalg.eigh(np.cov(x.T, bias=True))
    values, vectors = values[::-1], vectors[:, ::-1]
    dq = (
        aligned.model.layers[layer].self_attn.q_proj.weight
        - base.model.layers[layer].self_attn.q_proj.weight
    )
    dq = dq.detach().double().numpy()
    f3 = np.sum((dq @ vectors[:, :3]) ** 2) / np.sum(dq**2)
    cell = ds.sel(pair=ds.pair[0], layer=layer, matrix="q", construction="act_cov")
    assert float(cell.rsf.sel(cutoff="k=3", normalisation="fraction")) == pytest.approx(
        f3, rel=1e-6
    )
    assert float(cell.rsf.sel(cutoff="k=3", normalisation="isotropic")) == pytest.approx(
        f3 * 32 / 3, rel=1e-6
    )
    pr = round(values.sum() ** 2 / np.sum(values**2))
    assert int(cell.k.sel(cutoff="pr")) == pr
    f_pr = np.sum((dq @ vectors[:, :pr]) ** 2) / np.sum(dq**2)
    assert float(cell.rsf.sel(cutoff="pr", normalisation="fraction")) == pytest.approx(
        f_pr, rel=1e-6
    )
    w_base = base.model.layers[layer].self_attn.q_proj.weight.detach().double().numpy()
    base_f3 = np.sum((w_base @ vectors[:, :3]) ** 2) / np.sum(w_base**2)
    assert float(cell.rsf.sel(cutoff="k=3", normalisation="base_relative")) == pytest.approx(
        f3 / base_f3, rel=1e-6
    )
    # Write side: o against the unembedding's right singular vectors; down against W_down's own.
    do = (
        aligned.model.layers[layer].self_attn.o_proj.weight
        - base.model.layers[layer].self_attn.o_proj.weight
    )
    do = do.detach().double().numpy()
    _, _, vt = np.linalg.svd(base.lm_head.weight.detach().double().numpy())
    expected = np.sum((vt[:3] @ do) ** 2) / np.sum(do**2)
    got = ds.rsf.sel(
        pair=ds.pair[0],
        layer=layer,
        matrix="o",
        construction="unembed",
        cutoff="k=3",
        normalisation="fraction",
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)
    w_down = base.model.layers[layer].mlp.down_proj.weight.detach().double().numpy()
    d_down = aligned.model.layers[layer].mlp.down_proj.weight.detach().double().numpy() - w_down
    left, _, _ = np.linalg.svd(w_down)
    expected = np.sum((left[:, :3].T @ d_down) ** 2) / np.sum(d_down**2)
    got = ds.rsf.sel(
        pair=ds.pair[0],
        layer=layer,
        matrix="down",
        construction="weight_svd",
        cutoff="k=3",
        normalisation="fraction",
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(ds.delta_fro.sel(pair=ds.pair[0], layer=layer, matrix="q")) == pytest.approx(
        np.linalg.norm(dq)
    )


def test_same_seed_reproduces_every_value_and_the_seed_moves_only_random(saved_pair, tmp_path):
    base, aligned = saved_pair("gpt2")
    a = sweep(tmp_path, base, aligned, "--seed", "5", out="a.nc")
    b = sweep(tmp_path, base, aligned, "--seed", "5", out="b.nc")
    c = sweep(tmp_path, base, aligned, "--seed", "6", out="c.nc")
    for name in ("rsf", "k", "delta_fro"):
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True)
    others = [c_ for c_ in a.construction.values if c_ != "random"]
    assert np.array_equal(
        a.rsf.sel(construction=others).values, c.rsf.sel(construction=others).values, equal_nan=True
    )
    assert not np.allclose(
        a.rsf.sel(construction="random").values,
        c.rsf.sel(construction="random").values,
        equal_nan=True,
    )
    for attr in ("corpus_hash", "config", "seed", "n_tokens"):
        assert (a.attrs[attr] == b.attrs[attr]) and attr in a.attrs
    assert a.base_hash.values[0].startswith("sha256:")


# ---------------------------------------------------------------------------- the sequence bootstrap


def test_a_replicate_with_every_chunk_once_is_the_point_estimate(saved_pair):
    base, aligned = saved_pair("gpt2")
    config = SweepConfig(
        pairs=(PairSpec("p", base, aligned),),
        constructions=("act_cov",),
        cutoffs=("k=4", "pr"),
        replicates=2,
        bca=True,
    )
    corpus = Corpus(np.random.default_rng(0).integers(0, 61, size=(8, 8)), "test")
    (result,) = run_sweep(config, corpus, progress=False)
    weights = result.bootstrap["weights"]
    assert weights.shape == (2 + 8, 8)  # replicates, then one leave-one-out row per chunk
    assert np.all(weights[:2].sum(axis=1) == 8)  # multinomial counts over the 8 chunks
    # The jackknife rows leave exactly one chunk out each.
    assert np.array_equal(weights[2:], 1 - np.eye(8))


def test_a_replicate_equals_a_sweep_of_its_resampled_corpus(saved_pair):
    """Reweighting chunk c by w_c is the corpus with chunk c's sequences repeated w_c times.

    With one sequence per chunk, each bootstrap (and jackknife) row is checked
    against an ordinary sweep, with its own forward passes and eigendecompositions,
    of the corpus that row describes. This covers the block-wise reweighting and
    the shared eigendecomposition pool.
    """
    base, aligned = saved_pair("gpt2")
    ids = np.random.default_rng(1).integers(0, 61, size=(8, 8))
    config = SweepConfig(
        pairs=(PairSpec("p", base, aligned),),
        constructions=("act_cov", "act_moment", "unembed"),
        cutoffs=("k=2", "k=5", "var=0.9", "pr"),
        normalisations=("fraction", "null_z", "base_relative"),
        replicates=11,  # more than one block of replicates
        bca=True,
    )
    (result,) = run_sweep(config, Corpus(ids, "test"), progress=False)
    rows = np.vstack([result.bootstrap["replicates"], result.bootstrap["jackknife"]])
    weights = result.bootstrap["weights"]
    assert len(rows) == len(weights) == 11 + 8
    plain = config.with_options(replicates=0)
    for b in (0, 10, 18):  # replicates from both blocks, and a jackknife row
        resampled = np.repeat(ids, weights[b].astype(int), axis=0)
        (direct,) = run_sweep(plain, Corpus(resampled, f"row {b}"), progress=False)
        # Chunk sums are stored in float32, and eigenvectors amplify that round-off
        # by 1/gap: agreement to 1e-4 (a wrongly weighted replicate is off by ~1e-2).
        np.testing.assert_allclose(rows[b], direct.rsf, rtol=1e-4, atol=1e-5)


def test_the_weights_hash_does_not_depend_on_the_dtype_the_models_are_loaded_in(
    saved_pair, tmp_path
):
    """One checkpoint swept at float32 and at bfloat16: the same base and aligned hashes.

    The hash is over the stored tensors (``probes.weights_hash``); hashing the
    model as loaded would give each dtype its own hash, and the datasets could
    not be matched.
    """
    base, aligned = saved_pair("llama")
    f32 = sweep(
        tmp_path, base, aligned, "--constructions", "unembed", "--dtype", "float32", out="a.nc"
    )
    bf16 = sweep(
        tmp_path, base, aligned, "--constructions", "unembed", "--dtype", "bfloat16", out="b.nc"
    )
    for name in ("base_hash", "aligned_hash"):
        assert str(f32[name].values[0]) == str(bf16[name].values[0])
    assert str(f32.base_hash.values[0]) != str(f32.aligned_hash.values[0])
    assert str(f32.base_hash.values[0]) == probes.weights_hash(base)


class _Bar:
    def __init__(self):
        self.postfix, self.updates = None, 0

    def update(self, n):
        self.updates += n

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text


class _Found:
    """What the layers bar reads of the collected outputs (engine._Collected)."""

    def __init__(self, n_layers, rows):
        self.k = np.zeros((n_layers, 1))
        self.weights_b = np.zeros((rows, 4))
        self.bootstrap_seconds, self.layers_done = 0.0, 0

    def keep(self, layer, out):
        self.bootstrap_seconds += out["bootstrap_seconds"]
        self.layers_done += 1


def test_the_layers_bar_says_when_the_bootstrap_dominates():
    """The progress line gives the bootstrap's share of the time and its estimated seconds per
    replicate (the pair's n_layers layers) once the bootstrap takes over half the time, and says
    nothing of it before."""
    from robustness.measure.engine import _advance

    bar, found = _Bar(), _Found(n_layers=10, rows=50)
    _advance(bar, found, 0, {"bootstrap_seconds": 1.0}, elapsed=4.0)  # a quarter of the time
    assert bar.updates == 1 and bar.postfix is None
    _advance(bar, found, 1, {"bootstrap_seconds": 5.0}, elapsed=8.0)  # 6 of 8 s
    # 6 s over 2 layers, 10 layers in all, 50 replicates: 0.6 s a replicate.
    assert bar.postfix == "bootstrap 75% of the time, ~0.6 s a replicate"
