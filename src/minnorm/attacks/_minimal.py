"""Pieces shared by the minimal-norm attacks FMN, FAB and the APGD search (fmn.py, fab.py, apgd.py).

Private (the package importer skips modules starting with ``_``): best-adversarial tracking over
every point sent to the model (DESIGN invariant 7), cosine schedules, per-norm step directions,
the DLR losses of Croce & Hein (2020) and a random start in an lp ball.
"""
from __future__ import annotations

import math

import torch

from ..core import BestAdversarial, batch_view, rand_like, scale_to_norm
from ..core.segment import bisect_segment


def start_tracking(run) -> tuple[BestAdversarial, torch.Tensor]:
    """A tracker of the smallest adversarial seen (the clean inputs offered first), and the rows
    still to attack (not already adversarial)."""
    tracker = BestAdversarial(run.inputs, run.labels, run.targeted, run.norm)
    rows = torch.arange(run.batch_size, device=run.inputs.device)
    done = tracker.offer(rows, run.inputs, run.clean_logits) if run.batch_size else rows.bool()
    return tracker, (~done).nonzero().squeeze(1)


def cosine(start: float, end: float, k: int, steps: int) -> float:
    """Cosine annealing from ``start`` (k = 0) to ``end`` (k = steps - 1), as FMN anneals gamma and alpha."""
    return end + (start - end) * (1 + math.cos(math.pi * k / max(steps - 1, 1))) / 2


def safe_grad(grad: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The gradient, with rows that are zero (or not finite) replaced by Gaussian noise: a flat
    region gives no direction, and standing still would waste the remaining steps."""
    flat = grad.flatten(1)
    bad = ~torch.isfinite(flat).all(1) | ~(flat.abs().amax(1) > 0)
    if not bool(bad.any()):
        return grad
    noise = rand_like(grad, generator, normal=True)
    return torch.where(batch_view(bad, grad), noise, torch.nan_to_num(grad))


def random_in_ball(x: torch.Tensor, p: float, radius: torch.Tensor, generator: torch.Generator,
                   bounds: tuple[float, float]) -> torch.Tensor:
    """``x`` plus a random perturbation of lp norm ``radius`` (per sample), clipped to the box:
    Gaussian directions (Laplace-like sparse ones for p = 1 come out of the cube of the Gaussian)."""
    d = rand_like(x, generator, normal=True)
    if math.isinf(p):
        d = rand_like(x, generator) * 2 - 1
    elif p == 1:
        d = d ** 3
    return (x + scale_to_norm(d, p, radius)).clamp(*bounds)


def refine_on_segment(run, tracker: BestAdversarial, index: torch.Tensor, steps: int) -> None:
    """Bisection on ``t`` in ``x + t (best - x)`` between the clean input (t = 0, not adversarial)
    and the best adversarial (t = 1), ``steps`` forward passes per sample that has one: the
    smallest adversarial on the segment to within ``2^-steps`` of its length. Not part of FMN,
    FAB or APGD; it removes the overshoot an iterative attack leaves (FAB's ``eta``, the last eps
    decrement of FMN, the bisection tolerance of the APGD search) at a fraction of the budget."""
    rows = index[torch.isfinite(tracker.norms[index]) & (tracker.norms[index] > 0)]
    if steps <= 0 or len(rows) == 0:
        return
    with torch.no_grad():  # every probe is offered to the tracker, which keeps the smallest adversarial
        bisect_segment(lambda point, r: tracker.offer(rows[r], point, run.model(point, rows[r])),
                       run.inputs[rows], tracker.points[rows].clone(), steps)
