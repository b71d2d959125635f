"""stats.nc's per-pair summaries and pair model as variables (robustness.stats.summaries).

Null: the readers give back exactly the dicts the tests produced (every key, in order, with its
type: compared as JSON text), in memory and through a file; a file written before the
variables, holding the dicts as JSON attributes only, reads as it did.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from robustness.io.datasets import open_dataset, write_dataset
from robustness.settings.options import StatsOptions
from robustness.stats.statistics import compute_stats, run_pair_tests, stats_dataset
from robustness.stats.summaries import (
    pair_model_variables,
    per_pair_variables,
    read_pair_model,
    read_per_pair,
)

MATRICES = ("q", "k", "o", "down")
L = 8
# label: (phase, layers, adapter targets): a fitted model (align), pairs of different depths
# (pretrain), four pairs whose difference test needs more projections than 8 layers give
# (more), a LoRA pair with no write matrix (not tested), one layer (counted, not tested).
PAIRS = {
    "a": ("align", L, ""), "b": ("align", L, ""), "c": ("align", L, ""), "lora": ("align", L, "q,k"),
    "long": ("pretrain", L, ""), "short": ("pretrain", 3, ""),
    "w": ("more", L, ""), "x": ("more", L, ""), "y": ("more", L, ""), "z": ("more", L, ""),
    "one": ("single", 1, ""),
}  # fmt: skip


def results() -> xr.Dataset:
    """Random levels (read above write by 0.3 on log2) over three constructions (with the random
    control), two cutoffs and two normalisations (isotropic duplicates log_isotropic)."""
    rng = np.random.default_rng(7)
    shape = (len(PAIRS), L, len(MATRICES), 3, 2)
    level = 0.2 * rng.standard_normal(shape)
    level[:, :, :2] += 0.3
    depth = np.array([layers for _, layers, _ in PAIRS.values()])
    level[np.arange(L)[None, :] >= depth[:, None]] = np.nan
    rsf = np.stack([level, 2.0**level], axis=-1)
    ks = np.broadcast_to(np.array([4, 8]), shape).astype(np.int64)
    return xr.Dataset(
        {"rsf": (("pair", "layer", "matrix", "construction", "cutoff", "normalisation"), rsf),
         "k": (("pair", "layer", "matrix", "construction", "cutoff"), ks),
         "gram_purity": (("pair", "layer", "matrix"), np.full(shape[:3], 0.2)),
         "n_layers": ("pair", depth), "d_model": ("pair", np.full(len(PAIRS), 64)),
         "targeted_matrices": ("pair", np.asarray([t for *_, t in PAIRS.values()], dtype=object))},
        coords={"pair": list(PAIRS), "phase": ("pair", [p for p, *_ in PAIRS.values()]),
                "layer": np.arange(L), "matrix": list(MATRICES),
                "pathway": ("matrix", ["read", "read", "write", "write"]),
                "construction": ["act_cov", "unembed", "random"], "cutoff": ["k=4", "k=8"],
                "normalisation": ["log_isotropic", "isotropic"]},
    )  # fmt: skip


@pytest.fixture(scope="module")
def tested():
    options = StatsOptions(n_resamples=99, seed=3, preferred=("act_cov", "k=8", "log_isotropic"))
    return run_pair_tests(results(), options, preferred_given=True)


def as_json(value) -> str:
    return json.dumps(value, allow_nan=True)


def test_the_readers_give_back_the_dicts_the_tests_produced(tested, tmp_path):
    per_pair, model = tested.per_pair, tested.pair_model
    # Every shape of summary is here, so every branch of the layout is read back.
    assert "joint" not in per_pair["lora"] and "its LoRA adapter" in per_pair["lora"]["note"]
    assert "joint" not in per_pair["one"] and "needs at least" in per_pair["one"]["note"]
    assert set(per_pair["short"]["joint"]) == {"n_specifications"}
    assert per_pair["a"]["ranking_stability"] and "method" in per_pair["a"]["joint"]
    assert per_pair["a"]["signflip_exact"] is True and per_pair["a"]["perm_exact"] is False
    assert "F" in model["align"]["difference"] and "note" not in model["align"]["difference"]
    assert model["pretrain"] == {"pairs": ["long", "short"],
                                 "note": "pairs of different depths cannot be paired by layer"}  # fmt: skip
    assert "note" in model["more"]["difference"] and set(model) == {"specification", "align",
                                                                    "pretrain", "more"}  # fmt: skip
    stats = stats_dataset(tested)
    path = write_dataset(stats, tmp_path / "stats.nc")
    for ds in (stats, open_dataset(path, "stats")):
        assert as_json(read_per_pair(ds)) == as_json(per_pair)
        assert as_json(read_pair_model(ds)) == as_json(model)
    assert "per_pair" not in stats.attrs and "pair_model" not in stats.attrs
    options = tested.options
    again = compute_stats(results(), n_resamples=options.n_resamples, seed=options.seed,
                          preferred=options.preferred)  # fmt: skip
    assert as_json(read_per_pair(again)) == as_json(per_pair)


def test_the_variables_hold_the_summaries_on_their_own_dimensions(tested):
    stats = stats_dataset(tested)
    a = tested.per_pair["a"]
    assert stats.joint_p.dims == ("pair", "joint_test")
    assert (
        float(stats.joint_p.sel(pair="a", joint_test="median_effect"))
        == (a["joint"]["p_median_effect"])
    )
    shares = stats.variance_share.sel(pair="a").to_series().dropna()
    assert shares.to_dict() == a["variance_shares"]
    assert int(stats.counted_specifications.sel(pair="lora")) == -1
    assert str(stats.pair_read_set.sel(pair="lora").item()) == ""
    assert stats.pair_model_per_pair.dims == ("pair_model_phase", "pair", "pair_model_statistic")
    assert float(stats.pair_model_overall.sel(pair_model_phase="align",
                                              pair_model_statistic="p_value")) == (
        tested.pair_model["align"]["overall"]["p_value"]
    )  # fmt: skip
    assert stats.pair_model_phase.attrs["specification"] == "act_cov,k=8,log_isotropic"
    summary, _ = per_pair_variables(tested.per_pair, joint_null="")
    model, _ = pair_model_variables(tested.pair_model, list(tested.per_pair))
    for name in (*summary, *model, "pair_model_phase"):
        assert stats[name].attrs["long_name"], name
    assert "rotation" in stats.joint_p.attrs["null_hypothesis"]


def test_a_file_written_before_the_variables_reads_from_its_json_attributes(tested, tmp_path):
    stats = stats_dataset(tested)
    summary, _ = per_pair_variables(tested.per_pair, joint_null="")
    model, model_coords = pair_model_variables(tested.pair_model, list(tested.per_pair))
    old = stats.drop_vars([*summary, *model, *model_coords, "joint_test", "variance_component",
                           "agreement", "expectation"])  # fmt: skip
    old.attrs.update(per_pair=json.dumps(tested.per_pair), pair_model=json.dumps(tested.pair_model))
    path = write_dataset(old, tmp_path / "old.nc")
    for ds in (old, open_dataset(path, "stats")):
        assert as_json(read_per_pair(ds)) == as_json(tested.per_pair)
        assert as_json(read_pair_model(ds)) == as_json(tested.pair_model)
    assert read_per_pair(xr.Dataset()) == {} and read_pair_model(xr.Dataset()) == {}


def test_one_pair_has_no_pair_model_and_a_key_without_a_variable_is_refused(tested, tmp_path):
    one = run_pair_tests(results().isel(pair=[0]), tested.options, preferred_given=True)
    stats = stats_dataset(one)
    assert read_pair_model(stats) == {} and "pair_model_phase" not in stats.dims
    assert as_json(read_per_pair(stats)) == as_json(one.per_pair)
    # Two pairs of different phases: the specification, and no phase to model.
    apart = run_pair_tests(results().sel(pair=["a", "long"]), tested.options, preferred_given=True)
    assert apart.pair_model == {"specification": ["act_cov", "k=8", "log_isotropic"]}
    path = write_dataset(stats_dataset(apart), tmp_path / "apart.nc")
    assert read_pair_model(open_dataset(path)) == apart.pair_model
    with pytest.raises(ValueError, match="no variable for: surprise"):
        per_pair_variables({"a": {**tested.per_pair["a"], "surprise": 1}}, joint_null="")
    with pytest.raises(ValueError, match="no variable for: extra"):
        per_pair_variables({"a": {**tested.per_pair["a"], "joint": {**tested.per_pair["a"]["joint"],
                                                                    "extra": 0}}}, joint_null="")  # fmt: skip
    align = {**tested.pair_model["align"], "pairs": ["c", "a", "b"]}
    with pytest.raises(ValueError, match="not in the dataset's order"):
        pair_model_variables({"specification": ["act_cov", "k=8", "log_isotropic"], "align": align},
                             list(tested.per_pair))  # fmt: skip
