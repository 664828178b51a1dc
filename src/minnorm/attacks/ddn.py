"""Decoupled Direction and Norm attack, DDN (Rony et al., CVPR 2019), minimal L2 perturbations."""
from __future__ import annotations

import math

import torch

from ..core import (
    AttackResult,
    AttackRun,
    batch_view,
    check_int,
    check_positive,
    cross_entropy_objective,
    is_adversarial,
    lp_norm,
    project_lp_ball,
    rand_like,
    register,
    scale_to_norm,
    start_attack,
)

__all__ = ["ddn"]


def ddn(model, inputs: torch.Tensor, labels: torch.Tensor, *, targeted: bool = False, steps: int = 100,
        gamma: float = 0.05, init_norm: float = 1.0, alpha: float = 1.0, levels: int | None = None,
        max_norm: float | None = None, bounds: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | None = None) -> AttackResult:
    """DDN, Algorithm 1 of the paper: a normalised cross-entropy gradient step of size ``alpha_k``
    (cosine-annealed from ``alpha`` to ``alpha / 100``, Sec. 4), then a projection onto the
    ``eps``-sphere around the input, where ``eps`` shrinks by ``1 - gamma`` after an adversarial
    iterate and grows by ``1 + gamma`` otherwise (steps 7-12); then clipping to the box (step 13).
    Returns the smallest adversarial iterate seen (step 15), never the last one.

    One deviation from Alg. 1: ``eps`` never exceeds the best norm found so far, since a larger
    sphere cannot improve it (better on ~80% of samples at 100 steps on a Fashion-MNIST CNN,
    see docs/ddn.md); eps is also capped at the farthest point of the box.

    ``levels`` quantises every iterate to that many values in the box, as the paper does with
    256 (Sec. 4); it is off by default because rounding costs optimality on some models.
    ``max_norm`` renorms the final perturbation to at most that norm, as in the paper's
    adversarial training (Sec. 5, Eq. 9); then ``info["perturbed"]`` holds ``x + delta`` for
    every sample, adversarial or not, which is the training input.

    One forward and one backward pass per step (the last step needs no gradient). Samples
    already adversarial at ``delta = 0`` have the optimal norm 0 and cost no further passes.
    """
    steps = check_int("steps", steps)
    gamma = check_positive("gamma", gamma)
    if gamma >= 1:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    init_norm = check_positive("init_norm", init_norm)
    alpha = check_positive("alpha", alpha)
    if levels is not None:
        levels = check_int("levels", levels, minimum=2)
    if max_norm is not None:
        max_norm = check_positive("max_norm", max_norm)
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=2, generator=generator)
    if run.batch_size == 0:
        return run.finish(inputs.clone())

    x = run.inputs
    best, last = x.clone(), x.clone()
    found = run.is_adversarial(run.clean_logits)
    if not bool(found.any()):
        best, last, found = _search(run, x, run.labels, None, steps, gamma, init_norm, alpha, levels)
    elif not bool(found.all()):
        index = (~found).nonzero().squeeze(1)
        best[index], last[index], found[index] = _search(run, x[index], run.labels[index], index, steps, gamma,
                                                         init_norm, alpha, levels)
    if max_norm is None:
        return run.finish(best)
    # Samples never adversarial get the capped last iterate: the attack's best guess of a
    # direction, which is what adversarial training wants for them.
    delta = torch.where(batch_view(found, x), best, last) - x
    capped = _cap(x, delta, max_norm, run.bounds, levels)
    return run.finish(capped, info={"perturbed": capped})


def _search(run: AttackRun, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None, steps: int, gamma: float,
            init_norm: float, alpha: float, levels: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loop of Algorithm 1 on the samples ``index``: (best adversarial or x, last iterate, found)."""
    lo, hi = run.bounds
    objective = cross_entropy_objective(y, run.targeted)
    # Beyond the farthest corner of the box a larger sphere only clips back, so eps never needs
    # to exceed it; this keeps eps finite on samples that cannot be broken.
    worst = lp_norm(torch.maximum(x - lo, hi - x), 2)
    eps = torch.full_like(worst, init_norm)
    best_norm = torch.full_like(worst, math.inf)
    best = x.clone()
    x_adv, delta = x.clone(), torch.zeros_like(x)
    tiny = torch.finfo(x.dtype).tiny
    low = 0.01 * alpha
    alphas = [low + (alpha - low) * (1 + math.cos(math.pi * k / max(steps - 1, 1))) / 2 for k in range(steps)]
    for k in range(steps):
        if k == steps - 1:
            # the last iterate only needs evaluating: its gradient would move a point never looked at
            with torch.no_grad():
                logits = run.model(x_adv, index)
        else:
            logits, _, grad = run.model.value_and_grad(x_adv, objective, index)
        adv = is_adversarial(logits, y, run.targeted)
        norm = lp_norm(delta, 2)
        better = adv & (norm < best_norm)
        best_norm = torch.where(better, norm, best_norm)
        best = torch.where(batch_view(better, x), x_adv, best)
        if k == steps - 1:
            break
        gnorm = lp_norm(grad, 2)
        flat = ~(gnorm > tiny)  # zero (or NaN) gradient: no direction to follow, take a random one
        if bool(flat.any()):
            noise = rand_like(grad, run.generator, normal=True)
            grad = torch.where(batch_view(flat, grad), noise, grad)
            gnorm = torch.where(flat, lp_norm(noise, 2), gnorm)
        # grad may be an expanded view (autograd returns those for broadcast ops): read it, never write it
        delta.addcmul_(grad, batch_view(alphas[k] / gnorm, grad))
        eps = torch.where(adv, eps * (1 - gamma), eps * (1 + gamma))
        # A sphere larger than the best norm cannot improve it; capping there spends the steps
        # on norms that can (a deviation from Alg. 1, measured in docs/ddn.md).
        eps = torch.minimum(torch.minimum(eps, best_norm), worst)
        x_adv = scale_to_norm(delta, 2, eps).add_(x)
        if levels is not None:
            x_adv = _quantize(x_adv, run.bounds, levels)
        x_adv.clamp_(lo, hi)
        delta = x_adv - x
    return best, x_adv, best_norm.isfinite()


def _quantize(x: torch.Tensor, bounds: tuple[float, float], levels: int) -> torch.Tensor:
    """Round to the nearest of ``levels`` evenly spaced values in the box (step 13 with quantisation)."""
    lo, hi = bounds
    step = (hi - lo) / (levels - 1)
    return x.sub(lo).div_(step).round_().mul_(step).add_(lo)


def _cap(x: torch.Tensor, delta: torch.Tensor, max_norm: float, bounds: tuple[float, float],
         levels: int | None) -> torch.Tensor:
    """``x + delta`` with ``||delta||_2 <= max_norm`` (Sec. 5), on the level grid when quantising."""
    lo, hi = bounds
    out = x + project_lp_ball(delta, 2, max_norm)
    if levels is not None:
        # Round towards x, not to the nearest level, so that no coordinate of delta grows and the
        # cap still holds (exactly when x itself lies on the grid); 1e-4 absorbs float noise in x.
        step = (hi - lo) / (levels - 1)
        t = (out - lo) / step
        t = torch.where(out > x, (t + 1e-4).floor(), (t - 1e-4).ceil())
        out = t.mul_(step).add_(lo)
    return out.clamp_(lo, hi)


register("ddn", ddn, norm=2, minimal=True, targeted=True, paper="Rony et al. 2019 (DDN)",
         description="decoupled direction and norm: gradient steps on an adaptive L2 sphere",
         quick={"steps": 20}, roles={"certify-upper": {}})
