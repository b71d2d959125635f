"""`rsf sweep` (rsf/sweep.py) end to end on tiny saved pairs, through `main([...])`: every family,
configs with several pairs (serial and Dask), the stored bootstrap, and bad input as one line."""

from __future__ import annotations

import numpy as np
import pytest
from rsf_commands import sweep
from tiny_models import FAMILY_NAMES

import probes
from robustness.io.datasets import open_dataset
from rsf.main import main

ALL = ",".join(probes.CONSTRUCTIONS)


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


def test_one_pair_on_dask_runs_layer_blocks_equal_to_serial(saved_pair, tmp_path):
    """Null hypothesis: a single pair split into layer blocks on a two-worker local cluster
    (loopback only) gives a serial run's numbers, bootstrap replicates included, bit for bit
    (the workers use the client's thread counts)."""
    base, aligned = saved_pair("llama", num_hidden_layers=4)
    common = ["sweep", "--base", base, "--aligned", aligned, "--tokens", "256", "--seq-len", "16",
              "--constructions", "act_cov,act_cov_aligned,unembed,random", "--cutoffs", "k=4,pr",
              "--bootstrap", "3", "--quiet", "--no-cache"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "serial.nc")]) == 0
    assert main([*common, "--out", str(tmp_path / "dask.nc"), "--workers", "2"]) == 0
    serial, parallel = open_dataset(tmp_path / "serial.nc"), open_dataset(tmp_path / "dask.nc")
    for name in ("rsf", "k", "delta_fro", "gram_purity", "rsf_boot"):
        assert np.array_equal(serial[name].values, parallel[name].values, equal_nan=True), name


def test_replicates_and_jackknife_are_stored(boot_results):
    ds, _ = boot_results
    assert ds.rsf_boot.dims == (
        "replicate",
        "pair",
        "layer",
        "matrix",
        "construction",
        "cutoff",
        "normalisation",
    )
    assert ds.sizes["replicate"] == 30 and ds.sizes["jackknife"] == 32  # 32 sequences → 32 chunks
    assert ds.attrs["bootstrap_replicates"] == 30
    # Subspaces that do not depend on the corpus do not move across replicates.
    for construction in ("unembed", "random"):
        point = ds.rsf.sel(construction=construction).values
        replicates = ds.rsf_boot.sel(construction=construction).values
        assert np.array_equal(replicates, np.broadcast_to(point, replicates.shape), equal_nan=True)
    moving = ds.rsf_boot.sel(construction="act_cov", cutoff="k=4", normalisation="fraction")
    assert float(moving.std("replicate").mean()) > 0
    # Replicates scatter around the full-sample value.
    point = ds.rsf.sel(construction="act_cov", cutoff="k=4", normalisation="fraction")
    assert float(np.abs(moving.mean("replicate") - point).max()) < 5 * float(
        moving.std("replicate").max()
    )


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
    capsys.readouterr()  # building the pair may print the writer's progress
    loads = []
    monkeypatch.setattr(
        probes, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("model loaded")
    )
    pair = [] if "--base" in args else ["--base", base, "--aligned", aligned]
    out = [] if "--out" in args else ["--out", str(tmp_path / "r.nc")]
    assert main(["sweep", *pair, *out, *args, "--quiet", "--no-cache"]) == 2
    err = capsys.readouterr().err
    # Argument errors are argparse's line (`rsf sweep: error: argument …`), the rest main's.
    assert err.startswith(("rsf: error: ", "rsf sweep: error: ")), err
    assert message in err and err.count("\n") == 1, err
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
    # Online: no such model; offline (HF_HUB_OFFLINE): not in the local cache. Either way one line.
    assert "no-org/no-model" in err and "pass a local directory" in err and err.count("\n") == 1
    assert main(["sweep", "--base", llama[0], "--aligned", llama[1], "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


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
    assert "token id 500, outside the vocabulary of pair" in capsys.readouterr().err


def test_a_parquet_corpus_and_a_chat_corpus_sweep_and_say_so(saved_pair, tmp_path):
    """Null: a datasets corpus is only another source of documents; the sweep records its split,
    column and, for conversations, whose chat template rendered them (here the base's)."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    base, aligned = saved_pair("llama")
    texts = [" ".join(f"w{i}{j}" for j in range(60)) for i in range(20)]
    pq.write_table(pa.table({"body": texts}), tmp_path / "docs.parquet")
    ds = sweep(tmp_path, base, aligned, "--corpus", str(tmp_path / "docs.parquet"),
               "--text-column", "body", out="parquet.nc")  # fmt: skip
    assert ds.attrs["corpus_source"] == "docs.parquet"
    assert (ds.attrs["corpus_split"], ds.attrs["corpus_column"]) == ("train", "body")
    chat_base = tmp_path / "chat-base"
    shutil.copytree(base, chat_base)
    tokenizer = AutoTokenizer.from_pretrained(chat_base)
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    tokenizer.save_pretrained(chat_base)
    (tmp_path / "chat.jsonl").write_text("\n".join(
        json.dumps({"messages": [{"role": "user", "content": t[:200]},
                                 {"role": "assistant", "content": t[200:]}]})
        for t in texts
    ))  # fmt: skip
    chat = sweep(tmp_path, str(chat_base), aligned, "--corpus", str(tmp_path / "chat.jsonl"),
                 out="chat.nc")  # fmt: skip
    assert chat.attrs["chat_template"] == f"base ({chat_base})"
