"""The results dataset (robustness.measure.results): built from a sweep, a netCDF round trip that keeps
every value and attribute, and the contract's provenance variables."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from robustness.io.datasets import open_dataset, write_dataset
from robustness.measure import results as dataset_module
from robustness.measure.corpus import Corpus
from robustness.measure.results import build_dataset
from robustness.measure.runner import run_sweep
from robustness.settings.config import PairSpec, SweepConfig


def test_netcdf_round_trip_keeps_every_value_and_attribute(saved_pair, tmp_path):
    base, aligned = saved_pair("llama")
    config = SweepConfig(pairs=(PairSpec("p", base, aligned),), cutoffs=("k=2", "var=0.5", "mp"))
    corpus = Corpus(np.random.default_rng(0).integers(0, 61, size=(4, 8)), "test")
    ds = build_dataset(run_sweep(config, corpus, progress=False), config, corpus)
    write_dataset(ds, tmp_path / "r.nc")
    loaded = open_dataset(tmp_path / "r.nc")
    xr.testing.assert_identical(ds, loaded)
    assert loaded.attrs == ds.attrs and loaded.k.dtype == np.int64


def test_dataset_module_has_the_contract_variables():
    assert set(dataset_module.PROVENANCE) >= {"base_id", "aligned_id", "base_hash", "aligned_hash"}


def test_results_carry_phase_gram_purity_and_provenance(saved_pair):
    """`phase(pair)` from the pair, `gram_purity` = Σ g² of each delta (checked against probes), `kind`."""
    import probes

    base, aligned = saved_pair("llama")
    config = SweepConfig(
        pairs=(PairSpec("p", base, aligned, phase="pretrain"),),
        constructions=("unembed",),
        cutoffs=("k=2",),
    )
    corpus = Corpus(np.random.default_rng(0).integers(0, 61, size=(4, 8)), "test")
    ds = build_dataset(run_sweep(config, corpus, progress=False), config, corpus)
    assert list(ds.phase.values) == ["pretrain"] and ds.attrs["kind"] == "results"
    deltas = probes.extract_deltas(probes.load_model(base), probes.load_model(aligned))
    for (layer, matrix), delta in deltas.items():
        assert float(ds.gram_purity.sel(pair="p", layer=layer, matrix=matrix)) == pytest.approx(
            probes.gram_purity(delta), rel=1e-9
        )
    assert dataset_module.pair_phases(ds.drop_vars("phase")) == [
        "align"
    ]  # older files read as align
