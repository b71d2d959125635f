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
from report_page import SECTIONS, Page, sha256, shown
from rsf_commands import run_cli

from robustness.dataset import open_dataset, write_dataset
from rsf.main import main

# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def datasets(report_datasets):
    """The results, stats and calibration datasets (the session's, from conftest.py)."""
    return report_datasets


@pytest.fixture(scope="module")
def report(datasets):
    out = datasets["root"] / "report.html"
    args = ["report", str(datasets["results"]), "--stats", str(datasets["stats"])]
    assert main([*args, "--calibration", str(datasets["calibration"]), "--out", str(out)]) == 0
    return out


# ----------------------------------------------------------------------- structure


def test_every_section_figure_and_input_is_in_one_self_contained_file(report, datasets):
    text = report.read_text(encoding="utf-8")
    page = Page(text)
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
    assert len(page.figures) >= 7
    for figure in page.figures:
        assert figure["alt"] and len(figure["alt"]) > 40, figure["id"]
        assert figure["title"] and len(figure["caption"]) > 40, figure["id"]
    assert "fig-trajectory" in {f["id"] for f in page.figures}  # two pairs: side by side
    # It names its data files with their hashes.
    files = page.tables["data-files"]
    for kind in ("results", "stats", "calibration"):
        assert files[kind]["file"][0] == datasets[kind].name
        assert files[kind]["sha256"][0] == sha256(datasets[kind])


