"""Sections (h)–(j): methods (from the datasets' own attributes), provenance and caveats."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from robustness.stats.diagnostics import MASSIVE_SHARE, SMALL_K, STATISTICS

from . import formatting as fmt
from .caveats import caveats
from .context import ReportContext
from .registry import Section
from .render import fragment
from .tables import Column, Row, Table

__all__ = [
    "caveat_section",
    "methods_section",
    "provenance_section",
    "provenance_tables",
    "rank_tables",
]


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


LONG_FIELDS = (
    "base_id",
    "aligned_id",
    "base_hash",
    "aligned_hash",
    "base_commit",
    "aligned_commit",
)
CORPUS_FIELDS = {  # results.nc attributes (robustness.io.provenance) and how the table names them
    "corpus_source": "source",
    "corpus_revision": "revision",
    "corpus_split": "split",
    "corpus_column": "column",
    "chat_template": "chat template",
    "corpus_hash": "token stream hash",
    "n_tokens": "tokens",
    "seq_len": "sequence length",
}


# The models table's fields (pairs' provenance in results.nc) and how the table names them.
MODEL_FIELDS = (
    ("base_id", "base model"), ("base_revision", "base revision"), ("base_commit", "base commit"),
    ("base_hash", "base weights"), ("aligned_id", "aligned model"),
    ("aligned_revision", "aligned revision"), ("aligned_commit", "aligned commit"),
    ("aligned_hash", "aligned weights"), ("model_type", "family"), ("n_layers", "layers"),
    ("d_model", "d"), ("n_heads", "heads"), ("n_kv_heads", "kv heads"), ("tied_embeddings", "tied embeddings"),
)  # fmt: skip


def provenance_tables(ctx: ReportContext) -> list[Table]:
    """The data files, where each was made, the corpus (when recorded) and the models compared."""
    corpus = _corpus_table(ctx)
    return [
        _files_table(ctx),
        _environment_table(ctx),
        *([corpus] if corpus.rows else []),
        _models_table(ctx),
    ]


def _files_table(ctx: ReportContext) -> Table:
    return Table(
        "data-files",
        "The data files this report was made from (SHA-256 of the file's bytes)",
        (
            Column("kind", "kind", numeric=False),
            Column("file", "file", numeric=False),
            Column("sha256", "SHA-256", numeric=False, breaks=True),
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


def _environment_table(ctx: ReportContext) -> Table:
    return Table(
        "environment",
        "Where each data file was made: the tool's commit, torch's build, threads, the command",
        (
            Column("kind", "kind", numeric=False),
            Column("commit", "rsf commit", numeric=False),
            Column("torch", "torch build", numeric=False, breaks=True),
            Column("threads", "threads"),
            Column("command", "command line", numeric=False, breaks=True),
        ),
        tuple(
            Row(
                s.kind,
                {
                    "kind": fmt.text(s.kind),
                    "commit": fmt.text(s.dataset.attrs.get("rsf_commit", "not recorded")),
                    "torch": fmt.text(s.dataset.attrs.get("torch_build", "not recorded")),
                    "threads": fmt.text(s.dataset.attrs.get("threads", "–")),
                    "command": fmt.text(s.dataset.attrs.get("command_line", "not recorded")),
                },
            )
            for s in ctx.inputs.sources
        ),
    )


def _corpus_table(ctx: ReportContext) -> Table:
    """The corpus fields results.nc records (none: a table without rows, which is left out)."""
    corpus_keys = [k for k in CORPUS_FIELDS if k in ctx.results.attrs]
    return Table(
        "corpus",
        "The corpus the activations were measured on",
        (Column("field", "field", numeric=False), Column("value", "value", numeric=False, breaks=True)),
        tuple(
            Row(k, {"field": fmt.text(label), "value": fmt.text(ctx.results.attrs[k])})
            for k, label in CORPUS_FIELDS.items()
            if k in corpus_keys
        ),
    )  # fmt: skip


def _models_table(ctx: ReportContext) -> Table:
    """One row per pair: its models, revisions, commits, weight hashes, shape and storage."""
    fields = [(k, label) for k, label in MODEL_FIELDS if k in ctx.results]
    if "quantisation" in ctx.results:
        fields += [("base_storage", "base stored as"), ("aligned_storage", "aligned stored as")]
    rows = []
    for pair in ctx.pairs:
        cells = {"pair": fmt.text(pair)}
        for key, _ in fields:
            if key.endswith("_storage"):
                cells[key] = fmt.text(storage_summary(ctx.results, pair, key.split("_")[0]))
                continue
            v = ctx.provenance(pair, key)
            cells[key] = fmt.text(("yes" if v else "no") if key == "tied_embeddings" else v)
        rows.append(Row(pair, cells))
    return Table(
        "models",
        "The models compared, with content hashes of their weights",
        (
            Column("pair", "pair", numeric=False),
            *(Column(k, label, numeric=False, breaks=k in LONG_FIELDS) for k, label in fields),
        ),
        tuple(rows),
    )


def storage_summary(results, pair, side: str) -> str:
    """How one side stores its canonical matrices: ``"F32"``, or ``"Q4_K 180, Q6_K 30"`` (counts)."""
    values = [str(v) for v in results.quantisation.sel(pair=pair, side=side).values.ravel() if v]
    counts = {kind: values.count(kind) for kind in sorted(set(values))}
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{kind} {count}" for kind, count in counts.items())


def provenance_section(ctx: ReportContext) -> Section:
    body = fragment(
        "sections/provenance.html.j2",
        tables=provenance_tables(ctx),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_report_versions(),
    )
    return Section("provenance", "Provenance", body)


# ----------------------------------------------------------------------- (j) caveats


def rank_tables(ctx: ReportContext) -> list[Table]:
    """Per pair: the min / median / max k each cutoff chose on the read and on the write matrices,
    and the sites with massive activations (``k_range``, ``top_direction_share`` in stats.nc)."""
    if ctx.stats is None or "k_range" not in ctx.stats:
        return []
    tables = []
    columns = [Column("construction", "construction", numeric=False),
               Column("cutoff", "cutoff", numeric=False)]  # fmt: skip
    for pathway in ("read", "write"):
        columns += [Column(f"{pathway}_{s}", f"{pathway} k {s}") for s in STATISTICS]
    for pair in ctx.pairs:
        ranges = ctx.stats.k_range.sel(pair=pair)
        rows = []
        for c in ctx.stats.construction.values:
            for k in ctx.stats.cutoff.values:
                cell = ranges.sel(construction=c, cutoff=k)
                if not np.isfinite(cell.values).any():
                    continue  # the cutoff is undefined for this construction
                cells = {"construction": fmt.text(c), "cutoff": fmt.text(k)}
                for pathway in ("read", "write"):
                    for s in STATISTICS:
                        cells[f"{pathway}_{s}"] = fmt.median_rank(
                            cell.sel(pathway=pathway, statistic=s)
                        )
                small = np.nanmin(cell.sel(statistic="min").values) <= SMALL_K
                rows.append(Row(f"{c}-{k}", cells, "flagged" if small else ""))
        tables.append(Table(
            f"ranks-{pair}",
            f"Pair {pair}: the ranks each cutoff chose over layers, on the read and on the write "
            f"matrices (rows with k ≤ {SMALL_K} anywhere are marked)",
            tuple(columns),
            tuple(rows),
        ))  # fmt: skip
        share = ctx.stats.top_direction_share.sel(pair=pair)
        if share.size and np.isfinite(share.values).any():
            flags = ctx.stats.massive_activation.sel(pair=pair)
            tables.append(Table(
                f"massive-{pair}",
                f"Pair {pair}: the share of each site's variance in its top direction over layers "
                f"(a massive activation: {MASSIVE_SHARE:.0%} or more)",
                (Column("site", "site", numeric=False), Column("median", "median share"),
                 Column("max", "largest share"), Column("massive", "layers with a massive activation")),
                tuple(
                    Row(str(site), {
                        "site": fmt.text(site),
                        "median": fmt.share(float(share.sel(site=site).median())),
                        "max": fmt.share(float(share.sel(site=site).max())),
                        "massive": fmt.integer(int(flags.sel(site=site).sum())),
                    })
                    for site in ctx.stats.site.values
                    if np.isfinite(share.sel(site=site).values).any()
                ),
            ))  # fmt: skip
    return tables


def caveat_section(ctx: ReportContext) -> Section:
    return Section(
        "caveats",
        "Caveats",
        fragment("sections/caveats.html.j2", caveats=caveats(ctx), tables=rank_tables(ctx)),
    )
