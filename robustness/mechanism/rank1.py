"""`rsf experiment rank1`: closed-form rank-1 interventions along principal directions.

``ΔW = s·u vᵀ`` with unit ``u, v`` (``‖ΔW‖_F = s = scale·‖W‖_F``): on a read matrix along the top principal
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

from dataclasses import asdict
from functools import partial

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

import probes
from robustness.io.provenance import provenance_attrs
from robustness.measure.corpus import Corpus
from robustness.measure.resampling import percentile_interval
from robustness.settings.options import Rank1Settings
from robustness.training.preferences import continuation_logprobs, preference_pairs

__all__ = ["Rank1Settings", "rank1_dataset"]


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
    values: np.ndarray, *, replicates: int, confidence_level: float, rng
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling examples)."""
    rows = rng.integers(0, len(values), size=(replicates, len(values)))
    return tuple(float(x) for x in percentile_interval(values[rows].mean(axis=1), confidence_level))


def _controls_p(stat: np.ndarray, family: np.ndarray, which: str) -> float:
    principal = stat[family == "principal"][0]
    controls = stat[family != "principal"] if which == "all" else stat[family == which]
    return float((1 + np.sum(controls >= principal)) / (1 + controls.size))


def _intervene(model, layer, role, matrix, basis, spectrum, weight, effects, settings, progress):
    """One matrix's interventions: its principal direction and controls, each one's margin
    change per pair and KL per sequence, and how aligned each direction is with the basis."""
    w = probes.fraction.as_float64(weight)
    left, _, right_t = np.linalg.svd(w, full_matrices=False)
    norm = settings.scale * float(np.linalg.norm(w))
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
        margin, kl = effects.measure(partial(probes.rank1_hook, model, layer, matrix, u, v, norm))
        margins.append(margin)
        kls.append(kl)
    return dict(
        role=role, update_norm=norm, weight_fro=float(np.linalg.norm(w)), names=names,
        family=np.asarray(family), vectors=vectors, alignment=alignment,
        margins=np.stack(margins), kls=np.stack(kls),
    )  # fmt: skip


def _effect_summaries(rows, matrices, family, tests, settings):
    """Per matrix and intervention: mean margin change and KL with bootstrap intervals; per
    matrix and control family: the principal's p-values against the controls."""
    rng = probes.construction_rng(settings.seed, "rank1", "intervals")
    n = len(family)
    data = {key: np.full((2, n), np.nan) for key in (
        "margin_change", "margin_change_ci_low", "margin_change_ci_high",
        "abs_margin_change", "kl", "kl_ci_low", "kl_ci_high",
    )}  # fmt: skip
    p_margin = np.full((2, len(tests)), np.nan)
    p_kl = np.full((2, len(tests)), np.nan)
    interval = partial(_mean_interval, replicates=settings.replicates,
                       confidence_level=settings.confidence_level, rng=rng)  # fmt: skip
    for m, matrix in enumerate(matrices):
        row = rows[matrix]
        for i in range(n):
            margin, kl = row["margins"][i], row["kls"][i]
            data["margin_change"][m, i] = margin.mean()
            data["abs_margin_change"][m, i] = abs(margin.mean())
            data["margin_change_ci_low"][m, i], data["margin_change_ci_high"][m, i] = interval(
                margin
            )
            data["kl"][m, i] = kl.mean()
            data["kl_ci_low"][m, i], data["kl_ci_high"][m, i] = interval(kl)
        for t, which in enumerate(tests):
            p_margin[m, t] = _controls_p(data["abs_margin_change"][m], family, which)
            p_kl[m, t] = _controls_p(data["kl"][m], family, which)
    return data, p_margin, p_kl


_CONTROL_TESTS = ("random", "matched", "all")


