"""Projected gradient descent (Madry et al., 2018) in the l1, l2 and linf balls, and BIM / I-FGSM
(Kurakin et al., 2017), the linf variant without random start.

Each step ascends the loss along the steepest-ascent direction of the lp ball (the sign of the
gradient in Madry et al.'s linf update) and projects back onto the eps ball and the box. A sample
stops at its first adversarial iterate, which is what it returns: for a fixed-eps attack any
point of the ball that fools the model answers the question, and stopping saves its passes.
"""
from __future__ import annotations

import math

import torch

from ..core import check_int, clip_box, register, start_attack
from ..core.objectives import cross_entropy_objective, margin_objective
from ..core.steps import l1_coordinates, pgd_step
from .noise import _check_p, first_success, lp_ball_noise, per_sample_eps

__all__ = ["bim", "ifgsm", "pgd"]


_LOSSES = {"ce": cross_entropy_objective, "margin": margin_objective}


def _run_restart(run, todo: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, steps: int, make_objective,
                 random_start: bool, l1_k: int, best: torch.Tensor) -> torch.Tensor:
    """One PGD run on the samples ``todo``; writes first adversarial iterates into ``best`` and
    returns the indices still not fooled."""
    x0 = run.inputs[todo]
    x = x0.clone()
    if random_start:
        x = clip_box(x0 + lp_ball_noise(x0, run.norm, eps[todo], run.generator), run.bounds)
    active = torch.arange(todo.numel(), device=x.device)  # positions in todo still attacked
    for _ in range(steps):
        idx = todo[active]
        xa = x[active]
        logits, _, grad = run.model.value_and_grad(xa, make_objective(run.labels[idx], run.targeted), idx)
        hit = run.is_adversarial(logits, idx)
        best[idx[hit]] = xa[hit]
        active, xa, grad = active[~hit], xa[~hit], grad[~hit]
        if active.numel() == 0:
            return todo[:0]
        x[active] = pgd_step(xa, x0[active], grad, run.norm, eps[todo[active]], alpha[todo[active]], run.bounds, l1_k)
    idx = todo[active]
    with torch.no_grad():
        hit = run.is_adversarial(run.model(x[active], idx), idx)
    best[idx[hit]] = x[active][hit]
    return idx[~hit]


def pgd(model, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float | torch.Tensor, norm: float | str = "inf",
        steps: int = 40, step_size: float | torch.Tensor | None = None, random_start: bool = True,
        restarts: int = 1, loss: str = "ce", l1_sparsity: float = 0.99, targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None):
    """PGD in the lp ball of radius ``eps`` (float or ``[B]``), p in {1, 2, inf}.

    Step (:func:`minnorm.core.steps.pgd_step`, the one Madry training takes too):
    ``delta <- Proj_eps(delta + step_size * d)``, then clip to the box, where d maximises <grad, d>
    on the unit lp ball (sign(g) for linf, g/||g||_2 for l2); for l1, SLIDE's direction moves the
    top ``1 - l1_sparsity`` fraction of coordinates (the 99th percentile by default). Default
    ``step_size = 2.5 * eps / steps`` (float or ``[B]``): the iterates can cross the ball more
    than once, so the start matters little.

    ``random_start`` draws the start uniformly from the eps ball (:func:`lp_ball_noise`).
    ``restarts`` is the number of runs: each further run starts from a new random point, on the
    samples not fooled yet only, so a restart never undoes a success. ``loss`` is "ce"
    (cross-entropy) or "margin" (C&W logit margin). Samples misclassified already (or at the
    target, targeted) are returned as they are, at norm 0.
    """
    return _pgd(model, inputs, labels, eps, norm, steps, step_size, 2.5, random_start, restarts, loss,
                l1_sparsity, targeted, bounds, generator)


def bim(model, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float | torch.Tensor, steps: int = 10,
        step_size: float | torch.Tensor | None = None, loss: str = "ce", targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None):
    """BIM / I-FGSM (Kurakin et al., 2017, Sec. 2.2): ``steps`` FGSM steps of ``step_size`` from
    the clean input, each clipped to the eps cube and the box -- PGD linf without random start.

    Default ``step_size = 1.25 * eps / steps``: Kurakin et al. take alpha = 1 (of 255) and
    N = min(eps + 4, 1.25 eps) iterations, so alpha * N = 1.25 eps for eps <= 16 (of 255) and the
    iterates reach the faces of the cube with some slack.
    """
    return _pgd(model, inputs, labels, eps, "inf", steps, step_size, 1.25, False, 1, loss, 0.99,
                targeted, bounds, generator)


def _pgd(model, inputs: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: float | str, steps: int,
         step_size: float | torch.Tensor | None, step_factor: float, random_start: bool, restarts: int, loss: str,
         l1_sparsity: float, targeted: bool, bounds: tuple[float, float], generator: torch.Generator | None):
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=norm, generator=generator)
    _check_p(run.norm)
    eps_t = per_sample_eps(eps, inputs)
    steps = check_int("steps", steps)
    restarts = check_int("restarts", restarts)
    alpha = step_factor * eps_t / steps if step_size is None else per_sample_eps(step_size, inputs, "step_size")
    if step_size is not None and bool((alpha == 0).any()):
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {sorted(_LOSSES)}, got {loss!r}")
    l1_k = l1_coordinates(l1_sparsity, math.prod(inputs.shape[1:]))
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True (deterministic restarts would repeat the first)")
    return first_success(run, restarts, lambda todo, best: _run_restart(run, todo, eps_t, alpha, steps, _LOSSES[loss],
                                                                         random_start, l1_k, best))


ifgsm = bim

for _p, _name in ((1, "pgd-l1"), (2, "pgd-l2"), (math.inf, "pgd-linf")):
    register(_name, pgd, norm=_p, minimal=False, targeted=True,
             paper="Madry et al. 2018" + ("; SLIDE step, Tramer & Boneh 2019" if _p == 1 else ""),
             description=f"projected gradient descent in the {_name[4:]} ball, random start",
             defaults={"norm": _p}, quick={"eps": {1: 10.0, 2: 1.0}.get(_p, 0.1), "steps": 10},
             roles={"madry-training": {}})  # training uses madry_pgd (last iterate, every step)
register("bim", bim, norm=math.inf, minimal=False, targeted=True, paper="Kurakin et al. 2017",
         description="basic iterative method (I-FGSM): PGD linf from the clean input",
         quick={"eps": 0.1, "steps": 5})
