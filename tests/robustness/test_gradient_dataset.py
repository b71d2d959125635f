"""``gradients.nc`` along checkpoints (robustness.mechanism.gradient_dataset).

References: each checkpoint of a several-checkpoint dataset against the same
checkpoint measured alone; the DPO reference rule against measuring with the
reference model directly; the layer intervals against robustness.stats.layers on
the stored per-layer values; the trends against robustness.mechanism.trend
on the same values; the leading shares against the stored spectrum; the
cache against a run with the measurement disabled.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from tiny_models import VOCAB

import probes
import robustness.mechanism.gradient_dataset as gradient_module
from robustness.measure.corpus import Corpus
from robustness.measure.models import load_model
from robustness.measure.resampling import sequence_chunks
from robustness.mechanism.gradient_dataset import (
    LEADING,
    GradientCheckpoint,
    check_checkpoints,
    gradient_dataset,
    phase_checkpoints,
)
from robustness.mechanism.gradients import GradientSettings, measure_objective
from robustness.mechanism.trend import trend_test
from robustness.stats.layers import layer_test
from robustness.training.preferences import preference_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = GradientSettings(objectives=("ce", "dpo"), replicates=6, batch_size=4)


def corpus(seed: int = 4, n: int = 8, length: int = 12) -> Corpus:
    return Corpus(np.random.default_rng(seed).integers(0, VOCAB, (n, length)), f"test-{seed}")


@pytest.fixture(scope="module")
def along(checkpoints):
    """The three-checkpoint trajectory measured once, as alignment checkpoints."""
    dirs, _ = checkpoints
    chosen = phase_checkpoints(dirs, phase="align")
    return chosen, gradient_dataset(chosen, corpus(), SETTINGS, progress=False)


def test_gradient_dataset_is_deterministic_and_paired(saved_models):
    path = saved_models("gpt2")
    model = load_model(path)
    ids = np.random.default_rng(4).integers(0, VOCAB, (8, 12))
    settings = GradientSettings(objectives=("ce", "dpo"), replicates=12, batch_size=4)
    one = [GradientCheckpoint("gpt2", path)]
    first = gradient_dataset(one, Corpus(ids, "test"), settings, progress=False).isel(checkpoint=0)
    second = gradient_dataset(one, Corpus(ids, "test"), settings, progress=False).isel(checkpoint=0)
    xr.testing.assert_identical(first.drop_attrs(), second.drop_attrs())
    assert first.attrs["kind"] == "gradients"
    # The first objective's contrast with itself is zero in every replicate.
    assert np.all(first.contrast_entropy_rank.sel(objective="ce").values == 0)
    # Activation statistics do not depend on the loss: CE reads exactly the sequences,
    # so its read-site spectra equal a plain statistics pass.
    plain = probes.collect_statistics(model, ids, sites=["attn_in"])
    expected = np.linalg.eigvalsh(plain.sites[(1, "attn_in")].covariance())[::-1]
    np.testing.assert_allclose(
        first.spectrum.sel(objective="ce", layer=1, site="attn_in").values,
        np.clip(expected, 0, None),
        rtol=1e-5,
        atol=1e-6 * expected[0],
    )
    low, high = first.mean_entropy_rank_ci_low.values, first.mean_entropy_rank_ci_high.values
    assert np.all(low <= high)
    # Effective ranks lie in [1, d].
    assert np.all(
        (first.participation_ratio >= 1 - 1e-9) & (first.participation_ratio <= 32 + 1e-9)
    )


def test_phase_checkpoints_choose_the_reference_of_each_phase(checkpoints):
    """Alignment checkpoints are measured against the model alignment started from (the first,
    or the one given); pretraining checkpoints against themselves. Steps come from the folder
    names."""
    dirs, _ = checkpoints
    align = phase_checkpoints(dirs, phase="align")
    assert [c.reference for c in align] == [dirs[0]] * 3
    assert [c.step for c in align] == [0, 1, 2]
    assert [c.label for c in align] == [
        f"{d.rstrip('/').split('/')[-2]}/step-0000{i}" for i, d in enumerate(dirs)
    ]
    assert [c.reference for c in phase_checkpoints(dirs, phase="align", reference=dirs[1])] == [
        dirs[1]
    ] * 3
    assert all(c.reference is None for c in phase_checkpoints(dirs, phase="pretrain"))
    with pytest.raises(ValueError, match="own DPO reference"):
        phase_checkpoints(dirs, phase="pretrain", reference=dirs[0])
    with pytest.raises(ValueError, match="2 labels for 3 checkpoints"):
        phase_checkpoints(dirs, labels=["a", "b"])


def test_each_checkpoint_equals_that_checkpoint_measured_alone(along):
    """H0 of assembly: stacking checkpoints changes no number. Each slice of the three-checkpoint
    dataset equals a one-checkpoint run of that checkpoint with the same reference."""
    chosen, ds = along
    assert ds.sizes["checkpoint"] == 3
    assert list(ds.step.values) == [0.0, 1.0, 2.0]
    assert list(ds.phase.values) == ["align"] * 3
    for i, checkpoint in enumerate(chosen):
        alone = gradient_dataset([checkpoint], corpus(), SETTINGS, progress=False)
        for name in ("spectrum", "entropy_rank", "participation_ratio", "prediction_ratio", "loss",
                     "entropy_rank_boot", "mean_entropy_rank_ci_low"):  # fmt: skip
            np.testing.assert_array_equal(
                ds[name].isel(checkpoint=i).values, alone[name].isel(checkpoint=0).values
            )


def test_the_reference_is_recorded_and_used(along, checkpoints):
    """The DPO statistics at a later checkpoint are those of DPO against the first checkpoint,
    measured directly; CE's do not depend on the reference. Each checkpoint records its reference."""
    dirs, _ = checkpoints
    _, ds = along
    first_hash = probes.weights_hash(dirs[0])
    assert list(ds.reference_hash.values) == [first_hash] * 3
    assert list(ds.reference_id.values) == [dirs[0]] * 3
    assert list(ds.checkpoint_hash.values) == [probes.weights_hash(d) for d in dirs]
    ids = corpus().ids
    pairs = preference_pairs(
        ids, prompt_len=6, rng=probes.construction_rng(SETTINGS.seed, "gradients", "pairs")
    )
    policy, reference = load_model(dirs[2]), load_model(dirs[0])
    direct = measure_objective(
        policy, ids, lam=1.0, pairs=pairs, reference=reference, beta=SETTINGS.beta,
        batch_size=SETTINGS.batch_size, chunks=sequence_chunks(len(ids)),
    )  # fmt: skip
    covariance = direct.sites[(1, "o_out")].covariance()
    expected = np.clip(np.linalg.eigvalsh(covariance)[::-1], 0, None)
    np.testing.assert_allclose(
        ds.spectrum.sel(objective="dpo", layer=1, site="o_out").isel(checkpoint=2).values,
        expected,
        rtol=1e-9,
        atol=1e-12 * expected[0],
    )
    # Against itself instead (the pretraining rule), the DPO numbers change.
    itself = gradient_dataset(
        [GradientCheckpoint("self", dirs[2])], corpus(), SETTINGS, progress=False
    ).isel(checkpoint=0)
    assert itself.reference_hash.values == probes.weights_hash(dirs[2])
    assert not np.allclose(
        itself.spectrum.sel(objective="dpo").values, ds.spectrum.sel(objective="dpo").values[2]
    )
    np.testing.assert_array_equal(
        itself.spectrum.sel(objective="ce").values, ds.spectrum.sel(objective="ce").values[2]
    )


