"""Hostile input: every case a careful (or malicious) user can reach is one line, exit 2, and
changes nothing that existed.

Null hypothesis of each case: the command refuses the input before it does harm. Each
assertion checks, for one command line, that ``main`` returns 2, that stderr is exactly one line
beginning ``rsf`` with no traceback, that the line says what is wrong, and that every file and
node in the working folder (and the device or link given as ``--out``) is as it was: same type,
same bytes. Assumption: the cases run in a folder of their own (``tmp_path``), with tiny models
built from configs (nothing is downloaded).

A hypothesis test then feeds the option schema random TOML values of the wrong type for every
key of every table and requires a one-line error naming the file, the table and the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from robustness.settings.config import CorpusSpec, PairSpec, SweepConfig, config_from_document
from robustness.settings.schema import OptionError, _fields
from rsf.main import main

SMALL = ["--tokens", "256", "--seq-len", "16", "--no-cache", "-q"]


# ----------------------------------------------------------------------- the hostile folder


@pytest.fixture(scope="module")
def folder(saved_pair, tmp_path_factory):
    """A folder of hostile inputs beside good ones; the tests run in it (relative paths)."""
    root = tmp_path_factory.mktemp("hostile")
    base, aligned = saved_pair("llama")
    gbase, galigned = saved_pair("gpt2")
    for name, source in (
        ("base", base),
        ("aligned", aligned),
        ("gbase", gbase),
        ("galigned", galigned),
    ):
        shutil.copytree(source, root / name)

    def variant(name, source="aligned"):
        shutil.copytree(root / source, root / name)
        return root / name

    weights = variant("truncated") / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    (variant("garbage") / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    (variant("badjson") / "config.json").write_text("{not json")
    (variant("jsonlist") / "config.json").write_text("[1, 2, 3]")
    config = json.loads((root / "aligned" / "config.json").read_text())
    (variant("stringwidth") / "config.json").write_text(json.dumps({**config, "hidden_size": "32"}))
    (variant("fewer") / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    (variant("fewerbase", "base") / "config.json").write_text(
        json.dumps({**config, "num_hidden_layers": 1})
    )
    # A model whose config asks for its own code: the code would leave a marker if it ever ran.
    remote = variant("remote")
    marker = root / "REMOTE_CODE_RAN"
    (remote / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
    )
    (remote / "config.json").write_text(json.dumps(
        {**config, "model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}
    ))  # fmt: skip

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickled = variant("pickled")
    (pickled / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Evil()}, pickled / "pytorch_model.bin")
    shapes = variant("shapes")
    tensors = load_file(shapes / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors[
        "model.layers.0.self_attn.q_proj.weight"
    ][:-1]
    save_file(tensors, shapes / "model.safetensors", metadata={"format": "pt"})
    broken_pickle = variant("brokenpickle")
    (broken_pickle / "model.safetensors").unlink()
    (broken_pickle / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not a zip archive")
    outside = variant("outside")
    (outside / "model.safetensors").rename(root / "elsewhere.safetensors")
    (outside / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "../elsewhere.safetensors"}})
    )
    (root / "garbage.gguf").write_bytes(b"GGUF" + np.random.default_rng(2).bytes(3000))
    twice = root / "twogguf"
    twice.mkdir()
    (twice / "a.gguf").write_bytes(b"GGUF")
    (twice / "b.gguf").write_bytes(b"GGUF")
    for method, settings in (
        ("gptq", {"bits": 4, "group_size": 32}),
        ("bitsandbytes", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}),
    ):
        (variant(method) / "config.json").write_text(json.dumps(
            {**config, "quantization_config": {"quant_method": method, **settings}}
        ))  # fmt: skip
    (root / "binary.txt").write_bytes(b"\x00\x01\x02" * 400)
    (root / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 200)
    (root / "corpusdir").mkdir()
    (root / "bad.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    (root / "bad.parquet").write_text("not a parquet file\n")
    (root / "revisions.toml").write_text('[trajectory]\nrevisions = ["step1", "step2"]\n')
    np.save(root / "ids64.npy", np.random.default_rng(1).integers(0, 50, (8, 64)))
    os.mkfifo(root / "fifo")
    os.symlink(root / "link-target.nc", root / "link.nc")
    (root / "configdir").mkdir()
    tables = {
        "trust.toml": '[run]\ntrust_remote_code = "no"\n',
        "bca.toml": '[bootstrap]\nbca = "false"\n',
        "tokens.toml": '[corpus]\ntokens = "4096"\n',
        "replicates.toml": "[bootstrap]\nreplicates = 2.5\n",
        "constructions.toml": '[probe]\nconstructions = "act_cov"\n',
        "paths.toml": '[corpus]\npaths = "file.txt"\n',
        "table.toml": '[runn]\ndevice = "cpu"\n',
        "seqbool.toml": "[corpus]\nseq_len = true\n",
        "remote.toml": "[run]\ntrust_remote_code = 1\n",
        "good.toml": "",
    }
    pair = '[[pair]]\nbase = "base"\naligned = "aligned"\n'
    for name, text in tables.items():
        (root / name).write_text(pair + text)
    (root / "emptylabel.toml").write_text(
        '[[pair]]\nlabel = ""\nbase = "base"\naligned = "aligned"\n'
    )
    (root / "pairstring.toml").write_text('pair = "base"\n')
    good = ["sweep", "--base", "base", "--aligned", "aligned", *SMALL, "--out", "results.nc"]
    with _inside(root):
        assert main(good) == 0
    return root


class _inside:
    """Run in `folder` (the cases name their inputs by relative paths), then return."""

    def __init__(self, folder):
        self.folder, self.before = folder, None

    def __enter__(self):
        self.before = os.getcwd()
        os.chdir(self.folder)

    def __exit__(self, *exc):
        os.chdir(self.before)


def _snapshot(root: Path) -> dict:
    """Every node under `root`: its type, and the bytes of regular files (hashed); links unread."""
    nodes = {}
    for path in sorted(root.rglob("*")):
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode):
            nodes[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        elif stat.S_ISLNK(info.st_mode):
            nodes[str(path)] = ("link", os.readlink(path))
        else:
            nodes[str(path)] = (stat.S_IFMT(info.st_mode), None)
    return nodes


def refused(folder, capsys, argv, *fragments):
    """`argv` exits 2 with one line naming the problem, and nothing in `folder` changed."""
    before = _snapshot(folder)
    device = os.stat("/dev/full") if os.path.exists("/dev/full") else None
    with _inside(folder):
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert err.count("\n") == 1 and err.startswith("rsf") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert _snapshot(folder) == before
    if device is not None:
        after = os.stat("/dev/full")
        assert stat.S_ISCHR(after.st_mode) and after.st_rdev == device.st_rdev
    assert not (folder / "REMOTE_CODE_RAN").exists()
    return err


PAIR = ["--base", "base", "--aligned", "aligned"]
OUT = ["--out", "new.nc"]

CASES = {
    # security: configuration values that could turn on what must stay off
    "trust_remote_code string": (["sweep", "--config", "trust.toml", *OUT],
                                 'trust.toml: [run] trust_remote_code must be true or false, got "no"'),
    "trust_remote_code int": (["sweep", "--config", "remote.toml", *OUT],
                              "remote.toml: [run] trust_remote_code must be true or false, got 1"),
    "bca string": (["sweep", "--config", "bca.toml", *OUT],
                   'bca.toml: [bootstrap] bca must be true or false, got "false"'),
    "auto_map without trust": (["sweep", "--base", "base", "--aligned", "remote", *SMALL, *OUT],
                               "remote/config.json"),
    "inspect auto_map": (["inspect", "remote"], "remote/config.json"),
    # outputs that must not be replaced
    "out /dev/full": (["stats", "results.nc", "--out", "/dev/full"], "character device"),
    "out FIFO": (["stats", "results.nc", "--out", "fifo"], "it is a FIFO"),
    "out symlink": (["stats", "results.nc", "--out", "link.nc"], "symbolic link"),
    "out directory": (["stats", "results.nc", "--out", "corpusdir"], "it is a directory"),
    "stats over its input": (["stats", "results.nc", "--out", "results.nc"], "input of this command"),
    "report over its input": (["report", "results.nc", "--out", "results.nc"], "input of this command"),
    "claims over its input": (["claims", "results.nc", "--out", "./results.nc"], "input of this command"),
    "out missing folder": (["stats", "results.nc", "--out", "no/such/stats.nc"], "pass --mkdir"),
    "sweep over its config": (["sweep", "--config", "good.toml", "--out", "good.toml"],
                              "cannot write good.toml: it is an input of this command"),
    # corrupt or blocked checkpoints
    "truncated safetensors": (["sweep", "--base", "base", "--aligned", "truncated", *SMALL, *OUT],
                              "not a readable safetensors file"),
    "garbage safetensors": (["sweep", "--base", "base", "--aligned", "garbage", *SMALL, *OUT],
                            "not a readable safetensors file"),
    "pickle with code": (["sweep", "--base", "base", "--aligned", "pickled", *SMALL, *OUT],
                         "only loads by running code"),
    "broken pickle": (["sweep", "--base", "base", "--aligned", "brokenpickle", *SMALL, *OUT],
                      "not a readable PyTorch checkpoint"),
    "a tensor of another shape": (["sweep", "--base", "base", "--aligned", "shapes", *SMALL, *OUT],
                                  "'model.layers.0.self_attn.q_proj.weight' is stored (31, 32)"),
    "shard outside its folder": (["sweep", "--base", "base", "--aligned", "outside", *SMALL, *OUT],
                                 "names a shard outside its folder"),
    "garbage GGUF": (["sweep", "--base", "base", "--aligned", "garbage.gguf", *SMALL, *OUT],
                     "garbage.gguf is not a readable GGUF file"),
    "a folder of two GGUF files": (["inspect", "twogguf"], "holds 2 GGUF files"),
    "GPTQ without its kernels": (["sweep", "--base", "base", "--aligned", "gptq", *SMALL, *OUT],
                                 "gptq"),
    "bitsandbytes without a GPU": (["sweep", "--base", "base", "--aligned", "bitsandbytes",
                                    *SMALL, *OUT], "bitsandbytes"),
    # malformed configs
    "config.json not JSON (sweep)": (["sweep", "--base", "base", "--aligned", "badjson", *SMALL, *OUT],
                                     "badjson/config.json is not valid JSON"),
    "config.json not JSON (inspect)": (["inspect", "badjson"], "badjson/config.json is not valid JSON"),
    "config.json a list": (["inspect", "jsonlist"], "must hold a JSON object"),
    "hidden_size a string": (["sweep", "--base", "base", "--aligned", "stringwidth", *SMALL, *OUT],
                             "hidden_size must be a positive integer, got '32'"),
    "layers beyond the config": (["sweep", "--base", "fewerbase", "--aligned", "fewer", *SMALL, *OUT],
                                 "holds weights of 2 layers where its config.json builds 1"),
    "TOML tokens string": (["sweep", "--config", "tokens.toml", *OUT],
                           'tokens.toml: [corpus] tokens must be an integer, got "4096"'),
    "TOML replicates float": (["sweep", "--config", "replicates.toml", *OUT],
                              "replicates.toml: [bootstrap] replicates must be an integer, got 2.5"),
    "TOML list as a string": (["sweep", "--config", "constructions.toml", *OUT],
                              'constructions.toml: [probe] constructions must be a list of strings'),
    "TOML paths as a string": (["sweep", "--config", "paths.toml", *OUT],
                               'paths.toml: [corpus] paths must be a list of strings'),
    "TOML unknown table": (["sweep", "--config", "table.toml", *OUT], "unknown table(s) runn"),
    "TOML bool as an int": (["sweep", "--config", "seqbool.toml", *OUT],
                            "[corpus] seq_len must be an integer, got true"),
    "TOML empty label": (["sweep", "--config", "emptylabel.toml", *OUT], "must not be empty"),
    "TOML pair not a table": (["sweep", "--config", "pairstring.toml", *OUT], "[[pair]] tables"),
    "config a directory": (["sweep", "--config", "configdir", *OUT], "not a regular file"),
    # positions and shapes
    "GPT-2 beyond n_positions": (["sweep", "--base", "gbase", "--aligned", "galigned", "--tokens", "256",
                                  "--seq-len", "100", "--no-cache", "-q", *OUT],
                                 "exceed the 64 positions"),
    "Llama beyond its positions": ([*["sweep", *PAIR], "--tokens", "8192", "--seq-len", "4096",
                                    "--no-cache", "-q", *OUT], "exceed the 2048 positions"),
    "npy and --seq-len disagree": (["sweep", *PAIR, "--corpus", "ids64.npy", "--seq-len", "128",
                                    "--no-cache", "-q", *OUT], "fix the sequence length"),
    # requests that used to be changed silently
    "unknown --preferred name": (["stats", "results.nc", "--preferred", "foo,bar,baz", *OUT],
                                 "unknown construction 'foo'"),
    "absent --preferred": (["stats", "results.nc", "--preferred", "act_cov,k=3,fraction", *OUT],
                           "is not in the results"),
    "--preferred of two parts": (["stats", "results.nc", "--preferred", "act_cov,k=8", *OUT],
                                 "construction,cutoff,normalisation"),
    "--resamples 0": (["stats", "results.nc", "--resamples", "0", *OUT], "argument --resamples/--permutations: must be at least 1, got 0"),
    "--resamples and --permutations": (["stats", "results.nc", "--resamples", "9", "--permutations", "8",
                                        *OUT], "spell one option"),
    "--bootstrap -1": (["sweep", *PAIR, *SMALL, "--bootstrap", "-1", *OUT], "argument --bootstrap: must be non-negative, got -1"),
    "--bootstrap 2.5": (["sweep", *PAIR, *SMALL, "--bootstrap", "2.5", *OUT], "'2.5' is not an integer"),
    "--seq-len 1": (["sweep", *PAIR, "--seq-len", "1", "--no-cache", *OUT], "argument --seq-len: must be at least 2, got 1"),
    "--tokens 0": (["sweep", *PAIR, "--tokens", "0", "--no-cache", *OUT], "argument --tokens: must be at least 1, got 0"),
    "--seed -3": (["sweep", *PAIR, *SMALL, "--seed", "-3", *OUT], "argument --seed: must be non-negative, got -3"),
    "--cutoffs k=0": (["sweep", *PAIR, *SMALL, "--cutoffs", "k=0", *OUT], "k must be a positive integer"),
    "--device tpu": (["sweep", *PAIR, *SMALL, "--device", "tpu", *OUT], "unknown device 'tpu'"),
    "--workers 0": (["sweep", *PAIR, *SMALL, "--workers", "0", *OUT], "argument --workers: must be at least 1, got 0"),
    "--confidence nan": (["stats", "results.nc", "--confidence", "nan", *OUT], "argument --confidence: must be a finite number, got nan"),
    "--alpha 1": (["claims", "results.nc", "--alpha", "1", *OUT], "argument --alpha: must lie in (0, 0.5), got 1.0"),
    "--lam 2": (["gradients", "--model", "base", "--lam", "2", "--objective", "mixed", *OUT],
                "argument --lam: must lie in [0, 1], got 2.0"),
    "matrix the family lacks": (["sweep", "--base", "gbase", "--aligned", "galigned", "--matrices", "q,gate",
                                 *SMALL, *OUT], "gpt2 has no gate matrix"),
    "binary corpus": (["sweep", *PAIR, "--corpus", "binary.txt", *SMALL, *OUT], "is not text"),
    "non-UTF-8 corpus": (["sweep", *PAIR, "--corpus", "latin1.txt", *SMALL, *OUT], "is not UTF-8 text"),
    "corpus directory": (["sweep", *PAIR, "--corpus", "corpusdir", *SMALL, *OUT], "is a directory"),
    "corpus missing": (["sweep", *PAIR, "--corpus", "absent.txt", *SMALL, *OUT], "corpus file not found: absent.txt"),
    "JSONL without text": (["sweep", *PAIR, "--corpus", "bad.jsonl", *SMALL, *OUT], "bad.jsonl:2 has no string"),
    "garbage parquet corpus": (["sweep", *PAIR, "--corpus", "bad.parquet", *SMALL, *OUT],
                               "cannot read the corpus bad.parquet"),
    "malformed hub dataset": (["sweep", *PAIR, "--corpus", "hf:a/b/c", *SMALL, *OUT],
                              "is not a datasets corpus"),
    "revisions of a path": (["revisions", "a/b/c"], "is not a hub repository"),
    "a revision on a path": (["revisions", "org/name@main"], "is not a hub repository"),
    "export format": (["export", "binary.txt", "--format", "xlsx", "--out", "t.csv"], "--format"),
    "export of a non-dataset": (["export", "binary.txt", "--out", "t.csv"],
                                "not a readable netCDF dataset"),
    "experts mode": (["stats", "results.nc", "--experts", "some", *OUT], "--experts"),
    "trajectory revisions without a repo": (["experiment", "trajectory", "--config",
                                             "revisions.toml", *OUT], "revisions.toml: [trajectory] `revisions` needs `repo"),
    "results not netCDF": (["claims", "binary.txt", *OUT], "not a readable netCDF dataset"),
    "unknown flag": (["stats", "results.nc", "--colour", "red"], "unrecognized arguments"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(folder, capsys, case):
    argv, fragment = CASES[case]
    if case == "out /dev/full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    refused(folder, capsys, argv, fragment)


def test_no_command_prints_the_usage_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: rsf") and err.strip().endswith(
        "a command is needed (see rsf --help)"
    )


def test_the_same_file_under_another_name_is_still_an_input(folder, capsys, tmp_path):
    """A hard link to the input is the input: writing it would destroy the results."""
    twin = folder / "twin.nc"
    os.link(folder / "results.nc", twin)
    try:
        refused(
            folder, capsys, ["stats", "results.nc", "--out", "twin.nc"], "input of this command"
        )
    finally:
        twin.unlink()


def test_remote_code_runs_only_with_an_explicit_true(folder, capsys):
    """The one way in is a TOML `true` or the flag: neither a string nor a number gets there."""
    for argv in (
        ["sweep", "--config", "trust.toml", *OUT],
        ["sweep", "--config", "remote.toml", *OUT],
    ):
        refused(folder, capsys, argv, "trust_remote_code must be true or false")
    config = config_from_document(
        {"pair": [{"base": "b", "aligned": "a"}], "run": {"trust_remote_code": True}}, folder
    )
    assert config.trust_remote_code is True
    assert SweepConfig(pairs=config.pairs).trust_remote_code is False


def test_mkdir_creates_the_missing_folder_when_asked(folder, capsys):
    with _inside(folder):
        assert main(["stats", "results.nc", "--out", "made/here/stats.nc", "--mkdir", "-q",
                     "--resamples", "9"]) == 0  # fmt: skip
    assert (folder / "made" / "here" / "stats.nc").is_file()
    shutil.rmtree(folder / "made")


def test_help_imports_neither_torch_nor_transformers():
    """`rsf --help`, `rsf CMD --help` and argument errors: the parser alone, in a fresh process."""
    import subprocess

    probe = (
        "import sys\n"
        "from rsf.main import main\n"
        "codes = [main(['--help']), main(['sweep', '--help']), main(['stats', 'x.nc', '--resamples', '0'])]\n"
        "heavy = [m for m in ('torch', 'transformers', 'xarray') if m in sys.modules]\n"
        "print(codes, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[0, 0, 2] []"


# ----------------------------------------------------------------------- the schema, at random

_TABLE_CLASSES = ((PairSpec, "pair"), (CorpusSpec, "corpus"), (SweepConfig, "probe"),
                  (SweepConfig, "bootstrap"), (SweepConfig, "run"))  # fmt: skip
KEYS = [
    (table, meta.key or f.name, kind)
    for cls, table in _TABLE_CLASSES
    for f, meta, kind in _fields(cls)
    if meta.table == table
]


def _wrong(kind):
    """TOML values that are not of `kind` (a list where a scalar is due, and so on)."""
    scalars = {
        bool: st.one_of(st.integers(), st.text(max_size=8), st.floats(allow_nan=False)),
        int: st.one_of(st.booleans(), st.text(max_size=8), st.floats(allow_nan=False)),
        float: st.one_of(st.booleans(), st.text(max_size=8)),
        str: st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False)),
    }[kind.base]
    if kind.many:
        return st.one_of(
            st.text(max_size=8), st.integers(), st.lists(scalars, min_size=1, max_size=3)
        )
    return st.one_of(
        scalars,
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    )


@given(st.data())
def test_wrong_toml_types_are_one_line_errors_naming_the_key(data):
    """Null: the schema accepts a value of the wrong type, or says so without naming the key."""
    table, key, kind = data.draw(st.sampled_from(KEYS))
    value = data.draw(_wrong(kind))
    pair = {"base": "b", "aligned": "a"}
    document = {"pair": [pair]}
    if table == "pair":
        pair[key] = value
        where = f"sweep.toml: [[pair]] number 1 {key}"
    else:
        document[table] = {key: value}
        where = f"sweep.toml: [{table}] {key}"
    with pytest.raises(OptionError) as caught:
        config_from_document(document, Path("."), source="sweep.toml")
    message = str(caught.value)
    assert message.startswith(where) and "\n" not in message, message
