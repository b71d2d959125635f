"""The report's sections, one builder each, and the registry for sections from other datasets.

A builder takes the :class:`~reports.context.ReportContext` and returns a
:class:`Section`. The core sections always appear, in a fixed order (an empty
one says what input it needs). Other datasets add sections through
:func:`register_section`, keyed by the dataset's ``kind`` attribute::

    @register_section("gradients", title="Gradient alignment")
    def gradients_section(ctx, source):   # source.dataset is the xarray Dataset
        return fragment("sections/gradients.html.j2", ...)

Registered sections go after the calibration and before the methods.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from markupsafe import Markup

from robustness.specification import SPEC_DIMS
from robustness.stats import verdict

from . import figures
from . import formatting as fmt
from .caveats import caveats
from .context import ReportContext
from .inputs import Source
from .render import fragment
from .tables import Column, Row, Table

__all__ = ["Section", "build_sections", "register_section", "registered_kinds"]


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    body: Markup


Builder = Callable[[ReportContext, Source], Markup]
_REGISTRY: dict[str, tuple[str, Builder]] = {}


def register_section(kind: str, *, title: str) -> Callable[[Builder], Builder]:
    """Register a builder for datasets whose ``kind`` attribute is `kind`."""
    if kind in ("results", "stats", "calibration"):
        raise ValueError(f"`kind` {kind!r} is a core input; register another kind")

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[kind] = (title, builder)
        return builder

    return decorate


def registered_kinds() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def _spec_label(spec) -> str:
    return "/".join(spec)


# ----------------------------------------------------------------------- (a) verdict


def _verdict_table(ctx: ReportContext) -> Table:
    stats = ctx.stats
    c, k, n = ctx.preferred
    level = int(round(ctx.confidence_level * 100))
    rows: list[tuple[str, str, Callable]] = [
        (
            "asymmetry",
            f"asymmetry A, preferred specification ({_spec_label(ctx.preferred)})",
            fmt.signed,
        ),
        ("ci_low", f"{level}% interval, low (layer bootstrap)", fmt.signed),
        ("ci_high", f"{level}% interval, high (layer bootstrap)", fmt.signed),
    ]
    if "seq_ci_low" in stats:
        rows += [
            ("seq_ci_low", f"{level}% interval, low (sequence bootstrap, BCa)", fmt.signed),
            ("seq_ci_high", f"{level}% interval, high (sequence bootstrap, BCa)", fmt.signed),
        ]
    rows += [
        ("p_signflip", "sign-flip p (two-sided)", fmt.p_value),
        ("p_perm", "label-permutation p", fmt.p_value),
        ("median_asymmetry", f"median asymmetry over the {n} specifications", fmt.signed),
        ("quartile_low", "… lower quartile of those specifications", fmt.signed),
        ("quartile_high", "… upper quartile of those specifications", fmt.signed),
        ("median_effect", "median effect size d_z, all specifications", fmt.effect),
        ("p_median_effect", "… joint p", fmt.p_value),
        ("share_significant", "share significant with read > write", fmt.share),
        ("p_share_significant", "… joint p", fmt.p_value),
        ("stouffer_z", "Stouffer's Z", fmt.effect),
        ("p_stouffer_z", "… joint p", fmt.p_value),
        ("n_specifications", "specifications tested", fmt.integer),
        ("n_layers", "layers", fmt.integer),
    ]
    values: dict[str, dict[str, float]] = {}
    for pair in ctx.pairs:
        cell = stats.sel(pair=pair, construction=c, cutoff=k, normalisation=n)
        row = {
            name: float(cell[name])
            for name in ("asymmetry", "ci_low", "ci_high", "p_signflip", "p_perm")
        }
        if "seq_ci_low" in stats:
            row.update(seq_ci_low=float(cell.seq_ci_low), seq_ci_high=float(cell.seq_ci_high))
        same_scale = stats.asymmetry.sel(pair=pair, normalisation=n).values.ravel()
        same_scale = same_scale[np.isfinite(same_scale)]
        if same_scale.size:
            row["median_asymmetry"] = float(np.median(same_scale))
            row["quartile_low"], row["quartile_high"] = (
                float(q) for q in np.percentile(same_scale, [25, 75])
            )
        info = ctx.per_pair.get(pair, {})
        row.update(
            {key: float(v) for key, v in info.get("joint", {}).items() if not isinstance(v, bool)}
        )
        row["n_layers"] = float(info.get("n_layers", ctx.n_layers(pair)))
        values[pair] = row
    columns = (
        Column("quantity", "quantity", numeric=False),
        *(Column(f"pair:{p}", f"pair {p}") for p in ctx.pairs),
    )
    table_rows = []
    for key, label, rule in rows:
        cells = {"quantity": fmt.text(label)}
        for pair in ctx.pairs:
            cells[f"pair:{pair}"] = rule(values[pair].get(key))
        table_rows.append(Row(key, cells))
    return Table(
        "verdict-table",
        "The numbers behind the verdict, one column per pair",
        columns,
        tuple(table_rows),
    )


def _verdict_words(ctx: ReportContext, table: Table) -> list[dict]:
    """Per pair: the verdict `rsf stats` prints, and the numbers in a sentence (text taken from the table)."""
    shown = {row.key: row.cells for row in table.rows}
    level = int(round(ctx.confidence_level * 100))
    out = []
    for pair in ctx.pairs:
        info = ctx.per_pair.get(pair, {})
        joint = info.get("joint")
        if not joint:
            out.append(
                {
                    "pair": pair,
                    "verdict": "no complete specification: nothing to test",
                    "details": [],
                }
            )
            continue
        value = {key: str(cells[f"pair:{pair}"]) for key, cells in shown.items()}
        # "p = 0.031" but "p < 0.001": a shown p-value may already carry its relation.
        value |= {
            key: (v if v.startswith("<") else f"= {v}")
            for key, v in value.items()
            if key.startswith("p_")
        }
        details = [
            f"Under the preferred specification ({_spec_label(ctx.preferred)}) the read set "
            f"({', '.join(ctx.read)}) minus the write set ({', '.join(ctx.write)}) is A = {value['asymmetry']} "
            f"on average over layers ({level}% interval {value['ci_low']} to {value['ci_high']}; "
            f"sign-flip p {value['p_signflip']}, label-permutation p {value['p_perm']}).",
            f"Over the {value['n_specifications']} defined specifications the median effect size is "
            f"d_z = {value['median_effect']} (joint p {value['p_median_effect']}); "
            f"{value['share_significant']} are significant with read > write (joint p "
            f"{value['p_share_significant']}); Stouffer's Z = {value['stouffer_z']} (joint p "
            f"{value['p_stouffer_z']}). The joint p-values apply one set of sign flips to every "
            "specification at once, so they account for the specifications' dependence.",
        ]
        out.append(
            {
                "pair": pair,
                "verdict": verdict(joint, int(info["n_layers"]), ctx.alpha),
                "details": details,
            }
        )
    return out


def _mixed_model_table(ctx: ReportContext) -> Table | None:
    mixed = json.loads(ctx.stats.attrs.get("mixed_model", "{}") or "{}")
    if not mixed.get("coefficients"):
        return None
    rows = tuple(
        Row(name, {"term": fmt.text(name), "coef": fmt.signed(v["coef"]), "p": fmt.p_value(v["p"])})
        for name, v in mixed["coefficients"].items()
    )
    columns = (
        Column("term", "term", numeric=False),
        Column("coef", "coefficient"),
        Column("p", "p"),
    )
    caption = f"Mixed model {mixed['formula']} on {_spec_label(mixed['specification'])} (statsmodels MixedLM)"
    return Table("mixed-model", caption, columns, rows)


def _needs_stats():
    """The body of a section that has nothing to show without ``stats.nc``: what to run."""
    return fragment(
        "sections/missing.html.j2",
        needs="stats.nc",
        command="rsf stats results.nc --out stats.nc",
    )


def verdict_section(ctx: ReportContext) -> Section:
    if ctx.stats is None:
        body = _needs_stats()
        return Section("verdict", "Verdict", body)
    table = _verdict_table(ctx)
    body = fragment(
        "sections/verdict.html.j2",
        ctx=ctx,
        words=_verdict_words(ctx, table),
        table=table,
        trajectory=figures.trajectory(ctx.stats, ctx.pairs, ctx.preferred, ctx.confidence_level),
        mixed=_mixed_model_table(ctx),
        caveats=caveats(ctx),
    )
    return Section("verdict", "Verdict", body)


# ----------------------------------------------------------------------- (b) specification curve


def spec_table(ctx: ReportContext) -> Table:
    stats = ctx.stats
    numbers = [
        ("asymmetry", "A", fmt.signed),
        ("ci_low", "CI low", fmt.signed),
        ("ci_high", "CI high", fmt.signed),
    ]
    if "seq_ci_low" in stats:
        numbers += [
            ("seq_ci_low", "seq. CI low", fmt.signed),
            ("seq_ci_high", "seq. CI high", fmt.signed),
        ]
    numbers += [
        ("effect_size", "d_z", fmt.effect),
        ("p_signflip", "p sign-flip", fmt.p_value),
        ("p_perm", "p perm.", fmt.p_value),
        ("p_adj", "p BH", fmt.p_value),
        ("p_wy", "p WY", fmt.p_value),
    ]
    columns = (
        Column("preferred", "pref.", numeric=False, help="the paper's preferred specification"),
        Column("pair", "pair", numeric=False),
        *(Column(d, d, numeric=False) for d in SPEC_DIMS),
        *(Column(name, label) for name, label, _ in numbers),
    )
    frame = stats[[name for name, _, _ in numbers]].to_dataframe().reset_index()
    frame = frame.set_index(["pair", *SPEC_DIMS])
    rows = []
    for (pair, c, k, n), record in frame.iterrows():
        preferred = (c, k, n) == tuple(ctx.preferred)
        cells = {
            "preferred": fmt.text("★" if preferred else ""),
            "pair": fmt.text(pair),
            "construction": fmt.text(c),
            "cutoff": fmt.text(k),
            "normalisation": fmt.text(n),
        }
        for name, _, rule in numbers:
            cells[name] = rule(record[name])
        rows.append(Row(f"{pair}|{c}|{k}|{n}", cells, "preferred" if preferred else ""))
    caption = (
        "Every specification: asymmetry A with its layer-bootstrap interval"
        + (" and sequence-bootstrap interval" if "seq_ci_low" in stats else "")
        + ", effect size, and p-values (sign-flip, label permutation, Benjamini–Hochberg and "
        "Westfall–Young adjusted over the pair's specifications); — where undefined"
    )
    return Table("spec-table", caption, columns, tuple(rows), scroll=True)


def spec_curve_section(ctx: ReportContext) -> Section:
    if ctx.stats is None:
        body = _needs_stats()
    else:
        body = fragment(
            "sections/figure_and_table.html.j2",
            intro=(
                "Each specification is one construction × cutoff × normalisation. If the asymmetry "
                "belongs to the models, the curve sits above zero whatever the choices; if it "
                "belongs to the analyst, its sign follows particular choices in the panel below."
            ),
            figure=figures.spec_curve(ctx.stats, ctx.pairs, ctx.preferred, ctx.alpha),
            table=spec_table(ctx),
        )
    return Section("specification-curve", "Specification curve", body)


# ----------------------------------------------------------------------- (c) rsf against the cutoff


def rsf_cutoff_section(ctx: ReportContext) -> Section:
    constructions = [ctx.preferred[0]]
    present = [str(c) for c in ctx.results.construction.values]
    for extra in ("unembed", "random"):
        if extra in present and extra not in constructions:
            constructions.append(extra)
    figure = figures.rsf_by_cutoff(
        ctx.results,
        ctx.pairs,
        constructions,
        ctx.preferred[2],
        list(ctx.read),
        list(ctx.write),
        ctx.confidence_level,
    )
    body = fragment(
        "sections/figure_and_table.html.j2",
        intro=(
            f"How the probe grows with the rank cutoff for the preferred construction ({ctx.preferred[0]}), "
            "the unembedding's subspace and the random null control, each matrix and each pathway set."
        ),
        figure=figure,
        table=None,
    )
    return Section("rsf-cutoff", "RSF against the rank cutoff", body)


# ----------------------------------------------------------------------- (d) heatmaps


def heatmap_section(ctx: ReportContext) -> Section:
    specs = ctx.chosen_specs()
    body = fragment(
        "sections/figure_and_table.html.j2",
        intro=(
            "Where in the network the delta aligns: the preferred specification"
            + (
                " and the two ends of the first pair's specification curve"
                if ctx.stats is not None
                else ""
            )
            + f" ({'; '.join(_spec_label(s) for s in specs)})."
        ),
        figure=figures.layer_heatmaps(ctx.results, ctx.pairs, specs),
        table=None,
    )
    return Section("heatmaps", "Layer × matrix heatmaps", body)


# ----------------------------------------------------------------------- (e) null distributions


def null_section(ctx: ReportContext) -> Section:
    if ctx.stats is None:
        body = _needs_stats()
        return Section("null-distributions", "Permutation null distributions", body)
    exact = {p: ctx.per_pair.get(p, {}).get("signflip_exact") for p in ctx.pairs}
    how = "; ".join(
        f"pair {p}: {'exact, all 2^' + str(ctx.n_layers(p)) + ' sign vectors' if e else 'Monte Carlo, ' + str(ctx.stats.attrs.get('n_resamples')) + ' draws'}"
        for p, e in exact.items()
    )
    body = fragment(
        "sections/figure_and_table.html.j2",
        intro=f"The sign-flip test asks whether the per-layer differences could have either sign by chance ({how}).",
        figure=figures.null_distributions(ctx.stats, ctx.pairs, ctx.chosen_specs()),
        table=None,
    )
    return Section("null-distributions", "Permutation null distributions", body)


# ----------------------------------------------------------------------- (f) variance decomposition


def variance_table(ctx: ReportContext) -> Table:
    columns = (
        Column("pair", "pair", numeric=False),
        *(Column(f, f"{f} share") for f in ("construction", "cutoff", "normalisation", "residual")),
        Column("kendall_w", "Kendall's W"),
        Column("icc_agreement", "ICC(A,1)"),
        Column("icc_consistency", "ICC(C,1)"),
    )
    rows = []
    for pair in ctx.pairs:
        info = ctx.per_pair.get(pair, {})
        shares, stability = info.get("variance_shares", {}), info.get("ranking_stability", {})
        cells = {"pair": fmt.text(pair)}
        for f in ("construction", "cutoff", "normalisation", "residual"):
            cells[f] = fmt.share(shares.get(f))
        for key in ("kendall_w", "icc_agreement", "icc_consistency"):
            cells[key] = fmt.agreement(stability.get(key))
        rows.append(Row(pair, cells))
    caption = (
        "Share of the variation in effect size per analytic choice (type-II ANOVA), and how stable the "
        "ranking of layers by their read − write difference is across specifications (Kendall's W, ICC)"
    )
    return Table("variance-table", caption, columns, tuple(rows))


def variance_section(ctx: ReportContext) -> Section:
    if ctx.stats is None:
        body = _needs_stats()
    else:
        shares = {p: ctx.per_pair.get(p, {}).get("variance_shares", {}) for p in ctx.pairs}
        body = fragment(
            "sections/figure_and_table.html.j2",
            intro=(
                "A large share for one choice means the answer depends on that choice; a large "
                "residual with small shares means no single choice drives it."
            ),
            figure=figures.variance_shares(shares),
            table=variance_table(ctx),
        )
    return Section("variance", "Variance decomposition: which choice moves the result", body)


# ----------------------------------------------------------------------- (g) calibration


def target_band(calibration, name: str) -> tuple[float, float] | None:
    """A ``[low, high]`` target from the calibration's attrs (stored as JSON text or an array)."""
    raw = calibration.attrs.get(name)
    if raw is None:
        return None
    values = json.loads(raw) if isinstance(raw, str) else list(np.atleast_1d(raw))
    return (float(values[0]), float(values[1])) if len(values) == 2 else None