def rank1_dataset(
    model,
    corpus: Corpus,
    settings: Rank1Settings | None = None,
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
    settings = settings or Rank1Settings()
    layer = _intervention_layer(model, settings)
    ids = corpus.ids
    if len(ids) < 2:
        raise ValueError("the rank-1 experiment needs at least 2 held-out sequences in `corpus`")
    prompt_len = settings.prompt_len or ids.shape[1] // 2
    pairs = preference_pairs(
        ids, prompt_len=prompt_len, rng=probes.construction_rng(settings.seed, "rank1", "pairs")
    )
    model.eval()
    d_model = probes.model_dims(model).d_model
    rows = _matrix_interventions(model, layer, ids, pairs, settings, progress)
    matrices = [settings.read_matrix, settings.write_matrix]
    names = rows[matrices[0]]["names"]
    family = rows[matrices[0]]["family"]
    data, p_margin, p_kl = _effect_summaries(rows, matrices, family, _CONTROL_TESTS, settings)
    data_vars = {name: (("matrix", "intervention"), values) for name, values in data.items()}
    data_vars.update(_intervention_variables(rows, matrices, p_margin, p_kl))
    ds = xr.Dataset(
        data_vars,
        coords={
            "matrix": ("matrix", np.asarray(matrices, dtype=object)),
            "role": ("matrix", np.asarray(["read", "write"], dtype=object)),
            "intervention": ("intervention", np.asarray(names, dtype=object)),
            "family": ("intervention", np.asarray(family, dtype=object)),
            "control": ("control", np.asarray(_CONTROL_TESTS, dtype=object)),
            "component": ("component", np.arange(d_model, dtype=np.int64)),
        },
    )
    ds.attrs = _rank1_attrs(
        corpus, settings, model_id=model_id, layer=layer, d_model=d_model, prompt_len=prompt_len
    )
    return ds


def _intervention_layer(model, settings: Rank1Settings) -> int:
    """The layer of the interventions (default the middle one), once it and both matrices exist."""
    dims = probes.model_dims(model)
    layer = dims.n_layers // 2 if settings.layer is None else settings.layer
    if not 0 <= layer < dims.n_layers:
        raise ValueError(f"`layer` must lie in [0, {dims.n_layers - 1}], got {layer}")
    family_table = probes.family_of(model).matrices
    for name in (settings.read_matrix, settings.write_matrix):
        if name not in family_table:
            raise ValueError(f"{dims.model_type} has no matrix {name!r}")
    return layer


def _matrix_interventions(model, layer, ids, pairs, settings: Rank1Settings, progress) -> dict:
    """:func:`_intervene` on the read matrix against the activation covariance at its site (this
    model, these sequences) and on the write matrix against the unembedding's prediction subspace."""
    site = probes.SITE_OF[settings.read_matrix]
    activations = probes.collect_statistics(model, ids, sites=[(layer, site)], progress=progress)
    act = activations.sites[(layer, site)].subspace(centred=True)
    prediction = probes.prediction_subspaces(model)["unembed"]
    weights = probes.canonical_weights(
        model, matrices=[settings.read_matrix, settings.write_matrix], layers=[layer]
    )
    effects = _Effects(model, pairs, ids, beta=settings.beta, batch_size=settings.batch_size)
    return {
        matrix: _intervene(model, layer, role, matrix, basis, spectrum,
                           weights[(layer, matrix)], effects, settings, progress)
        for role, matrix, basis, spectrum in (
            ("read", settings.read_matrix, act.basis, act.spectrum),
            ("write", settings.write_matrix, prediction.basis, prediction.spectrum),
        )
    }  # fmt: skip


def _intervention_variables(rows: dict, matrices: list, p_margin, p_kl) -> dict:
    """Per matrix: each direction's alignment and components, the principal's p-values against
    the controls, the update and weight norms, and every intervention's per-example effects."""
    return dict(
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
        update_norm=(
            ("matrix",),
            np.array([rows[m]["update_norm"] for m in matrices]),
            {"long_name": "‖ΔW‖_F of every intervention: scale · ‖W‖_F"},
        ),
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


def _rank1_attrs(corpus, settings, *, model_id, layer, d_model, prompt_len) -> dict:
    """Provenance, the model and layer, and how directions, controls, effects and intervals are made."""
    model_hash = probes.weights_hash(model_id) if model_id else ""
    attrs = provenance_attrs(
        "rank1",
        title="rank-1 interventions along principal directions against matched controls",
        corpus=corpus,
        seed=settings.seed,
        settings=asdict(settings),
        inputs={"model": model_hash},
    )
    attrs.update(
        model_id=model_id,
        model_hash=model_hash,
        layer=int(layer),
        d_model=d_model,
        confidence_level=settings.confidence_level,
        read_principal="top eigenvector of the activation covariance at the read site (v); u = top left singular vector of W",
        write_principal="top right singular vector of the unembedding (u); v = top right singular vector of W",
        controls="random: Haar unit vectors; matched: random unit mixtures of principal directions 2..1+neighbours",
        effect="margin_change: mean over held-out pairs of β·Δ[(log π(c) − log π(r))], the DPO margin against the unintervened model; kl: mean KL(base ‖ intervened) per token",
        interval="percentile bootstrap over pairs (margin) and sequences (KL)",
        prompt_len=int(prompt_len),
    )
    return attrs
