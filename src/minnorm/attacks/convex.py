"""Convex-programming attacks of Balda, Behboodi and Mathar (2018), "On Generation of Adversarial
Examples using Convex Programming": the gradient-based norm-constrained problem (GNII), its
iterated form Algorithm 1-n, Algorithm 2, and the minimal-norm form (8).

(GNII) linearises the fooling function ``L`` (negative once the label changes) and minimises
``L(x) + <grad L(x), eta>`` over ``||eta||_p <= eps``. Its closed form (Prop. 2, eqs. (6)-(7))
is the Hölder direction; here the input box is part of the problem too, solved exactly by
:func:`minnorm.core.norms.holder_step_in_box`. ``L`` comes in three flavours (``loss``):

- ``"margin"``: eq. (3), ``L = min_{l != k} f_k - f_l`` (Algorithms 1 and 1-n). With
  ``class_choice="linearised"`` (the authors' code) every piece ``f_k - f_l`` is linearised and
  the step goes to the class whose linearised value over the ball (and box) is lowest,
  ``(f_k - f_l) - eps ||grad f_k - grad f_l||_q`` without the box; with ``"active"`` ``L`` is
  differentiated as it is, i.e. through the runner-up class only (one backward pass).
- ``"score"``: Algorithm 2, ``L ~ f_k`` (no search over the classes).
- ``"ce"``: ``L = -`` cross-entropy, the training loss; with p = inf this is FGSM (Sec. III).

``f`` is the logit vector by default (as in the authors' code) or the softmax probabilities
(``scores="probabilities"``, the paper's text). Targeted attacks use ``L = max_{l != t} f_l -
f_t`` (differentiated through its active piece), ``L = -f_t`` and the cross-entropy to ``t``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..core import (AttackResult, check_int, check_positive, clip_box, parse_norm, per_objective_gradients, register,
                    start_attack)
from ..core.boundary import check_box_mode, nearest_boundary_step
from ..core.objectives import cross_entropy, logit_difference, logit_margin
from ..core.norms import holder_step_in_box
from .noise import per_sample_eps

__all__ = ["algorithm1", "algorithm2", "convex_min_norm", "gnii_attack"]

LOSSES = ("margin", "score", "ce")
SCORES = ("logits", "probabilities")
CLASS_CHOICES = ("linearised", "active")
PAPER = "Balda, Behboodi and Mathar 2018 (convex programming)"


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _pieces(loss: str, scores: str, class_choice: str, targeted: bool, num_classes: int
            ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-sample pieces ``[b, m]`` of L from logits ``[b, K]`` and labels ``[b]``; L is their min."""
    def f(logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(1) if scores == "probabilities" else logits

    def pieces(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if loss == "ce":  # L descends what the cross-entropy attacks ascend
            return -cross_entropy(logits, labels, targeted)[:, None]
        s = f(logits)
        if loss == "score":
            own = s.gather(1, labels[:, None])
            return -own if targeted else own
        if targeted or class_choice == "active":  # through the active piece: f_k - f_runner-up, or max_{l != t} f_l - f_t
            return -logit_margin(s, labels, targeted)[:, None]
        others = (labels[:, None] + torch.arange(1, num_classes, device=labels.device)) % num_classes
        return -logit_difference(s, labels, others)
    return pieces


def _linearise(run, x: torch.Tensor, index: torch.Tensor, pieces) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass at ``x`` (charged to ``index``); for the samples it does not already fool,
    the pieces of L and their gradients (one backward pass per piece, charged to those only).

    Returns ``(hit [b], values [r, m], grads [r, m, *x])`` with ``r`` = the samples not hit."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = run.model(xg, index)
        hit = run.is_adversarial(logits.detach(), index)
        rows = (~hit).nonzero().squeeze(1)
        if rows.numel() == 0:
            return hit, x.new_zeros(0, 1), x.new_zeros(0, 1, *x.shape[1:])
        values = pieces(logits[rows], run.labels[index[rows]])
        grads = per_objective_gradients(values, xg, rows)
        run.model.charge(index[rows], backward=values.shape[1])
    return hit, values.detach(), grads


def _iterate(run, pieces, rounds: int, step) -> torch.Tensor:
    """Up to ``rounds`` rounds of linearise-and-step from the clean inputs; a sample stops at its
    first adversarial iterate (misclassified ones at once). ``step(todo, values, grads, x)``
    returns the move of the samples ``todo`` from their iterates ``x``; the new iterate is
    clipped to the box."""
    x = run.inputs.clone()
    todo = (~run.is_adversarial(run.clean_logits)).nonzero().squeeze(1)
    for _ in range(rounds):
        if todo.numel() == 0:
            break
        hit, values, grads = _linearise(run, x[todo], todo, pieces)
        todo = todo[~hit]
        if todo.numel() == 0:
            break
        x[todo] = clip_box(x[todo] + step(todo, values, grads, x[todo]), run.bounds)
    return x


def gnii_attack(model, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float | torch.Tensor,
                norm: float | str = "inf", steps: int = 1, loss: str = "margin", scores: str = "logits",
                class_choice: str = "linearised", targeted: bool = False,
                bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None) -> AttackResult:
    """(GNII) solved ``steps`` times with radius ``eps / steps`` each: Algorithm 1 (``steps=1``,
    ``loss="margin"``), Algorithm 1-n (``steps=n``), Algorithm 2 (``loss="score"``), FGSM/FGM
    (``loss="ce"``). Any p >= 1; ``eps`` is a float or a ``[B]`` tensor.

    Each step re-linearises L at the current point, re-chooses the class (``class_choice``,
    see the module docstring) and moves by the exact maximiser of the linearised decrease over
    the ``eps / steps`` ball intersected with the box, so the iterate never leaves the box and
    the total perturbation stays in the eps ball (triangle inequality). A sample stops at its
    first adversarial iterate (for a fixed-eps attack any fooling point answers the question).
    Misclassified samples are returned as they are, at norm 0.

    Cost per step and active sample: one forward pass and one backward pass per piece of L
    (K - 1 for the linearised margin, else 1). ``scores`` does not apply to ``loss="ce"`` (the
    cross-entropy of the softmax is that of the logits).
    """
    _check_choice("loss", loss, LOSSES)
    _check_choice("scores", scores, SCORES)
    _check_choice("class_choice", class_choice, CLASS_CHOICES)
    steps = check_int("steps", steps)
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=norm, generator=generator)
    radius = per_sample_eps(eps, inputs) / steps
    if run.batch_size == 0:
        return run.finish(inputs.clone())
    pieces = _pieces(loss, scores, class_choice, run.targeted, run.num_classes)
    classes = torch.full((run.batch_size,), -1, dtype=torch.long, device=inputs.device)

    def step(todo, values, grads, x):
        eta, chosen = _gnii_step(values, grads, x, radius[todo], run.norm, run.bounds)
        classes[todo] = (run.labels[todo] + 1 + chosen) % run.num_classes
        return eta

    x = _iterate(run, pieces, steps, step)
    info = {"classes": classes} if loss == "margin" and not run.targeted and class_choice == "linearised" else {}
    return run.finish(x, info=info)


def _gnii_step(values: torch.Tensor, grads: torch.Tensor, x: torch.Tensor, radius: torch.Tensor, p: float,
               bounds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form (GNII) step for every piece, then the piece whose linearised value is lowest."""
    r, m = values.shape
    flat = grads.flatten(0, 1)
    xs = x.repeat_interleave(m, dim=0)
    steps = holder_step_in_box(-flat, p, radius.repeat_interleave(m), xs, bounds).view_as(grads)
    linear = values + (grads * steps).flatten(2).sum(2)
    chosen = linear.argmin(1)
    return steps[torch.arange(r, device=x.device), chosen], chosen


def algorithm1(model, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float | torch.Tensor,
               norm: float | str = "inf", steps: int = 1, scores: str = "logits", targeted: bool = False,
               bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None) -> AttackResult:
    """Algorithm 1 (``steps=1``) and Algorithm 1-n (``steps=n``, radius eps/n per step) of Balda
    et al.: (GNII) on the margin L of eq. (3), the class re-chosen by its linearised value at each
    step. See :func:`gnii_attack`."""
    return gnii_attack(model, inputs, labels, eps=eps, norm=norm, steps=steps, loss="margin", scores=scores,
                       targeted=targeted, bounds=bounds, generator=generator)


def algorithm2(model, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float | torch.Tensor,
               norm: float | str = "inf", scores: str = "logits", targeted: bool = False,
               bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None) -> AttackResult:
    """Algorithm 2 of Balda et al.: one (GNII) step with ``L ~ f_k`` (the own-class score alone,
    one backward pass). See :func:`gnii_attack`."""
    return gnii_attack(model, inputs, labels, eps=eps, norm=norm, steps=1, loss="score", scores=scores,
                       targeted=targeted, bounds=bounds, generator=generator)


def convex_min_norm(model, inputs: torch.Tensor, labels: torch.Tensor, *, norm: float | str = 2,
                    max_iterations: int = 50, overshoot: float = 0.02, scores: str = "logits",
                    class_choice: str = "active", box: str | None = None, targeted: bool = False,
                    bounds: tuple[float, float] = (0.0, 1.0),
                    generator: torch.Generator | None = None) -> AttackResult:
    """The minimal-norm form (8), ``min ||eta||_p s.t. L(x) + <grad L, eta> <= 0``, repeated at
    the new point until the label changes (Sec. III), for any p >= 1.

    Its solution is ``eta = L / ||grad L||_q * holder_direction(-grad L, p)``
    (:func:`~minnorm.core.boundary.nearest_boundary_step`). ``class_choice="active"`` is (8)
    as written: ``grad L`` of eq. (3) is that of the runner-up class (one backward pass per
    iteration). ``"linearised"`` linearises every piece ``f_k - f_l``; the smallest eta that
    takes *some* linearised piece below 0 goes to the nearest linearised boundary, which is
    exactly a DeepFool step (K - 1 backward passes).

    As in minnorm's DeepFool each step, padded by 1e-4 (DeepFool's code) and lengthened by
    ``1 + overshoot``, goes from the current iterate, which is then clipped to the box. A sample
    stops at its first adversarial iterate, which is returned.

    ``box`` says how the input box enters (8) (:func:`~minnorm.core.boundary.linear_boundary_steps`):
    ``"none"`` is (8) as written, the clipped step falling short of the linearised boundary and
    the next one re-linearising from there; ``"faces"`` drops the gradient components that push
    a coordinate through a face it already sits on; ``"exact"`` adds the box to (8) as a
    constraint (the paper: other convex constraints can be incorporated), each step landing on
    the linearised boundary inside the box. The default (None) is ``"none"``, and ``"faces"`` for
    p = 1, where (8) as written stalls: its l1 step moves one coordinate, which once on a face is
    chosen again and clipped away. Median norm and passes per image on 89 correctly classified
    sample images of the shipped ``cnn`` (none / faces / exact): L2 0.302, 15.2 / 0.345, 7.8 /
    0.353, 7.7; Linf 0.0196, 10.7 / 0.0223, 7.1 / 0.0223, 6.9; L1 13% success / 5.02 (98%), 24.5 /
    5.34 (99%), 17.4. Fewer, longer steps end further out.
    """
    _check_choice("scores", scores, SCORES)
    _check_choice("class_choice", class_choice, CLASS_CHOICES)
    box = check_box_mode(box) if box is not None else ("faces" if parse_norm(norm) == 1 else "none")
    max_iterations = check_int("max_iterations", max_iterations)
    overshoot = check_positive("overshoot", overshoot, allow_zero=True)
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=norm, generator=generator)
    if run.batch_size == 0:
        return run.finish(inputs.clone())
    pieces = _pieces("margin", scores, class_choice, run.targeted, run.num_classes)
    iterations = torch.zeros(run.batch_size, dtype=torch.long, device=inputs.device)

    def step(todo, values, grads, x):
        iterations[todo] += 1
        return (1 + overshoot) * nearest_boundary_step(values, -grads, run.norm, 1e-4, x, run.bounds, box)[1]

    x = _iterate(run, pieces, max_iterations, step)
    return run.finish(x, info={"iterations": iterations})


_QUICK_EPS = {1.0: 10.0, 2.0: 1.0, math.inf: 0.1}
for _p, _tag in ((math.inf, "linf"), (2.0, "l2"), (1.0, "l1")):
    register(f"alg1-{_tag}", algorithm1, norm=_p, minimal=False, targeted=True, paper=PAPER,
             description=f"Algorithm 1: one exact (GNII) step on the linearised margin in the {_tag} ball and box",
             defaults={"norm": _p}, quick={"eps": _QUICK_EPS[_p]})
    register(f"alg1n-{_tag}", algorithm1, norm=_p, minimal=False, targeted=True, paper=PAPER,
             description=f"Algorithm 1-n: n (GNII) steps of eps/n, class re-chosen each step ({_tag})",
             defaults={"norm": _p, "steps": 10}, quick={"eps": _QUICK_EPS[_p], "steps": 3})
    register(f"alg2-{_tag}", algorithm2, norm=_p, minimal=False, targeted=True, paper=PAPER,
             description=f"Algorithm 2: one (GNII) step lowering the own-class score f_k ({_tag})",
             defaults={"norm": _p}, quick={"eps": _QUICK_EPS[_p]})
    register(f"convex-min-{_tag}", convex_min_norm, norm=_p, minimal=True, targeted=True, paper=PAPER,
             description=f"minimal-norm form (8) iterated until the label changes ({_tag})",
             defaults={"norm": _p}, quick={"max_iterations": 20},
             roles={"fooling": {"class_choice": "linearised"},  # DeepFool's step for any p
                    **({"certify-upper": {}} if _p == 1 else {})})
