"""Model access for every command: configs, preflight checks, loading, devices, vocabularies.

Everything a command does before heavy work lives here, so a bad path, an
unreachable hub id, an unsupported family, a mismatched pair, ``k > d`` or a
corpus outside the vocabulary is one line, raised before any weights load.
"""

from __future__ import annotations

import json
import os

import torch

import probes
from robustness.measure.corpus import Corpus, load_corpus
from robustness.settings.config import SweepConfig

__all__ = [
    "check_corpus",
    "check_vocabulary",
    "config_widths",
    "load_model",
    "matrix_storage",
    "open_layerwise",
    "open_model_config",
    "preflight",
    "prepare_corpus",
    "resolve_device",
    "select_matrices",
]

# Config keys of the widths every check reads, by the names families give them.
WIDTH_KEYS = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "vocab_size": ("vocab_size",),
    "n_heads": ("num_attention_heads", "n_head", "num_heads"),
    "max_positions": ("max_position_embeddings", "n_positions"),
}


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; a CUDA device that is absent is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"`device` {device!r} was asked for, but no CUDA device is available")
    return device


def open_model_config(spec: str, *, trust_remote_code: bool = False):
    """The model's config (no weights), with one-line errors for a bad path, file or hub id.

    A local ``config.json`` must be a JSON object whose widths are positive
    integers (``hidden_size: "64"`` is refused here, not deep in a forward
    pass). ``trust_remote_code`` is passed to transformers exactly as given: a
    config that asks for its own code (``auto_map``) is refused without it.
    """
    from transformers import AutoConfig

    path = os.path.expanduser(spec)
    if not os.path.exists(path):  # a hub id at its revision: its snapshot's configs only
        path = str(probes.resolve_source(spec, weights=False).path)
    if probes.is_adapter(path):
        raise ValueError(
            f"{spec} is a LoRA adapter, not a model: give it as --aligned on its base "
            "(rsf inspect reads the base it names)"
        )
    gguf = probes.find_gguf(path)
    if gguf is not None:  # the config is the file's metadata
        config = probes.open_gguf(gguf, trust_remote_code=trust_remote_code).config
        check_widths(config, str(gguf))
        return config
    if not os.path.isdir(path):
        raise ValueError(f"{spec} is neither a model directory nor a GGUF file")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(
            f"{spec} is not a model directory (no config.json, no GGUF file): use save_pretrained"
        )
    check_widths(_read_config_json(config_file), config_file)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{config_file}: {_first_line(error)}") from None
    check_widths(config, config_file)
    return config


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _read_config_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(document).__name__}")
    return document


def check_widths(config, where: str) -> None:
    """Every width a check reads is a positive integer (a string or a float is refused).

    `config` is a transformers config or the ``config.json`` document itself.
    """
    for keys in WIDTH_KEYS.values():
        for key in keys:
            value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
            break


def supported_config(spec: str, *, trust_remote_code: bool = False):
    """:func:`open_model_config`, refusing a model type no adapter supports."""
    config = open_model_config(spec, trust_remote_code=trust_remote_code)
    if config.model_type not in probes.SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported model type {config.model_type!r}: supported are "
            f"{', '.join(probes.SUPPORTED_MODEL_TYPES)}"
        )
    return config


def config_widths(config) -> dict:
    """``model_type``, ``n_layers``, ``d_model``, ``vocab_size`` and ``max_positions`` from a config alone.

    ``max_positions`` is ``None`` where the config sets no limit.
    """

    def get(*names):
        for name in names:
            value = getattr(config, name, None)
            if value is not None:
                return value
        return None

    return {
        "model_type": config.model_type,
        **{name: get(*WIDTH_KEYS[name]) for name in ("n_layers", "d_model", "vocab_size")},
        "max_positions": get(*WIDTH_KEYS["max_positions"]),
    }


def select_matrices(model_type: str, wanted, *, label: str) -> tuple[str, ...]:
    """The canonical matrices of `model_type`'s family among `wanted`, in canonical order.

    `wanted` ``None`` is every matrix the family has (GPT-2 has no ``gate``); a
    listed matrix the family lacks is an error, never silently dropped.
    """
    family = probes.FAMILIES[model_type].matrices
    if wanted is None:
        return tuple(m for m in probes.MATRICES if m in family)
    absent = [m for m in wanted if m not in family]
    if absent:
        raise ValueError(
            f"pair {label!r}: {model_type} has no {', '.join(absent)} matrix: its matrices are "
            f"{', '.join(m for m in probes.MATRICES if m in family)} (leave --matrices out to "
            "measure every matrix each family has)"
        )
    return tuple(m for m in probes.MATRICES if m in wanted)


