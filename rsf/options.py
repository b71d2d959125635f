"""Option groups, declared once and reused by every command, and what they turn into.

Each ``add_*`` function adds one argument group (models, corpus, probe grid,
pathway sets, bootstrap, run, cache); each reader turns a parsed namespace
into the library's settings objects (:class:`robustness.config.CorpusSpec`,
:class:`robustness.config.SweepConfig`, a cache root). Nothing below
``rsf`` ever sees an ``argparse`` namespace.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from robustness.cache import default_cache_dir
from robustness.config import CorpusSpec, SweepConfig
from robustness.corpus import Corpus, load_corpus
from robustness.specification import DEFAULT_READ, DEFAULT_WRITE

__all__ = [
    "add_bootstrap",
    "add_cache",
    "add_corpus",
    "add_out",
    "add_pathway_sets",
    "add_probe_grid",
    "add_run",
    "cache_root",
    "command_corpus",
    "corpus_spec",
    "parse_numbers",
    "pathway_sets",
    "split_list",
    "sweep_config",
]


def split_list(text: str | None) -> tuple[str, ...] | None:
    """A comma list option as a tuple of its non-empty, stripped parts; ``None`` stays ``None``."""
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_numbers(text: str, option: str) -> tuple[float, ...]:
    """A comma list of numbers (`option` names the flag in the error)."""
    try:
        return tuple(float(part) for part in split_list(text))
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, got {text!r}") from None


# ---------------------------------------------------------------------------- groups


def add_out(parser, default: str) -> None:
    parser.add_argument("--out", default=default, help=f"output file (default {default})")


def add_corpus(
    parser,
    *,
    tokenizer_default: str = "the base model's",
    tokens_default: int = 65536,
    title="corpus",
) -> None:
    """``--corpus``, ``--tokenizer``, ``--tokens``, ``--seq-len`` (read by :func:`corpus_spec`)."""
    group = parser.add_argument_group(title)
    group.add_argument(
        "--corpus", help="text/JSONL files (comma list) or one ids .npy [n_seq, seq_len]"
    )
    group.add_argument("--tokenizer", help=f"tokenizer for text (default: {tokenizer_default})")
    group.add_argument(
        "--tokens", type=int, help=f"tokens to use (default {tokens_default}; all rows of an .npy)"
    )
    group.add_argument("--seq-len", type=int, help="sequence length (default 128)")


def add_probe_grid(parser, *, title: str = "probe") -> None:
    """``--constructions``, ``--cutoffs``, ``--normalisations``, ``--matrices``."""
    group = parser.add_argument_group(title)
    group.add_argument("--constructions", help="comma list, e.g. act_cov,unembed,random")
    group.add_argument("--cutoffs", help="comma list, e.g. k=8,frac=0.05,var=0.9,pr,mp")
    group.add_argument("--normalisations", help="comma list, e.g. isotropic,null_z")
    group.add_argument("--matrices", help="comma list from q,k,v,o,up,gate,down")


def add_pathway_sets(parser) -> None:
    """``--read`` and ``--write``: the matrix sets compared (default the paper's)."""
    group = parser.add_argument_group("pathway sets")
    group.add_argument(
        "--read",
        default=",".join(DEFAULT_READ),
        help=f"read set (default {','.join(DEFAULT_READ)})",
    )
    group.add_argument(
        "--write",
        default=",".join(DEFAULT_WRITE),
        help=f"write set (default {','.join(DEFAULT_WRITE)})",
    )


def add_bootstrap(
    parser, *, default: int | None = None, seed_default: int | None = None, bca: bool = False
) -> None:
    """``--bootstrap`` (sequence-bootstrap replicates), ``--seed`` and (sweeps) ``--bca``."""
    group = parser.add_argument_group("bootstrap")
    shown = "0: none" if default is None else str(default)
    group.add_argument(
        "--bootstrap",
        type=int,
        default=default,
        help=f"bootstrap replicates over chunks of corpus sequences (default {shown})",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=seed_default,
        help=f"seed for random bases and resampling (default {seed_default or 0})",
    )
    if bca:
        group.add_argument(
            "--bca",
            action="store_true",
            default=None,
            help="also compute the leave-one-chunk-out rows BCa intervals need",
        )


def add_run(
    parser,
    *,
    device_default: str | None = None,
    dtype: bool = True,
    dtype_default: str | None = None,
    batch: bool = True,
    batch_default: int | None = None,
    dask: bool = False,
) -> None:
    """``--device``, ``--dtype``, ``--batch-size``, ``--trust-remote-code``, ``--quiet`` (and Dask)."""
    group = parser.add_argument_group("run")
    group.add_argument(
        "--device", default=device_default, help="auto (default), cpu, cuda or cuda:N"
    )
    if dtype:
        shown = dtype_default or "auto"
        group.add_argument(
            "--dtype",
            default=dtype_default,
            help=f"auto (the checkpoint's stored dtype), float32, bfloat16, float16 or float64 "
            f"(default {shown})",
        )
    if batch:
        group.add_argument(
            "--batch-size",
            type=int,
            default=batch_default,
            help=f"sequences per forward pass (default {batch_default or 8})",
        )
    if dask:
        group.add_argument("--workers", type=int, help="run on a local Dask cluster of N workers")
        group.add_argument("--scheduler", help="address of an existing Dask scheduler")
    group.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow model code from the hub (off by default)",
    )
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def add_cache(parser, *, hidden_no_cache: bool = False) -> None:
    """``--cache-dir`` and ``--no-cache``."""
    group = parser.add_argument_group("cache")
    group.add_argument("--cache-dir", help="cache folder (default ~/.cache/rsf-robustness)")
    group.add_argument(
        "--no-cache",
        action="store_true",
        help=argparse.SUPPRESS if hidden_no_cache else "neither read nor write the cache",
    )


