"""`rsf experiment trajectory`: RSF along an ordered list of checkpoints.

Every checkpoint ``c_i`` of ``c_0, c_1, …, c_n`` against the start
(``c_0 → c_i``) and against the previous one (``c_{i−1} → c_i``), each a pair
of the sweep engine (so statistics are cached and shared), with the read/write
summaries and their intervals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr

from robustness.io.provenance import provenance_attrs
from robustness.measure.corpus import Corpus
from robustness.measure.resampling import percentile_interval
from robustness.measure.results import sweep_dataset
from robustness.mechanism.summaries import pathway_summary
from robustness.settings.config import PairSpec, SweepConfig, config_from_document, read_toml
from robustness.settings.schema import OptionError, option, read_table, validate
from robustness.settings.specification import DEFAULT_READ, DEFAULT_WRITE

__all__ = [
    "TrajectorySpec",
    "checkpoint_label",
    "checkpoint_step",
    "trajectory_dataset",
    "trajectory_from_toml",
    "trajectory_pairs",
]


def trajectory_pairs(checkpoints, labels=None) -> tuple[list[PairSpec], dict]:
    """The sweep pairs of a trajectory and where each (reference, checkpoint) finds its pair.

    ``c_0 → c_i`` (``start``) and ``c_{i−1} → c_i`` (``previous``) for i ≥ 1;
    for ``i = 1`` both are the same pair, swept once.
    """
    checkpoints = list(checkpoints)
    if len(checkpoints) < 2:
        raise ValueError(f"a trajectory needs at least 2 checkpoints, got {len(checkpoints)}")
    labels = list(labels) if labels is not None else [checkpoint_label(c) for c in checkpoints]
    if len(labels) != len(checkpoints):
        raise ValueError(f"{len(labels)} labels for {len(checkpoints)} checkpoints")
    if len(set(labels)) != len(labels):
        labels = [f"{i}:{label}" for i, label in enumerate(labels)]
    pairs: dict[tuple[str, str], PairSpec] = {}
    where = {}
    for i in range(1, len(checkpoints)):
        for reference, j in (("start", 0), ("previous", i - 1)):
            key = (checkpoints[j], checkpoints[i])
            if key not in pairs:
                pairs[key] = PairSpec(f"{labels[j]}->{labels[i]}", *key)
            where[(reference, labels[i])] = pairs[key].label
    return list(pairs.values()), {"labels": labels, "where": where}


def checkpoint_label(spec: str) -> str:
    """A checkpoint's default label: its folder and the folder above (``align/step-00040``)."""
    path = Path(spec.rstrip("/"))
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def checkpoint_step(spec: str) -> int | None:
    """The training step a checkpoint's name states, else ``None``.

    A hub revision (``org/name@step1000``, ``@stage1-step140000-tokens294B``,
    ``@step-001000-2BT``) by :func:`probes.revision_step`; a folder by its name
    (``step-00040``, ``checkpoint-40``).
    """
    import probes

    name, revision = probes.split_revision(spec)
    if revision is not None:
        return probes.revision_step(revision)
    match = re.search(r"(?:step|checkpoint)[-_]?(\d+)$", Path(spec.rstrip("/")).name)
    return int(match.group(1)) if match else None


