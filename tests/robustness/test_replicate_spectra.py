"""Bootstrap replicates from partial spectra (robustness.measure.grid.REPLICATE_SOLVER) against
the full ``numpy.linalg.eigh`` of every replicate.

``full`` is the path the sweep took before partial spectra, so every other solver is held
to its numbers: each replicate's ``rsf_boot`` to 1e-10 (relative where a normalisation is
large). Subspaces are compared through fractions, never eigenvectors (their signs and the
rotation inside an eigenspace are arbitrary).
"""

from __future__ import annotations

import numpy as np
import pytest

import probes
from probes import spectra
from robustness.measure import grid as grid_module
from robustness.measure.corpus import Corpus
from robustness.measure.grid import Grid, fill_replicates
from robustness.measure.runner import run_sweep
from robustness.settings.config import PairSpec, SweepConfig

TOLERANCE = 1e-10


def replicate_rows(result) -> np.ndarray:
    return np.vstack([result.bootstrap["replicates"], result.bootstrap["jackknife"]])


@pytest.fixture(scope="module")
def bootstrap_sweeps(saved_pair):
    """``run(solver, crossover=None)``: the replicate and jackknife rows of one bootstrap sweep
    of a tiny gpt2 pair (act_cov, act_moment, act_cov_aligned; every kind of cutoff)."""
    base, aligned = saved_pair("gpt2")
    ids = np.random.default_rng(2).integers(0, 61, size=(12, 12))
    config = SweepConfig(
        pairs=(PairSpec("p", base, aligned),),
        constructions=("act_cov", "act_moment", "act_cov_aligned", "unembed"),
        cutoffs=("k=2", "k=5", "frac=0.25", "var=0.9", "pr", "mp"),
        normalisations=("fraction", "null_z", "base_relative"),
        replicates=9,  # more than one block of replicates
        bca=True,
    )

    def run(solver, crossover=None):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(grid_module, "REPLICATE_SOLVER", solver)
            if crossover is not None:
                patch.setattr(spectra, "CROSSOVER", crossover)
            (result,) = run_sweep(config, Corpus(ids, "test"), progress=False)
        return result

    return run


@pytest.mark.parametrize(
    "solver, crossover",
    [
        ("auto", None),  # the measured policy: at these widths the full solver
        ("tridiagonal", None),  # the partial solver throughout
        ("auto", ((1, 0.5),)),  # the policy at half of d: the full sample's hints decide
    ],
)
def test_replicates_equal_the_full_eigh_path(bootstrap_sweeps, solver, crossover):
    """Null: every replicate's (and jackknife row's) rsf_boot equals the full-eigh path's to
    1e-10, relative where a normalisation (null_z) is large; NaN where it is NaN; the point
    estimate is untouched. Assumption: no cutoff of a replicate falls on a repeated or
    near-repeated eigenvalue (gap above ~1e-5‖C‖) or within round-off of a tie of its rule,
    which holds for these generic activations (else the k itself is round-off)."""
    full = bootstrap_sweeps("full")
    found = bootstrap_sweeps(solver, crossover)
    expected = replicate_rows(full)
    assert np.isfinite(expected).any()
    np.testing.assert_allclose(
        replicate_rows(found), expected, rtol=TOLERANCE, atol=TOLERANCE, equal_nan=True
    )
    np.testing.assert_array_equal(found.rsf, full.rsf)


# ---------------------------------------------------------------- an exactly repeated eigenvalue

D, PLANE, TIE = 24, (3, 11), 6  # the repeated pair are eigenvalues 6 and 7 of every replicate


def tied_chunks(rng, chunks=8, tokens=200) -> probes.ChunkStatistics:
    """Chunk statistics whose every reweighting has the coordinate plane `PLANE` as an exact
    eigenspace with a repeated eigenvalue, ranked 6th and 7th: in each chunk the plane's
    coordinates have equal sums of squares (2 per token), no mean and no correlation with
    the rest; the other 22 coordinates are Gaussian, five with variance 10, the rest 0.3.
    The float32 packing rounds both plane diagonals alike, so the tie stays exact."""
    other = [j for j in range(D) if j not in PLANE]
    scales = np.sqrt(np.r_[np.full(5, 10.0), np.full(len(other) - 5, 0.3)])
    sum_x, packed = np.zeros((chunks, D)), []
    for c in range(chunks):
        x = rng.standard_normal((tokens, len(other))) * scales + 0.1
        sum_xx = np.zeros((D, D))
        sum_xx[np.ix_(other, other)] = x.T @ x
        sum_xx[PLANE, PLANE] = 2.0 * tokens
        sum_x[c, other] = x.sum(axis=0)
        packed.append(sum_xx[np.triu_indices(D)].astype(np.float32))
    return probes.ChunkStatistics(np.full(chunks, tokens), sum_x, np.stack(packed))