def preflight(config: SweepConfig) -> dict[str, dict]:
    """Check every pair from configs alone (no weights): types, widths, cutoffs.

    Returns each pair's widths (:func:`config_widths`). A missing path, an
    unreachable hub id, a mismatched pair and ``k > d`` all fail here, before
    any model loads.
    """
    widths = {}
    for pair in config.pairs:
        base = config_widths(
            open_model_config(pair.base, trust_remote_code=config.trust_remote_code)
        )
        if probes.is_adapter(pair.aligned):
            # A LoRA adapter on the base: readable here, its shapes checked on opening.
            probes.LoraAdapter(os.path.expanduser(pair.aligned))
            aligned = base
        else:
            aligned = config_widths(
                open_model_config(pair.aligned, trust_remote_code=config.trust_remote_code)
            )
        if base["model_type"] not in probes.SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"pair {pair.label!r}: unsupported model type {base['model_type']!r}: supported are "
                f"{', '.join(probes.SUPPORTED_MODEL_TYPES)}"
            )
        select_matrices(base["model_type"], config.matrices, label=pair.label)
        differences = [f"{k}: {base[k]} vs {aligned[k]}" for k in base if base[k] != aligned[k]]
        if differences:
            raise ValueError(
                f"pair {pair.label!r} is mismatched (base vs aligned): " + "; ".join(differences)
            )
        try:
            probes.validate_cutoffs(config.cutoffs, int(base["d_model"]))
        except ValueError as error:
            raise ValueError(f"pair {pair.label!r}: {error}") from None
        if config.corpus.ids is None:  # text: the sequence length is known before reading it
            check_positions(config.corpus.length, base["max_positions"], f"pair {pair.label!r}")
        widths[pair.label] = base
    return widths


def check_corpus(corpus: Corpus, widths: dict[str, dict]) -> None:
    """Token ids must exist in every model's vocabulary, and sequences fit its positions.

    `widths` are :func:`config_widths` by what they describe (``"pair 'demo'"``).
    Checked from the configs, before any forward pass: an ids file may not match
    the models, and a sequence longer than a model's positions is refused, not
    run past the range it was trained on (or into an index error).
    """
    largest = int(corpus.ids.max())
    for what, w in widths.items():
        if w["vocab_size"] is not None and largest >= int(w["vocab_size"]):
            raise ValueError(
                f"the corpus holds token id {largest}, outside the vocabulary of {what} "
                f"({w['vocab_size']} tokens)"
            )
        check_positions(corpus.seq_len, w.get("max_positions"), what)


def check_positions(seq_len: int, max_positions, what: str) -> None:
    """A sequence length the model's positions cover, or a one-line error naming both."""
    if max_positions is not None and seq_len > int(max_positions):
        raise ValueError(
            f"sequences of {seq_len} tokens exceed the {max_positions} positions of {what}: "
            f"lower --seq-len to at most {max_positions}"
        )


def prepare_corpus(config: SweepConfig, tokenizer_source: str) -> Corpus:
    """`config`'s probe corpus, after checking every pair from configs alone (:func:`preflight`).

    Bad ids, mismatched pairs and ``k > d`` fail before the corpus is read,
    token ids outside a vocabulary right after.
    """
    widths = preflight(config)
    corpus = load_corpus(
        config.corpus,
        tokenizer_source=tokenizer_source,
        trust_remote_code=config.trust_remote_code,
        template_source=config.pairs[0].aligned if config.pairs else None,
    )
    check_corpus(corpus, {f"pair {label!r}": w for label, w in widths.items()})
    return corpus


def check_vocabulary(corpus: Corpus, model) -> None:
    """Token ids must exist in a loaded model's vocabulary, and sequences fit its positions."""
    vocab = int(model.get_output_embeddings().weight.shape[0])
    if int(corpus.ids.max()) >= vocab:
        raise ValueError(
            f"the corpus holds token id {int(corpus.ids.max())}, outside the model's vocabulary "
            f"({vocab} tokens)"
        )
    check_positions(corpus.seq_len, config_widths(model.config)["max_positions"], "the model")


def local_model(spec: str) -> str:
    """`spec` as a local path: a folder or file as given, a hub id (at its revision) as its snapshot."""
    local = os.path.expanduser(spec)
    return local if os.path.exists(local) else str(probes.resolve_source(spec).path)