def test_layer_intervals_leading_shares_and_contrasts_follow_their_definitions(along):
    _, ds = along
    values = ds.entropy_rank.sel(objective="dpo", site="down_out").isel(checkpoint=1).values
    test = layer_test(values, confidence_level=0.95)
    cell = ds.sel(objective="dpo", site="down_out").isel(checkpoint=1)
    assert float(cell.mean_entropy_rank_layer_ci_low) == pytest.approx(float(test.ci_low[0]))
    assert float(cell.mean_entropy_rank_layer_ci_high) == pytest.approx(float(test.ci_high[0]))
    paired = values - ds.entropy_rank.sel(objective="ce", site="down_out").isel(checkpoint=1).values
    contrast = layer_test(paired, confidence_level=0.95)
    assert float(cell.contrast_entropy_rank) == pytest.approx(paired.mean())
    assert float(cell.contrast_entropy_rank_layer_p) == pytest.approx(float(contrast.p_value[0]))
    spectrum = ds.spectrum.isel(checkpoint=0).sel(objective="ce", site="o_out", layer=2).values
    np.testing.assert_allclose(
        ds.leading_share.isel(checkpoint=0).sel(objective="ce", site="o_out", layer=2).values,
        spectrum[:LEADING] / spectrum.sum(),
    )
    assert np.all(ds.contrast_entropy_rank.sel(objective="ce").values == 0)


