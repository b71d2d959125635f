"""`rsf sweep` and `rsf inspect` end to end on tiny saved pairs, through `main([...])`."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import FAMILY_NAMES
from transformers import AutoModelForCausalLM, PreTrainedModel

import probes
from robustness import dataset as dataset_module
from robustness.config import PairSpec, SweepConfig
from robustness.corpus import Corpus
from robustness.dataset import build_dataset, open_dataset, write_dataset
from robustness.engine import run_sweep
from rsf.main import main

ALL = ",".join(probes.CONSTRUCTIONS)
SMALL = ["--tokens", "256", "--seq-len", "16", "--quiet"]


def sweep(tmp_path, base, aligned, *extra, out="results.nc", cache=None):
    target = tmp_path / out
    args = ["sweep", "--base", base, "--aligned", aligned, "--out", str(target), *SMALL, *extra]
    args += ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    assert main(args) == 0
    return open_dataset(target)


@pytest.fixture
def ids_file(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.random.default_rng(11).integers(0, 61, size=(16, 16)))
    return path


class ForwardCounter:
    """Counts forward passes of whole transformers (any PreTrainedModel), however invoked."""

    def __init__(self):
        self.calls = 0

    def __enter__(self):
        def hook(module, args, output):
            if isinstance(module, PreTrainedModel):
                self.calls += 1

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_sweep_runs_on_every_family(model_type, saved_pair, tmp_path):
    base, aligned = saved_pair(model_type)
    ds = sweep(
        tmp_path, base, aligned, "--constructions", ALL, "--cutoffs", "k=4,frac=0.25,var=0.9,pr,mp"
    )
    family = probes.FAMILIES[model_type]
    assert list(ds.matrix.values) == [m for m in probes.MATRICES if m in family.matrices]
    assert list(ds.pathway.values) == [probes.PATHWAY[m] for m in ds.matrix.values]
    assert ds.rsf.dims == ("pair", "layer", "matrix", "construction", "cutoff", "normalisation")
    assert ds.k.dims == ("pair", "layer", "matrix", "construction", "cutoff")
    fraction = ds.rsf.sel(normalisation="fraction")
    defined = ds.k >= 1
    assert bool(np.isfinite(fraction.where(defined)).sum() == defined.sum())
    assert float(fraction.min()) >= 0 and float(fraction.max()) <= 1
    # Cutoffs a construction cannot define are NaN with k = -1, never an error.
    assert (ds.k.sel(construction="random", cutoff=["var=0.9", "pr", "mp"]) == -1).all()
    assert (ds.k.sel(construction="unembed", cutoff="mp") == -1).all()
    assert (ds.k.sel(cutoff="k=4") == 4).all()
    assert ds.model_type.values.tolist() == [model_type]


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_inspect_prints_the_adapters_view(model_type, saved_pair, capsys):
    base, _ = saved_pair(model_type)
    assert main(["inspect", base]) == 0
    out = capsys.readouterr().out
    assert f"family       {model_type}" in out
    model = AutoModelForCausalLM.from_pretrained(base)
    for name, shape in probes.model_dims(model).matrix_shapes.items():
        assert f"  {name:5s} {'×'.join(map(str, shape)):>11s}" in out
    assert "attn_in" in out and "resid_post" in out and "final norm" in out
    assert ("tied" in out) == probes.tied_embeddings(model) or "untied" in out


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


def test_netcdf_round_trip_keeps_every_value_and_attribute(saved_pair, tmp_path):
    base, aligned = saved_pair("llama")
    config = SweepConfig(pairs=(PairSpec("p", base, aligned),), cutoffs=("k=2", "var=0.5", "mp"))
    corpus = Corpus(np.random.default_rng(0).integers(0, 61, size=(4, 8)), "test")
    ds = build_dataset(run_sweep(config, corpus, progress=False), config, corpus)
    write_dataset(ds, tmp_path / "r.nc")
    loaded = open_dataset(tmp_path / "r.nc")
    xr.testing.assert_identical(ds, loaded)
    assert loaded.attrs == ds.attrs and loaded.k.dtype == np.int64


def test_several_pairs_from_a_config_and_dask_equals_serial(saved_pair, tmp_path):
    llama, gpt2 = saved_pair("llama"), saved_pair("gpt2", n_layer=3)
    config_path = tmp_path / "sweep.toml"
    config_path.write_text(
        f'[[pair]]\nlabel = "llama"\nbase = "{llama[0]}"\naligned = "{llama[1]}"\n'
        f'[[pair]]\nlabel = "gpt2"\nbase = "{gpt2[0]}"\naligned = "{gpt2[1]}"\n'
        '[corpus]\ntokens = 128\nseq_len = 16\n[probe]\ncutoffs = ["k=4", "pr"]\n'
    )
    common = ["sweep", "--config", str(config_path), "--quiet", "--no-cache"]
    assert main([*common, "--out", str(tmp_path / "serial.nc")]) == 0
    assert main([*common, "--out", str(tmp_path / "dask.nc"), "--workers", "2"]) == 0
    serial, parallel = open_dataset(tmp_path / "serial.nc"), open_dataset(tmp_path / "dask.nc")
    assert list(serial.pair.values) == ["llama", "gpt2"]
    assert serial.sizes["layer"] == 3  # the union of both pairs' layers
    # GPT-2 has no gate and llama no third layer: NaN there, k = -1.
    assert np.isnan(serial.rsf.sel(pair="gpt2", matrix="gate")).all()
    assert (serial.k.sel(pair="llama", layer=2) == -1).all()
    for name in ("rsf", "k", "delta_fro"):
        assert np.array_equal(serial[name].values, parallel[name].values, equal_nan=True), name


def test_cache_hit_runs_no_forward_pass(saved_pair, tmp_path):
    base, aligned = saved_pair("qwen2")
    cache = tmp_path / "cache"
    with ForwardCounter() as first:
        a = sweep(tmp_path, base, aligned, cache=cache, out="a.nc")
    assert first.calls > 0
    with ForwardCounter() as second:
        b = sweep(
            tmp_path,
            base,
            aligned,
            "--cutoffs",
            "k=2,var=0.8",
            "--normalisations",
            "null_z",
            "--constructions",
            "act_cov,act_cov_aligned",
            cache=cache,
            out="b.nc",
        )
    assert second.calls == 0
    same = a.rsf.sel(
        construction=["act_cov", "act_cov_aligned"], cutoff=["var=0.9"], normalisation="null_z"
    )
    assert b.k.sel(cutoff="k=2").min() == 2 and same.notnull().all()


def test_corrupt_cache_entry_is_detected_and_recomputed(saved_pair, tmp_path):
    base, aligned = saved_pair("llama")
    cache = tmp_path / "cache"
    first = sweep(tmp_path, base, aligned, "--constructions", "act_cov", cache=cache, out="a.nc")
    entries = list((cache / "statistics").glob("*.npz"))
    assert len(entries) == 1
    data = entries[0].read_bytes()
    entries[0].write_bytes(data[: len(data) // 2])  # a truncated write
    with (
        ForwardCounter() as counter,
        pytest.warns(RuntimeWarning, match="corrupt statistics cache"),
    ):
        args = [
            "sweep",
            "--base",
            base,
            "--aligned",
            aligned,
            "--out",
            str(tmp_path / "b.nc"),
            "--tokens",
            "256",
            "--seq-len",
            "16",
            "--constructions",
            "act_cov",
            "--cache-dir",
            str(cache),
        ]
        assert main(args) == 0
    assert counter.calls > 0
    second = open_dataset(tmp_path / "b.nc")
    assert np.array_equal(first.rsf.values, second.rsf.values, equal_nan=True)
    # A flipped byte that still unzips is caught by the checksum.
    entry = next((cache / "statistics").glob("*.npz"))
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    entry.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="corrupt statistics cache"):
        assert main(args) == 0


def test_interrupted_write_leaves_no_truncated_results(saved_pair, tmp_path, monkeypatch):
    base, aligned = saved_pair("llama")
    out = tmp_path / "results.nc"
    out.write_bytes(b"previous results")

    def broken(self, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"CDF half")
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    assert (
        main(
            ["sweep", "--base", base, "--aligned", aligned, "--out", str(out), *SMALL, "--no-cache"]
        )
        == 130
    )
    assert out.read_bytes() == b"previous results"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_outputs_get_the_usual_file_mode(tmp_path):
    from robustness.files import atomic_output

    previous = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "out.nc") as temporary:
            temporary.write_bytes(b"data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.nc").stat().st_mode) == 0o644  # not mkstemp's 0600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--base", "./missing/base", "--aligned", "./missing/aligned"],
            "model directory not found: ./missing/base",
        ),
        (
            ["--constructions", "act_cov,pca"],
            "unknown construction 'pca': valid are act_cov, act_moment",
        ),
        (["--cutoffs", "k=8,best"], "unknown cutoff 'best'"),
        (
            ["--normalisations", "zscore"],
            "unknown normalisation 'zscore': valid are fraction, isotropic",
        ),
        (["--cutoffs", "k=64"], "cutoff `k=64` exceeds the residual width d=32"),
        (["--out", "/nonexistent-folder/r.nc"], "cannot write /nonexistent-folder/r.nc: folder"),
        (["--tokens", "1000000"], "tokens need"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(
    args, message, saved_pair, tmp_path, capsys, monkeypatch
):
    base, aligned = saved_pair("llama")
    loads = []
    monkeypatch.setattr(
        probes, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("model loaded")
    )
    pair = [] if "--base" in args else ["--base", base, "--aligned", aligned]
    out = [] if "--out" in args else ["--out", str(tmp_path / "r.nc")]
    assert main(["sweep", *pair, *out, *args, "--quiet", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsf: error: ") and message in err and err.count("\n") == 1, err
    assert loads == []  # refused before any model was loaded


def test_mismatched_pair_and_unreachable_hub_id(saved_pair, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    llama, gpt2 = saved_pair("llama"), saved_pair("gpt2")
    assert (
        main(["sweep", "--base", llama[0], "--aligned", gpt2[1], "--out", str(tmp_path / "r.nc")])
        == 2
    )
    assert "is mismatched (base vs aligned): model_type: llama vs gpt2" in capsys.readouterr().err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert (
        main(
            [
                "sweep",
                "--base",
                "no-org/no-model",
                "--aligned",
                llama[1],
                "--out",
                str(tmp_path / "r.nc"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "cannot reach hub id 'no-org/no-model'" in err and "pass a local directory" in err
    assert main(["sweep", "--base", llama[0], "--aligned", llama[1], "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nothing-here")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_token_ids_outside_the_vocabulary_are_refused(saved_pair, tmp_path, capsys):
    base, aligned = saved_pair("llama")
    ids = tmp_path / "big.npy"
    np.save(ids, np.full((4, 8), 500))
    args = [
        "sweep",
        "--base",
        base,
        "--aligned",
        aligned,
        "--out",
        str(tmp_path / "r.nc"),
        "--corpus",
        str(ids),
    ]
    assert main([*args, "--quiet", "--no-cache"]) == 2
    assert "token id 500, outside pair" in capsys.readouterr().err


def test_dataset_module_has_the_contract_variables():
    assert set(dataset_module.PROVENANCE) >= {"base_id", "aligned_id", "base_hash", "aligned_hash"}