def calibration_tables(calibration) -> list[Table]:
    target = target_band(calibration, "type1_target")
    type1 = Table(
        "calibration-type1",
        "Type-I error under the isotropic null with 95% Clopper–Pearson intervals"
        + (f" (target {target[0]:g}–{target[1]:g})" if target else ""),
        (
            Column("test", "test", numeric=False),
            Column("type1_error", "type-I error"),
            Column("type1_ci_low", "CI low"),
            Column("type1_ci_high", "CI high"),
        ),  # fmt: skip
        tuple(
            Row(
                str(t),
                {
                    "test": fmt.text(t),
                    **{
                        v: fmt.rate(calibration[v].sel(test=t))
                        for v in ("type1_error", "type1_ci_low", "type1_ci_high")
                    },
                },
            )
            for t in calibration.test.values
        ),
    )
    power_columns = [Column("test", "test", numeric=False)]
    for plant in calibration.plant.values:
        for strength in calibration.strength.values:
            power_columns.append(Column(f"{plant}:{strength:g}", f"{plant} β = {strength:g}"))
    power = Table(
        "calibration-power",
        "Rejection rate against each plant's strength β (power; for the joint tests, which look for "
        "read > write, a write plant's rate is the wrong-direction rate)",
        tuple(power_columns),
        tuple(
            Row(
                str(t),
                {
                    "test": fmt.text(t),
                    **{
                        f"{plant}:{strength:g}": fmt.rate(
                            calibration.power.sel(test=t, plant=plant, strength=strength)
                        )
                        for plant in calibration.plant.values
                        for strength in calibration.strength.values
                    },
                },
            )  # fmt: skip
            for t in calibration.test.values
        ),
    )
    target = target_band(calibration, "coverage_target")
    coverage = Table(
        "calibration-coverage",
        "Coverage of the layer-bootstrap intervals with 95% Clopper–Pearson intervals"
        + (f" (target {target[0]:g}–{target[1]:g})" if target else ""),
        (
            Column("interval", "interval", numeric=False),
            Column("scenario", "scenario", numeric=False),
            Column("coverage", "coverage"),
            Column("coverage_ci_low", "CI low"),
            Column("coverage_ci_high", "CI high"),
        ),  # fmt: skip
        tuple(
            Row(
                f"{i}|{s}",
                {
                    "interval": fmt.text(i),
                    "scenario": fmt.text(s),
                    **{
                        v: fmt.rate(calibration[v].sel(interval=i, scenario=s))
                        for v in ("coverage", "coverage_ci_low", "coverage_ci_high")
                    },
                },
            )  # fmt: skip
            for i in calibration.interval.values
            for s in calibration.scenario.values
        ),
    )
    return [type1, power, coverage]


