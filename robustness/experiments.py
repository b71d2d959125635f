"""`rsf experiment`: three tests of the mechanism behind the read/write asymmetry.

The paper explains the asymmetry by anisotropic gradient accumulation (an
update is ``Σ_t δ_t a_tᵀ``). Three experiments, each a dataset with intervals:

**trajectory**
    RSF along an ordered list of checkpoints ``c_0, c_1, …, c_n``: every
    ``c_i`` against the start (``c_0 → c_i``) and against the previous one
    (``c_{i−1} → c_i``), each a pair of the sweep engine (so statistics are
    cached and shared), with the read/write summaries and their intervals.
**contrastive**
    From one base, variants aligned with ``L_λ = (1 − λ)·CE(chosen) + λ·DPO``
    for several λ (same data, steps, seed; only the objective changes). Read
    RSF (``act_cov``), write RSF (``unembed``), their asymmetry and the
    effective rank of ``L_λ``'s gradients δ_t at the write sites, against λ,
    with a trend test (:func:`trend_test`).
**rank1**
    Closed-form rank-1 interventions ``ΔW = α u vᵀ`` (``‖ΔW‖_F = α``): on a
    read matrix along the top principal direction of the activations it reads
    (``v``), on a write matrix along the top prediction direction (``u``,
    the unembedding's top right singular vector), each against matched
    controls of the same norm (random unit directions, and directions from the
    next few principal / prediction directions, whose variance or prediction
    energy is the closest available to the principal one). Effects: the change
    in held-out DPO preference margin and ``KL(base ‖ intervened)`` of
    next-token distributions; permutation p-value ``(1 + b)/(1 + B)`` of the
    principal direction against its controls.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from scipy import stats as scipy_stats
from tqdm.auto import tqdm

import probes

from .asymmetry import probe_scale, studentized_interval
from .config import PairSpec, SweepConfig
from .corpus import Corpus
from .gradients import (
    load_model,
    measure_objective,
    percentile_interval,
    provenance_attrs,
    sequence_chunks,
)

__all__ = [
    "DemoCheckpoints",
    "TrendTest",
    "contrastive_dataset",
    "demo_checkpoints",
    "rank1_dataset",
    "rank1_hook",
    "rank1_update",
    "trajectory_dataset",
    "trajectory_pairs",
    "trend_test",
]

EXACT_LIMIT = 65536
DEFAULT_READ = ("q", "k")
DEFAULT_WRITE = ("o", "down")


# ---------------------------------------------------------------------------- demo


@dataclass(frozen=True)
class DemoCheckpoints:
    """The demo pair's directories: base, aligned and the saved checkpoints of each phase."""

    base: str
    aligned: str
    pretrain: tuple[str, ...] = ()
    align: tuple[str, ...] = ()
    manifest: dict | None = None


def demo_checkpoints(*, cache_root=None, progress: bool = True) -> DemoCheckpoints:
    """The demo pair (trained and cached on first use by :func:`robustness.demo.demo_pair`)."""
    from .demo import demo_pair

    pair = demo_pair(cache_root=cache_root, progress=progress)
    phases = {
        phase: tuple(str(p) for p in sorted((pair.root / "checkpoints" / phase).glob("step-*")))
        for phase in ("pretrain", "align")
    }
    return DemoCheckpoints(
        str(pair.base), str(pair.aligned), phases["pretrain"], phases["align"], pair.manifest
    )


def demo_token_windows(demo: DemoCheckpoints, *, held_out: bool, length: int) -> np.ndarray:
    """The demo corpus' training (or held-out) documents, tokenised, cut into windows of `length`.

    The same documents and tokenizer the demo trained on: every ``held_out_every``-th
    document is held out of both training phases.
    """
    from .corpus import builtin_documents, load_tokenizer, tokenize
    from .demo import _split_documents

    every = int(demo.manifest["settings"]["held_out_every"])
    train, held = _split_documents(builtin_documents(), every)
    stream = tokenize(held if held_out else train, load_tokenizer(demo.base))
    n = len(stream) // length
    if n < 2:
        raise ValueError(f"the demo's {'held-out' if held_out else 'training'} text is too short")
    return stream[: n * length].reshape(n, length)


# ---------------------------------------------------------------------------- read/write summaries


def _layer_ci(per_layer: xr.DataArray, level: float, seed: int, *, n_resamples: int = 2000) -> dict:
    """Studentized cluster-bootstrap interval over layers for the layer mean of each cell."""
    moved = per_layer.transpose("layer", ...)
    flat = moved.values.reshape(moved.shape[0], -1)
    low = np.full(flat.shape[1], np.nan)
    high = np.full(flat.shape[1], np.nan)
    finite = np.isfinite(flat).all(axis=0)
    if finite.any() and flat.shape[0] >= 2:
        low[finite], high[finite] = studentized_interval(
            flat[:, finite],
            confidence_level=level,
            n_resamples=n_resamples,
            rng=np.random.default_rng(seed),
        )
    template = moved.isel(layer=0, drop=True)
    return {
        "ci_low": template.copy(data=low.reshape(template.shape)),
        "ci_high": template.copy(data=high.reshape(template.shape)),
    }


def pathway_summary(
    rsf: xr.DataArray,
    *,
    read,
    write,
    confidence_level: float = 0.95,
    n_resamples: int = 2000,
    seed=0,
    interval: bool = True,
) -> dict[str, xr.DataArray]:
    """Layer means of the read and write sets on the statistics' scale, and their difference.

    `rsf` has dims ``(..., layer, matrix, construction, cutoff, normalisation)``;
    ratio normalisations are taken on the log2 scale (``probe_scale``). Returns
    ``read``, ``write``, ``asymmetry`` ``[..., construction, cutoff, normalisation]``,
    the per-layer read and write means, and (with `interval`) a studentized
    cluster-bootstrap interval over layers for the asymmetry.
    """
    read = [m for m in read if m in rsf.matrix.values]
    write = [m for m in write if m in rsf.matrix.values]
    if not read or not write:
        raise ValueError(
            f"the read set and the write set need matrices present in {list(rsf.matrix.values)}"
        )
    scaled = xr.concat(
        [
            rsf.sel(normalisation=n).copy(data=probe_scale(rsf.sel(normalisation=n).values, n))
            for n in rsf.normalisation.values
        ],
        dim="normalisation",
    ).transpose(*rsf.dims)
    read_layer = scaled.sel(matrix=read).mean("matrix")
    write_layer = scaled.sel(matrix=write).mean("matrix")
    per_layer = read_layer - write_layer
    out = {
        "read": read_layer.mean("layer"),
        "write": write_layer.mean("layer"),
        "asymmetry": per_layer.mean("layer"),
        "read_layer": read_layer,
        "write_layer": write_layer,
    }
    if interval:  # studentized cluster bootstrap over layers, as rsf stats does
        bounds = _layer_ci(per_layer, confidence_level, seed, n_resamples=n_resamples)
        out["asymmetry_ci_low"], out["asymmetry_ci_high"] = bounds["ci_low"], bounds["ci_high"]
    return out


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


# ---------------------------------------------------------------------------- trajectory


