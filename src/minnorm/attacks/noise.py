"""Random noise at a fixed radius: the floor any gradient attack must beat.

Also home of the two samplers PGD's random start uses (uniform in an lp ball, noise on its
sphere), so that all randomness of this family is drawn in one place, from ``run.generator``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..core import AttackResult, batch_view, check_int, clip_box, rand_like, register, scale_to_norm, start_attack

__all__ = ["random_noise"]


def _check_p(p: float) -> None:
    if p not in (1.0, 2.0) and not math.isinf(p):
        raise NotImplementedError(f"only the l1, l2 and linf norms are supported, got p={p}")


def _random_sign(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.where(rand_like(like, generator) < 0.5, -1.0, 1.0).to(like.dtype)


def per_sample_eps(eps: float | torch.Tensor, inputs: torch.Tensor, name: str = "eps") -> torch.Tensor:
    """``eps`` as a ``[B]`` tensor on the inputs' device/dtype; ValueError unless finite and >= 0."""
    b = inputs.shape[0]
    e = torch.as_tensor(eps, dtype=inputs.dtype, device=inputs.device)
    if e.dim() > 1 or (e.dim() == 1 and e.shape[0] != b):
        raise ValueError(f"{name} must be a number or a [B] = [{b}] tensor, got shape {tuple(e.shape)}")
    if e.numel() and not (bool(torch.isfinite(e).all()) and bool((e >= 0).all())):
        raise ValueError(f"{name} must be finite and >= 0, got {eps}")
    return e.expand(b).clone()


def lp_sphere_noise(like: torch.Tensor, p: float, radius: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random perturbations of lp norm ``radius`` ``[B]``, shaped like ``like``.

    p = inf: ``radius * sign(u)``, a uniformly random vertex of the cube (every coordinate moved
    the full budget). p = 2: uniform on the sphere (a normalised Gaussian). p = 1: a normalised
    vector of i.i.d. Laplace coordinates, which is distributed by the cone measure of the l1
    sphere (Schechtman & Zinn, 1990) -- uniform over each face.
    """
    _check_p(p)
    if math.isinf(p):
        return _random_sign(like, generator) * batch_view(radius, like)
    if p == 2:
        direction = rand_like(like, generator, normal=True)
    else:
        # -log1p(-u) with u in [0, 1) is Exp(1) and never inf, unlike -log(u)
        direction = -torch.log1p(-rand_like(like, generator)) * _random_sign(like, generator)
    return scale_to_norm(direction, p, radius)


def lp_ball_noise(like: torch.Tensor, p: float, radius: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform samples from the lp ball of radius ``radius`` ``[B]``, shaped like ``like``.

    p = inf: i.i.d. uniform coordinates. p in {1, 2}: a cone-measure direction from
    :func:`lp_sphere_noise` times ``radius * u**(1/d)``, since the volume inside radius r grows
    as r**d. (In high dimension nearly all of the ball's volume lies close to its sphere.)
    """
    _check_p(p)
    if math.isinf(p):
        return (2 * rand_like(like, generator) - 1) * batch_view(radius, like)
    d = like[0].numel() if like.shape[0] else 1
    u = rand_like(like.new_empty(like.shape[0]), generator)
    return lp_sphere_noise(like, p, radius * u ** (1.0 / d), generator)


def random_noise(model, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float | torch.Tensor,
                 norm: float | str = "inf", trials: int = 1, targeted: bool = False,
                 bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None):
    """Random noise of lp norm ``eps`` (see :func:`lp_sphere_noise`), clipped to the box; each
    sample keeps its first adversarial draw out of ``trials``.

    A sample fooled by a draw -- or misclassified already (returned as is, norm 0) -- costs no
    further passes. Targeted mode is supported and just checks for the target class: it is a
    sanity floor, rarely successful, not a real targeted attack. Clipping to the box can only
    shrink the returned perturbation below ``eps``.
    """
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=norm, generator=generator)
    _check_p(run.norm)
    eps_t = per_sample_eps(eps, inputs)
    trials = check_int("trials", trials)

    def draw(todo: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
        x = clip_box(run.inputs[todo] + lp_sphere_noise(run.inputs[todo], run.norm, eps_t[todo], run.generator),
                     run.bounds)
        with torch.no_grad():
            hit = run.is_adversarial(run.model(x, todo), todo)
        best[todo[hit]] = x[hit]
        return todo[~hit]
    return first_success(run, trials, draw)


def first_success(run, rounds: int, attempt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> AttackResult:
    """Up to ``rounds`` calls ``attempt(todo, best)``, each on the samples not fooled yet (those
    misclassified already are returned as they are, at no cost): it writes the adversarial points
    it finds into ``best`` and returns the indices still not fooled. Each sample keeps its first
    adversarial point (the fixed-eps attacks' rule: any point of the ball that fools answers)."""
    if run.batch_size == 0:
        return run.finish(run.inputs.clone())
    best = run.inputs.clone()
    todo = (~run.is_adversarial(run.clean_logits)).nonzero().squeeze(1)
    for _ in range(rounds):
        if todo.numel() == 0:
            break
        todo = attempt(todo, best)
    return run.finish(best)


for _p, _name in ((2, "noise-l2"), (math.inf, "noise-linf")):
    register(_name, random_noise, norm=_p, minimal=False, targeted=True, paper="baseline (no paper)",
             description=f"random noise on the {_name[6:]} sphere of radius eps, best of `trials` draws",
             defaults={"norm": _p}, quick={"eps": {2: 1.0}.get(_p, 0.1), "trials": 2})
