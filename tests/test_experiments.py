"""`rsf experiment trajectory|contrastive|rank1` (robustness.trajectory, .contrastive, .rank1).

References: the trajectory against separate sweeps of the same pairs; the
trend test against exact enumeration on a constructed monotone case; the
rank-1 hook against the same update written into the weights, and its margin
against robustness.training.preference_margin on an edited copy.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import VOCAB, aligned_copy, char_tokenizer, random_model

import probes
from probes import rank1_hook, rank1_update
from robustness.config import CorpusSpec, PairSpec, SweepConfig
from robustness.corpus import Corpus
from robustness.demo import demo_checkpoints, demo_token_windows
from robustness.engine import sweep_pair
from robustness.experiments.contrastive import ContrastiveSettings, train_variants
from robustness.experiments.rank1 import Rank1Settings, rank1_dataset
from robustness.experiments.trajectory import trajectory_dataset, trajectory_pairs
from robustness.experiments.trend import trend_test
from robustness.preferences import preference_margin, preference_pairs
from rsf.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- rank-1


def test_rank1_update_is_rank_one_with_the_requested_norm_and_directions():
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal(7), rng.standard_normal(5)
    delta = rank1_update(u, v, 0.37).numpy()
    assert np.linalg.matrix_rank(delta, tol=1e-12) == 1
    assert np.linalg.norm(delta) == pytest.approx(0.37, rel=1e-12)
    left, singular, right = np.linalg.svd(delta)
    assert singular[0] == pytest.approx(0.37, rel=1e-12)
    assert abs(left[:, 0] @ u / np.linalg.norm(u)) == pytest.approx(1, rel=1e-12)
    assert abs(right[0] @ v / np.linalg.norm(v)) == pytest.approx(1, rel=1e-12)
    with pytest.raises(ValueError, match="non-zero"):
        rank1_update(np.zeros(3), v, 1.0)


@pytest.mark.parametrize(
    ("model_type", "matrix"),
    [("llama", "q"), ("llama", "o"), ("gpt2", "k"), ("gpt2", "o"), ("gpt_neox", "v")],
)
def test_rank1_hook_equals_the_update_written_into_the_weights(model_type, matrix):
    model = random_model(model_type).double()
    layer = 1
    w = probes.canonical_weights(model, matrices=[matrix], layers=[layer])[(layer, matrix)]
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal(w.shape[0]), rng.standard_normal(w.shape[1])
    ids = torch.as_tensor(rng.integers(0, VOCAB, (2, 7)))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with rank1_hook(model, layer, matrix, u, v, 0.8):
            hooked = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        edited = copy.deepcopy(model)
        update = rank1_update(u, v, 0.8)
        if model_type == "gpt_neox":  # interleaved q|k|v per head: view(H, 3, hd, d)
            fused = edited.gpt_neox.layers[layer].attention.query_key_value.weight
            heads = edited.config.num_attention_heads
            fused.view(heads, 3, -1, fused.shape[1])[:, 2] += update.view(heads, -1, fused.shape[1])
        else:  # contiguous splits and Conv1D transposes are views into the weights
            probes.canonical_weights(edited, matrices=[matrix], layers=[layer])[
                (layer, matrix)
            ] += update
        expected = edited(input_ids=ids).logits
    torch.testing.assert_close(hooked, expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(hooked, base)
    torch.testing.assert_close(after, base, rtol=0, atol=0)  # the hook is gone


def test_rank1_dataset_margin_matches_preference_margin(tmp_path):
    model = random_model("llama")
    ids = np.random.default_rng(2).integers(0, VOCAB, (12, 12))
    settings = Rank1Settings(controls=3, layer=1, scale=0.5, replicates=200)
    ds = rank1_dataset(model, Corpus(ids, "test"), settings, progress=False)
    assert ds.attrs["kind"] == "rank1"
    assert ds.sizes["intervention"] == 1 + 2 * 3
    # The principal direction is the top eigenvector of the read site's covariance.
    stats = probes.collect_statistics(model, ids, sites=[(1, "attn_in")])
    top = stats.sites[(1, "attn_in")].subspace().basis[:, 0]
    direction = ds.direction.sel(matrix="q", intervention="principal").values
    assert abs(direction @ top) == pytest.approx(1, abs=1e-6)
    np.testing.assert_allclose(ds.alignment.sel(intervention="principal").values, 1.0, rtol=1e-9)
    matched = ds.alignment.where(ds.family == "matched", drop=True).values
    assert np.all(matched < 1 + 1e-9)
    # Independent check: write the principal update into a copy's weights, use preference_margin.
    pairs = preference_pairs(ids, prompt_len=6, rng=probes.construction_rng(0, "rank1", "pairs"))
    w = probes.canonical_weights(model, matrices=["q"], layers=[1])[(1, "q")]
    left = np.linalg.svd(w.double().numpy())[0][:, 0]
    u = left if left[np.argmax(np.abs(left))] > 0 else -left
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.model.layers[1].self_attn.q_proj.weight += rank1_update(
            u, direction, float(ds.update_norm.sel(matrix="q"))
        ).float()
    expected = preference_margin(edited, model, pairs, beta=0.1).mean()
    assert float(ds.margin_change.sel(matrix="q", intervention="principal")) == pytest.approx(
        expected, rel=1e-3, abs=1e-6
    )
    p = ds.p_margin.values
    assert np.all((p >= 1 / 7 - 1e-12) & (p <= 1))
    assert np.all(ds.kl.values >= -1e-7)


# ---------------------------------------------------------------------------- trend test


def test_trend_test_exact_on_a_monotone_single_block():
    lams = np.array([0, 0.25, 0.5, 0.75, 1.0])
    result = trend_test(lams * 2 + 1, lams, rng=np.random.default_rng(0))
    assert result.exact
    assert result.slope == pytest.approx(2.0)
    # Only the observed order and its reversal reach |slope| = 2: p = 2/5!.
    assert result.p_value == pytest.approx(2 / 120)
    assert result.spearman == pytest.approx(1.0)


def test_trend_test_detects_a_monotone_trend_over_blocks():
    rng = np.random.default_rng(1)
    lams = np.array([0, 0.25, 0.5, 0.75, 1.0])
    offsets = rng.standard_normal(8) * 5  # blocks differ a lot; the fixed effects absorb it
    values = -0.5 * lams[:, None] + offsets[None, :] + 0.05 * rng.standard_normal((5, 8))
    result = trend_test(values, lams, n_resamples=999, rng=np.random.default_rng(2))
    assert not result.exact
    assert result.slope == pytest.approx(-0.5, abs=0.05)
    assert result.p_value == pytest.approx(1 / 1000)
    assert result.slope_ci_low < -0.5 < result.slope_ci_high
    assert result.page_p < 0.001


def test_trend_test_without_trend_is_not_significant():
    rng = np.random.default_rng(3)
    lams = np.array([0, 0.25, 0.5, 0.75, 1.0])
    values = rng.standard_normal((5, 8))
    result = trend_test(values, lams, n_resamples=999, rng=np.random.default_rng(4))
    assert result.p_value > 0.05
    assert result.slope_ci_low < 0 < result.slope_ci_high


def test_trend_test_validates_its_input():
    with pytest.raises(ValueError, match="3 distinct levels"):
        trend_test(np.zeros((2, 3)), [0, 1], rng=np.random.default_rng(0))
    result = trend_test(np.full((3, 2), np.nan), [0, 0.5, 1], rng=np.random.default_rng(0))
    assert result.n_blocks == 0 and math.isnan(result.p_value)


# ---------------------------------------------------------------------------- trajectory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("trajectory")
    model = random_model("llama", seed=5)
    dirs = []
    for step in range(3):
        path = root / f"step-{step:05d}"
        model.save_pretrained(path)
        char_tokenizer().save_pretrained(path)
        dirs.append(str(path))
        model = aligned_copy(model, seed=100 + step)
    ids_path = root / "ids.npy"
    np.save(ids_path, np.random.default_rng(6).integers(0, VOCAB, (16, 16)))
    return dirs, str(ids_path)


def test_trajectory_pairs_share_the_first_step():
    pairs, layout = trajectory_pairs(["a", "b", "c"], ["a", "b", "c"])
    assert [(p.base, p.aligned) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert layout["where"][("start", "b")] == layout["where"][("previous", "b")]
    with pytest.raises(ValueError, match="at least 2"):
        trajectory_pairs(["a"])


def test_trajectory_equals_separate_sweeps(checkpoints, tmp_path):
    dirs, ids_path = checkpoints
    config = SweepConfig(
        pairs=(PairSpec("x", dirs[0], dirs[1]),),
        corpus=CorpusSpec(ids=ids_path),
        constructions=("act_cov", "unembed", "random"),
        cutoffs=("k=4", "var=0.9"),
        normalisations=("isotropic", "fraction"),
        device="cpu",
    )
    corpus = Corpus(np.load(ids_path), "ids")
    ds = trajectory_dataset(dirs, config, corpus, cache_root=tmp_path, progress=False)
    assert ds.attrs["kind"] == "trajectory"
    assert list(ds.position.values) == [1, 2]
    assert list(ds.checkpoint_id.values) == dirs[1:]
    for reference, start in (("start", 0), ("previous", 1)):
        # The same label: random bases are seeded by (pair, layer, matrix).
        label = str(ds.pair.sel(reference=reference).isel(checkpoint=1).values)
        separate = sweep_pair(
            PairSpec(label, dirs[start], dirs[2]), config, corpus, cache_root=None, progress=False
        )
        got = (
            ds.rsf.sel(reference=reference)
            .isel(checkpoint=1)
            .transpose("layer", "matrix", ...)
            .values
        )
        np.testing.assert_array_equal(got, separate.rsf)
    # At the first checkpoint, start and previous are the same pair.
    np.testing.assert_array_equal(
        ds.rsf.sel(reference="start").isel(checkpoint=0),
        ds.rsf.sel(reference="previous").isel(checkpoint=0),
    )
    # The summary is the layer mean of log2 read − write.
    cell = ds.rsf.sel(
        reference="start", construction="act_cov", cutoff="k=4", normalisation="isotropic"
    ).isel(checkpoint=1)
    log = np.log2(cell)
    expected = float(
        (
            log.sel(matrix=["q", "k"]).mean("matrix") - log.sel(matrix=["o", "down"]).mean("matrix")
        ).mean()
    )
    got = float(
        ds.asymmetry.sel(
            reference="start", construction="act_cov", cutoff="k=4", normalisation="isotropic"
        ).isel(checkpoint=1)
    )
    assert got == pytest.approx(expected, rel=1e-12)
    assert (
        float(
            ds.asymmetry_ci_low.sel(
                reference="start", construction="act_cov", cutoff="k=4", normalisation="isotropic"
            ).isel(checkpoint=1)
        )
        <= got
    )


def test_cli_trajectory_from_checkpoints_and_config(checkpoints, tmp_path, capsys):
    dirs, ids_path = checkpoints
    out = tmp_path / "trajectory.nc"
    common = [
        "--corpus",
        ids_path,
        "--cutoffs",
        "k=4",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    code = main(
        [
            "experiment",
            "trajectory",
            "--checkpoints",
            ",".join(dirs),
            "--bootstrap",
            "4",
            "--out",
            str(out),
            *common,
        ]
    )
    assert code == 0
    assert "relative to the previous checkpoint" in capsys.readouterr().out
    ds = xr.open_dataset(out)
    assert ds.sizes["replicate"] == 4 and "asymmetry_seq_ci_low" in ds
    config = tmp_path / "trajectory.toml"
    listed = ", ".join(f'"{d}"' for d in dirs)
    config.write_text(
        f'[trajectory]\ncheckpoints = [{listed}]\nlabels = ["init", "mid", "end"]\n'
        f'[corpus]\nids = "{ids_path}"\n[probe]\nconstructions = ["act_cov", "unembed"]\n'
        'cutoffs = ["k=4"]\nnormalisations = ["isotropic"]\n'
    )
    out2 = tmp_path / "trajectory2.nc"
    assert (
        main(
            [
                "experiment",
                "trajectory",
                "--config",
                str(config),
                "--out",
                str(out2),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--quiet",
            ]
        )
        == 0
    )
    ds2 = xr.open_dataset(out2)
    assert list(ds2.checkpoint.values) == ["mid", "end"]
    # Same pairs and corpus; only the statistics' accumulation order differs (the first
    # run keeps bootstrap chunks), so float32 products agree to round-off.
    np.testing.assert_allclose(
        ds2.rsf.sel(construction="act_cov").values,
        ds.rsf.sel(construction="act_cov").values,
        rtol=1e-5,
    )


def test_cli_trajectory_errors_are_one_line(tmp_path, capsys):
    code = main(
        ["experiment", "trajectory", "--checkpoints", "only-one", "--out", str(tmp_path / "t.nc")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "rsf: error: a trajectory needs at least 2 checkpoints, got 1"


# ---------------------------------------------------------------------------- contrastive and rank1 CLI


def _run(argv) -> str:
    """`main(argv)` in-process; its stdout (exit status 0 required)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue()


