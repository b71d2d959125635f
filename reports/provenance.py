"""Sections (h)–(j): methods (from the datasets' own attributes), provenance and caveats."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from . import formatting as fmt
from .caveats import caveats
from .context import ReportContext
from .registry import Section
from .render import fragment
from .tables import Column, Row, Table

__all__ = ["caveat_section", "methods_section", "provenance_section", "provenance_tables"]


# ----------------------------------------------------------------------- (h) methods


def _report_versions() -> dict[str, str]:
    found = {}
    for name in ("rsf-robustness", "matplotlib", "jinja2", "xarray", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


# How the methods section names each test whose null `rsf stats` writes out (attr null_hypotheses).
TEST_NAMES = {
    "p_value": "p (EWC t-test over layers): the verdict's test",
    "p_signflip": "sign-flip p: exchangeable layers",
    "p_perm": "label-permutation p: within-layer exchangeability",
    "joint": "joint tests across specifications",
    "p_adj": "p BH",
    "p_wy": "p WY",
    "pair_model": "pair model",
}


def stats_methods(stats) -> dict | None:
    """What the methods section says about the statistics, from the dataset's own attributes."""
    if stats is None:
        return None
    attrs = stats.attrs
    nulls = json.loads(attrs.get("null_hypotheses", "{}") or "{}")
    return {
        "attrs": attrs,
        "level": int(round(float(attrs["confidence_level"]) * 100)),
        "methods": [
            (label, attrs[key])
            for key, label in (
                ("p_value_method", "The verdict's test"),
                ("ci_method", "Interval over layers"),
                ("effect_size_method", "Effect size"),
                ("seq_ci_method", "Sequence interval"),
                ("counted_rule", "Counted specifications"),
                ("variance_method", "Variance decomposition"),
                ("p_value_rule", "Monte Carlo and exact p-values"),
                ("scale", "Scale"),
            )
            if attrs.get(key)
        ],
        "nulls": [(TEST_NAMES.get(key, key), text) for key, text in nulls.items()],
    }


def methods_section(ctx: ReportContext) -> Section:
    attrs = ctx.results.attrs
    probe = ctx.config.get("probe", {})
    listed = {
        d: [str(v) for v in ctx.results[d].values]
        for d in ("construction", "cutoff", "normalisation", "matrix")
    }
    body = fragment(
        "sections/methods.html.j2",
        ctx=ctx,
        attrs=attrs,
        listed=listed,
        probe=probe,
        stats=stats_methods(ctx.stats),
        calibration_settings=json.loads(ctx.calibration.attrs.get("settings", "{}"))
        if ctx.calibration is not None
        else None,
        sweep_versions=json.loads(attrs.get("package_versions", "{}") or "{}"),
        report_versions=_report_versions(),
        config_toml=attrs.get("config", ""),
    )
    return Section("methods", "Methods", body)


# ----------------------------------------------------------------------- (i) provenance


def provenance_tables(ctx: ReportContext) -> list[Table]:
    files = Table(
        "data-files",
        "The data files this report was made from (SHA-256 of the file's bytes)",
        (
            Column("kind", "kind", numeric=False),
            Column("file", "file", numeric=False),
            Column("sha256", "SHA-256", numeric=False),
            Column("created", "created", numeric=False),
            Column("version", "written by", numeric=False),
        ),  # fmt: skip
        tuple(
            Row(
                s.kind,
                {
                    "kind": fmt.text(s.kind),
                    "file": fmt.text(s.name),
                    "sha256": fmt.text(s.sha256),
                    "created": fmt.text(s.created),
                    "version": fmt.text(f"rsf {s.dataset.attrs.get('rsf_version', '?')}"),
                },
            )  # fmt: skip
            for s in ctx.inputs.sources
        ),
    )
    fields = [
        ("base_id", "base model"), ("base_hash", "base weights"), ("aligned_id", "aligned model"),
        ("aligned_hash", "aligned weights"), ("model_type", "family"), ("n_layers", "layers"),
        ("d_model", "d"), ("n_heads", "heads"), ("n_kv_heads", "kv heads"), ("tied_embeddings", "tied embeddings"),
    ]  # fmt: skip
    fields = [(k, label) for k, label in fields if k in ctx.results]
    rows = []
    for pair in ctx.pairs:
        cells = {"pair": fmt.text(pair)}
        for key, _ in fields:
            v = ctx.provenance(pair, key)
            cells[key] = fmt.text(("yes" if v else "no") if key == "tied_embeddings" else v)
        rows.append(Row(pair, cells))
    models = Table(
        "models",
        "The models compared, with content hashes of their weights",
        (
            Column("pair", "pair", numeric=False),
            *(Column(k, label, numeric=False) for k, label in fields),
        ),
        tuple(rows),
        wrap=True,
    )
    return [files, models]


def provenance_section(ctx: ReportContext) -> Section:
    body = fragment(
        "sections/provenance.html.j2",
        tables=provenance_tables(ctx),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_report_versions(),
    )
    return Section("provenance", "Provenance", body)


# ----------------------------------------------------------------------- (j) caveats


def caveat_section(ctx: ReportContext) -> Section:
    return Section("caveats", "Caveats", fragment("sections/caveats.html.j2", caveats=caveats(ctx)))
