"""The training trajectory (robustness.mechanism.trajectory): its pairs, and the dataset against
separate sweeps of the same pairs (robustness.measure.engine.sweep_pair)."""

from __future__ import annotations

import numpy as np
import pytest

from robustness.measure.corpus import Corpus
from robustness.measure.engine import sweep_pair
from robustness.mechanism.trajectory import trajectory_dataset, trajectory_pairs
from robustness.settings.config import CorpusSpec, PairSpec, SweepConfig

pytestmark = pytest.mark.usefixtures("one_thread")


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
