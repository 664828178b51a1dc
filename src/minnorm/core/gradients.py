"""Gradients of several objectives per sample in one call (DeepFool, the convex attacks).

``values`` ``[r, m]`` (m objectives per sample, e.g. the logit differences to m classes) are
differentiated with respect to the batch ``x`` over one retained graph, by one of three methods:

- ``"loop"``: m backward passes, one per objective (each of r rows).
- ``"vmap"``: one vectorised backward call for all m objectives (``torch.autograd.grad(...,
  is_grads_batched=True)``, m * r rows at once).
- ``"auto"`` (the default): the objectives in chunks of at most ``max(1, AUTO_ROWS // r)``, spread
  evenly, each chunk one vectorised call, so a call never backpropagates more than ``AUTO_ROWS``
  rows unless r alone is more (then it is the loop).

All give the same gradients up to float rounding (bit for bit at batch 16 and 100 in the benchmark,
within 2e-6 relative in the attacks' norms at batch 1) and are charged the same ``m`` backward
passes per sample: the cotangents are the same, only grouped differently.

Why chunks (benchmarks/per_class_gradient.py, benchmarks/RESULTS.md, one CPU thread): vectorising
pays while the m * r rows are few, because it saves m - 1 walks of the autograd graph, and costs
once they are many, because torch's batching rules run the convolution and max-pool backward slice
by slice and then concatenate the slices, and the m-fold intermediates fall out of the cache. On
the shipped ``cnn``, DeepFool and the convex attacks with 9 classes ran at 0.79-0.95 of the loop's
time per image at batch 1 and 0.89-0.98 at 16 with ``"auto"`` under heavy load, and at 0.85-0.89
(batch 1) and 1.06-1.12 (batch 16) on a quieter machine, where identical code read 0.84-0.89: on
this CPU the gain is within the noise; at 100 ``"vmap"`` was 1.5-2x slower and ``"auto"`` (the
loop there) equal. On the ``mlp``, ``"vmap"`` was faster at every batch
(0.61-0.92); ``"auto"``, with its limit set for the cnn, keeps only part of that.
:func:`gradient_method` sets the method for a block of code (benchmarks, an mlp, accelerators:
not measured).
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Iterator

import torch

METHODS = ("loop", "vmap", "auto")
AUTO_ROWS = 72  # most rows of one vectorised call under "auto": 8 samples x 9 classes, where it still paid on the cnn

_METHOD: contextvars.ContextVar[str] = contextvars.ContextVar("minnorm_gradient_method", default="auto")


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


@contextlib.contextmanager
def gradient_method(method: str) -> Iterator[None]:
    """Inside the block, :func:`per_objective_gradients` called without ``method`` uses ``method``."""
    token = _METHOD.set(_check_method(method))
    try:
        yield
    finally:
        _METHOD.reset(token)


def objectives_per_call(method: str, rows: int, objectives: int) -> int:
    """How many objectives one backward call differentiates: 1 (loop), all (vmap), or as many as
    keep the call within ``AUTO_ROWS`` rows, spread evenly over the calls (auto)."""
    if method == "loop":
        return 1
    if method == "vmap":
        return objectives
    most = max(1, min(objectives, AUTO_ROWS // max(rows, 1)))
    calls = -(-objectives // most)
    return -(-objectives // calls)  # the same number of calls, chunks as even as they go


def per_objective_gradients(values: torch.Tensor, x: torch.Tensor, rows: torch.Tensor | None = None,
                            method: str | None = None) -> torch.Tensor:
    """``d values[i, j] / d x[rows[i]]`` as ``[r, m, *x.shape[1:]]``.

    ``values`` come from a graph that starts at ``x`` (``requires_grad``); ``rows`` are the rows
    of ``x`` that ``values`` belong to (all of them if None), so that samples left out of the
    objectives cost nothing. The model must not mix samples (no batch statistics). ``method`` is
    one of :data:`METHODS` (see the module docstring); None takes the one :func:`gradient_method`
    set, else ``"auto"``. The caller charges ``m`` backward passes per sample whatever the method.
    """
    r, m = values.shape
    rows = torch.arange(r, device=x.device) if rows is None else rows
    chunk = objectives_per_call(_check_method(_METHOD.get() if method is None else method), r, m)
    seeds = torch.zeros(m, r, m, dtype=values.dtype, device=values.device)
    seeds[torch.arange(m), :, torch.arange(m)] = 1  # seeds[j] picks objective j of every sample
    grads = []
    for start in range(0, m, chunk):
        retain = start + chunk < m
        if chunk == 1:
            (g,) = torch.autograd.grad(values, x, grad_outputs=seeds[start], retain_graph=retain)
            grads.append(g[rows].unsqueeze(1))
            continue
        with warnings.catch_warnings():
            # ops without a vmap rule fall back to a loop inside torch: slower there, still exact
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            (g,) = torch.autograd.grad(values, x, grad_outputs=seeds[start:start + chunk], retain_graph=retain,
                                       is_grads_batched=True)
        grads.append(g[:, rows].transpose(0, 1))
    return torch.cat(grads, 1)