@pytest.fixture(scope="module")
def contrastive_run(saved_pair, tmp_path_factory):
    base, _ = saved_pair("llama")
    root = tmp_path_factory.mktemp("contrastive")
    out = root / "contrastive.nc"
    printed = _run([
        "experiment", "contrastive", "--base", base, "--lams", "0,0.5,1", "--steps", "2",
        "--train-batch", "4", "--prompt-len", "6", "--train-tokens", "480", "--gradient-pairs", "8",
        "--gradient-bootstrap", "5", "--tokens", "512", "--seq-len", "32", "--cutoffs", "k=4",
        "--variants-dir", str(root / "variants"), "--cache-dir", str(root / "cache"),
        "--quiet", "--out", str(out),
    ])  # fmt: skip
    return base, root, out, printed


@pytest.fixture(scope="module")
def rank1_run(saved_pair, tmp_path_factory):
    base, _ = saved_pair("gpt2")
    out = tmp_path_factory.mktemp("rank1") / "rank1.nc"
    printed = _run([
        "experiment", "rank1", "--model", base, "--controls", "2", "--tokens", "256",
        "--seq-len", "16", "--read-matrix", "up", "--write-matrix", "down", "--quiet", "--out", str(out),
    ])  # fmt: skip
    return out, printed


def test_cli_contrastive_end_to_end(contrastive_run):
    base, root, out, printed = contrastive_run
    assert "trend against λ" in printed
    ds = xr.open_dataset(out)
    assert ds.attrs["kind"] == "contrastive"
    np.testing.assert_array_equal(ds.lam.values, [0, 0.5, 1])
    assert len(set(ds.variant_hash.values)) == 3  # the objective changes the weights
    assert "delta_entropy_rank" in ds.trend.values
    assert np.isfinite(ds.trend_p_value.values).all()
    assert np.all(ds.delta_mean_entropy_rank_ci_low <= ds.delta_mean_entropy_rank_ci_high)
    # The same settings find the saved variants instead of training again.
    settings = ContrastiveSettings(lams=(0.0, 0.5, 1.0), steps=2, batch_size=4, prompt_len=6)
    train_ids = np.random.default_rng(0).integers(0, VOCAB, (4, 12))
    first = train_variants(base, train_ids, settings, variants_dir=root / "again", progress=False)
    stamps = [Path(p, "config.json").stat().st_mtime_ns for p in first]
    second = train_variants(base, train_ids, settings, variants_dir=root / "again", progress=False)
    assert second == first
    assert [Path(p, "config.json").stat().st_mtime_ns for p in second] == stamps
    names = [Path(p).name for p in ds.variant_id.values]
    assert [n.split("-")[1] for n in names] == ["0", "0.5", "1"]