def trajectory_pairs(checkpoints, labels=None) -> tuple[list[PairSpec], dict]:
    """The sweep pairs of a trajectory and where each (reference, checkpoint) finds its pair.

    ``c_0 → c_i`` (``start``) and ``c_{i−1} → c_i`` (``previous``) for i ≥ 1;
    for ``i = 1`` both are the same pair, swept once.
    """
    checkpoints = list(checkpoints)
    if len(checkpoints) < 2:
        raise ValueError(f"a trajectory needs at least 2 checkpoints, got {len(checkpoints)}")
    labels = list(labels) if labels is not None else [_checkpoint_label(c) for c in checkpoints]
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


def _checkpoint_label(spec: str) -> str:
    path = Path(spec.rstrip("/"))
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


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
    from .dataset import build_dataset
    from .engine import run_sweep

    pairs, layout = trajectory_pairs(checkpoints, labels)
    config = replace(config, pairs=tuple(pairs))
    results = run_sweep(config, corpus, cache_root=cache_root, progress=progress)
    sweep = build_dataset(results, config, corpus)
    ordered = layout["labels"]
    references = ("start", "previous")
    steps = ordered[1:]

    def arrange(variable: str) -> xr.DataArray:
        rows = [
            xr.concat(
                [
                    sweep[variable].sel(pair=layout["where"][(ref, step)], drop=True)
                    for step in steps
                ],
                dim="checkpoint",
            )
            for ref in references
        ]
        return xr.concat(rows, dim="reference")

    rsf = arrange("rsf")
    summary = pathway_summary(
        rsf, read=read, write=write, confidence_level=confidence_level, seed=config.seed
    )
    data_vars = {
        "rsf": rsf,
        "k": arrange("k"),
        "delta_fro": arrange("delta_fro"),
        "read_rsf": summary["read"],
        "write_rsf": summary["write"],
        "asymmetry": summary["asymmetry"],
        "asymmetry_ci_low": summary["asymmetry_ci_low"],
        "asymmetry_ci_high": summary["asymmetry_ci_high"],
        "read_rsf_layer": summary["read_layer"],
        "write_rsf_layer": summary["write_layer"],
    }
    if "rsf_boot" in sweep:
        boot = arrange("rsf_boot")
        data_vars["rsf_boot"] = boot
        for name, value in _sequence_percentiles(
            boot, read=read, write=write, confidence_level=confidence_level
        ).items():
            data_vars[name] = value
    pair_of = np.array(
        [[layout["where"][(ref, step)] for step in steps] for ref in references], dtype=object
    )
    ds = xr.Dataset(data_vars)
    ds = ds.assign_coords(
        reference=("reference", np.asarray(references, dtype=object)),
        checkpoint=("checkpoint", np.asarray(steps, dtype=object)),
        checkpoint_id=(
            "checkpoint",
            np.asarray([str(c) for c in list(checkpoints)[1:]], dtype=object),
        ),
        position=("checkpoint", np.arange(1, len(ordered), dtype=np.int64)),
    )
    ds["pair"] = (("reference", "checkpoint"), pair_of)
    for name in ("base_hash", "aligned_hash"):
        ds[name] = (
            ("reference", "checkpoint"),
            np.array(
                [[str(sweep[name].sel(pair=p).values) for p in row] for row in pair_of],
                dtype=object,
            ),
        )
    for name in ("read_rsf", "write_rsf", "asymmetry"):
        ds[name].attrs["long_name"] = (
            f"{name.replace('_', ' ')}: layer mean, log2 for ratio normalisations"
        )
    attrs = provenance_attrs(
        "trajectory",
        corpus=corpus,
        seed=config.seed,
        settings_json=json.dumps({"config": config.to_toml()}),
    )
    attrs.update(
        title="RSF along a sequence of checkpoints",
        config=config.to_toml(),
        start_id=str(list(checkpoints)[0]),
        start_label=ordered[0],
        read_set=",".join(read),
        write_set=",".join(write),
        confidence_level=confidence_level,
        interval="studentized cluster bootstrap over layers (asymmetry_ci_*); percentile over corpus chunks (*_seq_ci_*)",
        bootstrap_replicates=int(config.replicates),
    )
    ds.attrs = attrs
    return ds


def trajectory_from_toml(path) -> tuple[list[str], list[str] | None, SweepConfig]:
    """``[trajectory] checkpoints = [...]`` (``labels`` optional) plus the sweep's tables."""
    from .config import config_from_document

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None
    table = document.pop("trajectory", None)
    if not isinstance(table, dict) or "checkpoints" not in table:
        raise ValueError(f"{path} needs a [trajectory] table with `checkpoints = [...]`, in order")
    unknown = set(table) - {"checkpoints", "labels"}
    if unknown:
        raise ValueError(
            f"unknown key(s) {sorted(unknown)} in [trajectory]: valid are checkpoints, labels"
        )
    if "pair" in document:
        raise ValueError(f"{path}: a trajectory config takes [trajectory], not [[pair]] tables")

    def local(value: str) -> str:
        candidate = path.parent / value
        return str(candidate) if not Path(value).is_absolute() and candidate.exists() else value

    checkpoints = [local(str(c)) for c in table["checkpoints"]]
    if len(checkpoints) < 2:
        raise ValueError(f"[trajectory] needs at least 2 checkpoints, got {len(checkpoints)}")
    document["pair"] = [{"label": "trajectory", "base": checkpoints[0], "aligned": checkpoints[1]}]
    config = config_from_document(document, path.parent, source=str(path))
    labels = [str(x) for x in table["labels"]] if "labels" in table else None
    return checkpoints, labels, config


# ---------------------------------------------------------------------------- trend test


@dataclass(frozen=True)
class TrendTest:
    """A monotone trend of ``values [level, block]`` in the ordered `levels`.

    ``slope``: least-squares slope with a fixed effect per block,
    ``Σ_i (x_i − x̄) Σ_b (y_ib − ȳ_b) / (B Σ_i (x_i − x̄)²)``; ``p_value``: the
    levels permuted independently within each block (exact when every
    arrangement can be enumerated, else Monte Carlo ``(1 + b)/(1 + N)``),
    two-sided on ``|slope|``; ``slope_ci_*``: percentile cluster bootstrap over
    blocks; ``spearman``/``spearman_p``: Spearman's ρ of the block means
    against the levels (scipy); ``page_p``: Page's L test for ordered
    alternatives (scipy.stats.page_trend_test), two-sided by doubling the
    smaller one-sided p.
    """

    slope: float
    slope_ci_low: float
    slope_ci_high: float
    p_value: float
    exact: bool
    spearman: float
    spearman_p: float
    page_p: float
    n_blocks: int


