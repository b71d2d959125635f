"""Hub revisions (``org/name@rev``, ``rsf revisions``, trajectories of revisions), offline.

A hub cache is built in the test exactly as ``huggingface_hub`` lays it out
(``models--org--name/refs/<branch>`` holding a commit, ``snapshots/<commit>/``
holding the files), from tiny models saved with ``save_pretrained``, and the
hub client is put offline (``HF_HUB_OFFLINE``) on it. Nothing is downloaded.

Null hypothesis of the equality tests: naming a model by its hub revision
changes nothing but its provenance, so a pair given as ``org/name@step1000``
and ``org/name@step3000`` sweeps to exactly the numbers of the same two
snapshot folders given as paths, and records each side's revision and
resolved commit. Assumption: an offline hub client resolves a branch through
``refs/<branch>`` and returns ``snapshots/<commit>`` (its documented cache
layout).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from huggingface_hub import constants
from rsf_commands import run_cli
from tiny_models import aligned_copy, char_tokenizer, random_model

import probes
from probes import hub
from robustness.io.datasets import open_dataset
from robustness.mechanism.trajectory import TrajectorySpec, checkpoint_step
from rsf.main import main

REPO = "tiny-org/tiny-pythia"
# Out of training order on purpose: the listing must sort by the step, not the name.
BRANCHES = {"step3000": 3, "step1000": 1, "step20000": 20, "main": 20}
SMALL = ["--tokens", "256", "--seq-len", "16", "--no-cache", "-q"]


def _commit(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A hub cache holding REPO at four branches (three distinct snapshots), offline."""
    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    base = random_model("gpt_neox", seed=0)
    for branch, scale in BRANCHES.items():
        commit = _commit(f"snapshot-{scale}")
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
        snapshot = repo / "snapshots" / commit
        if not snapshot.exists():
            aligned_copy(base, seed=scale, scale=0.01 * scale).save_pretrained(snapshot)
            char_tokenizer().save_pretrained(snapshot)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub._snapshot.cache_clear()
    yield repo
    hub._snapshot.cache_clear()


def test_a_revision_resolves_to_its_snapshot_and_commit(hub_cache):
    source = probes.resolve_source(f"{REPO}@step1000")
    assert source.path == hub_cache / "snapshots" / _commit("snapshot-1")
    assert (source.repo, source.revision, source.commit) == (
        REPO,
        "step1000",
        _commit("snapshot-1"),
    )
    plain = probes.resolve_source(REPO)  # no revision: main
    assert plain.commit == _commit("snapshot-20") and plain.revision is None
    by_commit = probes.resolve_source(f"{REPO}@{_commit('snapshot-3')}")
    assert by_commit.path.name == _commit("snapshot-3")


def test_a_revision_missing_from_the_cache_is_one_line_naming_it(hub_cache, capsys):
    code = main(["inspect", f"{REPO}@step999"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{REPO} at revision 'step999' is not in the local hub cache" in err[0]
    assert "HF_HUB_OFFLINE" in err[0]


def test_revisions_lists_branches_in_training_order(hub_cache):
    out = run_cli(["revisions", REPO, "--match", "step*"]).splitlines()
    assert "3 revision(s) matching 'step*' from the local hub cache" in out[0]
    assert [line.split()[0] for line in out[1:]] == [
        f"{REPO}@step1000",
        f"{REPO}@step3000",
        f"{REPO}@step20000",
    ]
    assert [line.split()[-1] for line in out[1:]] == ["1000", "3000", "20000"]


@pytest.mark.parametrize(
    ("revision", "step"),
    [
        ("step143000", 143000),  # Pythia
        ("stage1-step140000-tokens294B", 140000),  # OLMo-2
        ("step-001000-2BT", 1000),  # SmolLM
        ("main", None),
        ("v1.0", None),
    ],
)
def test_the_step_is_read_from_each_projects_revision_names(revision, step):
    assert probes.revision_step(revision) == step
    assert checkpoint_step(f"org/name@{revision}") == step


def test_a_local_path_with_an_at_sign_is_never_split(tmp_path):
    folder = tmp_path / "run@2"
    folder.mkdir()
    assert probes.split_revision(str(folder)) == (str(folder), None)
    assert probes.split_revision("org/name@step1") == ("org/name", "step1")


def test_a_pair_of_revisions_sweeps_like_its_snapshot_folders(hub_cache, tmp_path):
    """Same numbers as the two snapshot folders by path; revision and commit recorded per side."""
    by_name = tmp_path / "by-revision.nc"
    by_path = tmp_path / "by-path.nc"
    run_cli(["sweep", "--base", f"{REPO}@step1000", "--aligned", f"{REPO}@step3000",
             "--out", str(by_name), *SMALL])  # fmt: skip
    folders = [str(hub_cache / "snapshots" / _commit(f"snapshot-{s}")) for s in (1, 3)]
    run_cli(["sweep", "--base", folders[0], "--aligned", folders[1], "--out", str(by_path),
             *SMALL])  # fmt: skip
    named, plain = open_dataset(by_name), open_dataset(by_path)
    np.testing.assert_array_equal(named.rsf.values, plain.rsf.values)
    assert str(named.base_revision.values[0]) == "step1000"
    assert str(named.aligned_revision.values[0]) == "step3000"
    assert str(named.base_commit.values[0]) == _commit("snapshot-1")
    assert str(named.aligned_commit.values[0]) == _commit("snapshot-3")
    assert str(plain.base_revision.values[0]) == "" and str(plain.base_commit.values[0]) == ""
    assert str(named.base_hash.values[0]) == str(plain.base_hash.values[0])


def test_a_trajectory_of_revisions_from_a_config(hub_cache, tmp_path):
    """``[trajectory] repo`` lists the cached branches in step order; ``every`` thins them (the last
    kept); the steps come from the revision names."""
    spec = TrajectorySpec(repo=REPO, match="step*")
    assert spec.resolve() == [f"{REPO}@step1000", f"{REPO}@step3000", f"{REPO}@step20000"]
    assert TrajectorySpec(repo=REPO, match="step*", every=2).resolve() == [
        f"{REPO}@step1000",
        f"{REPO}@step20000",
    ]
    config = tmp_path / "trajectory.toml"
    config.write_text(
        f'[trajectory]\nrepo = "{REPO}"\nrevisions = ["step1000", "step3000", "step20000"]\n'
        '[corpus]\ntokens = 256\nseq_len = 16\n[probe]\ncutoffs = ["k=4"]\n'
    )
    out = tmp_path / "trajectory.nc"
    run_cli(["experiment", "trajectory", "--config", str(config), "--out", str(out), "--no-cache",
             "-q"])  # fmt: skip
    trajectory = open_dataset(out)
    assert list(trajectory.checkpoint.values) == [f"{REPO}@step3000", f"{REPO}@step20000"]
    assert np.isfinite(trajectory.asymmetry.values).all()


def test_a_trajectory_table_is_checked_by_the_schema(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[trajectory]\nrepo = "org/name"\nevery = 0\n')
    assert main(["experiment", "trajectory", "--config", str(config), "--out",
                 str(tmp_path / "t.nc")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsf: error:") and "[trajectory] every" in err and "\n" not in err
