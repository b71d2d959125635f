"""Report sections by dataset kind (reports.registry): a kind without a section is an error, and a
registered section plugs in after the calibration, with its file named and hashed."""

from __future__ import annotations

import numpy as np
import pytest
from report_page import Page, sha256

from robustness.io.datasets import write_dataset


def test_sections_for_other_datasets_plug_in_by_kind(report_datasets, tmp_path, monkeypatch):
    import xarray as xr
    from markupsafe import Markup

    import reports
    import reports.registry

    monkeypatch.setattr(reports.registry, "REGISTRY", {})
    toy = tmp_path / "toy.nc"
    write_dataset(
        xr.Dataset({"x": ("i", np.arange(3.0))}, attrs={"kind": "toy", "created": "now"}), toy
    )
    inputs = reports.load_inputs(report_datasets["results"], extra_paths=[toy])
    with pytest.raises(ValueError, match="no report section for datasets of kind 'toy'"):
        reports.build_report(inputs)

    @reports.register_section("toy", title="Toy section")
    def toy_section(ctx, source):
        return Markup(f"<p>sum {float(source.dataset.x.sum()):.1f}</p>")

    page = Page(reports.build_report(inputs))
    assert page.sections.index("extra-0-toy") == page.sections.index("calibration") + 1
    assert page.tables["data-files"]["toy"]["sha256"][0] == sha256(toy)