def _slopes(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Fixed-effects slope for ``values [..., level, block]``."""
    xc = x - x.mean()
    centred = values - values.mean(axis=-2, keepdims=True)
    return np.einsum("i,...ib->...", xc, centred) / (values.shape[-1] * np.sum(xc**2))


def trend_test(
    values,
    levels,
    *,
    n_permutations: int = 9999,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    rng: np.random.Generator,
) -> TrendTest:
    """Test for a monotone trend of ``values [level, block]`` across ordered `levels`.

    Blocks with a NaN are dropped. See :class:`TrendTest` for the statistics.
    """
    values = np.asarray(values, dtype=np.float64)
    x = np.asarray(levels, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != x.size:
        raise ValueError(
            f"`values` must be [level, block] with {x.size} levels, got {values.shape}"
        )
    if x.size < 3 or np.ptp(x) == 0:
        raise ValueError("a trend test needs at least 3 distinct levels")
    values = values[:, np.isfinite(values).all(axis=0)]
    n_levels, n_blocks = values.shape
    nan = TrendTest(
        math.nan, math.nan, math.nan, math.nan, False, math.nan, math.nan, math.nan, n_blocks
    )
    if n_blocks == 0:
        return nan
    slope = float(_slopes(values, x))
    # Within-block permutations; the statistic is linear, so each block contributes separately.
    perms = np.array(list(itertools.permutations(range(n_levels))))
    xc = x - x.mean()
    centred = values - values.mean(axis=0)
    per_block = np.einsum("pi,ib->pb", xc[perms], centred) / (n_blocks * np.sum(xc**2))  # [P, B]
    exact = len(perms) ** n_blocks <= EXACT_LIMIT
    tolerance = 1e-12 * max(1.0, abs(slope))
    if exact:
        grid = np.array(list(itertools.product(range(len(perms)), repeat=n_blocks)))
        null = per_block[grid, np.arange(n_blocks)].sum(axis=1)
        p_value = float(np.mean(np.abs(null) >= abs(slope) - tolerance))
    else:
        choice = rng.integers(0, len(perms), size=(n_permutations, n_blocks))
        null = per_block[choice, np.arange(n_blocks)].sum(axis=1)
        p_value = float((1 + np.sum(np.abs(null) >= abs(slope) - tolerance)) / (1 + n_permutations))
    rows = rng.integers(0, n_blocks, size=(n_resamples, n_blocks))
    boot = _slopes(np.moveaxis(values[:, rows], 1, 0), x)  # [R]
    low, high = percentile_interval(boot, confidence_level)
    means = values.mean(axis=1)
    if np.ptp(means) == 0:
        rho, rho_p = math.nan, math.nan
    else:
        result = scipy_stats.spearmanr(x, means)
        rho, rho_p = float(result.statistic), float(result.pvalue)
    page_p = math.nan
    if n_blocks >= 2:
        order = np.argsort(x)
        data = values[order].T  # [block, level], levels ascending
        increasing = scipy_stats.page_trend_test(data, method="auto").pvalue
        decreasing = scipy_stats.page_trend_test(data[:, ::-1], method="auto").pvalue
        page_p = float(min(1.0, 2 * min(increasing, decreasing)))
    return TrendTest(slope, float(low), float(high), p_value, exact, rho, rho_p, page_p, n_blocks)


# ---------------------------------------------------------------------------- contrastive


@dataclass(frozen=True)
class ContrastiveSettings:
    """Training and measurement settings of the graded-objective control."""

    lams: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    steps: int = 60
    lr: float = 1e-3
    batch_size: int = 16
    beta: float = 0.1
    prompt_len: int | None = None
    seed: int = 0
    gradient_replicates: int = 200
    confidence_level: float = 0.95
    n_permutations: int = 9999

    def __post_init__(self):
        if len(self.lams) < 3 or len(set(self.lams)) != len(self.lams):
            raise ValueError(f"--lams needs at least 3 distinct values, got {list(self.lams)}")
        if any(not 0.0 <= lam <= 1.0 for lam in self.lams):
            raise ValueError(f"every λ must lie in [0, 1], got {list(self.lams)}")
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1 or self.beta <= 0:
            raise ValueError("`steps`, `lr`, `batch_size` and `beta` must be positive")


def _variant_key(base_hash: str, train_hash: str, settings: ContrastiveSettings, lam: float) -> str:
    fields = {
        k: v
        for k, v in asdict(settings).items()
        if k in ("steps", "lr", "batch_size", "beta", "prompt_len", "seed")
    }
    text = json.dumps(
        {"base": base_hash, "train": train_hash, "lam": lam, **fields}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_variants(
    base_id: str,
    train_ids: np.ndarray,
    settings: ContrastiveSettings,
    *,
    variants_dir,
    device: str = "cpu",
    progress: bool = True,
) -> list[str]:
    """One variant per λ, trained from `base_id` on pairs from `train_ids`; their directories.

    Every variant starts from the same weights and sees the same pairs in the
    same order (one seed); only λ differs. A variant already saved under its
    key (base weights, data, settings, λ) is reused.
    """
    from .corpus import load_tokenizer
    from .training import align, preference_pairs

    base = load_model(base_id, device=device)
    base_hash = probes.weights_hash(base)
    digest = hashlib.sha256(np.ascontiguousarray(train_ids, dtype=np.int64).tobytes()).hexdigest()
    prompt_len = settings.prompt_len or train_ids.shape[1] // 2
    pairs = preference_pairs(
        train_ids,
        prompt_len=prompt_len,
        rng=probes.construction_rng(settings.seed, "contrastive", "pairs"),
    )
    try:
        tokenizer = load_tokenizer(base_id)
    except ValueError:
        tokenizer = None
    root = Path(variants_dir)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for lam in tqdm(settings.lams, desc="variants", disable=not progress, leave=False):
        target = root / f"lam-{lam:g}-{_variant_key(base_hash, digest, settings, lam)}"
        if not (target / "config.json").is_file():
            policy = copy.deepcopy(base)
            reference = copy.deepcopy(base) if lam > 0 else None
            align(
                policy,
                reference,
                pairs,
                lam=lam,
                beta=settings.beta,
                steps=settings.steps,
                lr=settings.lr,
                batch_size=settings.batch_size,
                seed=settings.seed,
                progress=progress,
            )
            temporary = root / f".{target.name}.tmp"
            import shutil

            shutil.rmtree(temporary, ignore_errors=True)
            policy.save_pretrained(temporary)
            if tokenizer is not None:
                tokenizer.save_pretrained(temporary)
            temporary.rename(target)
        out.append(str(target))
    return out


def contrastive_dataset(
    base_id: str,
    variants: list[str],
    settings: ContrastiveSettings,
    config: SweepConfig,
    corpus: Corpus,
    *,
    read=DEFAULT_READ,
    write=DEFAULT_WRITE,
    read_construction: str = "act_cov",
    write_construction: str = "unembed",
    gradient_ids: np.ndarray | None = None,
    cache_root=None,
    device: str = "cpu",
    progress: bool = True,
) -> xr.Dataset:
    """Read/write RSF of each variant and the δ_t effective rank of each ``L_λ``, against λ.

    RSF: one sweep pair (base, variant) per λ on the probe `corpus`. Gradients:
    ``L_λ`` on the base (its own DPO reference: the gradient that starts each
    variant's training) on preference pairs from `gradient_ids` (windows of
    prompt + continuation; default the probe corpus' sequences). Trend tests
    use layers as blocks (for δ_t: layer × write site).
    """
    from .dataset import build_dataset
    from .engine import run_sweep
    from .training import preference_pairs

    lams = np.asarray(settings.lams, dtype=np.float64)
    for construction in (read_construction, write_construction):
        if construction not in config.constructions:
            raise ValueError(
                f"the contrastive summary needs construction {construction!r} in the sweep"
            )
    labels = [f"lam={lam:g}" for lam in settings.lams]
    config = replace(
        config,
        pairs=tuple(PairSpec(label, base_id, v) for label, v in zip(labels, variants, strict=True)),
    )
    results = run_sweep(config, corpus, cache_root=cache_root, progress=progress)
    sweep = build_dataset(results, config, corpus).rename(pair="lam_label")
    rsf = sweep["rsf"]
    summary = pathway_summary(
        rsf, read=read, write=write, confidence_level=settings.confidence_level, seed=settings.seed
    )

    # δ_t of each L_λ on the base, the same pairs and chunks for every λ.
    base = load_model(base_id, device=device)
    ids = corpus.ids if gradient_ids is None else np.asarray(gradient_ids)
    prompt_len = settings.prompt_len or ids.shape[1] // 2
    pairs = preference_pairs(
        ids,
        prompt_len=prompt_len,
        rng=probes.construction_rng(settings.seed, "contrastive", "probe"),
    )
    chunks = sequence_chunks(len(pairs))
    from .gradients import bootstrap_weights, summarise_statistics

    weights = (
        bootstrap_weights(len(chunks), settings.gradient_replicates, settings.seed, "contrastive")
        if settings.gradient_replicates
        else None
    )
    dims = probes.model_dims(base)
    basis = probes.unembedding_subspaces(probes.unembedding(base))["unembed"].basis
    ks = np.array([probes.resolve_cutoff("k=8", d=dims.d_model)])
    grad = []
    for lam, label in zip(settings.lams, labels, strict=True):
        stats = measure_objective(
            base, ids, lam=float(lam), pairs=pairs, beta=settings.beta, chunks=chunks,
            progress=progress, description=f"gradients ({label})",
        )  # fmt: skip
        grad.append(
            summarise_statistics(stats, n_layers=dims.n_layers, basis=basis, ks=ks, weights=weights)
        )
    write_sites = [2, 3]  # o_out, down_out in robustness.gradients.SITE_ORDER
    level = settings.confidence_level
    data_vars = {"rsf": rsf, "k": sweep["k"], "delta_fro": sweep["delta_fro"]}
    rng = np.random.default_rng(settings.seed)
    trend_rows = {}

    def add_trend(name, per_block):
        result = trend_test(
            per_block, lams, n_permutations=settings.n_permutations, confidence_level=level, rng=rng
        )
        trend_rows[name] = result

    headline = {
        "read_rsf": summary["read_layer"].sel(construction=read_construction),
        "write_rsf": summary["write_layer"].sel(construction=write_construction),
    }
    for name, value in summary.items():
        if name in ("read", "write", "asymmetry", "asymmetry_ci_low", "asymmetry_ci_high"):
            data_vars[f"{name}_rsf" if name in ("read", "write") else name] = value
    # The paper's contrast: read against activations, write against the prediction subspace.
    paper_layer = headline["read_rsf"] - headline["write_rsf"]
    data_vars["paper_read_rsf"] = headline["read_rsf"].mean("layer")
    data_vars["paper_write_rsf"] = headline["write_rsf"].mean("layer")
    data_vars["paper_asymmetry"] = paper_layer.mean("layer")
    for ci_name, value in _layer_ci(paper_layer, level, settings.seed).items():
        data_vars[f"paper_asymmetry_{ci_name}"] = value
    cutoffs = [str(c) for c in sweep.cutoff.values]
    normalisations = [str(n) for n in sweep.normalisation.values]
    for quantity, layer_values in (
        ("read_rsf", headline["read_rsf"]),
        ("write_rsf", headline["write_rsf"]),
        ("asymmetry", paper_layer),
    ):
        for c in cutoffs:
            for n in normalisations:
                block = (
                    layer_values.sel(cutoff=c, normalisation=n)
                    .transpose("lam_label", "layer")
                    .values
                )
                add_trend((quantity, c, n), block)
    for measure in ("entropy_rank", "participation_ratio"):
        per = np.stack([g[measure][:, write_sites] for g in grad])  # [lam, layer, 2]
        data_vars[f"delta_{measure}"] = (("lam_label", "layer", "write_site"), per)
        data_vars[f"delta_mean_{measure}"] = (("lam_label",), per.mean(axis=(1, 2)))
        if weights is not None:
            boot = np.stack(
                [g[f"{measure}_boot"][:, :, write_sites] for g in grad], axis=1
            )  # [B, lam, L, 2]
            low, high = percentile_interval(boot.mean(axis=(2, 3)), level)
            data_vars[f"delta_mean_{measure}_ci_low"] = (("lam_label",), low)
            data_vars[f"delta_mean_{measure}_ci_high"] = (("lam_label",), high)
        add_trend((f"delta_{measure}", "", ""), per.reshape(len(lams), -1))
    ratio = (
        np.stack([g["prediction_fraction"][:, write_sites, 0] for g in grad]) * dims.d_model / ks[0]
    )
    data_vars["delta_prediction_ratio"] = (("lam_label", "layer", "write_site"), ratio)
    add_trend(("delta_prediction_ratio", "", ""), ratio.reshape(len(lams), -1))

    names = [f"{q}" if not c else f"{q}[{c},{n}]" for (q, c, n) in trend_rows]
    for field in (
        "slope",
        "slope_ci_low",
        "slope_ci_high",
        "p_value",
        "spearman",
        "spearman_p",
        "page_p",
        "n_blocks",
    ):
        data_vars[f"trend_{field}"] = (
            ("trend",),
            np.asarray([getattr(r, field) for r in trend_rows.values()], dtype=np.float64),
        )
    data_vars["trend_exact"] = (
        ("trend",),
        np.asarray([r.exact for r in trend_rows.values()], dtype=np.int8),
    )
    ds = xr.Dataset(data_vars)
    ds = ds.assign_coords(
        lam=("lam_label", lams),
        variant_id=("lam_label", np.asarray(variants, dtype=object)),
        write_site=("write_site", np.asarray(["o_out", "down_out"], dtype=object)),
        trend=("trend", np.asarray(names, dtype=object)),
        trend_quantity=("trend", np.asarray([q for (q, _, _) in trend_rows], dtype=object)),
    )
    ds["variant_hash"] = (
        "lam_label",
        np.asarray([str(h) for h in sweep["aligned_hash"].values], dtype=object),
    )
    attrs = provenance_attrs(
        "contrastive",
        corpus=corpus,
        seed=settings.seed,
        settings_json=json.dumps(asdict(settings), sort_keys=True),
    )
    attrs.update(
        title="graded contrastive objective: L_λ = (1 − λ)·CE(chosen) + λ·DPO",
        base_id=base_id,
        base_hash=str(sweep["base_hash"].values[0]),
        config=config.to_toml(),
        read_set=",".join(read),
        write_set=",".join(write),
        read_construction=read_construction,
        write_construction=write_construction,
        confidence_level=level,
        trend_test="fixed-effects slope against λ, levels permuted within blocks (layers); "
        "Spearman's ρ of layer means; Page's L test",
        gradient_objective="L_λ on the base model, its own DPO reference, pairs from the probe corpus",
        bootstrap_replicates=int(settings.gradient_replicates),
    )
    ds.attrs = attrs
    return ds


# ---------------------------------------------------------------------------- rank-1


def rank1_update(u, v, alpha: float) -> torch.Tensor:
    """``ΔW = α û v̂ᵀ`` with unit ``û = u/‖u‖``, ``v̂ = v/‖v‖``: rank one, ``‖ΔW‖_F = |α|``."""
    u = torch.as_tensor(u, dtype=torch.float64)
    v = torch.as_tensor(v, dtype=torch.float64)
    if u.ndim != 1 or v.ndim != 1:
        raise ValueError("`u` and `v` must be vectors")
    nu, nv = torch.linalg.vector_norm(u), torch.linalg.vector_norm(v)
    if nu == 0 or nv == 0:
        raise ValueError("`u` and `v` must be non-zero")
    return alpha * torch.outer(u / nu, v / nv)


def _module_rows(model, layer: int, matrix: str):
    from probes.adapters import _rows

    family = probes.family_of(model)
    if matrix not in family.matrices:
        raise ValueError(f"{model.config.model_type} has no matrix {matrix!r}")
    source = family.matrices[matrix]
    module = probes.adapters.layer_modules(model)[layer].get_submodule(source.module)
    weight = module.weight
    from transformers.pytorch_utils import Conv1D

    fused_rows = weight.shape[1] if isinstance(module, Conv1D) else weight.shape[0]
    return module, _rows(source, matrix, fused_rows, model.config), fused_rows


@contextmanager
def rank1_hook(model, layer: int, matrix: str, u, v, alpha: float):
    """Run `model` as if ``W_matrix += α û v̂ᵀ`` (Linear layout) at `layer`, without touching weights.

    A forward hook adds ``α (v̂·x) û`` to the module's output rows that belong to
    the canonical matrix (fused q|k|v and gate|up split as the adapters split
    them; GPT-2's Conv1D output is already in Linear order), which is exactly
    the output of the updated weight. Removed on exit, even on error.
    """
    module, rows, fused_rows = _module_rows(model, layer, matrix)
    param = module.weight
    u_hat = torch.as_tensor(u, dtype=torch.float64)
    v_hat = torch.as_tensor(v, dtype=torch.float64)
    u_hat = (u_hat / torch.linalg.vector_norm(u_hat)).to(param.dtype).to(param.device)
    v_hat = (v_hat / torch.linalg.vector_norm(v_hat)).to(param.dtype).to(param.device)
    full = torch.zeros(fused_rows, dtype=param.dtype, device=param.device)
    if isinstance(rows, slice):
        full[rows] = alpha * u_hat
    else:
        full[rows.to(param.device)] = alpha * u_hat

    def hook(mod, args, kwargs, output):
        x = args[0] if args else next(t for t in kwargs.values() if isinstance(t, torch.Tensor))
        return output + (x @ v_hat).unsqueeze(-1) * full

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class Rank1Settings:
    """Settings of the rank-1 intervention experiment."""

    layer: int | None = None  # default: the middle layer
    read_matrix: str = "q"
    write_matrix: str = "o"
    controls: int = 20  # per family (random, matched)
    scale: float = 0.25  # α = scale · ‖W‖_F
    neighbours: int = 4  # matched controls mix principal directions 2 … 1 + neighbours
    beta: float = 0.1
    prompt_len: int | None = None
    batch_size: int = 16
    n_resamples: int = 2000
    seed: int = 0
    confidence_level: float = 0.95

    def __post_init__(self):
        if self.controls < 1:
            raise ValueError(f"--controls must be positive, got {self.controls}")
        if self.scale <= 0:
            raise ValueError(f"--scale must be positive, got {self.scale}")
        if self.neighbours < 1:
            raise ValueError(f"--neighbours must be positive, got {self.neighbours}")
        if probes.PATHWAY.get(self.read_matrix) != "read":
            raise ValueError(
                f"--read-matrix must be one of q, k, v, up, gate, got {self.read_matrix!r}"
            )
        if probes.PATHWAY.get(self.write_matrix) != "write":
            raise ValueError(f"--write-matrix must be one of o, down, got {self.write_matrix!r}")
        if self.beta <= 0 or self.batch_size < 1 or self.n_resamples < 1:
            raise ValueError("`beta`, `batch_size` and `n_resamples` must be positive")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x)
    # A fixed sign (largest entry positive): eigenvectors come with an arbitrary one.
    return x if x[np.argmax(np.abs(x))] > 0 else -x


def _directions(basis: np.ndarray, *, controls: int, neighbours: int, rng_random, rng_matched):
    """Principal (column 0), random unit controls and controls mixing columns 1 … neighbours."""
    d = basis.shape[0]
    m = min(neighbours, d - 1)
    names, family, vectors = ["principal"], ["principal"], [_unit(basis[:, 0])]
    for i in range(controls):
        names.append(f"random-{i:02d}")
        family.append("random")
        vectors.append(_unit(rng_random.standard_normal(d)))
    for i in range(controls):
        names.append(f"matched-{i:02d}")
        family.append("matched")
        vectors.append(_unit(basis[:, 1 : 1 + m] @ rng_matched.standard_normal(m)))
    return names, family, np.stack(vectors)


def _batched(n: int, size: int):
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


class _Effects:
    """Base-model evaluations kept once, so each intervention costs one pass over the data."""

    def __init__(self, model, pairs, text_ids, *, beta: float, batch_size: int):
        from .training import continuation_logprobs

        self.model, self.pairs, self.beta = model, pairs, beta
        self.logprobs = continuation_logprobs
        self.device = next(model.parameters()).device
        self.pair_batches = _batched(len(pairs), batch_size)
        self.text = torch.as_tensor(text_ids, dtype=torch.long)
        self.text_batches = _batched(len(self.text), batch_size)
        self.base_chosen, self.base_rejected = self._pair_logprobs()
        vocab = int(model.get_output_embeddings().weight.shape[0])
        # Keep the base's log-probabilities when they fit in about 256 MB; else recompute.
        self.cache = self.text.numel() * vocab * 4 <= 256 * 2**20
        self.base_text = [self._text_logprobs(b) for b in self.text_batches] if self.cache else None

    def _ids(self, array, index):
        return torch.as_tensor(array[index], dtype=torch.long, device=self.device)

    @torch.no_grad()
    def _pair_logprobs(self):
        chosen, rejected = [], []
        for index in self.pair_batches:
            prompt = self._ids(self.pairs.prompt, index)
            chosen.append(self.logprobs(self.model, prompt, self._ids(self.pairs.chosen, index)))
            rejected.append(
                self.logprobs(self.model, prompt, self._ids(self.pairs.rejected, index))
            )
        return torch.cat(chosen).double(), torch.cat(rejected).double()

    @torch.no_grad()
    def _text_logprobs(self, index):
        logits = self.model(input_ids=self.text[index].to(self.device), use_cache=False).logits
        return torch.log_softmax(logits.float(), dim=-1)

    @torch.no_grad()
    def measure(self, hook_factory) -> tuple[np.ndarray, np.ndarray]:
        """Per-pair margin change and per-sequence mean KL(base ‖ intervened)."""
        kls = []
        with hook_factory():
            chosen, rejected = self._pair_logprobs()
            for b, index in enumerate(self.text_batches):
                intervened = self._text_logprobs(index)
                kls.append((b, index, intervened))
        margin = self.beta * ((chosen - self.base_chosen) - (rejected - self.base_rejected))
        per_sequence = []
        for b, index, intervened in kls:
            base = self.base_text[b] if self.cache else self._text_logprobs(index)
            kl = torch.sum(base.exp() * (base - intervened), dim=-1)  # [n, T]
            per_sequence.append(kl.mean(dim=1).double())
        return margin.cpu().numpy(), torch.cat(per_sequence).cpu().numpy()


def _mean_interval(
    values: np.ndarray, *, n_resamples: int, level: float, rng
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling examples)."""
    rows = rng.integers(0, len(values), size=(n_resamples, len(values)))
    return tuple(float(x) for x in percentile_interval(values[rows].mean(axis=1), level))


def _controls_p(stat: np.ndarray, family: np.ndarray, which: str) -> float:
    principal = stat[family == "principal"][0]
    controls = stat[family != "principal"] if which == "all" else stat[family == which]
    return float((1 + np.sum(controls >= principal)) / (1 + controls.size))


def rank1_dataset(
    model,
    corpus: Corpus,
    settings: Rank1Settings = Rank1Settings(),
    *,
    model_id: str = "",
    progress: bool = True,
) -> xr.Dataset:
    """Rank-1 interventions on one read and one write matrix of `model`, against matched controls.

    `corpus` is held-out text: its sequences give the preference pairs (the
    margin) and the next-token distributions (the KL). The read matrix's
    principal direction ``v`` is the top eigenvector of the activation
    covariance at its site (this model, this corpus), with ``u`` the top left
    singular vector of the matrix itself; the write matrix's principal
    direction ``u`` is the top right singular vector of the unembedding, with
    ``v`` the matrix's top right singular vector. Controls replace the principal
    direction only; ``α = scale · ‖W‖_F`` for all.
    """
    from .training import preference_pairs

    dims = probes.model_dims(model)
    d, n_layers = dims.d_model, dims.n_layers
    layer = n_layers // 2 if settings.layer is None else settings.layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"--layer must lie in [0, {n_layers - 1}], got {layer}")
    family_table = probes.family_of(model).matrices
    for name in (settings.read_matrix, settings.write_matrix):
        if name not in family_table:
            raise ValueError(f"{dims.model_type} has no matrix {name!r}")
    ids = corpus.ids
    if len(ids) < 2:
        raise ValueError("rank1 needs at least 2 held-out sequences: raise --tokens")
    prompt_len = settings.prompt_len or ids.shape[1] // 2
    pairs = preference_pairs(
        ids, prompt_len=prompt_len, rng=probes.construction_rng(settings.seed, "rank1", "pairs")
    )
    model.eval()
    site = probes.SITE_OF[settings.read_matrix]
    activations = probes.collect_statistics(model, ids, sites=[(layer, site)], progress=progress)
    act = activations.sites[(layer, site)].subspace(centred=True)
    prediction = probes.unembedding_subspaces(probes.unembedding(model))["unembed"]
    weights = probes.canonical_weights(
        model, matrices=[settings.read_matrix, settings.write_matrix], layers=[layer]
    )
    effects = _Effects(model, pairs, ids, beta=settings.beta, batch_size=settings.batch_size)
    level = settings.confidence_level
    rows = {}
    for role, matrix, basis, spectrum in (
        ("read", settings.read_matrix, act.basis, act.spectrum),
        ("write", settings.write_matrix, prediction.basis, prediction.spectrum),
    ):
        w = probes.fraction.as_float64(weights[(layer, matrix)])
        left, singular, right_t = np.linalg.svd(w, full_matrices=False)
        alpha = settings.scale * float(np.linalg.norm(w))
        names, family, vectors = _directions(
            basis,
            controls=settings.controls,
            neighbours=settings.neighbours,
            rng_random=probes.construction_rng(settings.seed, "rank1", matrix, "random"),
            rng_matched=probes.construction_rng(settings.seed, "rank1", matrix, "matched"),
        )
        # The residual-side quadratic form: activation covariance (read), W_UᵀW_U (write).
        form = basis @ np.diag(spectrum) @ basis.T
        alignment = np.einsum("ij,jk,ik->i", vectors, form, vectors) / spectrum[0]
        fixed = _unit(left[:, 0]) if role == "read" else _unit(right_t[0])
        margins, kls = [], []
        for vector in tqdm(vectors, desc=f"rank-1 {matrix}", disable=not progress, leave=False):
            u, v = (fixed, vector) if role == "read" else (vector, fixed)
            margin, kl = effects.measure(partial(rank1_hook, model, layer, matrix, u, v, alpha))
            margins.append(margin)
            kls.append(kl)
        rows[matrix] = dict(
            role=role, alpha=alpha, weight_fro=float(np.linalg.norm(w)), names=names,
            family=np.asarray(family), vectors=vectors, alignment=alignment,
            margins=np.stack(margins), kls=np.stack(kls),
        )  # fmt: skip
    matrices = [settings.read_matrix, settings.write_matrix]
    names = rows[matrices[0]]["names"]
    family = rows[matrices[0]]["family"]
    rng = probes.construction_rng(settings.seed, "rank1", "intervals")
    data = {key: np.full((2, len(names)), np.nan) for key in (
        "margin_change", "margin_change_ci_low", "margin_change_ci_high",
        "abs_margin_change", "kl", "kl_ci_low", "kl_ci_high",
    )}  # fmt: skip
    tests = ("random", "matched", "all")
    p_margin = np.full((2, len(tests)), np.nan)
    p_kl = np.full((2, len(tests)), np.nan)
    for m, matrix in enumerate(matrices):
        row = rows[matrix]
        for i in range(len(names)):
            margin, kl = row["margins"][i], row["kls"][i]
            data["margin_change"][m, i] = margin.mean()
            data["abs_margin_change"][m, i] = abs(margin.mean())
            data["margin_change_ci_low"][m, i], data["margin_change_ci_high"][m, i] = (
                _mean_interval(margin, n_resamples=settings.n_resamples, level=level, rng=rng)
            )
            data["kl"][m, i] = kl.mean()
            data["kl_ci_low"][m, i], data["kl_ci_high"][m, i] = _mean_interval(
                kl, n_resamples=settings.n_resamples, level=level, rng=rng
            )
        for t, which in enumerate(tests):
            p_margin[m, t] = _controls_p(data["abs_margin_change"][m], family, which)
            p_kl[m, t] = _controls_p(data["kl"][m], family, which)
    data_vars = {name: (("matrix", "intervention"), values) for name, values in data.items()}
    data_vars.update(
        alignment=(
            ("matrix", "intervention"),
            np.stack([rows[m]["alignment"] for m in matrices]),
            {
                "long_name": "direction's activation variance (read) or prediction energy (write), over the principal one's"
            },
        ),
        direction=(
            ("matrix", "intervention", "component"),
            np.stack([rows[m]["vectors"] for m in matrices]),
        ),
        p_margin=(
            ("matrix", "control"),
            p_margin,
            {"long_name": "(1+b)/(1+B): controls with |Δmargin| ≥ the principal's"},
        ),
        p_kl=(
            ("matrix", "control"),
            p_kl,
            {"long_name": "(1+b)/(1+B): controls with KL ≥ the principal's"},
        ),
        alpha=(("matrix",), np.array([rows[m]["alpha"] for m in matrices])),
        weight_fro=(("matrix",), np.array([rows[m]["weight_fro"] for m in matrices])),
        margin_per_pair=(
            ("matrix", "intervention", "example"),
            np.stack([rows[m]["margins"] for m in matrices]),
        ),
        kl_per_sequence=(
            ("matrix", "intervention", "sequence"),
            np.stack([rows[m]["kls"] for m in matrices]),
        ),
    )
    ds = xr.Dataset(
        data_vars,
        coords={
            "matrix": ("matrix", np.asarray(matrices, dtype=object)),
            "role": ("matrix", np.asarray(["read", "write"], dtype=object)),
            "intervention": ("intervention", np.asarray(names, dtype=object)),
            "family": ("intervention", np.asarray(family, dtype=object)),
            "control": ("control", np.asarray(tests, dtype=object)),
            "component": ("component", np.arange(d, dtype=np.int64)),
        },
    )
    attrs = provenance_attrs(
        "rank1",
        corpus=corpus,
        seed=settings.seed,
        settings_json=json.dumps(asdict(settings), sort_keys=True),
    )
    attrs.update(
        title="rank-1 interventions along principal directions against matched controls",
        model_id=model_id,
        model_hash=probes.weights_hash(model),
        layer=int(layer),
        d_model=d,
        confidence_level=level,
        read_principal="top eigenvector of the activation covariance at the read site (v); u = top left singular vector of W",
        write_principal="top right singular vector of the unembedding (u); v = top right singular vector of W",
        controls="random: Haar unit vectors; matched: random unit mixtures of principal directions 2..1+neighbours",
        effect="margin_change: mean over held-out pairs of β·Δ[(log π(c) − log π(r))], the DPO margin against the unintervened model; kl: mean KL(base ‖ intervened) per token",
        interval="percentile bootstrap over pairs (margin) and sequences (KL)",
        prompt_len=int(prompt_len),
    )
    ds.attrs = attrs
    return ds


# ---------------------------------------------------------------------------- commands

EXPERIMENT_GRID = dict(
    constructions=("act_cov", "unembed", "random"),
    cutoffs=("k=8", "var=0.9"),
    normalisations=("isotropic",),
)


def _split(text):
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in _split(text))
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _sweep_config(args, pairs, base: SweepConfig | None = None) -> SweepConfig:
    """A sweep config from the experiment's options over `base` (or the experiment grid)."""
    from .config import CorpusSpec

    config = base or SweepConfig(pairs=tuple(pairs), **EXPERIMENT_GRID)
    config = replace(config, pairs=tuple(pairs))
    corpus = config.corpus
    if args.corpus:
        files = _split(args.corpus)
        ids = [f for f in files if f.endswith(".npy")]
        if ids and len(files) > 1:
            raise ValueError("--corpus takes one .npy id file, or text/JSONL files, not a mix")
        corpus = replace(corpus, paths=() if ids else files, ids=ids[0] if ids else None)
    corpus = CorpusSpec(
        paths=corpus.paths,
        ids=corpus.ids,
        tokens=args.tokens if args.tokens is not None else corpus.tokens,
        seq_len=args.seq_len if args.seq_len is not None else corpus.seq_len,
        tokenizer=args.tokenizer or corpus.tokenizer,
    )
    return config.with_options(
        corpus=corpus,
        constructions=_split(args.constructions),
        cutoffs=_split(args.cutoffs),
        normalisations=_split(args.normalisations),
        matrices=_split(args.matrices),
        replicates=args.bootstrap,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        trust_remote_code=True if args.trust_remote_code else None,
    )


def _cache_root(args):
    from .cache import default_cache_dir

    return None if args.no_cache else (args.cache_dir or default_cache_dir())


def _load_probe_corpus(config: SweepConfig, tokenizer_source: str):
    from .corpus import load_corpus
    from .engine import check_corpus, preflight

    widths = preflight(config)  # configs only: bad ids, mismatched pairs and k > d fail here
    corpus = load_corpus(
        config.corpus, tokenizer_source=tokenizer_source, trust_remote_code=config.trust_remote_code
    )
    check_corpus(corpus, widths)
    return corpus


def run_trajectory_command(args) -> int:
    from .dataset import write_dataset
    from .files import check_writable

    out = check_writable(args.out)
    sources = [bool(args.checkpoints), bool(args.config), bool(args.demo)]
    if sum(sources) != 1:
        raise ValueError("rsf experiment trajectory needs one of --checkpoints, --config or --demo")
    labels = _split(args.labels)
    base_config = None
    if args.checkpoints:
        checkpoints = list(_split(args.checkpoints))
    elif args.config:
        checkpoints, config_labels, base_config = trajectory_from_toml(args.config)
        labels = labels or config_labels
    else:
        demo = demo_checkpoints(cache_root=_cache_root(args), progress=not args.quiet)
        phases = {"align": list(demo.align), "pretrain": list(demo.pretrain)}
        # The align phase starts from the base itself, so "both" drops its duplicate first step.
        phases["both"] = list(demo.pretrain) + list(demo.align[1:])
        checkpoints = phases[args.phase]
        if len(checkpoints) < 2:
            raise ValueError(f"the demo saved fewer than 2 checkpoints for phase {args.phase!r}")
    pairs, _ = trajectory_pairs(checkpoints, labels)
    config = _sweep_config(args, pairs, base_config)
    corpus = _load_probe_corpus(config, checkpoints[0])
    ds = trajectory_dataset(
        checkpoints,
        config,
        corpus,
        labels=labels,
        read=_split(args.read),
        write=_split(args.write),
        cache_root=_cache_root(args),
        progress=not args.quiet,
    )
    write_dataset(ds, out)
    print("\n".join(trajectory_lines(ds)))
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def _first_spec(ds: xr.Dataset) -> dict:
    """The specification a summary prints: act_cov if present, the first cutoff and normalisation."""
    construction = "act_cov" if "act_cov" in ds.construction.values else ds.construction.values[0]
    return {
        "construction": construction,
        "cutoff": ds.cutoff.values[0],
        "normalisation": ds.normalisation.values[0],
    }


def trajectory_lines(ds: xr.Dataset) -> list[str]:
    spec = _first_spec(ds)
    scale = "log2 " if spec["normalisation"] in ("isotropic", "base_relative") else ""
    lines = [
        f"read − write asymmetry ({scale}{spec['normalisation']}, {spec['construction']}, "
        f"{spec['cutoff']}; read {ds.attrs['read_set']}, write {ds.attrs['write_set']}), "
        f"from {ds.attrs['start_label']}:"
    ]
    for reference in ds.reference.values:
        lines.append(f"  relative to the {reference} checkpoint")
        for checkpoint in ds.checkpoint.values:
            cell = ds.sel(reference=reference, checkpoint=checkpoint, **spec)
            lines.append(
                f"    {checkpoint:28s} read {float(cell.read_rsf):+.3f}  write {float(cell.write_rsf):+.3f}  "
                f"asymmetry {float(cell.asymmetry):+.3f} "
                f"[{float(cell.asymmetry_ci_low):+.3f}, {float(cell.asymmetry_ci_high):+.3f}]"
            )
    return lines


def run_contrastive_command(args) -> int:
    from .cache import default_cache_dir
    from .config import CorpusSpec
    from .corpus import load_corpus
    from .dataset import write_dataset
    from .engine import resolve_device
    from .files import check_writable

    out = check_writable(args.out)
    if bool(args.base) == bool(args.demo):
        raise ValueError("rsf experiment contrastive needs one of --base M or --demo")
    lams = _floats(args.lams, "--lams")
    defaults = ContrastiveSettings()
    demo = None
    if args.demo:
        demo = demo_checkpoints(cache_root=_cache_root(args), progress=not args.quiet)
        recipe = demo.manifest["settings"]
        defaults = replace(
            defaults,
            steps=int(recipe["align_steps"]),
            lr=float(recipe["align_lr"]),
            batch_size=int(recipe["align_batch"]),
            beta=float(recipe["beta"]),
            prompt_len=int(recipe["prompt_len"]),
        )
    settings = ContrastiveSettings(
        lams=lams,
        steps=args.steps if args.steps is not None else defaults.steps,
        lr=args.lr if args.lr is not None else defaults.lr,
        batch_size=args.train_batch if args.train_batch is not None else defaults.batch_size,
        beta=args.beta if args.beta is not None else defaults.beta,
        prompt_len=args.prompt_len if args.prompt_len is not None else defaults.prompt_len,
        seed=args.seed,
        gradient_replicates=args.gradient_bootstrap,
    )
    base_id = demo.base if demo else args.base
    config = _sweep_config(args, [PairSpec("contrastive", base_id, base_id)])
    if demo:
        pair_len = int(recipe["prompt_len"]) + int(recipe["continuation_len"])
        train_ids = demo_token_windows(demo, held_out=False, length=pair_len)
    else:
        pair_len = 2 * (settings.prompt_len or 32)
        spec = CorpusSpec(
            paths=_split(args.train_corpus) or (), tokens=args.train_tokens, seq_len=pair_len
        )
        train_ids = load_corpus(spec, tokenizer_source=base_id).ids
    if len(train_ids) < 2:
        raise ValueError("the training text gives fewer than 2 preference pairs")
    corpus = _load_probe_corpus(config, base_id)
    variants_dir = args.variants_dir or (
        Path(_cache_root(args) or default_cache_dir()) / "contrastive"
    )
    device = resolve_device(args.device or "auto")
    variants = train_variants(
        base_id,
        train_ids,
        settings,
        variants_dir=variants_dir,
        device=device,
        progress=not args.quiet,
    )
    gradient_ids = train_ids[_evenly(len(train_ids), args.gradient_pairs)]
    ds = contrastive_dataset(
        base_id,
        variants,
        settings,
        config,
        corpus,
        read=_split(args.read),
        write=_split(args.write),
        gradient_ids=gradient_ids,
        cache_root=_cache_root(args),
        device=device,
        progress=not args.quiet,
    )
    ds.attrs["base_id"] = base_id
    ds.attrs["training_pairs"] = int(len(train_ids))
    write_dataset(ds, out)
    print("\n".join(contrastive_lines(ds)))
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def _evenly(available: int, wanted: int) -> np.ndarray:
    wanted = min(available, max(2, wanted))
    return np.unique(np.linspace(0, available - 1, wanted).round().astype(np.int64))


def contrastive_lines(ds: xr.Dataset) -> list[str]:
    spec = {"cutoff": ds.cutoff.values[0], "normalisation": ds.normalisation.values[0]}
    lines = [
        f"λ against read RSF ({ds.attrs['read_construction']}), write RSF "
        f"({ds.attrs['write_construction']}) [{spec['cutoff']}, {spec['normalisation']}, log2 for ratios] "
        "and the δ_t entropy rank of L_λ at the write sites:"
    ]
    has_ci = "delta_mean_entropy_rank_ci_low" in ds
    for label in ds.lam_label.values:
        cell = ds.sel(lam_label=label)
        ci = (
            f" [{float(cell.delta_mean_entropy_rank_ci_low):.2f}, {float(cell.delta_mean_entropy_rank_ci_high):.2f}]"
            if has_ci
            else ""
        )
        lines.append(
            f"  λ = {float(cell.lam):<5g} read {float(cell.paper_read_rsf.sel(**spec)):+.3f}  "
            f"write {float(cell.paper_write_rsf.sel(**spec)):+.3f}  "
            f"asymmetry {float(cell.paper_asymmetry.sel(**spec)):+.3f}  "
            f"δ entropy rank {float(cell.delta_mean_entropy_rank):.2f}{ci}"
        )
    lines.append(
        "trend against λ (slope per unit λ; within-layer permutation p; Spearman ρ of layer means):"
    )
    wanted = [
        f"{q}[{spec['cutoff']},{spec['normalisation']}]"
        for q in ("read_rsf", "write_rsf", "asymmetry")
    ]
    wanted += ["delta_entropy_rank", "delta_participation_ratio", "delta_prediction_ratio"]
    for name in wanted:
        if name not in ds.trend.values:
            continue
        row = ds.sel(trend=name)
        lines.append(
            f"  {name:34s} slope {float(row.trend_slope):+.4f} "
            f"[{float(row.trend_slope_ci_low):+.4f}, {float(row.trend_slope_ci_high):+.4f}]  "
            f"p = {float(row.trend_p_value):.3g}  ρ = {float(row.trend_spearman):+.2f}"
        )
    return lines


def run_rank1_command(args) -> int:
    from .dataset import write_dataset
    from .engine import resolve_device
    from .files import check_writable
    from .gradients import check_vocabulary, corpus_from_args

    out = check_writable(args.out)
    settings = Rank1Settings(
        layer=args.layer,
        read_matrix=args.read_matrix,
        write_matrix=args.write_matrix,
        controls=args.controls,
        scale=args.scale,
        neighbours=args.neighbours,
        beta=args.beta,
        prompt_len=args.prompt_len,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    device = resolve_device(args.device)
    if args.model:
        model_id = args.model
        corpus = corpus_from_args(
            args,
            tokenizer_source=model_id,
            default_tokens=8192,
            trust_remote_code=args.trust_remote_code,
        )
    else:
        if args.corpus:
            raise ValueError("--corpus needs --model; the demo uses its own held-out documents")
        demo = demo_checkpoints(cache_root=_cache_root(args), progress=not args.quiet)
        model_id = demo.base
        recipe = demo.manifest["settings"]
        length = args.seq_len or int(recipe["prompt_len"]) + int(recipe["continuation_len"])
        windows = demo_token_windows(demo, held_out=True, length=length)
        tokens = args.tokens if args.tokens is not None else 8192
        windows = windows[_evenly(len(windows), tokens // length)]
        corpus = Corpus(np.ascontiguousarray(windows, dtype=np.int64), "demo:held-out documents")
        if args.prompt_len is None:
            settings = replace(settings, prompt_len=min(int(recipe["prompt_len"]), length - 1))
    model = load_model(
        model_id, device=device, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    )
    check_vocabulary(corpus, model)
    ds = rank1_dataset(model, corpus, settings, model_id=model_id, progress=not args.quiet)
    write_dataset(ds, out)
    print("\n".join(rank1_lines(ds)))
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def rank1_lines(ds: xr.Dataset) -> list[str]:
    lines = [
        f"rank-1 interventions at layer {ds.attrs['layer']} (α = scale·‖W‖_F; "
        f"{int((ds.family == 'random').sum())} random and {int((ds.family == 'matched').sum())} matched controls):"
    ]
    for matrix in ds.matrix.values:
        cell = ds.sel(matrix=matrix)
        principal = cell.sel(intervention="principal")
        controls = cell.where(cell.family != "principal", drop=True)
        lines.append(
            f"  {matrix} ({str(cell.role.values)}): principal Δmargin {float(principal.margin_change):+.4f} "
            f"[{float(principal.margin_change_ci_low):+.4f}, {float(principal.margin_change_ci_high):+.4f}], "
            f"KL {float(principal.kl):.4g}; controls median |Δmargin| "
            f"{float(np.median(controls.abs_margin_change)):.4f}, KL {float(np.median(controls.kl)):.4g}"
        )
        lines.append(
            "     p (principal vs controls, |Δmargin| / KL): "
            + ", ".join(
                f"{c} {float(cell.p_margin.sel(control=c)):.3g} / {float(cell.p_kl.sel(control=c)):.3g}"
                for c in cell.control.values
            )
        )
    return lines