def _positive_every(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


@dataclass(frozen=True)
class TrajectorySpec:
    """A trajectory's checkpoints: a list (folders or hub ids, each ``org/name@rev`` allowed), or
    the revisions of one hub repository (listed, or every branch matching a glob, in training
    order), thinned to every `every`-th with the last always kept."""

    checkpoints: tuple[str, ...] | None = option(
        None, "checkpoints in order: folders or hub ids (org/name@revision)", flag=None,
        table="trajectory", path=True,
    )  # fmt: skip
    labels: tuple[str, ...] | None = option(None, "checkpoint labels", flag=None,
                                            table="trajectory")  # fmt: skip
    repo: str | None = option(None, "a hub repository whose revisions are the checkpoints",
                              flag=None, table="trajectory")  # fmt: skip
    revisions: tuple[str, ...] | None = option(
        None, "the repository's revisions, in order (default: every branch matching `match`)",
        flag=None, table="trajectory",
    )  # fmt: skip
    match: str = option("step*", "glob of the branches to list when `revisions` is not given",
                        flag=None, table="trajectory")  # fmt: skip
    every: int = option(1, "keep every n-th checkpoint (the last always kept)", flag=None,
                        table="trajectory", check=_positive_every)  # fmt: skip

    def __post_init__(self):
        validate(self)
        if self.revisions is not None and self.repo is None:
            raise OptionError('[trajectory] `revisions` needs `repo = "org/name"`')
        if (self.checkpoints is None) == (self.repo is None):
            raise OptionError('[trajectory] needs `checkpoints = [...]` or `repo = "org/name"`')

    def resolve(self) -> list[str]:
        """The checkpoints, in order (hub revisions as ``org/name@rev``), thinned by `every`."""
        import probes

        if self.checkpoints is not None:
            found = list(self.checkpoints)
        elif self.revisions is not None:
            found = [f"{self.repo}@{r}" for r in self.revisions]
        else:
            names, _ = probes.list_revisions(self.repo, match=self.match)
            found = [f"{self.repo}@{r}" for r in names]
        kept = found[:: self.every]
        if found and kept[-1] != found[-1]:
            kept.append(found[-1])
        return kept


_REFERENCES = ("start", "previous")


def trajectory_dataset(
    checkpoints,
    config: SweepConfig,
    corpus: Corpus,
    *,
    labels=None,
    read=DEFAULT_READ,
    write=DEFAULT_WRITE,
    confidence_level: float = 0.95,
    cache_root=None,
    progress: bool = True,
) -> xr.Dataset:
    """RSF of every checkpoint relative to the start and to the previous one.

    Runs the sweep engine on the trajectory's pairs (``config``'s own pairs are
    replaced) and arranges the results by ``reference`` (``start``,
    ``previous``) and ``checkpoint``; the full ``rsf`` grid is kept
    (``rsf(reference, checkpoint, layer, matrix, construction, cutoff,
    normalisation)``) beside read/write layer means and their asymmetry, with
    a cluster-bootstrap interval over layers and, when the sweep bootstraps,
    percentile intervals over corpus chunks.
    """
    pairs, layout = trajectory_pairs(checkpoints, labels)
    config = replace(config, pairs=tuple(pairs))
    sweep = sweep_dataset(config, corpus, cache_root=cache_root, progress=progress)
    ordered = layout["labels"]
    data_vars = _summary_variables(
        sweep, layout, read=read, write=write, confidence_level=confidence_level
    )
    ds = xr.Dataset(data_vars)
    ds = ds.assign_coords(
        reference=("reference", np.asarray(_REFERENCES, dtype=object)),
        checkpoint=("checkpoint", np.asarray(ordered[1:], dtype=object)),
        checkpoint_id=(
            "checkpoint",
            np.asarray([str(c) for c in list(checkpoints)[1:]], dtype=object),
        ),
        position=("checkpoint", np.arange(1, len(ordered), dtype=np.int64)),
    )
    for name, value in _pair_variables(sweep, layout).items():
        ds[name] = value
    for name in ("read_rsf", "write_rsf", "asymmetry"):
        ds[name].attrs["long_name"] = (
            f"{name.replace('_', ' ')}: layer mean, log2 for ratio normalisations"
        )
    attrs = provenance_attrs(
        "trajectory",
        title="RSF along a sequence of checkpoints",
        corpus=corpus,
        seed=config.seed,
        settings={"config": config.to_toml()},
        inputs={str(c): h for c, h in zip(checkpoints, _hashes(sweep, layout), strict=True)},
    )
    attrs.update(
        config=config.to_toml(),
        start_id=str(list(checkpoints)[0]),
        start_label=ordered[0],
        read_set=",".join(read),
        write_set=",".join(write),
        confidence_level=confidence_level,
        interval="EWC t interval over layers, dependence-robust (asymmetry_ci_*, robustness.stats.layers); percentile over corpus chunks (*_seq_ci_*)",
        bootstrap_replicates=int(config.replicates),
    )
    ds.attrs = attrs
    return ds


def _by_reference(sweep: xr.Dataset, variable: str, layout: dict) -> xr.DataArray:
    """A sweep variable arranged ``(reference, checkpoint, …)`` from the pairs that hold it."""
    steps = layout["labels"][1:]
    rows = [
        xr.concat(
            [sweep[variable].sel(pair=layout["where"][(ref, step)], drop=True) for step in steps],
            dim="checkpoint",
        )
        for ref in _REFERENCES
    ]
    return xr.concat(rows, dim="reference")


def _summary_variables(sweep: xr.Dataset, layout: dict, *, read, write, confidence_level) -> dict:
    """The RSF grid by reference and checkpoint, its read/write layer means and asymmetry with
    the interval over layers, and, when the sweep bootstraps, its replicates and their intervals."""
    rsf = _by_reference(sweep, "rsf", layout)
    summary = pathway_summary(rsf, read=read, write=write, confidence_level=confidence_level)
    data_vars = {
        "rsf": rsf,
        "k": _by_reference(sweep, "k", layout),
        "delta_fro": _by_reference(sweep, "delta_fro", layout),
        "read_rsf": summary["read"],
        "write_rsf": summary["write"],
        "asymmetry": summary["asymmetry"],
        "asymmetry_ci_low": summary["asymmetry_ci_low"],
        "asymmetry_ci_high": summary["asymmetry_ci_high"],
        "read_rsf_layer": summary["read_layer"],
        "write_rsf_layer": summary["write_layer"],
    }
    if "rsf_boot" in sweep:
        boot = _by_reference(sweep, "rsf_boot", layout)
        data_vars["rsf_boot"] = boot
        data_vars.update(
            _sequence_percentiles(boot, read=read, write=write, confidence_level=confidence_level)
        )
    return data_vars


def _pair_variables(sweep: xr.Dataset, layout: dict) -> dict:
    """Each (reference, checkpoint) cell's sweep pair and the weights hashes of its two models."""
    pair_of = np.array(
        [[layout["where"][(ref, step)] for step in layout["labels"][1:]] for ref in _REFERENCES],
        dtype=object,
    )
    out = {"pair": (("reference", "checkpoint"), pair_of)}
    for name in ("base_hash", "aligned_hash"):
        out[name] = (
            ("reference", "checkpoint"),
            np.array(
                [[str(sweep[name].sel(pair=p).values) for p in row] for row in pair_of],
                dtype=object,
            ),
        )
    return out


def trajectory_from_toml(path) -> tuple[list[str], list[str] | None, SweepConfig]:
    """``[trajectory]`` (:class:`TrajectorySpec`: ``checkpoints``, or ``repo`` with ``revisions``
    or ``match``, ``every``, ``labels``) plus the sweep's tables."""
    path = Path(path)
    document = read_toml(path)
    if not isinstance(document.get("trajectory"), dict):
        raise ValueError(
            f"{path} needs a [trajectory] table with `checkpoints = [...]` in order, or "
            '`repo = "org/name"` and its `revisions`'
        )
    values = read_table(TrajectorySpec, document, "trajectory", source=str(path), root=path.parent)
    try:
        spec = TrajectorySpec(**values)
    except OptionError as error:
        raise OptionError(f"{path}: {error}") from None
    document.pop("trajectory")
    if "pair" in document:
        raise ValueError(f"{path}: a trajectory config takes [trajectory], not [[pair]] tables")
    checkpoints = spec.resolve()
    if len(checkpoints) < 2:
        raise ValueError(f"[trajectory] needs at least 2 checkpoints, got {len(checkpoints)}")
    document["pair"] = [{"label": "trajectory", "base": checkpoints[0], "aligned": checkpoints[1]}]
    config = config_from_document(document, path.parent, source=str(path))
    labels = list(spec.labels) if spec.labels is not None else None
    return checkpoints, labels, config


def _hashes(sweep: xr.Dataset, layout: dict) -> list[str]:
    """Each checkpoint's weights hash, in trajectory order, from the sweep's provenance."""
    labels = layout["labels"]
    first = layout["where"][("start", labels[1])]
    hashes = [str(sweep["base_hash"].sel(pair=first).values)]
    for label in labels[1:]:
        hashes.append(str(sweep["aligned_hash"].sel(pair=layout["where"][("start", label)]).values))
    return hashes


def _sequence_percentiles(boot: xr.DataArray, *, read, write, confidence_level: float) -> dict:
    """Percentile intervals of the read, write and asymmetry summaries from ``rsf_boot``."""
    summary = pathway_summary(boot, read=read, write=write, interval=False)
    out = {}
    for name in ("read", "write", "asymmetry"):
        low, high = percentile_interval(
            summary[name].transpose("replicate", ...).values, confidence_level
        )
        template = summary[name].isel(replicate=0, drop=True)
        out[f"{name}_seq_ci_low"] = template.copy(data=low)
        out[f"{name}_seq_ci_high"] = template.copy(data=high)
    return out