def test_cli_rank1_end_to_end(rank1_run):
    out, printed = rank1_run
    assert "principal Δmargin" in printed
    ds = xr.open_dataset(out)
    assert list(ds.matrix.values) == ["up", "down"]
    assert ds.attrs["layer"] == 1
    np.testing.assert_allclose(ds.update_norm.values, 0.25 * ds.weight_fro.values)


def test_report_shows_every_mechanism_section(
    saved_pair, checkpoints, contrastive_run, rank1_run, tmp_path
):
    base, aligned = saved_pair("llama")
    results, gradients = tmp_path / "results.nc", tmp_path / "gradients.nc"
    _run(["sweep", "--base", base, "--aligned", aligned, "--tokens", "256", "--seq-len", "16",
          "--constructions", "act_cov,unembed", "--cutoffs", "k=4", "--normalisations", "isotropic",
          "--no-cache", "--quiet", "--out", str(results)])  # fmt: skip
    _run(["gradients", "--model", base, "--tokens", "256", "--seq-len", "16", "--bootstrap", "4",
          "--quiet", "--out", str(gradients)])  # fmt: skip
    dirs, ids_path = checkpoints
    trajectory = tmp_path / "trajectory.nc"
    _run(["experiment", "trajectory", "--checkpoints", ",".join(dirs), "--corpus", ids_path,
          "--cutoffs", "k=4", "--no-cache", "--quiet", "--out", str(trajectory)])  # fmt: skip
    extras = [gradients, trajectory, contrastive_run[2], rank1_run[0]]
    report = tmp_path / "report.html"
    _run(["report", str(results), "--extra", ",".join(map(str, extras)), "--out", str(report)])
    html = report.read_text()
    for index, (kind, table) in enumerate(
        (("gradients", "gradients-table"), ("trajectory", "trajectory-table"),
         ("contrastive", "contrastive-trends"), ("rank1", "rank1-table"))
    ):  # fmt: skip
        assert f'<section id="extra-{index}-{kind}"' in html, kind
        assert f'id="{table}"' in html, kind
    # The numbers are the datasets' own, rounded by the report.
    rank1 = xr.open_dataset(rank1_run[0])
    value = float(rank1.p_margin.sel(matrix="up", control="all"))
    assert f'data-value="{value!r}"' in html


