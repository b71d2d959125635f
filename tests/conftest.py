"""Shared fixtures: tiny random models of every supported family, saved and reloaded, and the
inputs more than one test folder needs (checkpoints, the tiny demo pair, the report's datasets).

Nothing is downloaded: each model is built from a config (``tiny_models.py``),
its parameters drawn at random, written with ``save_pretrained`` and loaded
back the way a user's model would be. The fixtures that take a while are
session-scoped, so a folder of tests and another that shares them build them
once.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Re-exported for test modules that still write ``from conftest import …``.
from tiny_models import (  # noqa: F401
    CHARS,
    FAMILY_NAMES,
    TINY_CONFIGS,
    VOCAB,
    aligned_copy,
    char_tokenizer,
    random_model,
    single_torch_thread,
    tiny_config,
)

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """``saved_models(model_type, seed=0)`` → directory of a saved tiny model (cached)."""
    root = tmp_path_factory.mktemp("models")
    cache: dict[tuple, str] = {}

    def get(model_type: str, seed: int = 0, **overrides) -> str:
        key = (model_type, seed, tuple(sorted(overrides.items())))
        if key not in cache:
            path = root / f"{model_type}-{seed}-{len(cache)}"
            random_model(model_type, seed, **overrides).save_pretrained(path)
            cache[key] = str(path)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def saved_pair(tmp_path_factory):
    """``saved_pair(model_type, **overrides)`` → (base_dir, aligned_dir), both with a tokenizer."""
    root = tmp_path_factory.mktemp("pairs")
    cache: dict[tuple, tuple[str, str]] = {}

    def get(model_type: str = "llama", seed: int = 0, **overrides) -> tuple[str, str]:
        key = (model_type, seed, tuple(sorted(overrides.items())))
        if key not in cache:
            base = random_model(model_type, seed, **overrides)
            aligned = aligned_copy(base, seed + 1000)
            dirs = []
            for role, model in (("base", base), ("aligned", aligned)):
                path = root / f"{model_type}-{seed}-{len(cache)}-{role}"
                model.save_pretrained(path)
                char_tokenizer().save_pretrained(path)
                dirs.append(str(path))
            cache[key] = tuple(dirs)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: tiny models gain nothing from intra-op threads,
    and on a busy machine they only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Three saved llama checkpoints of one run (each a small step from the last), and token ids.

    ``(dirs, ids_path)``: for robustness.mechanism.trajectory and `rsf experiment trajectory`.
    Four layers, so the interval over layers (it needs at least four) is defined.
    """
    root = tmp_path_factory.mktemp("trajectory")
    model = random_model("llama", seed=5, num_hidden_layers=4)
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


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """The demo recipe at test size (``DemoSettings.tiny()``), trained once, in its own cache.

    ``(cache, pair)``: the cache folder the commands' ``--cache-dir`` points at, and the
    pair as first built (``pair.trained`` is true).
    """
    from robustness.demo.pair import DemoSettings, demo_pair

    cache = tmp_path_factory.mktemp("demo-cache")
    return cache, demo_pair(DemoSettings.tiny(), cache_root=cache, progress=False)


@pytest.fixture(scope="session")
def report_datasets(saved_pair, tmp_path_factory):
    """Three pairs through the real pipeline (`rsf sweep` with a sequence bootstrap, `rsf stats`):
    two alignment pairs of six layers side by side (a trajectory, so `rsf stats` fits the pair
    model; the second ties its embeddings), and a three-layer pretraining pair, too few layers
    for the dependence-robust test.

    ``{"results", "stats", "claims", "root"}`` → paths; the calibration is :func:`report_calibration`.
    """
    from rsf.main import main

    root = tmp_path_factory.mktemp("report")
    first = saved_pair("llama", num_hidden_layers=6)
    second = saved_pair("llama", seed=5, num_hidden_layers=6, tie_word_embeddings=True)
    third = saved_pair("llama", seed=7, num_hidden_layers=3)
    config = root / "sweep.toml"
    config.write_text(
        f'[[pair]]\nlabel = "early"\nbase = "{first[0]}"\naligned = "{first[1]}"\n'
        f'[[pair]]\nlabel = "late"\nbase = "{second[0]}"\naligned = "{second[1]}"\n'
        f'[[pair]]\nlabel = "short"\nphase = "pretrain"\nbase = "{third[0]}"\naligned = "{third[1]}"\n'
        "[corpus]\ntokens = 256\nseq_len = 16\n"
        '[probe]\nconstructions = ["act_cov", "unembed", "random"]\ncutoffs = ["k=8", "var=0.9", "pr"]\n'
        'normalisations = ["fraction", "log_isotropic", "isotropic"]\n'
    )
    results = root / "results.nc"
    sweep = ["sweep", "--config", str(config), "--bootstrap", "20", "--out", str(results)]
    assert main([*sweep, "--quiet", "--no-cache"]) == 0
    stats = root / "stats.nc"
    assert main(["stats", str(results), "--out", str(stats), "--resamples", "200", "--quiet"]) == 0
    claims = root / "claims.nc"
    assert main(["claims", str(results), "--stats", str(stats), "--resamples", "99", "--out", str(claims),
                 "--quiet"]) == 0  # fmt: skip
    return {"results": results, "stats": stats, "claims": claims, "root": root}


@pytest.fixture(scope="session")
def report_calibration(tmp_path_factory):
    """A small calibration study (`rsf calibrate`'s library call) for the report's calibration section."""
    from robustness.calibration.study import CalibrationSettings, run_calibration
    from robustness.io.datasets import write_dataset

    # As small as runs: the report shows the rates, it does not judge them.
    settings = CalibrationSettings(n_null=4, n_power=2, strengths=(0.2,), n_layers=6,
                                   layer_replicates=49, n_resamples=49, truth_layers=200,
                                   n_sequence=2)  # fmt: skip
    calibration = tmp_path_factory.mktemp("calibration") / "calibration.nc"
    write_dataset(run_calibration(settings), calibration)
    return calibration
