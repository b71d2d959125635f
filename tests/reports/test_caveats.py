"""The report's automatic caveats (reports.caveats) on the real pipeline's datasets, each
condition pushed across its threshold by changing one value of the statistics in memory."""

from __future__ import annotations

import dataclasses

import pytest


@pytest.fixture(scope="module")
def inputs(report_datasets):
    from reports import load_inputs

    return load_inputs(report_datasets["results"], stats_path=report_datasets["stats"])


def context(inputs, change):
    """The report's context with the statistics changed by `change(stats)` (a deep copy)."""
    from reports.context import build_context

    stats = inputs.stats.dataset.copy(deep=True)
    change(stats)
    return build_context(
        dataclasses.replace(inputs, stats=dataclasses.replace(inputs.stats, dataset=stats))
    )


def found(ctx) -> dict[str, str]:
    from reports.caveats import caveats

    return {c.key: c.text for c in caveats(ctx)}


def set_value(stats, name, value, **where):
    stats[name].loc[where] = value


def test_the_random_control_departing_from_its_haar_reference_is_a_caveat(inputs):
    unchanged = found(context(inputs, lambda s: None))
    assert "null-control" not in unchanged  # these models' random control stays at its reference

    def departs(stats):
        set_value(stats, "p_value", 0.001, pair="early", construction="random", cutoff="k=8",
                  normalisation="fraction")  # fmt: skip

    text = found(context(inputs, departs))["null-control"]
    assert "pair early: 1 of 2 (k=8/fraction)" in text and "Haar reference" in text

    def duplicate_only(stats):  # random/k=8/isotropic duplicates random/k=8/log_isotropic
        assert str(stats.duplicate_of.sel(pair="early", construction="random", cutoff="k=8",
                                          normalisation="isotropic").item())  # fmt: skip
        set_value(stats, "p_value", 0.001, pair="early", construction="random", cutoff="k=8",
                  normalisation="isotropic")  # fmt: skip

    assert "null-control" not in found(context(inputs, duplicate_only))


def test_strong_autocorrelation_of_the_preferred_specification_is_a_caveat(inputs):
    preferred = dict(construction="act_cov", cutoff="k=8", normalisation="log_isotropic")

    def autocorrelated(value):
        def change(stats):
            set_value(stats, "lag1_autocorrelation", value, pair="early", **preferred)
            set_value(stats, "effective_layers", 1.2, pair="early", **preferred)

        return change

    strong = found(context(inputs, autocorrelated(0.71)))
    assert (
        "+0.71" in strong["autocorrelation-early"]
        and "1.2 effective layers of 6" in strong["autocorrelation-early"]
    )
    assert "autocorrelation-early" not in found(context(inputs, autocorrelated(0.5)))  # > 0.5 only


def test_a_note_from_rsf_stats_and_too_few_layers_are_caveats(inputs):
    def noted(stats):
        notes = stats.pair_note.astype(object)  # text read from a file has a fixed width
        notes.loc[{"pair": "early"}] = "something the test could not do"
        stats["pair_note"] = notes

    caveats = found(context(inputs, noted))
    assert "something the test could not do" in caveats["few-layers-early"]
    assert "needs at least 4" in caveats["few-layers-short"]  # three layers
    assert "few-layers-late" not in caveats


def test_a_preferred_specification_that_duplicates_another_says_so(inputs):
    def duplicated(stats):
        set_value(stats, "duplicate_of", "act_cov/k=8/fraction", construction="act_cov",
                  cutoff="k=8", normalisation="log_isotropic")  # fmt: skip

    ctx = context(inputs, duplicated)
    assert ctx.preferred_as("early") == ("act_cov", "k=8", "fraction")
    assert "equals act_cov/k=8/fraction" in found(ctx)["preferred-duplicate"]
    assert "preferred-duplicate" not in found(context(inputs, lambda s: None))


def test_fewer_monte_carlo_draws_than_999_are_a_caveat(inputs):
    assert "1/201" in found(context(inputs, lambda s: None))["monte-carlo-resamples"]

    def enough(stats):
        stats.attrs["n_resamples"] = 9999

    assert "monte-carlo-resamples" not in found(context(inputs, enough))
