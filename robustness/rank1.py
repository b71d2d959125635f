"""`rsf experiment rank1`: closed-form rank-1 interventions along principal directions.

``ΔW = α u vᵀ`` (``‖ΔW‖_F = α``): on a read matrix along the top principal
direction of the activations it reads (``v``), on a write matrix along the top
prediction direction (``u``, the unembedding's top right singular vector),
each against matched controls of the same norm (random unit directions, and
directions from the next few principal / prediction directions, whose
variance or prediction energy is the closest available to the principal one).
Effects: the change in held-out DPO preference margin and
``KL(base ‖ intervened)`` of next-token distributions; permutation p-value
``(1 + b)/(1 + B)`` of the principal direction against its controls.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

import probes

from .cli import cache_root_from_args
from .corpus import Corpus
from .experiments import demo_checkpoints, demo_token_windows, evenly_spaced
from .gradients import load_model, percentile_interval, provenance_attrs

__all__ = [
    "Rank1Settings",
    "rank1_dataset",
    "rank1_hook",
    "rank1_lines",
    "rank1_update",
    "run_rank1_command",
]


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


# ---------------------------------------------------------------------------- command


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
        demo = demo_checkpoints(cache_root=cache_root_from_args(args), progress=not args.quiet)
        model_id = demo.base
        recipe = demo.manifest["settings"]
        length = args.seq_len or int(recipe["prompt_len"]) + int(recipe["continuation_len"])
        windows = demo_token_windows(demo, held_out=True, length=length)
        tokens = args.tokens if args.tokens is not None else 8192
        windows = windows[evenly_spaced(len(windows), tokens // length)]
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
