"""The inner maximisation of Madry et al. (2018), Eq. 2.1: PGD that runs all its steps.

The registered ``pgd-*`` attacks answer "is there an adversarial point in the ball?" and stop
each sample at its first adversarial iterate, returning the clean input where they fail. Madry
training needs something else: the highest-loss point PGD reaches in the ball, for every
sample, found adversarial or not -- so this version never stops early and returns the last
iterate. It is a training tool, not an attack: no pass counting, no AttackResult.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core import check_int, check_positive, clip_box, parse_norm
from ..core.objectives import cross_entropy
from ..core.steps import l1_coordinates, pgd_step

__all__ = ["madry_pgd"]


def madry_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: float | str = "inf",
              steps: int = 10, step_size: float | None = None, random_start: bool = True, l1_sparsity: float = 0.99,
              bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None) -> torch.Tensor:
    """``steps`` iterations of ``x_{t+1} = Proj_{B(x, eps) ∩ box}(x_t + step_size * d_t)`` with d_t the
    steepest-ascent direction of the cross-entropy on the unit lp ball (sign of the gradient for
    linf, Madry et al. Sec. 2.1), from a uniform random point of the ball. Returns the last iterate.

    The step is the registered ``pgd-*`` attack's (:func:`minnorm.core.steps.pgd_step`), so for
    l1 it is SLIDE's sparse direction on the top ``1 - l1_sparsity`` fraction of coordinates.
    ``step_size`` defaults to ``2.5 * eps / steps`` (Madry et al. use 0.01 with 40 steps at
    eps = 0.3 on MNIST, 2/255 with 7 steps at 8/255 on CIFAR-10). The caller sets the model's
    mode (see :func:`~minnorm.training.attack_mode`).
    """
    p = parse_norm(norm)
    if p not in (1.0, 2.0) and not math.isinf(p):
        raise NotImplementedError(f"madry_pgd supports the l1, l2 and linf balls, got p={p}")
    eps = check_positive("eps", eps)
    steps = check_int("steps", steps)
    alpha = 2.5 * eps / steps if step_size is None else check_positive("step_size", step_size)
    l1_k = l1_coordinates(l1_sparsity, math.prod(x.shape[1:]))
    x0 = x.detach()
    adv = x0.clone()
    if random_start and x0.shape[0]:
        from ..attacks.noise import lp_ball_noise  # late: training must import without the attacks
        generator = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
        radius = torch.full((x0.shape[0],), eps, dtype=x0.dtype, device=x0.device)
        adv = clip_box(x0 + lp_ball_noise(x0, p, radius, generator), bounds)
    for _ in range(steps):
        with torch.enable_grad():
            adv.requires_grad_(True)
            # summed per-sample losses: each sample's step must not depend on the batch it sits in
            (grad,) = torch.autograd.grad(cross_entropy(model(adv), y).sum(), adv)
        adv = pgd_step(adv.detach(), x0, grad, p, eps, alpha, bounds, l1_k).detach()
    return adv
