"""DeepFool (Moosavi-Dezfooli, Fawzi and Frossard, CVPR 2016), minimal L2 and Linf perturbations.

Also home of :func:`linear_boundary_steps`, the closed-form distance and minimal step to each
linearised decision boundary, which other first-order attacks reuse.
"""
from __future__ import annotations

import math

import torch

from ..core import AttackResult, check_int, check_positive, clip_box, holder_direction, lp_norm, parse_norm
from ..core import dual_exponent, per_objective_gradients, register, start_attack

__all__ = ["deepfool", "linear_boundary_steps"]


def linear_boundary_steps(margins: torch.Tensor, grads: torch.Tensor, p: float | str,
                          pad: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to, and minimal lp step onto, each linearised decision boundary.

    For a sample with reference class ``y`` (the current top class) and candidate classes ``l``,
    ``margins[b, l] = f_y - f_l`` and ``grads[b, l] = grad(f_l - f_y)`` (shape ``[B, C, *x]``).
    Linearised, class ``l`` catches up with ``y`` along ``r`` once ``<grads, r> >= margins``;
    the smallest such ``r`` in the lp norm (DeepFool, Eq. 11 and Sec. 3.3; Hölder's equality) is

        distance = margin / ||grad||_q,   step = distance * holder_direction(grad, p),

    with q the dual exponent, so that ``||step||_p = distance``. For p = 2 this is Eq. 8's
    ``|f'_l| / ||w'_l||_2^2 * w'_l``; for p = inf it is ``distance * sign(w'_l)``. ``pad``
    lengthens every step to ``distance + pad`` (DeepFool's code uses 1e-4 so that a zero margin
    still moves).

    Returns ``(distances [B, C], steps [B, C, *x])``. Distances are signed: a negative one means
    the class already wins, and its step goes back to the boundary. A zero gradient gives
    distance ``inf`` (``0`` if the margin is 0) and a zero step.
    """
    p = parse_norm(p)
    if grads.shape[:2] != margins.shape:
        raise ValueError(f"grads {tuple(grads.shape)} must start with the margins' shape {tuple(margins.shape)}")
    flat = grads.flatten(0, 1)
    gnorm = lp_norm(flat, dual_exponent(p)).view_as(margins)
    ok = gnorm > 0
    distances = torch.where(ok, margins / gnorm.clamp_min(torch.finfo(grads.dtype).tiny),
                            torch.where(margins > 0, math.inf, 0.0).to(margins.dtype))
    direction = holder_direction(flat, p).view_as(grads)
    scale = torch.where(ok, distances + pad, torch.zeros_like(distances))
    steps = direction * scale.view(*scale.shape, *([1] * (grads.dim() - 2)))
    return distances, steps


def deepfool(model, inputs: torch.Tensor, labels: torch.Tensor, *, norm: float | str = 2,
             targeted: bool = False, max_iterations: int = 50, overshoot: float = 0.02, candidates: int = 10,
             bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None) -> AttackResult:
    """DeepFool, Algorithm 2 of the paper with the lp step of Sec. 3.3 (Eqs. 10-11).

    Each iteration linearises the logit differences ``f_l - f_y`` at the current point for the
    ``candidates - 1`` classes with the largest clean logits besides the label, picks the class
    with the nearest linearised boundary, and adds the minimal step onto it (padded by 1e-4 as in
    the authors' code), lengthened by ``1 + overshoot``, to the current iterate, which is then
    clipped to the box. A sample stops at its first adversarial iterate, which is returned
    (DeepFool never shrinks it afterwards).

    The authors' code (and Foolbox) accumulate the unclipped steps in ``r_tot`` and evaluate
    ``clip(x + (1 + overshoot) r_tot)``, so every later linearisation starts from a point the
    box has moved but ``r_tot`` has not. Clipping the iterate itself keeps the linearisation
    point and the evaluated point the same; on the shipped CNN this gives smaller median norms
    than the accumulated form in both L2 and Linf (benchmarks/RESULTS.md). ``info["iterations"]`` counts the
    linearisation steps per sample: 1 on an affine classifier.

    Cost per iteration and active sample: one forward pass and ``candidates - 1`` backward passes
    (one per logit difference). Untargeted only; ``generator`` is accepted for the common
    signature and unused (DeepFool is deterministic).
    """
    if targeted:
        raise NotImplementedError("DeepFool is untargeted only; use a targeted attack such as cw-l2 or ddn")
    max_iterations = check_int("max_iterations", max_iterations)
    overshoot = check_positive("overshoot", overshoot, allow_zero=True)
    candidates = check_int("candidates", candidates, minimum=2)
    run = start_attack(model, inputs, labels, targeted=False, bounds=bounds, norm=norm, generator=generator)
    if run.batch_size == 0:
        return run.finish(inputs.clone())

    x0, y = run.inputs, run.labels
    # Candidates come from the clean logits, label masked out so ties cannot pick it twice.
    num = min(candidates, run.num_classes) - 1
    cand = run.clean_logits.scatter(1, y[:, None], -math.inf).topk(num, dim=1).indices
    x_adv = x0.clone()
    iterations = torch.zeros(run.batch_size, dtype=torch.long, device=x0.device)
    active = ~run.is_adversarial(run.clean_logits)
    for _ in range(max_iterations):
        if not bool(active.any()):
            break
        index = active.nonzero().squeeze(1)
        with torch.enable_grad():
            xa = x_adv[index].requires_grad_(True)
            logits = run.model(xa, index)
            done = run.is_adversarial(logits.detach(), index)
            active[index[done]] = False
            keep = ~done
            if not bool(keep.any()):
                break
            index, rows = index[keep], keep.nonzero().squeeze(1)
            # Rows of samples that just finished are left out of the objectives; their share of
            # the backward compute is wasted once, but they are not charged, as one by one.
            kept = logits[rows]
            diff = kept.gather(1, cand[index]) - kept.gather(1, y[index, None])
            grads = per_objective_gradients(diff, xa, rows)
            run.model.charge(index, backward=num)
        # The 1e-4 pad pushes past the boundary even without overshoot (authors' code).
        distances, steps = linear_boundary_steps(-diff.detach(), grads, run.norm, pad=1e-4)
        nearest = distances.argmin(dim=1)
        step = steps[torch.arange(len(index), device=x0.device), nearest]
        x_adv[index] = clip_box(x_adv[index] + (1 + overshoot) * step, run.bounds)
        iterations[index] += 1
    return run.finish(x_adv, info={"iterations": iterations, "candidates": cand})


for _p, _name in ((2.0, "deepfool-l2"), (math.inf, "deepfool-linf")):
    register(_name, deepfool, norm=_p, minimal=True, targeted=False, paper="Moosavi-Dezfooli et al. 2016",
             description="DeepFool: iterated minimal steps onto the nearest linearised boundary",
             defaults={"norm": _p}, quick={"max_iterations": 20},
             roles={"fooling": {}})  # the minimal norms of Balda et al.'s robustness measures
