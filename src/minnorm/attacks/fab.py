"""Fast Adaptive Boundary attack, FAB and FAB-T (Croce & Hein, ICML 2020), minimal L1, L2 and Linf."""
from __future__ import annotations

import math

import torch

from ..core import (AttackResult, BestAdversarial, batch_view, check_int, check_positive, dual_exponent, lp_norm,
                    per_objective_gradients, register, start_attack)
from ..core.norms import min_step_to_hyperplane
from ..core.objectives import logit_difference, logit_margin, top_other_classes
from ._minimal import random_in_ball, refine_on_segment, start_tracking

__all__ = ["fab"]

_RESTART_RADIUS = {1.0: 5.0, 2.0: 1.0, math.inf: 0.1}  # for samples not broken yet, in units of the box width


def fab(model, inputs: torch.Tensor, labels: torch.Tensor, *, norm: float | str = 2, targeted: bool = False,
        steps: int = 100, restarts: int = 1, targets: int | None = None, candidates: int | None = None,
        alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, restart_radius: float | None = None, refine: int = 10,
        bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None) -> AttackResult:
    """FAB, Algorithm 1 of the paper; FAB-T (AutoAttack's targeted version) with ``targets=k``.

    Each iteration linearises ``f_l - f_c`` at ``x^(i)`` for the candidate classes ``l`` (``c`` the
    label), picks the class ``s`` whose linearised boundary is nearest (eq. (4); here measured
    within the box, see ``_nearest``), and projects both ``x^(i)`` and ``x_orig`` onto that hyperplane within the box
    (eq. (5), exactly: ``core.norms.min_step_to_hyperplane``). The biased step (eq. (6)):

        x^(i+1) = clip((1 - a)(x^(i) + eta d_i) + a (x_orig + eta d_orig)),
        a = min(||d_i||_p / (||d_i||_p + ||d_orig||_p), alpha_max),

    and whenever ``x^(i+1)`` is adversarial it is recorded and pulled back towards the input,
    ``x <- (1 - beta) x_orig + beta x`` (Sec. 3.2), so the search continues from just inside the
    clean side. ``restarts`` > 1 start again from random points at lp distance ``min(||best||_p / 2,
    restart_radius)`` around the input (Sec. 3.3).

    ``targets=k`` is FAB-T: one run (of ``steps`` iterations, times ``restarts``) per class among
    the ``k`` largest clean logits besides the label, each linearising only ``f_t - f_c``. With
    ``targeted=True`` the target is the given label and the competitor the strongest other class.
    ``candidates`` limits untargeted FAB to the classes with the largest clean logits (default all).

    Cost per iteration and active sample: one forward pass and one backward pass per linearised
    class (K - 1 for untargeted FAB, 1 for FAB-T), plus one forward pass when the iterate was
    adversarial (the backward step moves the point). Returns the smallest adversarial queried,
    after ``refine`` bisection steps towards the input (one forward each; removes the ``eta``
    overshoot; not in the paper).
    """
    steps = check_int("steps", steps)
    restarts = check_int("restarts", restarts)
    refine = check_int("refine", refine, minimum=0)
    if targets is not None:
        targets = check_int("targets", targets)
    if candidates is not None:
        candidates = check_int("candidates", candidates)
    alpha_max = check_positive("alpha_max", alpha_max, allow_zero=True)
    eta = check_positive("eta", eta)
    beta = check_positive("beta", beta)
    if alpha_max > 1 or beta > 1:
        raise ValueError(f"alpha_max and beta must be in [0, 1], got {alpha_max}, {beta}")
    if restart_radius is not None:
        restart_radius = check_positive("restart_radius", restart_radius)
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=norm, generator=generator)
    if run.norm not in _RESTART_RADIUS:
        raise ValueError(f"fab supports norm 1, 2 or inf, got {run.norm}")
    tracker, index = start_tracking(run)
    if len(index) == 0:
        return run.finish(tracker.points)
    radius = (restart_radius if restart_radius is not None else _RESTART_RADIUS[run.norm]) * (run.bounds[1] - run.bounds[0])
    for classes in _class_sets(run, index, targets, candidates):
        for r in range(restarts):
            start = run.inputs[index]
            if r > 0:
                rad = torch.clamp(tracker.norms[index] / 2, max=radius)
                start = random_in_ball(start, run.norm, rad, run.generator, run.bounds)
            _fab_run(run, tracker, index, classes, start, steps, (alpha_max, eta, beta))
    refine_on_segment(run, tracker, index, refine)
    return run.finish(tracker.points)


def _class_sets(run, index: torch.Tensor, targets: int | None, candidates: int | None) -> list[torch.Tensor]:
    """Classes to linearise, one ``[b, C]`` tensor per run: all candidates at once (FAB), one target
    class per run (FAB-T), or the given targets (targeted mode)."""
    if run.targeted:
        return [run.labels[index][:, None]]
    if run.num_classes < 2:
        return []
    if targets is None:
        return [top_other_classes(run.clean_logits[index], run.labels[index], candidates or run.num_classes)]
    top = top_other_classes(run.clean_logits[index], run.labels[index], targets)
    return [top[:, j:j + 1] for j in range(top.shape[1])]


