"""`rsf report` (rsf/report.py over reports) end to end: structure, the numbers shown against the
datasets, caveats, the mechanism sections, errors, and one load in a real headless browser
(Debian's chromium, installed by `make browser`)."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import xarray as xr
from report_page import MISSING, SECTIONS, Page, sha256, shown
from rsf_commands import run_cli

from robustness.io.datasets import open_dataset, write_dataset
from robustness.stats.summaries import read_pair_model, read_per_pair
from rsf.main import main

# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def datasets(report_datasets):
    """The results and stats datasets (the session's, from conftest.py)."""
    return report_datasets


@pytest.fixture(scope="module")
def report(datasets):
    """The report of the results, statistics and claims (no calibration: its own test adds one)."""
    out = datasets["root"] / "report.html"
    args = ["report", str(datasets["results"]), "--stats", str(datasets["stats"]),
            "--claims", str(datasets["claims"])]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def page(report):
    return Page(report.read_text(encoding="utf-8"))


# The report's place for each specification in the curve (reports.context.spec_roles), written out
# again from the dataset's `counted`, `duplicate_of` and `control`.
def role_text(stats, pair, c, k, n) -> str:
    cell = stats.sel(pair=pair, construction=c, cutoff=k, normalisation=n)
    if not math.isfinite(float(cell.asymmetry)):
        return "undefined"  # every undefined specification "duplicates" the first: NaN == NaN
    if str(cell.duplicate_of.item()):
        return f"= {cell.duplicate_of.item()}"
    if int(stats.control.sel(construction=c)):
        return "control, not counted"
    return "yes" if int(cell.counted) else "no"


def specs(stats):
    for c in stats.construction.values:
        for k in stats.cutoff.values:
            for n in stats.normalisation.values:
                yield str(c), str(k), str(n)


# ----------------------------------------------------------------------- structure


def test_every_section_figure_and_input_is_in_one_self_contained_file(report, page, datasets):
    text = report.read_text(encoding="utf-8")
    assert page.sections == list(SECTIONS)
    # Nothing is fetched: every link is an in-page anchor, no element loads anything, CSS imports nothing.
    assert [u for u in page.urls if not u[2].startswith("#")] == []
    assert not page.tags & {
        "img",
        "link",
        "iframe",
        "object",
        "embed",
        "video",
        "audio",
        "source",
        "image",
    }
    assert "@import" not in text and not re.search(r"url\((?!#)", text)
    assert not re.search(r"(?<![\w-])data:", text)  # no embedded rasters either
    csp = [m["content"] for m in page.meta if m.get("http-equiv") == "Content-Security-Policy"]
    assert csp and csp[0].startswith("default-src 'none'")
    # Figures: SVG inline, each with alt text, a <title> and a caption.
    ids = {f["id"] for f in page.figures}
    assert {"fig-spec-curve", "fig-rsf-cutoff", "fig-heatmaps", "fig-nulls", "fig-variance"} <= ids
    assert {"fig-claims-early", "fig-claims-late"} <= ids
    assert "fig-trajectory" in ids  # several pairs: side by side
    for figure in page.figures:
        assert figure["alt"] and len(figure["alt"]) > 40, figure["id"]
        assert figure["title"] and len(figure["caption"]) > 40, figure["id"]
    # It names its data files with their hashes.
    files = page.tables["data-files"]
    for kind in ("results", "stats", "claims"):
        assert files[kind]["file"][0] == datasets[kind].name
        assert files[kind]["sha256"][0] == sha256(datasets[kind])


def test_no_statistics_leaves_every_section_in_place_and_says_what_to_run(datasets, tmp_path):
    out = tmp_path / "bare.html"
    assert main(["report", str(datasets["results"]), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == list(SECTIONS)
    assert text.count("This section needs <code>stats.nc</code>") == 4  # b, c, f, g
    assert "This section needs <code>calibration.nc</code>" in text
    assert "This section needs <code>claims.nc</code>" in text
    assert {"no-stats", "no-calibration"} <= set(page.caveats)
    # What needs only the results is still drawn.
    assert {"fig-rsf-cutoff", "fig-heatmaps"} <= {f["id"] for f in page.figures}


# ----------------------------------------------------------------------- golden: numbers shown = datasets


CLAIM_RULES = {"estimate": "signed", "reference": "signed", "excess": "signed", "margin_needed": "signed",
               "p_value": "p", "p_adjusted": "p"}  # fmt: skip


def test_the_claims_table_shows_every_value_of_the_claims_dataset(page, datasets):
    """The first section: one table per pair, every number as claims.nc has it, rounded by the rules;
    what the paper says, the test, the method and the reason in the claim's details."""
    claims = open_dataset(datasets["claims"])
    for pair in claims.pair.values:
        table = page.tables[f"claims-{pair}"]
        for claim in claims.claim.values:
            cell = claims.sel(pair=pair, claim=claim)
            row = table[str(claim)]
            for name, rule in CLAIM_RULES.items():
                assert row[name][0] == shown(float(cell[name]), rule), (pair, claim, name)
            low, high = (shown(float(cell[n]), "signed") for n in ("ci_low", "ci_high"))
            assert row["interval"][0] == (f"[{low}, {high}]" if low != MISSING else MISSING)
            share = shown(float(cell.robust_share), "share")
            assert row["robust_share"][0] == (
                f"{share} of {int(cell.robust_n)}" if share != MISSING else MISSING
            )
            assert row["verdict"][0] == str(cell.verdict.values).replace("_", " ")
            details = row["claim:details"][0]
            for name in ("says", "test", "method", "reason"):
                text = str(cell[name].values)
                assert not text or text in details, (pair, claim, name)
    # The three-layer pretraining pair: its level claims cannot be tested over layers.
    assert page.tables["claims-short"]["read_concentration"]["verdict"][0] == "inconclusive"
    assert "claims" in page.section_text and "Haar reference" in page.section_text["claims"]


# Every number column of the specification table and the rounding rule it documents.
SPEC_RULES = {"asymmetry": "signed", "reference": "signed", "ci_low": "signed", "ci_high": "signed",
              "seq_ci_low": "signed", "seq_ci_high": "signed", "effect_size": "effect",
              "effect_ci_low": "effect", "effect_ci_high": "effect", "p_value": "p",
              "p_signflip": "p", "p_perm": "p", "p_adj": "p", "p_wy": "p",
              "lag1_autocorrelation": "autocorrelation", "effective_layers": "layers"}  # fmt: skip


def test_the_specification_table_shows_every_value_of_the_statistics(page, datasets):
    stats = open_dataset(datasets["stats"])
    table = page.tables["spec-table"]
    assert len(table) == np.prod(
        [stats.sizes[d] for d in ("pair", "construction", "cutoff", "normalisation")]
    )
    checked, roles = 0, {}
    for pair in stats.pair.values:
        for c, k, n in specs(stats):
            key = f"{pair}|{c}|{k}|{n}"
            row = table[key]
            cell = stats.sel(pair=pair, construction=c, cutoff=k, normalisation=n)
            for name, rule in SPEC_RULES.items():
                value = float(cell[name])
                text, full = row[name]
                assert text == shown(value, rule), (key, name)
                # The unrounded value travels with the cell, exactly.
                assert (full == "") if not math.isfinite(value) else float(full) == value
                checked += math.isfinite(value)
            role = role_text(stats, pair, c, k, n)
            assert row["counted"][0] == role, key
            assert (role == "yes") == bool(int(cell.counted)), (
                key
            )  # counted means in the joint tests
            roles[role.split(" ")[0]] = roles.get(role.split(" ")[0], 0) + 1
            classes = page.row_classes["spec-table"][key]
            assert ("control" in classes) == (role == "control, not counted"), key
            assert ("duplicate" in classes) == role.startswith("="), key
    assert checked > 500
    assert {"yes", "control,", "=", "undefined"} <= set(roles)  # every kind of row is exercised
    # BH and WY are over the counted specifications only.
    counted = stats.counted.values.astype(bool)
    assert (
        np.isnan(stats.p_adj.values[~counted]).all() and np.isnan(stats.p_wy.values[~counted]).all()
    )
    preferred = stats.attrs["preferred_specification"].split(",")
    assert table[f"early|{'|'.join(preferred)}"]["preferred"][0] == "★"
    columns = {
        "p_value",
        "p_signflip",
        "p_perm",
        "p_adj",
        "p_wy",
        "reference",
        "lag1_autocorrelation",
        "counted",
    }
    assert columns <= set(table[f"early|{'|'.join(preferred)}"])


def test_the_verdict_shows_the_ewc_test_the_joint_tests_and_the_pair_model(page, report, datasets):
    stats = open_dataset(datasets["stats"])
    per_pair = read_per_pair(stats)
    preferred = stats.attrs["preferred_specification"].split(",")
    verdict = page.tables["verdict-table"]
    assert "p_perm" not in verdict  # within-layer exchangeability: only in the full table
    per_spec = {"asymmetry": "signed", "reference": "signed", "ci_low": "signed", "ci_high": "signed",
                "seq_ci_low": "signed", "seq_ci_high": "signed", "p_value": "p", "p_signflip": "p",
                "effect_size": "effect", "lag1_autocorrelation": "autocorrelation",
                "effective_layers": "layers"}  # fmt: skip
    joint_rules = {"median_effect": "effect", "p_median_effect": "p", "share_significant": "share",
                   "p_share_significant": "p", "stouffer_z": "effect", "p_stouffer_z": "p",
                   "n_specifications": "integer", "n_null": "integer"}  # fmt: skip
    for pair in stats.pair.values:
        column, info = f"pair:{pair}", per_pair[pair]
        cell = stats.sel(
            pair=pair, construction=preferred[0], cutoff=preferred[1], normalisation=preferred[2]
        )
        for name, rule in per_spec.items():
            assert verdict[name][column][0] == shown(float(cell[name]), rule), (pair, name)
        # The median over the counted specifications on the preferred one's scale (its
        # normalisation, or that of the specification it duplicates).
        duplicate = str(cell.duplicate_of.item())
        scale = duplicate.split("/")[2] if duplicate else preferred[2]
        counted = [
            float(stats.asymmetry.sel(pair=pair, construction=c, cutoff=k, normalisation=n))
            for c, k, n in specs(stats)
            if n == scale and role_text(stats, pair, c, k, n) == "yes"
        ]
        assert verdict["median_asymmetry"][column][0] == shown(np.median(counted), "signed")
        joint = info.get("joint", {})
        for name, rule in joint_rules.items():
            assert verdict[name][column][0] == shown(joint.get(name), rule), (pair, name)
        for name in ("under_null", "under_median_effect"):
            expected = info["expected_share"][name]
            assert verdict[name][column][0] == shown(expected, "expected_share"), (pair, name)
        assert verdict["n_layers"][column][0] == str(info["n_layers"])
        assert verdict["projections"][column][0] == str(info["projections"])
    # "short" has three layers: no EWC test, no joint tests; the verdict says so.
    assert verdict["p_value"]["pair:short"][0] == MISSING
    assert verdict["median_effect"]["pair:short"][0] == MISSING
    assert per_pair["early"]["joint"]["median_effect"] == pytest.approx(
        np.median(
            stats.effect_size.sel(pair="early").values[stats.counted.sel(pair="early").values == 1]
        )
    )
    # The sentences in the verdict box use the same rounding as the table.
    text = page.section_text["verdict"]
    early = stats.sel(
        pair="early", construction=preferred[0], cutoff=preferred[1], normalisation=preferred[2]
    )

    def relation(value):
        p = shown(value, "p")
        return p if p.startswith("<") else f"= {p}"

    assert f"is A = {shown(float(early.asymmetry), 'signed')} on average over layers" in text
    assert (
        f"95% EWC interval over layers, dependence-robust: {shown(float(early.ci_low), 'signed')} to "
        f"{shown(float(early.ci_high), 'signed')}; p {relation(float(early.p_value))})" in text
    )
    assert f"assumes exchangeable layers, gives p {relation(float(early.p_signflip))}" in text
    joint = per_pair["early"]["joint"]
    assert (
        f"{shown(joint['share_significant'], 'share')} are significant with read > write (joint p "
        f"{relation(joint['p_share_significant'])}), against "
        f"{shown(per_pair['early']['expected_share']['under_null'], 'expected_share')} expected under the null"
    ) in text
    assert f"Over the {joint['n_specifications']} counted specifications" in text
    assert "with 3 layers the dependence-robust test cannot be computed" in text.lower()
    assert "label-permutation" not in text and "p = <" not in text
    # The pair model: one table per phase with at least two pairs (align: early, late).
    model = read_pair_model(stats)
    assert set(model) == {"specification", "align"}
    table = page.tables["pair-model-align"]
    fitted = model["align"]
    for key, values in [("overall", fitted["overall"]),
                        *((f"pair:{p}", v) for p, v in fitted["per_pair"].items())]:  # fmt: skip
        for name in ("estimate", "ci_low", "ci_high"):
            assert table[key][name][0] == shown(values[name], "signed"), (key, name)
        assert table[key]["p_value"][0] == shown(values["p_value"], "p")
    difference = fitted["difference"]
    assert table["difference"]["F"][0] == shown(difference["F"], "statistic")
    assert table["difference"]["p_value"][0] == shown(difference["p_value"], "p")
    assert table["difference"]["df"][0] == ", ".join(map(str, difference["df"]))
    assert table["overall"]["null"][0] == fitted["overall"]["null"]
    assert "mixed-model" not in page.tables


def test_the_evidence_sections_show_the_new_nulls_and_variance_shares(page, datasets):
    stats = open_dataset(datasets["stats"])
    per_pair = read_per_pair(stats)
    for pair in stats.pair.values:
        shares = per_pair[pair]["variance_shares"]
        row = page.tables["variance-table"][pair]
        assert any("×" in term for term in shares)  # two-way interactions
        assert sum(shares.values()) == pytest.approx(1.0)  # shares of the total sum of squares
        for term, value in shares.items():
            assert row[term][0] == shown(value, "share"), (pair, term)
        for key, value in per_pair[pair].get("ranking_stability", {}).items():
            assert row[key][0] == shown(value, "agreement")
    assert stats.attrs["variance_method"] in page.section_text["variance"]
    nulls = page.section_text["null-distributions"]
    assert "rotation null of the EWC test" in nulls
    # The curve draws the counted specifications and the controls, not duplicates.
    curve = next(f for f in page.figures if f["id"] == "fig-spec-curve")
    for pair in stats.pair.values:
        roles = [role_text(stats, pair, *spec) for spec in specs(stats)]
        n_counted, n_controls = roles.count("yes"), roles.count("control, not counted")
        assert (
            f"Pair {pair}: {n_counted} counted specifications and {n_controls} controls"
            in curve["alt"]
        )
    assert "hollow" in curve["caption"].lower()


def test_the_methods_write_out_every_null_hypothesis_and_method(page, datasets):
    stats = open_dataset(datasets["stats"])
    methods = page.section_text["methods"]
    nulls = json.loads(stats.attrs["null_hypotheses"])
    assert {"p_value", "p_signflip", "p_perm", "joint", "p_adj", "p_wy"} <= set(nulls)
    for name, text in nulls.items():
        assert text in methods, name
        if name in stats:  # the variable's own attribute says the same
            assert stats[name].attrs["null_hypothesis"] == text
    for attr in (
        "p_value_method",
        "ci_method",
        "seq_ci_method",
        "counted_rule",
        "effect_size_method",
    ):
        assert stats.attrs[attr] in methods, attr
    assert f"{stats.attrs['n_resamples']} Monte Carlo null draws" in methods
    # Provenance: the models compared.
    results = open_dataset(datasets["results"])
    for pair in results.pair.values:
        models = page.tables["models"][pair]
        for name in ("base_hash", "aligned_hash", "base_id", "aligned_id"):
            assert models[name][0] == str(results[name].sel(pair=pair).item())


def test_caveats_follow_from_the_data(page, datasets):
    stats = open_dataset(datasets["stats"])
    found = set(page.caveats)
    preferred = dict(zip(("construction", "cutoff", "normalisation"),
                         stats.attrs["preferred_specification"].split(","), strict=True))  # fmt: skip
    # "late" ties its embeddings; "short" has 3 layers (the EWC test needs 4); 20 sequence
    # replicates are too few for BCa; 200 Monte Carlo draws are fewer than 999.
    assert {
        "tied-embeddings",
        "few-layers-short",
        "sequence-replicates",
        "monte-carlo-resamples",
        "no-calibration",
    } <= found
    assert not {"few-layers-early", "few-layers-late"} & found  # 6 layers each
    assert not {"no-stats", "no-sequence-bootstrap", "layer-resamples", "bca-replicates"} & found
    # Strong lag-1 autocorrelation of the preferred specification (> 0.5): from the data.
    r1 = stats.lag1_autocorrelation.sel(**preferred)
    strong = {f"autocorrelation-{p}" for p in stats.pair.values if float(r1.sel(pair=p)) > 0.5}
    assert strong == {c for c in found if c.startswith("autocorrelation-")}
    assert "autocorrelation-late" in strong  # +0.59 for these models
    # The random control against its Haar reference: a caveat exactly when one of its own
    # specifications (not a duplicate) has EWC p < α.
    alpha = float(stats.attrs["alpha"])
    departs = any(
        float(stats.p_value.sel(pair=p, construction="random", cutoff=k, normalisation=n)) < alpha
        for p in stats.pair.values
        for c, k, n in specs(stats)
        if c == "random" and role_text(stats, p, c, k, n) == "control, not counted"
    )
    assert ("null-control" in found) == departs
    text = page.section_text["caveats"]
    assert "Pair(s) late tie the input and output embeddings" in text
    assert "Pair short has 3 layers, too few for the dependence-robust EWC test" in text


def test_the_calibration_section_shows_the_study(datasets, report_calibration, tmp_path):
    out = tmp_path / "report.html"
    args = ["report", str(datasets["results"]), "--stats", str(datasets["stats"])]
    assert main([*args, "--calibration", str(report_calibration), "--out", str(out)]) == 0
    page = Page(out.read_text(encoding="utf-8"))
    calibration = open_dataset(report_calibration)
    files = page.tables["data-files"]
    assert files["calibration"]["sha256"][0] == sha256(report_calibration)
    assert "fig-calibration" in {f["id"] for f in page.figures}
    # Every rate shown, row by row: per test and null scenario, per interval and scenario.
    type1, scenario = page.tables["calibration-type1"], "scenario"
    assert calibration.type1_error.dims == ("test", scenario)
    for test in calibration.test.values:
        for where in calibration[scenario].values:
            row = type1[f"{test}|{where}"]
            for name in ("type1_error", "type1_ci_low", "type1_ci_high"):
                value = float(calibration[name].sel(test=test, scenario=where))
                assert row[name][0] == shown(value, "rate"), (test, where, name)
            holds = int(calibration.assumptions_hold.sel(test=test, scenario=where))
            assert row["assumptions_hold"][0] == ("yes" if holds else "no")
    coverage = page.tables["calibration-coverage"]
    where_dim = next(d for d in calibration.coverage.dims if d != "interval")
    for interval in calibration.interval.values:
        for where in calibration[where_dim].values:
            value = float(calibration.coverage.sel({"interval": interval, where_dim: where}))
            assert coverage[f"{interval}|{where}"]["coverage"][0] == shown(value, "rate")
    power = page.tables["calibration-power"]
    for test in calibration.test.values:
        for plant in calibration.plant.values:
            for strength in calibration.strength.values:
                value = float(calibration.power.sel(test=test, plant=plant, strength=strength))
                assert power[str(test)][f"{plant}:{strength:g}"][0] == shown(value, "rate")
    found = set(page.caveats)
    assert "calibration-shape" in found and "no-calibration" not in found


# ----------------------------------------------------------------------- mechanism sections


def test_report_shows_every_mechanism_section(
    saved_pair, checkpoints, contrastive_run, rank1_run, tmp_path
):
    base, aligned = saved_pair("llama")
    results, gradients = tmp_path / "results.nc", tmp_path / "gradients.nc"
    run_cli(["sweep", "--base", base, "--aligned", aligned, "--tokens", "256", "--seq-len", "16",
          "--constructions", "act_cov,unembed", "--cutoffs", "k=4", "--normalisations", "isotropic",
          "--no-cache", "--quiet", "--out", str(results)])  # fmt: skip
    run_cli(["gradients", "--model", base, "--tokens", "256", "--seq-len", "16", "--bootstrap", "4",
          "--quiet", "--out", str(gradients)])  # fmt: skip
    dirs, ids_path = checkpoints
    trajectory = tmp_path / "trajectory.nc"
    run_cli(["experiment", "trajectory", "--checkpoints", ",".join(dirs), "--corpus", ids_path,
          "--cutoffs", "k=4", "--no-cache", "--quiet", "--out", str(trajectory)])  # fmt: skip
    extras = [gradients, trajectory, contrastive_run[2], rank1_run[0]]
    report = tmp_path / "report.html"
    run_cli(["report", str(results), "--extra", ",".join(map(str, extras)), "--out", str(report)])
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


def test_report_plots_gradients_along_checkpoints(checkpoints, tmp_path):
    """Several checkpoints: the figure against the step, the per-checkpoint contrast and the trends;
    one checkpoint (the test above) keeps the per-layer table."""
    dirs, ids_path = checkpoints
    results, gradients = tmp_path / "results.nc", tmp_path / "gradients.nc"
    run_cli(["sweep", "--base", dirs[0], "--aligned", dirs[2], "--corpus", ids_path,
          "--constructions", "act_cov,unembed", "--cutoffs", "k=4", "--normalisations", "isotropic",
          "--no-cache", "--quiet", "--out", str(results)])  # fmt: skip
    run_cli(["gradients", "--checkpoints", ",".join(dirs), "--corpus", ids_path, "--bootstrap", "0",
          "--quiet", "--out", str(gradients)])  # fmt: skip
    report = tmp_path / "report.html"
    run_cli(["report", str(results), "--extra", str(gradients), "--out", str(report)])
    html = report.read_text()
    section = html[html.index('<section id="extra-0-gradients"') :]
    section = section[: section.index("</section>")]
    for ident in ('id="fig-gradients"', 'id="gradients-table"', 'id="gradients-trends"'):
        assert ident in section, ident
    assert "training step" in section and "EWC bands over layers" in section
    ds = xr.open_dataset(gradients)
    value = float(ds.contrast_entropy_rank.sel(objective="dpo", site="o_out").isel(checkpoint=2))
    assert f'data-value="{value!r}"' in section
    slope = float(
        ds.trend_slope.sel(segment="align", objective="ce", site="o_out", measure="entropy_rank")
    )
    assert f'data-value="{slope!r}"' in section


# ----------------------------------------------------------------------- errors and atomic output


def test_bad_inputs_are_one_line_errors_and_write_nothing(datasets, tmp_path, capsys):
    out = tmp_path / "r.html"
    results, stats = str(datasets["results"]), str(datasets["stats"])
    subset = tmp_path / "subset.nc"
    write_dataset(open_dataset(datasets["results"]).isel(pair=[0]), subset)
    labelled = tmp_path / "labelled.nc"  # recognised by its kind alone
    write_dataset(xr.Dataset({"x": ("i", np.arange(2.0))}, attrs={"kind": "calibration"}), labelled)
    older = tmp_path / "older.nc"  # a stats file from before the EWC test
    write_dataset(open_dataset(datasets["stats"]).drop_vars(["p_value", "reference"]), older)
    cases = [
        (["report", str(tmp_path / "absent.nc")], "dataset not found"),
        (["report", stats], "is a statistics dataset (from rsf stats), not a results dataset"),
        (["report", results, "--stats", str(labelled)], "pass it with --calibration"),
        (
            ["report", results, "--stats", str(tmp_path / "older.nc")],
            "was written by an older rsf stats (it has no p_value, reference): re-run `rsf stats",
        ),
        (["report", str(subset), "--stats", stats], "was made from a different results file"),
        (["report", results, "--calibration", results], "not a calibration dataset"),
    ]
    for args, message in cases:
        assert main([*args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rsf: error: ") and message in err and err.count("\n") == 1, err
    assert main(["report", results, "--out", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == sorted([subset, labelled, older])


def test_a_failure_while_rendering_leaves_no_file(datasets, tmp_path, monkeypatch):
    import reports.report

    out = tmp_path / "r.html"
    out.write_text("the previous report")

    def broken(*args, **kwargs):
        raise ValueError("rendering failed")

    monkeypatch.setattr(reports.report, "render", broken)
    assert main(["report", str(datasets["results"]), "--out", str(out)]) == 2
    assert out.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


# ----------------------------------------------------------------------- a real browser


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        message = "chromium and chromedriver are needed: `make browser` installs them"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager never goes online; the driver is given
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_a_headless_browser_loads_it_offline_without_errors(report, page):
    from PIL import Image
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        url = report.resolve().as_uri()
        driver.get(url)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        events = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        requested = [
            e["params"]["request"]["url"]
            for e in events
            if e["method"] == "Network.requestWillBeSent"
        ]
        # The browser's own pages (chrome://) aside, the report is the one thing loaded.
        assert [u for u in requested if not u.startswith("chrome:")] == [url]
        # The first screen answers the question; every figure is laid out.
        box = driver.execute_script(
            "return document.querySelector('.answer').getBoundingClientRect().bottom"
        )
        assert 0 < box < 1000
        widths = driver.execute_script(
            "return Array.from(document.querySelectorAll('figure svg')).map(s => s.getBoundingClientRect().width)"
        )
        assert len(widths) == len(page.figures) >= 6 and min(widths) > 150
        image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
        pixels = np.asarray(image, dtype=float)
        assert pixels.std() > 20 and (pixels < 200).mean() > 0.02  # not blank
        # Tables sort with the inline script: ascending by the full-precision value, missing last.
        column = "return Array.from(document.querySelectorAll('#spec-table tbody td[data-col=\"effect_size\"]')).map(td => td.dataset.value)"
        before = [float(v) for v in driver.execute_script(column) if v]
        assert before != sorted(before)  # in specification order at first
        driver.find_element(
            By.CSS_SELECTOR, '#spec-table th[data-col="effect_size"] button'
        ).click()
        values = driver.execute_script(column)
        numbers = [float(v) for v in values if v]
        assert numbers == sorted(before) and values[len(numbers) :] == [""] * (
            len(values) - len(numbers)
        )
        # It prints: several pages of PDF, with the screen-only parts left out.
        pdf = base64.b64decode(driver.print_page())
        assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", pdf)) > 3
    finally:
        driver.quit()


# Strings a hostile dataset can carry into the page: each would run script if written raw into
# HTML text, an attribute, an SVG id or a script element.
INJECTED = {
    "attribute": 'x"><svg onload="document.title=\'pwned-attribute\'">',
    "script": "</script><script>document.title='pwned-script'</script>",
    "handler": "<img src=x onerror=\"document.title='pwned-handler'\">",
    "tex": "$\\frac{$ and $x$",
}


@pytest.fixture(scope="module")
def injected_report(saved_pair, tmp_path_factory):
    """A report whose every pair label (and one model path, shown in the provenance) is hostile."""
    import tomli_w

    root = tmp_path_factory.mktemp("injected")
    pairs = []
    for i, (kind, label) in enumerate(INJECTED.items()):
        base, aligned = saved_pair("llama", seed=11 + i, num_hidden_layers=4)
        if kind == "handler":  # a folder whose name is the payload: it reaches the report as a path
            hostile = root / label.replace("/", "")
            shutil.copytree(aligned, hostile)
            aligned = str(hostile)
        pairs.append({"label": label, "base": base, "aligned": aligned})
    config = root / "sweep.toml"
    config.write_text(tomli_w.dumps({
        "pair": pairs, "corpus": {"tokens": 256, "seq_len": 16},
        "probe": {"constructions": ["act_cov", "unembed", "random"], "cutoffs": ["k=8", "pr"],
                  "normalisations": ["log_isotropic"]},
    }))  # fmt: skip
    results, stats, claims, out = (root / n for n in ("r.nc", "s.nc", "c.nc", "report.html"))
    assert main(["sweep", "--config", str(config), "--out", str(results), "-q", "--no-cache"]) == 0
    assert main(["stats", str(results), "--out", str(stats), "-q", "--resamples", "99"]) == 0
    assert main(["claims", str(results), "--stats", str(stats), "--out", str(claims), "-q",
                 "--resamples", "99"]) == 0  # fmt: skip
    assert main(["report", str(results), "--stats", str(stats), "--claims", str(claims),
                 "--out", str(out)]) == 0  # fmt: skip
    return out


def _event_handlers(text: str) -> list[tuple[str, str]]:
    """Every (tag, attribute) whose attribute is an event handler (``on…``), as a browser parses it."""
    from html.parser import HTMLParser

    found = []

    class Handlers(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend((tag, name) for name, _ in attrs if name.startswith("on"))

    Handlers().feed(text)
    return found


def test_every_id_from_a_label_is_a_safe_slug_and_only_the_sorter_may_run(injected_report):
    """Null: some string from the datasets reaches an id, or the policy admits another script."""
    from reports.render import asset
    from reports.report import script_hash

    text = injected_report.read_text(encoding="utf-8")
    page = Page(text)
    ids = re.findall(r'\bid="([^"]*)"', text)
    plain = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")  # matplotlib's own ids add dots ("axes_1.patch")
    assert ids and all(plain.fullmatch(i) for i in ids), [i for i in ids if not plain.fullmatch(i)]
    policy = next(
        m["content"] for m in page.meta if m.get("http-equiv") == "Content-Security-Policy"
    )
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert f"script-src {script_hash(asset('sort.js'))};" in policy
    assert text.count("<script") == 1
    assert _event_handlers(text) == []  # no element carries an event handler
    for label in INJECTED.values():
        if any(c in label for c in "<>\"'&"):
            assert label not in text  # never raw: escaped wherever it is shown


def test_an_injected_report_runs_nothing_in_chromium(injected_report):
    """Null: a payload in a label or a path runs in a real browser (a document.title trap), or the
    page does not show the label's text."""
    driver = _browser()
    try:
        driver.get(injected_report.resolve().as_uri())
        title = driver.execute_script("return document.title")
        # The page's own title shows the labels as text; a payload that ran would have replaced it.
        assert title == "RSF robustness report: " + ", ".join(INJECTED.values())
        shown_text = driver.execute_script("return document.body.textContent")
        for kind, label in INJECTED.items():
            wanted = label.replace("/", "") if kind == "handler" else label
            assert wanted in shown_text, kind
        # The sorter, the one script allowed, still runs: it made a button of every header.
        assert driver.execute_script("return document.querySelectorAll('th button').length") > 0
        blocked = [
            e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]
        ]
        assert blocked == []  # nothing even tried to run
    finally:
        driver.quit()
