"""Batched linear algebra the attacks share: power iteration on implicit operators."""
from __future__ import annotations

from typing import Callable

import torch

from .norms import batch_view, lp_norm

Apply = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


def power_iteration(apply: Apply, v: torch.Tensor, iterations: int, tol: float | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading eigenpair of a symmetric positive semi-definite operator ``M`` per row, by power
    iteration (the matrix is never formed: ``M = A^T A`` through two products, say).

    ``v`` ``[B, *shape]`` is the start (any scale; a Gaussian draw in practice). Each step
    normalises the rows still iterating, ``rows``, and calls ``apply(v_rows, rows)``, which
    returns ``M v_rows``, or ``(M v_rows, estimate)`` to monitor an estimate of its own (``||A
    v||`` for the largest singular value of ``A``); by default the estimate is ``||M v||``, a
    lower bound on the largest eigenvalue that increases to it. With ``tol`` a row stops when
    ``M v = 0`` or once its estimate changes by at most ``tol`` (relative); ``tol=None`` runs
    every row for all ``iterations`` (``rows`` is then always the whole batch). Returns ``(v,
    estimate)``: the unit vectors ``M v / ||M v||`` of the last step (the start, normalised, for
    a row with ``M v = 0``) and the last estimates ``[B]``.
    """
    tiny = torch.finfo(v.dtype).tiny
    v = v.clone()
    est = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    active = torch.arange(v.shape[0], device=v.device)
    for _ in range(iterations):
        if active.numel() == 0:
            break
        va = v[active]
        va = va / batch_view(lp_norm(va, 2).clamp_min(tiny), va)
        out = apply(va, active)
        w, new = out if isinstance(out, tuple) else (out, None)
        wn = lp_norm(w, 2)
        new = wn if new is None else new
        ok = wn > 0
        v[active] = torch.where(batch_view(ok, w), w, va)
        done = torch.zeros_like(ok) if tol is None else ~ok | ((new - est[active]).abs() <= tol * new)
        est[active] = new
        active = active[~done]
    return v / batch_view(lp_norm(v, 2).clamp_min(tiny), v), est