def _differences(run, tracker: BestAdversarial, index: torch.Tensor, x: torch.Tensor, classes: torch.Tensor):
    """Records ``x`` (one forward pass) and returns, for the rows where it is not adversarial,
    ``f_l - f_c`` ``[b, C]`` and their gradients ``[b, C, *x]`` (C backward passes, charged to
    those rows only), with the adversarial mask. ``c`` is the label (untargeted) or, towards a
    target ``l`` (targeted mode), the strongest other class."""
    with torch.enable_grad():
        xa = x.detach().requires_grad_(True)
        logits = run.model(xa, index)
        adv = tracker.offer(index, x, logits.detach())
        if run.targeted:  # towards the target l, against the strongest other class
            diff = logit_margin(logits, classes[:, 0], True)[:, None]
        else:
            diff = logit_difference(logits, run.labels[index], classes)
        grads = torch.zeros(x.shape[0], classes.shape[1], *x.shape[1:], dtype=x.dtype, device=x.device)
        todo = (~adv).nonzero().flatten()
        if todo.numel():
            grads[todo] = per_objective_gradients(diff[todo], xa, todo)
            run.model.charge(index[todo], backward=classes.shape[1])
    return diff.detach(), grads, adv


def _fab_run(run, tracker: BestAdversarial, index: torch.Tensor, classes: torch.Tensor, start: torch.Tensor,
             steps: int, params: tuple[float, float, float]) -> None:
    alpha_max, eta, beta = params
    x0, x, p = run.inputs[index], start.clone(), run.norm
    tiny = torch.finfo(x.dtype).tiny
    rows = torch.arange(len(index), device=x.device)
    for _ in range(steps):
        diff, grads, adv = _differences(run, tracker, index, x, classes)
        # Sec. 3.2: a successful point is pulled back towards x_orig before the next linearisation
        # (rarely, the pulled-back point is adversarial too: it is then linearised as it is)
        a = adv.nonzero().squeeze(1)
        if len(a):
            x[a] = (1 - beta) * x0[a] + beta * x[a]
            diff[a], grads[a], _ = _differences(run, tracker, index[a], x[a], classes[a])
        s = _nearest(diff, grads, x, p, run.bounds)
        w, d = grads[rows, s], diff[rows, s]
        step_x, _ = min_step_to_hyperplane(w, -d, p, x, run.bounds)
        at_orig = d + (w * (x0 - x)).flatten(1).sum(1)
        step_o, _ = min_step_to_hyperplane(w, -at_orig, p, x0, run.bounds)
        nx, no = lp_norm(step_x, p), lp_norm(step_o, p)
        alpha = torch.clamp(nx / (nx + no).clamp_min(tiny), max=alpha_max)
        alpha = batch_view(alpha, x)
        x = ((1 - alpha) * (x + eta * step_x) + alpha * (x0 + eta * step_o)).clamp(*run.bounds)
    with torch.no_grad():
        tracker.offer(index, x, run.model(x, index))


def _nearest(diff: torch.Tensor, grads: torch.Tensor, x: torch.Tensor, p: float, bounds: tuple[float, float]):
    """Index of the class whose linearised boundary is nearest within the box. The paper ranks by
    the unconstrained distance ``|f_l - f_c| / ||grad||_q`` (eq. (4)); with one class at a time
    (FAB-T) both agree, and ranking by the box-constrained step (unreachable ones last) keeps
    untargeted FAB from heading to a boundary the box puts far away, which matters most in L1."""
    b, c = diff.shape
    if c == 1:
        return torch.zeros(b, dtype=torch.long, device=diff.device)
    xs = x.unsqueeze(1).expand(b, c, *x.shape[1:]).flatten(0, 1)
    steps, ok = min_step_to_hyperplane(grads.flatten(0, 1), -diff.flatten(), p, xs, bounds)
    dist = torch.where(ok, lp_norm(steps, p), torch.full_like(ok, math.inf, dtype=diff.dtype)).view(b, c)
    unconstrained = diff.abs() / lp_norm(grads.flatten(0, 1), dual_exponent(p)).view(b, c).clamp_min(1e-30)
    return torch.where(torch.isfinite(dist), dist, math.inf + unconstrained).argmin(1)


for _p, _name in ((1.0, "fab-l1"), (2.0, "fab-l2"), (math.inf, "fab-linf")):
    register(_name, fab, norm=_p, minimal=True, targeted=True, paper="Croce & Hein 2020 (FAB)",
             description="fast adaptive boundary: biased projections onto the nearest linearised boundary",
             defaults={"norm": _p}, quick={"steps": 20})
