"""Real-model diagnostics on a planted outlier dimension: massive activations and small ranks.

Null hypothesis: a random tiny llama has no massive activation (no residual direction carries
half a site's variance), so neither the flag nor its caveat appears. Planted alternative: one
embedding column scaled to ±50 (the outlier dimensions of trained transformers, which carry
through the residual stream) puts most of the residual sites' variance in one direction; the
sweep stores the share, ``rsf stats`` flags those sites, a spectral cutoff (``var=0.9``) chooses
k ≤ 2 at the write site, and the report names both in its caveats.
Assumption: the residual stream carries the embedding's planted column to every layer's input
(true of a pre-norm transformer with small random blocks).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rsf_commands import run_cli
from tiny_models import aligned_copy, char_tokenizer, random_model

from robustness.io.datasets import open_dataset
from robustness.stats.diagnostics import MASSIVE_SHARE, SMALL_K

SWEEP = ["--tokens", "512", "--seq-len", "16", "--cutoffs", "k=4,var=0.9", "--quiet", "--no-cache"]


def _pair(root, *, planted: bool):
    base = random_model("llama", 5)
    if planted:
        with torch.no_grad():
            column = base.model.embed_tokens.weight[:, 7]
            signs = torch.from_numpy(np.random.default_rng(0).choice([-1.0, 1.0], column.shape[0]))
            column.copy_(50 * signs.to(column.dtype))
    aligned = aligned_copy(base, 6)
    paths = []
    for role, model in (("base", base), ("aligned", aligned)):
        path = root / role
        model.save_pretrained(path)
        char_tokenizer().save_pretrained(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("planted", [False, True])
def test_a_planted_outlier_dimension_is_flagged_and_named(tmp_path, planted):
    base, aligned = _pair(tmp_path, planted=planted)
    results, stats, report = (tmp_path / name for name in ("r.nc", "s.nc", "report.html"))
    run_cli(["sweep", "--base", base, "--aligned", aligned, "--label", "p", "--out", str(results),
             *SWEEP])  # fmt: skip
    run_cli(["stats", str(results), "--out", str(stats), "--resamples", "99", "--quiet"])
    run_cli(["report", str(results), "--stats", str(stats), "--out", str(report)])
    swept, tested = open_dataset(results), open_dataset(stats)
    share = swept.top_direction_share.sel(pair="p")
    assert bool(((share > 0) & (share <= 1)).all())
    np.testing.assert_array_equal(
        tested.top_direction_share.values, swept.top_direction_share.values
    )
    html = report.read_text()
    if not planted:
        assert float(share.max()) < MASSIVE_SHARE
        assert int(tested.massive_activation.sum()) == 0
        assert 'data-caveat="massive-activations-p"' not in html
        return
    resid = share.sel(site="resid_post")
    assert float(resid.min()) >= MASSIVE_SHARE, resid.values
    assert bool(tested.massive_activation.sel(pair="p", site="resid_post").all())
    write_k = tested.k_range.sel(pair="p", construction="act_cov", cutoff="var=0.9",
                                 pathway="write", statistic="min")  # fmt: skip
    assert float(write_k) <= SMALL_K
    # the fixed-rank cutoff cannot be small: it is not named
    assert float(tested.k_range.sel(pair="p", cutoff="k=4", statistic="min").min()) == 4
    assert 'data-caveat="massive-activations-p"' in html
    assert 'data-caveat="small-ranks-p"' in html
    caveat = html.split('data-caveat="small-ranks-p"', 1)[1].split("</li>", 1)[0]
    assert "var=0.9" in caveat and "k=4" not in caveat