# ---------------------------------------------------------------------------- readers


def cache_root(args):
    """The cache of ``--cache-dir``/``--no-cache`` (``None``: no cache)."""
    if getattr(args, "no_cache", False):
        return None
    return args.cache_dir or default_cache_dir()


def corpus_spec(
    args, base: CorpusSpec | None = None, *, default_tokens: int | None = None
) -> CorpusSpec:
    """`base` (default the built-in corpus) with ``--corpus/--tokens/--seq-len/--tokenizer``.

    ``--corpus`` is a comma list of text/JSONL files or one ``.npy`` id file;
    an option left out keeps `base`'s value. `default_tokens` applies to text
    when neither `base` nor ``--tokens`` sets a count (an id file gives all its rows).
    """
    base = CorpusSpec() if base is None else base
    paths, ids = base.paths, base.ids
    if args.corpus:
        files = split_list(args.corpus)
        id_files = [f for f in files if f.endswith(".npy")]
        if id_files and len(files) > 1:
            raise ValueError("--corpus takes one .npy id file, or text/JSONL files, not a mix")
        paths, ids = ((), id_files[0]) if id_files else (files, None)
    spec = CorpusSpec(
        paths=paths,
        ids=ids,
        tokens=args.tokens if args.tokens is not None else base.tokens,
        seq_len=args.seq_len if args.seq_len is not None else base.seq_len,
        tokenizer=args.tokenizer or base.tokenizer,
    )
    if default_tokens is not None and spec.ids is None and spec.tokens is None:
        spec = replace(spec, tokens=default_tokens)
    return spec


def command_corpus(args, tokenizer_source: str, *, default_tokens: int) -> Corpus:
    """The corpus of the command's corpus options, text tokenised by `tokenizer_source`'s tokenizer."""
    spec = corpus_spec(args, default_tokens=default_tokens)
    if spec.seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2, got {spec.seq_len}")
    if spec.tokens is not None and spec.tokens < spec.seq_len:
        raise ValueError(f"--tokens ({spec.tokens}) must be at least one sequence ({spec.seq_len})")
    return load_corpus(
        spec, tokenizer_source=tokenizer_source, trust_remote_code=args.trust_remote_code
    )


def sweep_config(config: SweepConfig, args, **changes) -> SweepConfig:
    """`config` with a command's corpus, probe grid, bootstrap and run options.

    Options left out keep `config`'s values; `changes` are further settings of
    the command (``None`` keeps the value too).
    """
    return config.with_options(
        corpus=corpus_spec(args, config.corpus),
        constructions=split_list(getattr(args, "constructions", None)),
        cutoffs=split_list(getattr(args, "cutoffs", None)),
        normalisations=split_list(getattr(args, "normalisations", None)),
        matrices=split_list(getattr(args, "matrices", None)),
        replicates=getattr(args, "bootstrap", None),
        seed=getattr(args, "seed", None),
        bca=getattr(args, "bca", None),
        device=getattr(args, "device", None),
        batch_size=getattr(args, "batch_size", None),
        trust_remote_code=True if getattr(args, "trust_remote_code", False) else None,
        **changes,
    )


def pathway_sets(args) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(read, write)`` from ``--read`` and ``--write``."""
    return split_list(args.read), split_list(args.write)