def load_model(
    spec: str, *, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False
):
    """A supported model from a directory or hub id, with one-line errors (no traceback)."""
    supported_config(spec, trust_remote_code=trust_remote_code)
    path = local_model(spec)
    try:
        return probes.load_model(
            path, dtype=dtype, device=device, trust_remote_code=trust_remote_code
        )
    except OSError as error:
        raise ValueError(f"cannot load model {spec!r}: {error}") from None


def open_layerwise(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    adapter: str | None = None,
) -> tuple[probes.LayerwiseModel, str | None]:
    """`spec` as a :class:`probes.LayerwiseModel` over its checkpoint, and a note or ``None``.

    A checkpoint whose tensors the model cannot be streamed from (names or
    shapes transformers would convert on loading) is loaded whole instead,
    with a note saying so; a checkpoint of PyTorch pickles streams too
    (memory-mapped), with a note. With `adapter` (a PEFT LoRA directory) the
    model is `spec` with the adapter merged as each part is read, and the note
    names the matrices it targets.
    """
    supported_config(spec, trust_remote_code=trust_remote_code)
    path = local_model(spec)
    if adapter is not None:
        lora = probes.LoraAdapter(os.path.expanduser(adapter))
        try:
            model = probes.LayerwiseModel.from_checkpoint(
                path, dtype=dtype, device=device, trust_remote_code=trust_remote_code, adapter=lora
            )
        except probes.NotStreamable as reason:
            raise ValueError(f"{reason}: a LoRA adapter needs a base that streams") from None
        return model, adapter_note(model)
    try:
        model = probes.LayerwiseModel.from_checkpoint(
            path, dtype=dtype, device=device, trust_remote_code=trust_remote_code
        )
    except probes.NotStreamable as reason:
        method = probes.quantisation_method(path)
        if method is not None:  # transformers' quantizer, then its dequantize; errors as they are
            loaded = load_model(
                spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code
            )
            return (
                probes.LayerwiseModel.loaded(loaded, quantisation=method),
                f"{reason}: loaded whole and dequantised by transformers",
            )
        try:
            loaded = load_model(
                spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code
            )
        except ValueError:  # the checkpoint does not fit its config either way: name the tensor
            raise ValueError(
                f"{reason}: the checkpoint does not fit the model its config.json builds"
            ) from None
        return probes.LayerwiseModel.loaded(loaded), f"{reason}: loaded whole"
    if model.checkpoint.format == "pickle":
        return model, f"{spec} has no safetensors: its pickles are read memory-mapped"
    return model, None


def matrix_storage(spec: str, model) -> dict[str, str]:
    """``{matrix: its storage types over layers}`` (``"Q4_1"``, ``"Q4_K ×26, Q6_K ×4"``) of a local
    checkpoint, read from its headers; empty for a hub id (nothing is downloaded to say it)."""
    if not os.path.exists(os.path.expanduser(spec)):
        return {}
    checkpoint = probes.Checkpoint(spec)
    family = probes.family_of(model)
    n_layers = len(probes.layer_modules(model))
    out = {}
    for matrix, source in family.matrices.items():
        names = [f"{family.layers}.{i}.{source.module}.{source.parameter}" for i in range(n_layers)]
        types = [checkpoint.storage(name) for name in names if name in checkpoint]
        counts = {kind: types.count(kind) for kind in dict.fromkeys(types)}
        out[matrix] = ", ".join(
            kind if len(counts) == 1 else f"{kind} ×{count}" for kind, count in counts.items()
        )
    return out


def targeted_matrices(model: probes.LayerwiseModel) -> dict[str, list[int]]:
    """``{canonical matrix: [layers]}`` that `model`'s LoRA adapter targets (empty without one)."""
    if model.adapter is None:
        return {}
    targeted: dict[str, list[int]] = {}
    n_layers = len(probes.layer_modules(model.model))
    for matrix in model.family.matrices:
        for layer in range(n_layers):
            if model.module_prefix(layer, matrix).removesuffix(".") in model.adapter.modules:
                targeted.setdefault(matrix, []).append(layer)
    return targeted


def adapter_note(model: probes.LayerwiseModel) -> str:
    """One line on what a LoRA adapter changes: the matrices it targets and their layers."""
    targeted = targeted_matrices(model)
    n_layers = len(probes.layer_modules(model.model))
    parts = [
        m if len(layers) == n_layers else f"{m} (layers {','.join(map(str, layers))})"
        for m, layers in targeted.items()
    ]
    line = (
        f"a LoRA adapter on the base ({model.adapter.source}): it targets {', '.join(parts) or 'nothing'}; "
        "the other matrices have no delta"
    )
    if model.adapter.ignored:
        line += f"; not LoRA deltas, not measured: {', '.join(model.adapter.ignored[:4])}"
    return line