def test_trends_along_a_phase_are_the_trend_test_of_the_stored_values(along):
    """H0 of the trend: no slope in the step. The stored slope and EWC p equal
    robustness.mechanism.trend.trend_test on the per-layer values and the steps."""
    _, ds = along
    assert list(ds.segment.values) == ["align"]
    values = ds.entropy_rank.sel(objective="ce", site="o_out").values  # [checkpoint, layer]
    expected = trend_test(values, ds.step.values, rng=np.random.default_rng(0), n_resamples=999)
    cell = ds.sel(segment="align", objective="ce", site="o_out", measure="entropy_rank")
    assert float(cell.trend_slope) == pytest.approx(expected.slope)
    assert float(cell.trend_p_value) == pytest.approx(expected.p_value)
    assert float(cell.trend_slope_ci_low) == pytest.approx(expected.slope_ci_low)


def test_trends_run_within_each_phase(checkpoints):
    """Pretraining and alignment checkpoints are separate segments; a segment of fewer than three
    checkpoints has no trend (NaN), whatever the other holds."""
    dirs, _ = checkpoints
    mixed = phase_checkpoints(dirs, phase="pretrain") + phase_checkpoints(
        dirs[1:], phase="align", labels=["a1", "a2"], reference=dirs[0]
    )
    ds = gradient_dataset(mixed, corpus(), GradientSettings(replicates=0), progress=False)
    assert list(ds.segment.values) == ["pretrain", "align"]
    assert list(ds.phase.values) == ["pretrain"] * 3 + ["align"] * 2
    assert np.isfinite(ds.trend_slope.sel(segment="pretrain").values).all()
    assert np.isnan(ds.trend_slope.sel(segment="align").values).all()
    assert "entropy_rank_boot" not in ds and "mean_entropy_rank_ci_low" not in ds


def test_a_second_run_reads_the_cache(checkpoints, tmp_path, monkeypatch):
    dirs, _ = checkpoints
    chosen = phase_checkpoints(dirs[:2], phase="align")
    first = gradient_dataset(chosen, corpus(), SETTINGS, cache_root=tmp_path, progress=False)
    assert len(list((tmp_path / "statistics").glob("*.npz"))) == 4  # 2 checkpoints × 2 objectives

    def refuse(*args, **kwargs):
        raise AssertionError("measured although cached")

    monkeypatch.setattr(gradient_module, "measure_objective", refuse)
    second = gradient_dataset(chosen, corpus(), SETTINGS, cache_root=tmp_path, progress=False)
    xr.testing.assert_identical(first.drop_attrs(), second.drop_attrs())
    # Another corpus is another key: measured again.
    with pytest.raises(AssertionError, match="measured although cached"):
        gradient_dataset(chosen, corpus(seed=9), SETTINGS, cache_root=tmp_path, progress=False)


def test_checkpoints_of_other_widths_are_refused_before_any_pass(
    checkpoints, saved_models, tmp_path
):
    dirs, _ = checkpoints
    wide = saved_models("llama", hidden_size=48, num_hidden_layers=4)
    other = saved_models("gpt2")
    with pytest.raises(ValueError, match=rf"{wide} does not match .*d_model: 32 vs 48"):
        check_checkpoints(phase_checkpoints([dirs[0], wide]))
    with pytest.raises(ValueError, match="model_type: llama vs gpt2"):
        check_checkpoints(phase_checkpoints([dirs[0], other]))
    with pytest.raises(FileNotFoundError, match="model directory not found: .*missing"):
        check_checkpoints(phase_checkpoints([dirs[0], str(tmp_path / "missing")]))