def tied_replicates(solver, chunk_stats, deltas, weights, cutoffs, buffers=None) -> np.ndarray:
    """``rsf[b, matrix, cutoff]`` (fraction) of each replicate, by `solver`."""
    config = SweepConfig(
        pairs=(PairSpec("p", "base", "aligned"),),
        constructions=("act_cov",),
        cutoffs=cutoffs,
        normalisations=("fraction",),
    )
    grid = Grid(config, D, "key", {})
    grid.replicate_solver = solver
    prepared = grid.prepare(("q", "k"), deltas, [None, None])
    stats = {"base": probes.ActivationStatistics(sites={}, chunks={(0, "attn_in"): chunk_stats})}
    out = np.full((len(weights), 2, 1, len(cutoffs), 1), np.nan)
    fill_replicates(grid, 0, prepared, stats, weights, out, ("act_cov",), buffers=buffers)
    return out[:, :, 0, :, 0]


def test_reused_reweighting_blocks_change_no_number():
    """Null: a bootstrap whose reweighting blocks are reused (kept from an earlier layer's
    replicates, filled with garbage beforehand) gives every replicate bit for bit as with
    fresh blocks; 11 replicates are two blocks, the second shorter."""
    rng = np.random.default_rng(5)
    chunk_stats = tied_chunks(rng)
    deltas = [rng.standard_normal((8, D)) for _ in range(2)]
    weights = rng.multinomial(8, np.full(8, 1 / 8), size=11).astype(float)
    cutoffs = ("k=3", "var=0.9", "pr")
    fresh = tied_replicates("tridiagonal", chunk_stats, deltas, weights, cutoffs)
    buffers = {}
    tied_replicates("tridiagonal", chunk_stats, deltas, weights[::-1], cutoffs, buffers)
    for block in buffers.values():
        block[:] = rng.standard_normal(block.shape)
    again = tied_replicates("tridiagonal", chunk_stats, deltas, weights, cutoffs, buffers)
    assert np.array_equal(again, fresh)


@pytest.mark.parametrize("solver", ["auto", "tridiagonal"])
def test_an_exactly_repeated_eigenvalue_at_a_cutoff(solver):
    """With λ_6 = λ_7 in every replicate, the top-6 subspace is any 6-plane between the top-5
    and top-7 eigenspaces, so F(6) is not a function of C and no two solvers need agree on it.

    Null: (a) F(5) and F(7) (gaps ~10‖C‖·0.1) of a generic delta equal the full path's to
    1e-10; (b) its F(6) by each solver lies, within 1e-10, between F(5) plus the least and
    plus the largest share of its Gram's energy on the repeated eigenspace (known exactly:
    the plane); (c) a delta whose Gram is isotropic on that plane, for which F(6) is a
    function of C again, has F(6) equal to the full path's to 1e-10. Assumption: the plane
    ranks 6th and 7th in every replicate (checked through the shares' bounds holding)."""
    rng = np.random.default_rng(0)
    chunk_stats = tied_chunks(rng)
    generic = rng.standard_normal((8, D))
    isotropic = rng.standard_normal((8, D))
    pair = np.linalg.qr(rng.standard_normal((8, 2)))[0] * 1.7  # orthogonal, equal norms
    isotropic[:, PLANE[0]], isotropic[:, PLANE[1]] = pair[:, 0], pair[:, 1]
    weights = rng.multinomial(8, np.full(8, 1 / 8), size=6).astype(float)
    cutoffs = (f"k={TIE - 1}", f"k={TIE}", f"k={TIE + 1}", "pr")
    full = tied_replicates("full", chunk_stats, [generic, isotropic], weights, cutoffs)
    found = tied_replicates(solver, chunk_stats, [generic, isotropic], weights, cutoffs)
    determined = [0, 2, 3]
    np.testing.assert_allclose(found[:, 0, determined], full[:, 0, determined], rtol=0,
                               atol=TOLERANCE)  # fmt: skip
    np.testing.assert_allclose(found[:, 1], full[:, 1], rtol=0, atol=TOLERANCE)
    gram = generic.T @ generic
    shares = np.linalg.eigvalsh(gram[np.ix_(PLANE, PLANE)]) / np.trace(gram)
    for rows in (full, found):
        low, high = rows[:, 0, 0] + shares[0], rows[:, 0, 0] + shares[1]
        assert np.all(low - TOLERANCE <= rows[:, 0, 1]) and np.all(
            rows[:, 0, 1] <= high + TOLERANCE
        )
