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

from ..core import batch_view, check_int, clip_box, holder_direction, project_lp_ball, register, start_attack
from .fgsm import loss_objective
from .noise import _check_p, lp_ball_noise, per_sample_eps

__all__ = ["bim", "ifgsm", "pgd"]


def margin_objective(labels: torch.Tensor, targeted: bool):
    """Logit margin to *ascend* (Carlini & Wagner, 2017, f_6 without the clamp):
    ``max_{j != y} z_j - z_y`` untargeted, ``z_t - max_{j != t} z_j`` targeted. Positive iff adversarial."""
    def objective(logits: torch.Tensor) -> torch.Tensor:
        own = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.scatter(1, labels[:, None], -math.inf).amax(dim=1)
        return own - other if targeted else other - own
    return objective


_LOSSES = {"ce": loss_objective, "margin": margin_objective}


def sparse_l1_direction(grad: torch.Tensor, x: torch.Tensor, bounds: tuple[float, float], k: int) -> torch.Tensor:
    """SLIDE's step (Tramer & Boneh, 2019): sign(g) on the ``k`` largest |g_i|, scaled to
    unit l1 norm, ignoring coordinates the box stops from moving the way g points.

    The exact l1 steepest-ascent direction moves one coordinate per step, which is slow and
    stalls once that coordinate hits the box; k > 1 spreads each step over the top coordinates.
    """
    g = grad.flatten(1)
    xf = x.flatten(1)
    blocked = ((xf <= bounds[0]) & (g < 0)) | ((xf >= bounds[1]) & (g > 0))
    g = g.masked_fill(blocked, 0)
    idx = g.abs().topk(min(k, g.shape[1]), dim=1).indices
    d = torch.zeros_like(g).scatter_(1, idx, g.gather(1, idx).sign())
    return (d / d.abs().sum(1, keepdim=True).clamp_min(1)).view_as(grad)


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
        if run.norm == 1:
            direction = sparse_l1_direction(grad, xa, run.bounds, l1_k)
        else:
            direction = holder_direction(grad, run.norm)
        delta = xa - x0[active] + batch_view(alpha[todo[active]], xa) * direction
        x[active] = clip_box(x0[active] + project_lp_ball(delta, run.norm, eps[todo[active]]), run.bounds)
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

    Step: ``delta <- Proj_eps(delta + step_size * d)``, then clip to the box, where d maximises
    <grad, d> on the unit lp ball (:func:`holder_direction`: sign(g) for linf, g/||g||_2 for l2);
    for l1, :func:`sparse_l1_direction` moves the top ``1 - l1_sparsity`` fraction of coordinates
    (SLIDE's 99th percentile by default). Default ``step_size = 2.5 * eps / steps`` (float or
    ``[B]``): the iterates can cross the ball more than once, so the start matters little.

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
    if not 0 <= l1_sparsity < 1:
        raise ValueError(f"l1_sparsity must be in [0, 1), got {l1_sparsity}")
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True (deterministic restarts would repeat the first)")
    if run.batch_size == 0:
        return run.finish(inputs.clone())
    l1_k = max(1, math.ceil(round((1 - l1_sparsity) * inputs[0].numel(), 6)))
    best = run.inputs.clone()
    todo = (~run.is_adversarial(run.clean_logits)).nonzero().squeeze(1)
    for _ in range(restarts):
        if todo.numel() == 0:
            break
        todo = _run_restart(run, todo, eps_t, alpha, steps, _LOSSES[loss], random_start, l1_k, best)
    return run.finish(best)


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
