"""`rsf inspect` (rsf/inspect.py): the adapter's view of a model from its config, on every family;
whether the embeddings are tied; a missing directory as one line."""

from __future__ import annotations

import pytest
from tiny_models import FAMILY_NAMES
from transformers import AutoModelForCausalLM

import probes
from rsf.main import main


@pytest.mark.parametrize("model_type", FAMILY_NAMES)
def test_inspect_prints_the_adapters_view(model_type, saved_pair, capsys):
    base, _ = saved_pair(model_type)
    assert main(["inspect", base]) == 0
    out = capsys.readouterr().out
    assert f"family       {model_type}" in out
    model = AutoModelForCausalLM.from_pretrained(base)
    for name, shape in probes.model_dims(model).matrix_shapes.items():
        assert f"  {name:6s} {'×'.join(map(str, shape)):>11s}" in out
    assert "attn_in" in out and "resid_post" in out and "final norm" in out
    # The embeddings line, exactly: "untied" contains "tied", so a substring check cannot fail.
    tying = "tied: unembed is the embedding subspace" if probes.tied_embeddings(model) else "untied"
    assert f"embeddings   {tying}" in out.splitlines()


@pytest.mark.parametrize(
    ("tied", "line"),
    [
        (False, "embeddings   untied"),
        (True, "embeddings   tied: unembed is the embedding subspace"),
    ],
    ids=["untied", "tied"],
)
def test_inspect_says_whether_the_embeddings_are_tied(tied, line, saved_models, capsys):
    """The same tiny llama with untied (its default) and tied input and output embeddings."""
    path = saved_models("llama", tie_word_embeddings=tied)
    assert probes.tied_embeddings(AutoModelForCausalLM.from_pretrained(path)) == tied
    assert main(["inspect", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [text for text in lines if text.startswith("embeddings")] == [line]


def test_inspect_of_a_missing_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing-here")]) == 2
    assert "model directory not found" in capsys.readouterr().err