def calibration_section(ctx: ReportContext) -> Section:
    calibration = ctx.calibration
    if calibration is None:
        body = fragment(
            "sections/missing.html.j2",
            needs="calibration.nc",
            command="rsf calibrate --out calibration.nc",
        )
        return Section("calibration", "Calibration", body)
    settings = json.loads(calibration.attrs.get("settings", "{}"))
    body = fragment(
        "sections/calibration.html.j2",
        settings=settings,
        attrs=calibration.attrs,
        misses=json.loads(calibration.attrs.get("misses", "[]") or "[]"),
        figure=figures.calibration_errors(calibration, target_band(calibration, "type1_target")),
        tables=calibration_tables(calibration),
    )
    return Section("calibration", "Calibration", body)


# ----------------------------------------------------------------------- (h) methods


def _report_versions() -> dict[str, str]:
    found = {}
    for name in ("rsf-robustness", "matplotlib", "jinja2", "xarray", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


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
        stats_attrs=ctx.stats.attrs if ctx.stats is not None else None,
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


# ----------------------------------------------------------------------- assembly

CORE_BEFORE = (
    verdict_section,
    spec_curve_section,
    rsf_cutoff_section,
    heatmap_section,
    null_section,
    variance_section,
    calibration_section,
)
CORE_AFTER = (methods_section, provenance_section, caveat_section)


def build_sections(ctx: ReportContext) -> list[Section]:
    """The core sections, the registered ones for extra datasets, then methods, provenance, caveats."""
    sections = [build(ctx) for build in CORE_BEFORE]
    for index, source in enumerate(ctx.inputs.extra):
        if source.kind not in _REGISTRY:
            known = ", ".join(registered_kinds()) or "none registered"
            raise ValueError(
                f"{source.path}: no report section for datasets of kind {source.kind!r} ({known})"
            )
        title, builder = _REGISTRY[source.kind]
        sections.append(Section(f"extra-{index}-{source.kind}", title, builder(ctx, source)))
    sections.extend(build(ctx) for build in CORE_AFTER)
    return sections
