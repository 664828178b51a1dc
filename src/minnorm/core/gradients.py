"""Gradients of several objectives per sample in one call (DeepFool, the convex attacks, TR).

``values`` ``[b, m]`` (m objectives per sample, e.g. the logit differences to m classes) are
differentiated with respect to the batch ``x``: by ``m`` backward passes over one retained graph
(``method="loop"``) or by one vectorised call (``"vmap"``: ``torch.autograd.grad(...,
is_grads_batched=True)``). Both give the same gradients and are charged ``m`` backward passes
per sample. Measured on the shipped CNN on one CPU thread (benchmarks/RESULTS.md), the vmap
form is ~1.5x slower (DeepFool-L2 on 100 images: 4.6 s vs 2.9 s), so the loop is the default;
``"vmap"`` is there for accelerators, where batching the backward calls is expected to pay
(not measured: no GPU was available).
"""
from __future__ import annotations

import warnings

import torch


def per_objective_gradients(values: torch.Tensor, x: torch.Tensor, rows: torch.Tensor | None = None,
                            method: str = "loop") -> torch.Tensor:
    """``d values[i, j] / d x[rows[i]]`` as ``[r, m, *x.shape[1:]]``.

    ``values`` come from a graph that starts at ``x`` (``requires_grad``); ``rows`` are the rows
    of ``x`` that ``values`` belong to (all of them if None), so that samples left out of the
    objectives cost nothing. The model must not mix samples (no batch statistics).
    """
    r, m = values.shape
    rows = torch.arange(r, device=x.device) if rows is None else rows
    if method == "loop" or m == 1:
        grads = []
        for j in range(m):
            (g,) = torch.autograd.grad(values[:, j].sum(), x, retain_graph=j < m - 1)
            grads.append(g[rows])
        return torch.stack(grads, 1)
    if method != "vmap":
        raise ValueError(f"method must be 'loop' or 'vmap', got {method!r}")
    seeds = torch.zeros(m, r, m, dtype=values.dtype, device=values.device)
    seeds[torch.arange(m), :, torch.arange(m)] = 1
    with warnings.catch_warnings():
        # ops without a vmap rule fall back to a loop inside torch: slower there, still exact
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        (g,) = torch.autograd.grad(values, x, grad_outputs=seeds, is_grads_batched=True)
    return g[:, rows].transpose(0, 1)
