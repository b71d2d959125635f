"""``rsf gradients``: anisotropy of the gradients δ_t at the write sites, into ``gradients.nc``."""

from __future__ import annotations

import xarray as xr

import probes
from robustness.corpus import load_corpus
from robustness.demo import demo_checkpoints
from robustness.files import check_writable
from robustness.gradients import GradientSettings, gradient_dataset
from robustness.models import check_vocabulary, load_model, resolve_device

from .options import add_bootstrap, add_corpus, add_run, corpus_spec, parse_numbers, split_list
from .output import publish

__all__ = ["add_parser", "load_model_corpus", "run", "summary_lines"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "gradients",
        help="anisotropy of the gradients δ_t at the write sites, beside the read-site inputs",
        description="Covariance spectra, effective ranks and prediction-subspace energy of the "
        "residual-stream gradients δ_t at the outputs of o and down, and of the inputs a_t "
        "at the read sites, for each objective, with bootstrap intervals.",
    )
    models = parser.add_argument_group("models")
    models.add_argument(
        "--model", help="a save_pretrained directory or a hub id (default: the demo's base)"
    )
    models.add_argument("--reference", help="DPO reference model (default: the model itself)")
    objective = parser.add_argument_group("objectives")
    objective.add_argument(
        "--objective",
        default="ce,dpo",
        help="comma list from ce, dpo, mixed, lam=x (default ce,dpo)",
    )
    objective.add_argument("--lam", default="0.5", help="λ values for `mixed` (default 0.5)")
    objective.add_argument("--beta", type=float, default=0.1, help="DPO β (default 0.1)")
    objective.add_argument(
        "--prompt-len", type=int, help="prompt tokens of a pair (default half a sequence)"
    )
    measure = parser.add_argument_group("measurement")
    measure.add_argument(
        "--cutoffs", default="k=8,frac=0.05", help="prediction-subspace k (default k=8,frac=0.05)"
    )
    measure.add_argument(
        "--prediction",
        default="unembed",
        help="prediction subspace: unembed (default), unembed_centered or unembed_folded",
    )
    add_corpus(parser, tokenizer_default="the model's", tokens_default=16384)
    add_bootstrap(parser, default=200, seed_default=0)
    add_run(parser, device_default="auto", dtype_default="float32", batch_default=8)
    parser.add_argument("--cache-dir", help="where the demo pair is cached (without --model)")
    parser.add_argument(
        "--out", default="gradients.nc", help="output dataset (default gradients.nc)"
    )
    parser.set_defaults(run=run)


def load_model_corpus(args, model_id: str, *, default_tokens: int):
    """The model of `model_id` and the corpus of the command's corpus options, checked against each other."""
    spec = corpus_spec(args, default_tokens=default_tokens)
    if spec.seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2, got {spec.seq_len}")
    if spec.tokens is not None and spec.tokens < spec.seq_len:
        raise ValueError(f"--tokens ({spec.tokens}) must be at least one sequence ({spec.seq_len})")
    device = resolve_device(args.device)
    model = load_model(
        model_id, device=device, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    )
    corpus = load_corpus(spec, tokenizer_source=model_id, trust_remote_code=args.trust_remote_code)
    check_vocabulary(corpus, model)
    return model, corpus


def run(args) -> int:
    out = check_writable(args.out)
    settings = GradientSettings(
        objectives=split_list(args.objective),
        lams=parse_numbers(args.lam, "--lam"),
        beta=args.beta,
        prompt_len=args.prompt_len,
        batch_size=args.batch_size,
        replicates=args.bootstrap,
        seed=args.seed,
        cutoffs=split_list(args.cutoffs),
        prediction=args.prediction,
    )
    model_id, reference_id = args.model, args.reference
    if model_id is None:
        model_id = demo_checkpoints(cache_root=args.cache_dir, progress=not args.quiet).base
    model, corpus = load_model_corpus(args, model_id, default_tokens=16384)
    reference = None
    if reference_id is not None:
        reference = load_model(
            reference_id,
            device=resolve_device(args.device),
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
        )
        probes.check_pair(model, reference)
    ds = gradient_dataset(
        model,
        corpus,
        settings,
        reference=reference,
        model_id=model_id,
        reference_id=reference_id or "",
        progress=not args.quiet,
    )
    return publish(ds, out, summary_lines(ds), quiet=args.quiet)


def summary_lines(ds: xr.Dataset) -> list[str]:
    """Layer-mean effective ranks and prediction ratios per objective and site."""
    d = int(ds.attrs["d_model"])
    lines = [
        f"layer means (d = {d}; {int(ds.attrs['bootstrap_replicates'])} bootstrap replicates, "
        f"{100 * float(ds.attrs['confidence_level']):g}% percentile intervals)"
    ]
    has_ci = "mean_participation_ratio_ci_low" in ds
    cutoff = str(ds.cutoff.values[0])

    def cell(name, objective, site, **extra):
        value = float(ds[f"mean_{name}"].sel(objective=objective, site=site, **extra))
        if not has_ci:
            return f"{value:8.2f}"
        low = float(ds[f"mean_{name}_ci_low"].sel(objective=objective, site=site, **extra))
        high = float(ds[f"mean_{name}_ci_high"].sel(objective=objective, site=site, **extra))
        return f"{value:8.2f} [{low:.2f}, {high:.2f}]"

    lines.append(
        f"  {'objective':10s} {'site':9s} {'participation ratio':>28s} {'entropy rank':>28s} "
        f"{'prediction ratio ' + cutoff:>28s}"
    )
    for objective in ds.objective.values:
        for site in ds.site.values:
            lines.append(
                f"  {objective:10s} {site:9s} {cell('participation_ratio', objective, site):>28s} "
                f"{cell('entropy_rank', objective, site):>28s} "
                f"{cell('prediction_ratio', objective, site, cutoff=cutoff):>28s}"
            )
    return lines