def test_cli_rank1_rejects_a_write_matrix_as_read(saved_pair, tmp_path, capsys):
    base, _ = saved_pair("gpt2")
    code = main(
        [
            "experiment",
            "rank1",
            "--model",
            base,
            "--read-matrix",
            "o",
            "--out",
            str(tmp_path / "r.nc"),
        ]
    )
    assert code == 2
    assert "`read_matrix` must be one of" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the demo's paths


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """The demo recipe at test size, cached where the commands' --cache-dir points."""
    import robustness.demo as demo

    cache = tmp_path_factory.mktemp("demo-cache")
    settings = demo.DemoSettings.tiny()
    demo.demo_pair(settings, cache_root=cache, progress=False)
    return settings, cache


def test_demo_defaults_use_the_demo_pair_and_its_held_out_text(tiny_demo, tmp_path, monkeypatch):
    import robustness.demo as demo

    settings, cache = tiny_demo
    monkeypatch.setattr(demo, "demo_pair", functools.partial(demo.demo_pair, settings))
    found = demo_checkpoints(cache_root=cache, progress=False)
    assert [Path(p).name for p in found.align] == ["step-00000", "step-00002", "step-00004"]
    held = demo_token_windows(found, held_out=True, length=16)
    # The held-out documents are every `held_out_every`-th one, tokenised by the demo's tokenizer.
    from robustness.corpus import builtin_documents, load_tokenizer, tokenize

    every = settings.held_out_every
    documents = [d for i, d in enumerate(builtin_documents()) if i % every == every // 2]
    stream = tokenize(documents, load_tokenizer(found.base))
    np.testing.assert_array_equal(held.ravel(), stream[: held.size])
    out = tmp_path / "trajectory.nc"
    common = ["--cache-dir", str(cache), "--tokens", "512", "--seq-len", "16", "--quiet"]
    _run(["experiment", "trajectory", "--demo", "--cutoffs", "k=4", "--out", str(out), *common])
    ds = xr.open_dataset(out)
    assert list(ds.checkpoint_id.values) == list(found.align[1:])
    assert ds.attrs["start_id"] == found.align[0]
    out = tmp_path / "rank1.nc"
    _run(["experiment", "rank1", "--controls", "2", "--out", str(out), *common])
    ds = xr.open_dataset(out)
    assert ds.attrs["model_id"] == found.base
    assert ds.attrs["corpus_source"] == "demo:held-out documents"
    assert ds.attrs["prompt_len"] == settings.prompt_len
