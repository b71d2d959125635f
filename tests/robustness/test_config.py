"""Sweep configuration (robustness.settings.config): TOML in and out, and every name checked before any model loads."""

from __future__ import annotations

import re

import pytest

import probes
from robustness.settings.config import PairSpec, SweepConfig, load_config

PAIR = (PairSpec("demo", "base-dir", "aligned-dir"),)


def test_toml_round_trip(tmp_path):
    config = SweepConfig(
        pairs=PAIR,
        constructions=("act_cov", "random"),
        cutoffs=("k=4", "pr"),
        normalisations=("isotropic",),
        seed=7,
    )
    path = tmp_path / "sweep.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config


def test_contract_layout_is_read(tmp_path):
    (tmp_path / "corpus.txt").write_text("hello")
    path = tmp_path / "c.toml"
    path.write_text(
        '[[pair]]\nlabel = "sft"\nbase = "org/base"\naligned = "org/sft"\n'
        '[[pair]]\nlabel = "dpo"\nbase = "org/base"\naligned = "org/dpo"\n'
        '[corpus]\npaths = ["corpus.txt"]\ntokens = 4096\nseq_len = 64\n'
        '[probe]\nconstructions = ["act_cov", "unembed", "random"]\ncutoffs = ["k=8", "var=0.9"]\n'
        'normalisations = ["isotropic"]\nmatrices = ["q", "k", "o", "down"]\n'
        "[bootstrap]\nreplicates = 200\nseed = 3\n"
    )
    config = load_config(path)
    assert [p.label for p in config.pairs] == ["sft", "dpo"]
    assert config.pairs[0].base == "org/base"  # a hub id stays as written
    assert config.corpus.paths == (str(tmp_path / "corpus.txt"),)  # relative to the config
    assert config.corpus.tokens == 4096 and config.replicates == 200 and config.seed == 3
    assert config.matrices == ("q", "k", "o", "down")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "constructions",
            ("act_cov", "pca"),
            "unknown construction 'pca': valid are " + ", ".join(probes.CONSTRUCTIONS),
        ),
        (
            "normalisations",
            ("zscore",),
            "unknown normalisation 'zscore': valid are " + ", ".join(probes.NORMALISATIONS),
        ),
        ("matrices", ("q", "ffn"), "unknown matrix 'ffn'"),
        ("cutoffs", ("top8",), "unknown cutoff 'top8': use k=<int>"),
        ("dtype", "int8", "unknown dtype 'int8'"),
    ],
)
def test_unknown_names_list_the_valid_ones(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SweepConfig(pairs=PAIR, **{field: value})


def test_structural_errors(tmp_path):
    with pytest.raises(ValueError, match="labels must be unique"):
        SweepConfig(pairs=PAIR * 2)
    path = tmp_path / "bad.toml"
    path.write_text('[[pair]]\nbase = "a"\n[probe]\ncutoff = ["k=8"]\n')
    with pytest.raises(ValueError, match=r"bad.toml: \[\[pair\]\] number 1 lacks aligned"):
        load_config(path)
    path.write_text('[[pair]]\nbase = "a"\naligned = "b"\n[probe]\ncutoff = ["k=8"]\n')
    with pytest.raises(
        ValueError, match=r"bad.toml: unknown key\(s\) cutoff in \[probe\]: valid are"
    ):
        load_config(path)
    path.write_text("[[pair]\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(path)


def test_cutoff_labels_are_made_canonical_once_when_settings_are_read(tmp_path):
    """`k = 8`, `var=0.90` and `frac=5e-2` are stored as `k=8`, `var=0.9`, `frac=0.05`, in configs and gradients alike."""
    from robustness.mechanism.gradients import GradientSettings

    config = SweepConfig(
        pairs=(PairSpec("p", "a", "b"),), cutoffs=("k = 8", "var=0.90", "frac=5e-2", " pr")
    )
    assert config.cutoffs == ("k=8", "var=0.9", "frac=0.05", "pr")
    assert load_config_from(tmp_path, config.to_toml()).cutoffs == config.cutoffs
    assert GradientSettings(cutoffs=("k = 8", "frac=5e-2")).cutoffs == ("k=8", "frac=0.05")
    with pytest.raises(ValueError, match="repeated cutoff"):
        SweepConfig(pairs=(PairSpec("p", "a", "b"),), cutoffs=("k=8", "k = 8"))


def load_config_from(folder, text):
    path = folder / "round-trip.toml"
    path.write_text(text)
    return load_config(path)


def test_a_pair_may_say_its_phase(tmp_path):
    """`[[pair]] phase = "pretrain"` is read and written back; an unknown phase is a one-line error."""
    path = tmp_path / "phases.toml"
    path.write_text(
        '[[pair]]\nlabel = "a"\nbase = "x"\naligned = "y"\n'
        '[[pair]]\nlabel = "p"\nbase = "init"\naligned = "x"\nphase = "pretrain"\n'
    )
    config = load_config(path)
    assert [pair.phase for pair in config.pairs] == ["align", "pretrain"]
    assert load_config_from(tmp_path, config.to_toml()).pairs == config.pairs
    with pytest.raises(ValueError, match="unknown phase 'sft'"):
        PairSpec("q", "a", "b", phase="sft")
    path.write_text('[[pair]]\nbase = "x"\naligned = "y"\nstage = "sft"\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) stage in \[\[pair\]\] number 1"):
        load_config(path)


def test_the_python_api_checks_what_the_command_line_checks():
    """One declaration per option: a wrong type or range is refused in Python too, naming the field."""
    from robustness.settings.options import ClaimsOptions, StatsOptions
    from robustness.settings.schema import OptionError

    for changes, message in (
        ({"replicates": 2.5}, "`replicates` must be an integer, got 2.5"),
        ({"replicates": -1}, "`replicates` must be non-negative, got -1"),
        ({"trust_remote_code": "no"}, "`trust_remote_code` must be true or false, got 'no'"),
        ({"constructions": "act_cov"}, "`constructions` must be a list of strings"),
        ({"batch_size": 0}, "`batch_size` must be at least 1, got 0"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ):
        with pytest.raises(OptionError, match=re.escape(message)):
            SweepConfig(pairs=PAIR, **changes)
    assert SweepConfig(pairs=PAIR, constructions=["act_cov"]).constructions == ("act_cov",)
    with pytest.raises(OptionError, match="`n_resamples` must be at least 1, got 0"):
        StatsOptions(n_resamples=0)
    with pytest.raises(OptionError, match=re.escape("`alpha` must lie in (0, 0.5), got 0.6")):
        ClaimsOptions(alpha=0.6)
    with pytest.raises(OptionError, match="cannot be both read and write: q"):
        StatsOptions(read=("q", "k"), write=("q", "o"))


def test_matrices_left_out_mean_every_matrix_a_family_has(tmp_path):
    """`matrices` unset is written back unset (every matrix each pair's family has), not as a list."""
    config = SweepConfig(pairs=PAIR)
    assert config.matrices is None and "matrices" not in config.to_toml()
    assert load_config_from(tmp_path, config.to_toml()) == config
