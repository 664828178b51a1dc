"""PGD's ascent step, written once for the attack (``pgd-*``, ``bim``) and for Madry training.

:func:`ascent_direction` is the steepest-ascent direction on the unit lp ball: Hölder's
(:func:`~minnorm.core.norms.holder_direction`, sign(g) for linf, g / ||g||_2 for l2) for
p in {2, inf}, and for p = 1 SLIDE's sparse direction (:func:`sparse_l1_direction`), since
the exact l1 direction moves one coordinate per step and stalls once it sits on a face of the
box. :func:`pgd_step` adds it and projects back onto the eps ball and the box.
"""
from __future__ import annotations

import math

import torch

from .norms import batch_view, clip_box, holder_direction, parse_norm, project_lp_ball
from .validation import check_real


def box_blocked(x: torch.Tensor, direction: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Coordinates that ``x`` cannot move along ``direction`` (same shape, or broadcastable):
    those on the lower face with a negative component and those on the upper face with a
    positive one."""
    return ((x <= bounds[0]) & (direction < 0)) | ((x >= bounds[1]) & (direction > 0))


def sparse_l1_direction(grad: torch.Tensor, x: torch.Tensor, bounds: tuple[float, float], k: int) -> torch.Tensor:
    """SLIDE's step (Tramer & Boneh, 2019, Alg. 1): sign(g) on the ``k`` largest |g_i|, scaled to
    unit l1 norm, ignoring coordinates the box stops from moving the way g points
    (:func:`box_blocked`). A row with no movable coordinate gets a zero direction.

    The exact l1 steepest-ascent direction moves one coordinate per step, which is slow and
    stalls once that coordinate hits the box; k > 1 spreads each step over the top coordinates.
    """
    g = grad.flatten(1)
    g = g.masked_fill(box_blocked(x.flatten(1), g, bounds), 0)
    idx = g.abs().topk(min(k, g.shape[1]), dim=1).indices
    d = torch.zeros_like(g).scatter_(1, idx, g.gather(1, idx).sign())
    return (d / d.abs().sum(1, keepdim=True).clamp_min(1)).view_as(grad)


def l1_coordinates(sparsity: float, numel: int) -> int:
    """How many coordinates the l1 step moves: the top ``1 - sparsity`` fraction of ``numel``
    (SLIDE's 99th percentile at ``sparsity = 0.99``), at least one."""
    if not 0 <= check_real("l1_sparsity", sparsity) < 1:
        raise ValueError(f"l1_sparsity must be in [0, 1), got {sparsity}")
    return max(1, math.ceil(round((1 - sparsity) * numel, 6)))


def ascent_direction(grad: torch.Tensor, p: float, x: torch.Tensor, bounds: tuple[float, float],
                     l1_k: int = 1) -> torch.Tensor:
    """PGD's direction from ``x`` for the gradient ``grad``: :func:`holder_direction` for p in
    {2, inf} (Madry et al. 2018, Sec. 2.1), :func:`sparse_l1_direction` with ``l1_k``
    coordinates for p = 1. Unit lp norm per sample (0 for a zero gradient)."""
    p = parse_norm(p)
    if p == 1:
        return sparse_l1_direction(grad, x, bounds, l1_k)
    if p != 2 and not math.isinf(p):
        raise NotImplementedError(f"PGD steps in the l1, l2 and linf balls, got p={p}")
    return holder_direction(grad, p)


def pgd_step(x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, p: float, eps: torch.Tensor | float,
             step_size: torch.Tensor | float, bounds: tuple[float, float], l1_k: int = 1) -> torch.Tensor:
    """One PGD iteration (Madry et al. 2018, Eq. 2.1 with the lp direction):
    ``clip_box(x0 + Proj_eps(x - x0 + step_size * d))`` with ``d = ascent_direction(grad, ...)``.
    ``eps`` and ``step_size`` are floats or ``[B]`` tensors."""
    direction = ascent_direction(grad, p, x, bounds, l1_k)
    delta = x - x0 + batch_view(step_size, x) * direction
    return clip_box(x0 + project_lp_ball(delta, p, eps), bounds)
