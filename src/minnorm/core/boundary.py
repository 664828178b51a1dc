"""Minimal lp steps onto linearised decision boundaries, with or without the input box.

The step DeepFool takes (Moosavi-Dezfooli et al., eq. (8) and Sec. 3.3, eq. (11)), Balda et al.'s
minimal-norm problem (8), FAB's projection (Croce & Hein, eq. (5)) and the trust region's
search step are one problem: for a sample, a class ``l`` and its linearised margin
``m_l - <w_l, r>``, the smallest ``||r||_p`` with ``<w_l, r> >= m_l``, and then the nearest
class. Without the box the answer is Hölder's (``m_l / ||w_l||_q`` along
``holder_direction(w_l, p)``); with the box it is
:func:`~minnorm.core.norms.min_step_to_hyperplane`, exact for any p.
"""
from __future__ import annotations

import math

import torch

from .norms import dual_exponent, holder_direction, lp_norm, min_step_to_hyperplane, parse_norm
from .steps import box_blocked


BOX_MODES = ("none", "faces", "exact")


def check_box_mode(box: str) -> str:
    if box not in BOX_MODES:
        raise ValueError(f"box must be one of {', '.join(BOX_MODES)}, got {box!r}")
    return box


def linear_boundary_steps(margins: torch.Tensor, grads: torch.Tensor, p: float | str, pad: float = 0.0,
                          x: torch.Tensor | None = None, bounds: tuple[float, float] | None = None,
                          box: str = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to, and minimal lp step onto, each linearised decision boundary.

    For a sample with reference class ``y`` and candidate classes ``l``, ``margins[b, l] = f_y -
    f_l`` and ``grads[b, l] = grad(f_l - f_y)`` (shape ``[B, C, *x]``). Linearised, class ``l``
    catches up with ``y`` along ``r`` once ``<grads, r> >= margins``. Without ``x``/``bounds``
    the smallest such ``r`` (DeepFool eq. (11), Hölder's equality case) is

        distance = margin / ||grad||_q,   step = (distance + pad) * holder_direction(grad, p),

    so that ``||step||_p = distance + pad`` (``pad``: DeepFool's code uses 1e-4 so that a zero
    margin still moves). Distances are signed: a negative one means the class already wins, and
    its step goes back to the boundary. A zero gradient gives distance ``inf`` (``0`` if the
    margin is 0) and a zero step.

    With ``x`` (``[B, *x]``) and ``bounds`` the box enters as ``box`` says:

    - ``"exact"``: the step keeps ``x + step`` in the box, the exact box-constrained step onto
      ``<grad, r> = margin + pad ||grad||_q`` (the padded plane; the unboxed step when the box
      does not bind), and the distance is its lp norm; a boundary the box cannot reach gets
      distance ``inf`` and the step that uses all the room towards it.
    - ``"faces"``: only the faces ``x`` already sits on count: gradient components that would
      push such a coordinate out of the box are dropped, the rest is the unboxed step (whose
      clipped version then falls short of the plane; an iterated attack re-linearises there).
    - ``"none"``: the box is ignored.

    Returns ``(distances [B, C], steps [B, C, *x])``.
    """
    p = parse_norm(p)
    if grads.shape[:2] != margins.shape:
        raise ValueError(f"grads {tuple(grads.shape)} must start with the margins' shape {tuple(margins.shape)}")
    check_box_mode(box)
    boxed = x is not None and bounds is not None and box != "none"
    if boxed and box == "faces":
        grads = _drop_blocked(margins, grads, x, bounds)
    flat = grads.flatten(0, 1)
    gnorm = lp_norm(flat, dual_exponent(p)).view_as(margins)
    if boxed and box == "exact":
        return _boxed_steps(margins, grads, gnorm, p, pad, x, bounds)
    ok = gnorm > 0
    distances = torch.where(ok, margins / gnorm.clamp_min(torch.finfo(grads.dtype).tiny),
                            torch.where(margins > 0, math.inf, 0.0).to(margins.dtype))
    direction = holder_direction(flat, p).view_as(grads)
    scale = torch.where(ok, distances + pad, torch.zeros_like(distances))
    steps = direction * scale.view(*scale.shape, *([1] * (grads.dim() - 2)))
    return distances, steps


def _drop_blocked(margins: torch.Tensor, grads: torch.Tensor, x: torch.Tensor, bounds: tuple[float, float]
                  ) -> torch.Tensor:
    """Zero the components of ``grads`` [B, C, *x] along which the step (``+grads`` for a positive
    margin, ``-grads`` for a negative one) would push a coordinate of ``x`` through the face it sits on."""
    sign = torch.where(margins < 0, -1.0, 1.0).to(grads.dtype)
    up = grads * sign.view(*sign.shape, *([1] * (grads.dim() - 2)))
    xs = x.unsqueeze(1)
    return grads.masked_fill(box_blocked(xs, up, bounds), 0)


def _boxed_steps(margins: torch.Tensor, grads: torch.Tensor, gnorm: torch.Tensor, p: float, pad: float,
                 x: torch.Tensor, bounds: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = margins.shape
    xs = x.unsqueeze(1).expand(b, c, *x.shape[1:]).flatten(0, 1)
    target = (margins + pad * gnorm).flatten()
    steps, ok = min_step_to_hyperplane(grads.flatten(0, 1), target, p, xs, bounds)
    dist = lp_norm(steps, p) * torch.where(target < 0, -1.0, 1.0).to(steps.dtype)
    dist = torch.where(ok, dist, torch.full_like(dist, math.inf))
    return dist.view(b, c), steps.view_as(grads)


def nearest_boundary_step(margins: torch.Tensor, grads: torch.Tensor, p: float | str, pad: float = 0.0,
                          x: torch.Tensor | None = None, bounds: tuple[float, float] | None = None,
                          box: str = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """The step onto the nearest linearised boundary (DeepFool's class choice, eq. (10)) among the
    ``C`` candidates of :func:`linear_boundary_steps`: ``(chosen [B], step [B, *x])``.

    With ``box="exact"`` the candidates are ranked by their box-constrained steps; when the box
    keeps every candidate out of reach, the one with the smallest unconstrained distance is taken
    (its step then uses all the room towards it)."""
    distances, steps = linear_boundary_steps(margins, grads, p, pad, x, bounds, box)
    chosen = distances.argmin(1)
    if x is not None and bounds is not None and box == "exact":
        stuck = torch.isinf(distances).all(1) & (margins.shape[1] > 0)
        if bool(stuck.any()):
            gnorm = lp_norm(grads.flatten(0, 1), dual_exponent(parse_norm(p))).view_as(margins)
            free = margins / gnorm.clamp_min(torch.finfo(grads.dtype).tiny)
            chosen = torch.where(stuck, free.argmin(1), chosen)
    return chosen, steps[torch.arange(len(chosen), device=chosen.device), chosen]
