"""Fast Minimum-Norm attack, FMN (Pintor, Roli, Brendel and Biggio, NeurIPS 2021), L1, L2 and Linf."""
from __future__ import annotations

import math

import torch

from ..core import (BestAdversarial, AttackResult, batch_view, check_int, check_positive, dual_exponent, lp_norm, project_lp_ball,
                    register, start_attack)
from ..core.norms import project_l1_box, project_l2_box
from ..core.objectives import margin_objective, top_other_classes
from ..core.steps import box_blocked
from ._minimal import cosine, refine_on_segment, safe_grad, start_tracking

__all__ = ["fmn"]

_ALPHA = {1.0: 5.0, 2.0: 1.0, math.inf: 3.0}  # initial step (L2 length of the normalised gradient step)


def fmn(model, inputs: torch.Tensor, labels: torch.Tensor, *, norm: float | str = 2, targeted: bool = False,
        steps: int = 1000, targets: int | None = None, alpha_init: float | None = None,
        alpha_final: float | None = None, gamma_init: float = 0.05,
        gamma_final: float = 0.001, refine: int = 10, bounds: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | None = None) -> AttackResult:
    """FMN, Algorithm 1 of the paper: alternate a gradient step on the logit-difference loss with a
    projection onto an lp ball of adaptive radius ``eps`` around the input.

    Each step (one forward, one backward pass): the margin ``m`` (Carlini-Wagner's logit
    difference, positive iff adversarial) and its gradient ``g`` at ``x + delta``; then

    - ``eps`` update (Alg. 1, lines 6-10): adversarial -> ``min(eps (1 - gamma_k), ||delta*||_p)``;
      not adversarial and nothing found yet -> ``max(||delta||_p, eps) + 1.01 |m| / ||g'||_q`` (the
      distance to the linearised boundary, q the dual exponent, ``g'`` the gradient without the
      coordinates the box blocks; Alg. 1 has ``||delta||_p + |m| / ||g||_q``, which stalls at a
      fixed point when clipping keeps ``||delta||_p`` below ``eps``); not adversarial after a success -> ``eps (1 +
      gamma_k)``, capped at ``||delta*||_p``: a ball larger than the best norm cannot improve it
      (a deviation from Alg. 1, the same one minnorm's DDN makes).
    - ``delta += alpha_k g / ||g||_2`` (line 11; the authors normalise in L2 for every norm),
      then projection onto ``{||delta||_p <= eps}`` and the box (lines 12-13). For L1 the
      projection onto the ball and the box together is exact (``project_l1_box``,
      ``project_l2_box``; Linf clamps, which is exact); Alg. 1 projects on the ball, then clips.

    ``targets=k`` (not in the paper; the FAB-T / APGD-T idea) splits ``steps`` over ``k`` runs, each
    on the targeted margin ``z_t - max_{j != t} z_j`` towards one of the ``k`` largest clean logits
    besides the label, with eps shrinking only on points of class ``t`` (else the run settles on
    the nearest class again); every misclassified point is recorded. A later run starts at the
    radius of the best adversarial so far, so it only looks for smaller ones.

    ``gamma_k``, ``alpha_k``: cosine-annealed to ``gamma_final``/``alpha_final`` (default
    ``alpha_init / 100``; ``alpha_init`` per norm: L1 5, L2 1, Linf 3). Returns the smallest
    adversarial queried (line 14) after ``refine`` bisection steps towards the input (one forward
    each; ``_minimal.refine_on_segment``). ``generator`` only breaks ties on flat points.
    """
    steps = check_int("steps", steps)
    if targets is not None:
        targets = check_int("targets", targets)
    refine = check_int("refine", refine, minimum=0)
    gamma_init = check_positive("gamma_init", gamma_init)
    gamma_final = check_positive("gamma_final", gamma_final)
    if gamma_init >= 1 or gamma_final >= 1:
        raise ValueError(f"gamma_init and gamma_final must be in (0, 1), got {gamma_init}, {gamma_final}")
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=norm, generator=generator)
    if run.norm not in _ALPHA:
        raise ValueError(f"fmn supports norm 1, 2 or inf, got {run.norm}")
    alpha_init = check_positive("alpha_init", _ALPHA[run.norm] if alpha_init is None else alpha_init)
    alpha_final = check_positive("alpha_final", alpha_init / 100 if alpha_final is None else alpha_final)
    tracker, index = start_tracking(run)
    if len(index) == 0:
        return run.finish(tracker.points)
    schedule = ((alpha_init, alpha_final), (gamma_init, gamma_final))
    if targets is None or run.targeted or run.num_classes < 3:
        _search(run, tracker, index, steps, *schedule)
    else:
        top = top_other_classes(run.clean_logits[index], run.labels[index], targets)
        for j in range(top.shape[1]):
            _search(run, tracker, index, max(steps // top.shape[1], 2), *schedule, towards=top[:, j])
    refine_on_segment(run, tracker, index, refine)
    return run.finish(tracker.points)


def _search(run, tracker: BestAdversarial, index: torch.Tensor, steps: int, alphas: tuple[float, float],
            gammas: tuple[float, float], towards: torch.Tensor | None = None) -> None:
    """The loop of Algorithm 1 on the rows ``index`` (all of them run ``steps`` steps), towards the
    classes ``towards`` if given. A sample with an adversarial already starts at its norm."""
    x, p = run.inputs[index], run.norm
    q = dual_exponent(p)
    # FMN-T: the eps schedule follows the target class; any misclassification is still recorded
    objective = margin_objective(run.labels[index] if towards is None else towards, run.targeted or towards is not None)
    delta = torch.zeros_like(x)
    eps = torch.nan_to_num(tracker.norms[index].clone(), posinf=0.0)
    tiny = torch.finfo(x.dtype).tiny
    for k in range(steps):
        point = x + delta
        if k == steps - 1:  # the last point only needs evaluating
            with torch.no_grad():
                tracker.offer(index, point, run.model(point, index))
            break
        logits, margin, grad = run.model.value_and_grad(point, objective, index)
        adv = tracker.offer(index, point, logits)
        if towards is not None:
            adv = margin > 0
        best = tracker.norms[index]
        gamma, alpha = cosine(*gammas, k, steps), cosine(*alphas, k, steps)
        grad = safe_grad(grad, run.generator)
        # 1.01 x: exactly on an affine piece's boundary, the point is a float coin toss (batch vs one by one)
        gap = 1.01 * margin.abs() / lp_norm(_free(grad, point, run.bounds), q).clamp_min(tiny)
        linear = torch.maximum(lp_norm(delta, p), eps) + gap
        grown = torch.where(torch.isfinite(best), eps * (1 + gamma), linear)
        eps = torch.minimum(torch.where(adv, eps * (1 - gamma), grown), best)
        delta = delta + batch_view(alpha / lp_norm(grad, 2).clamp_min(tiny), grad) * grad
        delta = _project(delta, p, eps, x, run.bounds)


def _free(grad: torch.Tensor, point: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """The gradient without the coordinates the box stops from moving the way it points."""
    return grad.masked_fill(box_blocked(point, grad, bounds), 0)


def _project(delta: torch.Tensor, p: float, eps: torch.Tensor, x: torch.Tensor,
             bounds: tuple[float, float]) -> torch.Tensor:
    """Onto {||delta||_p <= eps} and the box, exactly (Alg. 1 projects on the ball, then clips)."""
    if p == 1:
        return project_l1_box(delta, eps, x, bounds)
    if p == 2:
        return project_l2_box(delta, eps, x, bounds)
    return (x + project_lp_ball(delta, p, eps)).clamp(*bounds) - x


for _p, _name in ((1.0, "fmn-l1"), (2.0, "fmn-l2"), (math.inf, "fmn-linf")):
    register(_name, fmn, norm=_p, minimal=True, targeted=True, paper="Pintor et al. 2021 (FMN)",
             description="fast minimum-norm (FMN-T over the top 3 classes): steps projected on an adaptive lp ball",
             defaults={"norm": _p, "targets": 3}, quick={"steps": 40})