def test_no_statistics_leaves_every_section_in_place_and_says_what_to_run(datasets, tmp_path):
    out = tmp_path / "bare.html"
    assert main(["report", str(datasets["results"]), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == list(SECTIONS)
    assert text.count("This section needs <code>stats.nc</code>") == 4  # a, b, e, f
    assert "This section needs <code>calibration.nc</code>" in text
    assert {"no-stats", "no-calibration"} <= set(page.caveats)
    # What needs only the results is still drawn.
    assert {"fig-rsf-cutoff", "fig-heatmaps"} <= {f["id"] for f in page.figures}


# ----------------------------------------------------------------------- golden: numbers shown = datasets


def test_numbers_shown_match_the_datasets(report, datasets):
    page = Page(report.read_text(encoding="utf-8"))
    stats = open_dataset(datasets["stats"])
    results = open_dataset(datasets["results"])
    calibration = open_dataset(datasets["calibration"])

    table = page.tables["spec-table"]
    assert len(table) == np.prod(
        [stats.sizes[d] for d in ("pair", "construction", "cutoff", "normalisation")]
    )
    rules = {"asymmetry": "signed", "ci_low": "signed", "ci_high": "signed", "seq_ci_low": "signed",
             "seq_ci_high": "signed", "effect_size": "effect", "p_signflip": "p", "p_perm": "p",
             "p_adj": "p", "p_wy": "p"}  # fmt: skip
    checked = 0
    for pair in stats.pair.values:
        for c in stats.construction.values:
            for k in stats.cutoff.values:
                for n in stats.normalisation.values:
                    row = table[f"{pair}|{c}|{k}|{n}"]
                    cell = stats.sel(pair=pair, construction=c, cutoff=k, normalisation=n)
                    for name, rule in rules.items():
                        value = float(cell[name])
                        text, full = row[name]
                        assert text == shown(value, rule), (pair, c, k, n, name)
                        # The unrounded value travels with the cell, exactly.
                        assert (full == "") if not math.isfinite(value) else float(full) == value
                        checked += math.isfinite(value)
    assert checked > 100
    preferred = stats.attrs["preferred_specification"].split(",")
    assert table[f"early|{'|'.join(preferred)}"]["preferred"][0] == "★"

    verdict = page.tables["verdict-table"]
    per_pair = json.loads(stats.attrs["per_pair"])
    for pair in ("early", "late"):
        column = f"pair:{pair}"
        cell = stats.sel(
            pair=pair, construction=preferred[0], cutoff=preferred[1], normalisation=preferred[2]
        )
        for name in ("asymmetry", "ci_low", "ci_high", "seq_ci_low", "seq_ci_high"):
            assert verdict[name][column][0] == shown(float(cell[name]), "signed")
        for name in ("p_signflip", "p_perm"):
            assert verdict[name][column][0] == shown(float(cell[name]), "p")
        same_scale = stats.asymmetry.sel(pair=pair, normalisation=preferred[2]).values
        assert verdict["median_asymmetry"][column][0] == shown(np.nanmedian(same_scale), "signed")
        joint = per_pair[pair]["joint"]
        assert verdict["median_effect"][column][0] == shown(joint["median_effect"], "effect")
        assert verdict["share_significant"][column][0] == shown(joint["share_significant"], "share")
        assert verdict["stouffer_z"][column][0] == shown(joint["stouffer_z"], "effect")
        for name in ("p_median_effect", "p_share_significant", "p_stouffer_z"):
            assert verdict[name][column][0] == shown(joint[name], "p")
        assert verdict["n_specifications"][column][0] == str(joint["n_specifications"])
        shares = per_pair[pair]["variance_shares"]
        row = page.tables["variance-table"][pair]
        for factor, value in shares.items():
            assert row[factor][0] == shown(value, "share")
        for key, value in per_pair[pair].get("ranking_stability", {}).items():
            assert row[key][0] == shown(value, "agreement")
        models = page.tables["models"][pair]
        for name in ("base_hash", "aligned_hash", "base_id", "aligned_id"):
            assert models[name][0] == str(results[name].sel(pair=pair).item())
    # The sentence in the verdict box uses the same rounding as the table.
    early = stats.sel(
        pair="early", construction=preferred[0], cutoff=preferred[1], normalisation=preferred[2]
    )
    text = report.read_text(encoding="utf-8")
    assert f"is A = {shown(float(early.asymmetry), 'signed')} on average" in text
    p_flip = shown(float(early.p_signflip), "p")
    relation = p_flip if p_flip.startswith("<") else f"= {p_flip}"
    assert f"sign-flip p {relation}, label-permutation p " in text
    assert "p = <" not in text  # "p < 0.001", never "p = < 0.001"

    type1 = page.tables["calibration-type1"]
    for test in calibration.test.values:
        for name in ("type1_error", "type1_ci_low", "type1_ci_high"):
            assert type1[str(test)][name][0] == shown(
                float(calibration[name].sel(test=test)), "rate"
            )
    coverage = page.tables["calibration-coverage"]
    for interval in calibration.interval.values:
        for scenario in calibration.scenario.values:
            value = float(calibration.coverage.sel(interval=interval, scenario=scenario))
            assert coverage[f"{interval}|{scenario}"]["coverage"][0] == shown(value, "rate")


def test_caveats_follow_from_the_data(report):
    page = Page(report.read_text(encoding="utf-8"))
    found = set(page.caveats)
    # "late" ties its embeddings and has 3 layers (smallest sign-flip p 2/8 > α); 20 replicates are too few for BCa.
    assert {
        "tied-embeddings",
        "few-layers-late",
        "bca-replicates",
        "layer-resamples",
        "calibration-shape",
    } <= found
    assert "few-layers-early" not in found  # 6 layers: 2/64 < 0.05
    assert not {"no-stats", "no-calibration", "no-sequence-bootstrap"} & found
    text = report.read_text(encoding="utf-8")
    assert "Pair(s) late tie the input and output embeddings" in text


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


# ----------------------------------------------------------------------- errors and atomic output


def test_bad_inputs_are_one_line_errors_and_write_nothing(datasets, tmp_path, capsys):
    out = tmp_path / "r.html"
    results, stats = str(datasets["results"]), str(datasets["stats"])
    subset = tmp_path / "subset.nc"
    write_dataset(open_dataset(datasets["results"]).isel(pair=[0]), subset)
    cases = [
        (["report", str(tmp_path / "absent.nc")], "dataset not found"),
        (["report", stats], "is a statistics dataset (from rsf stats), not a results dataset"),
        (
            ["report", results, "--stats", str(datasets["calibration"])],
            "pass it with --calibration",
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
    assert list(tmp_path.iterdir()) == [subset]


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


def test_a_headless_browser_loads_it_offline_without_errors(report):
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
        assert len(widths) >= 7 and min(widths) > 150
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
