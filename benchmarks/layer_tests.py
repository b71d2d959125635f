"""How the candidate tests over layers hold their level on AR(1) series: why the verdict uses EWC.

    python -m benchmarks.layer_tests [--sims 4000] [--seed 1]

For L layers and an AR(1) series ``d_l = ρ d_{l−1} + √(1−ρ²) ε_l`` with mean 0
(ε normal, or a centred exponential: skewed), the rejection rate at α = 0.05
of: the exchangeable sign-flip test, the plain t-test, the EWC t-test with
``K = max(2, round(0.4·L^(2/3)))`` cosines (robustness.stats.layers, the one chosen)
and, beside it, with the earlier ``K = max(2, ⌊L/8⌋)``, the
Ibragimov–Müller t-test of q = 2 and 4 contiguous group means, and a t-test
with a bias-corrected AR(1) long-run variance. Block sign flips are not
simulated: with 8 layers and blocks of two they allow 16 arrangements, so no
p-value is below 1/16. A statistical study of the candidates, separate from
``rsf calibrate`` (which runs the chosen test through the whole probe).
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
from scipy import stats

from robustness.stats.layers import layer_test


def ar1(rng, n, n_layers, rho, skew):
    e = rng.exponential(1.0, (n, n_layers)) - 1.0 if skew else rng.standard_normal((n, n_layers))
    x = np.empty((n, n_layers))
    x[:, 0] = e[:, 0]
    for t in range(1, n_layers):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho**2) * e[:, t]
    return x


def sign_flip(d, alpha):
    n_layers = d.shape[1]
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n_layers)))
    null = d @ signs.T / n_layers
    p = (np.abs(null) >= np.abs(d.mean(1))[:, None] - 1e-12).mean(1)
    return p < alpha


def t_test(d, alpha):
    return stats.ttest_1samp(d, 0.0, axis=1).pvalue < alpha


def groups(d, q, alpha):
    g = np.stack([d[:, idx].mean(1) for idx in np.array_split(np.arange(d.shape[1]), q)], 1)
    return stats.ttest_1samp(g, 0.0, axis=1).pvalue < alpha


def ar_corrected(d, alpha):
    n_layers = d.shape[1]
    x = d - d.mean(1, keepdims=True)
    r = np.sum(x[:, 1:] * x[:, :-1], 1) / np.sum(x**2, 1)
    r = np.clip(r + (1 + 3 * r) / n_layers, -0.5, 0.95)  # Kendall's first-order bias correction
    t = d.mean(1) / np.sqrt(np.sum(x**2, 1) / (n_layers - 1) * (1 + r) / (1 - r) / n_layers)
    df = np.maximum(1.0, n_layers * (1 - r) / (1 + r) - 1)
    return np.abs(t) > stats.t.ppf(1 - alpha / 2, df)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    alpha = 0.05
    print("L   ρ    ε       sign-flip  t-test  EWC    EWC L/8  IM q=2  IM q=4  AR(1)-corrected")
    for n_layers in (8, 12, 16, 24, 32, 64, 128):
        for rho in (0.0, 0.5, 0.8):
            for skew in (False, True):
                d = ar1(rng, args.sims, n_layers, rho, skew)
                rates = [
                    sign_flip(d, alpha).mean() if n_layers <= 16 else float("nan"),
                    t_test(d, alpha).mean(),
                    (layer_test(d.T).p_value < alpha).mean(),
                    (layer_test(d.T, k=max(2, n_layers // 8)).p_value < alpha).mean(),
                    groups(d, 2, alpha).mean(),
                    groups(d, 4, alpha).mean(),
                    ar_corrected(d, alpha).mean(),
                ]
                row = "  ".join(f"{r:6.3f}" for r in rates)
                print(f"{n_layers:<3d} {rho:<4g} {'skewed' if skew else 'normal':7s} {row}")


if __name__ == "__main__":
    main()
