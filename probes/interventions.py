"""Closed-form rank-1 weight interventions, applied through a forward hook.

``ΔW = s · û v̂ᵀ`` with unit ``û``, ``v̂`` has rank one and ``‖ΔW‖_F = |s|``.
Adding it to a canonical matrix changes that matrix's output by
``s (v̂·x) û``: :func:`rank1_hook` adds exactly that to the rows of the
module's output that belong to the matrix (fused q|k|v and gate|up split as
the adapters split them), so the model behaves as if its weight had been
edited while the weights stay untouched.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .adapters import matrix_rows

__all__ = ["rank1_hook", "rank1_update"]


def _unit(x) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 1:
        raise ValueError("`u` and `v` must be vectors")
    norm = torch.linalg.vector_norm(x)
    if norm == 0:
        raise ValueError("`u` and `v` must be non-zero")
    return x / norm


def rank1_update(u, v, norm: float) -> torch.Tensor:
    """``ΔW = norm · û v̂ᵀ`` with ``û = u/‖u‖``, ``v̂ = v/‖v‖``: rank one, ``‖ΔW‖_F = |norm|``."""
    return norm * torch.outer(_unit(u), _unit(v))


@contextmanager
def rank1_hook(model, layer: int, matrix: str, u, v, norm: float):
    """Run `model` as if ``W_matrix += norm · û v̂ᵀ`` (Linear layout) at `layer`.

    A forward hook adds ``norm (v̂·x) û`` to the module's output rows of the
    canonical matrix, which is exactly the output of the updated weight.
    Removed on exit, even on error.
    """
    module, rows, fused_rows = matrix_rows(model, layer, matrix)
    param = module.weight
    u_hat = _unit(u).to(param.dtype).to(param.device)
    v_hat = _unit(v).to(param.dtype).to(param.device)
    full = torch.zeros(fused_rows, dtype=param.dtype, device=param.device)
    if isinstance(rows, slice):
        full[rows] = norm * u_hat
    else:
        full[rows.to(param.device)] = norm * u_hat

    def hook(mod, args, kwargs, output):
        x = args[0] if args else next(t for t in kwargs.values() if isinstance(t, torch.Tensor))
        return output + (x @ v_hat).unsqueeze(-1) * full

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
