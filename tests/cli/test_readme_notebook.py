"""The README's notebook block runs as written, on a tiny model instead of the hub's.

Null hypothesis: the block a reader copies from the README works (sweep → statistics → claims →
accessor → plot → report). Assumption: only the model ids, the token count and the replicate
count are swapped for small ones; every other line runs verbatim.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

README = Path(__file__).resolve().parents[2] / "README.md"


def notebook_block() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- notebook -->\n```python\n(.*?)```\n<!-- /notebook -->", text, re.S)
    assert found, "the README has no notebook block"
    return found.group(1)


def test_the_readme_notebook_runs_on_a_tiny_model(saved_pair, tmp_path, monkeypatch, capsys):
    matplotlib.use("Agg")
    base, aligned = saved_pair("llama", num_hidden_layers=4)
    code = notebook_block()
    swaps = {
        '"Qwen/Qwen2.5-0.5B-Instruct"': repr(str(aligned)),
        '"Qwen/Qwen2.5-0.5B"': repr(str(base)),
        "tokens=16384": "tokens=512, seq_len=16",
        "replicates=50": "replicates=4",
    }
    for old, new in swaps.items():
        assert old in code, old
        code = code.replace(old, new)
    assert len([line for line in code.splitlines() if line.strip()]) <= 16
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README notebook", "exec"), namespace)  # noqa: S102 (the README's own code)
    printed = capsys.readouterr().out
    assert "read_concentration" in printed and "joint_decision" in printed
    assert (tmp_path / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert set(namespace["table"].columns) >= {"variable", "value", "text"}
    assert namespace["claims"].robustness.kind == "claims"
