"""Attacks on general outputs (Balda, Behboodi and Mathar 2018, Sec. IV): regression and dense
prediction, where the model's output is any tensor ``[B, ...]`` rather than class logits.

- :func:`output_attack` maximises the first-order output change ``||J eta||_2`` (eq. (9)) over
  ``||eta||_p <= eps``, i.e. attains the operator norm ``||J||_{p->2}`` of the Jacobian ``J`` of
  each sample: p = 2 by the leading right singular vector (power iteration on ``J^T J`` with
  one JVP and one VJP per step, the Jacobian is never formed), p = 1 by the largest column norm
  of ``J`` (a single-coordinate attack), other p, and any p inside an input box, by a monotone
  conditional-gradient ascent (see the function).
- :func:`jacobian_column_norms` computes ``||J e_k||_2`` for every input coordinate exactly.
- :func:`dense_targeted_attack` is the targeted variant for per-pixel classes (Sec. IV):
  ``L_t = sum over pixels of f_k - f_t`` with a fixed target map, minimised by (GNII) steps.

These are plain functions, not registry entries: the attack contract is written for classifiers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core import CountedModel, batch_view, check_int, check_positive, lp_norm, make_generator, parse_norm, rand_like
from ..core.linalg import power_iteration
from ..core.norms import holder_step_in_box
from ..core.validation import check_batch
from .noise import per_sample_eps

__all__ = ["DenseAttackResult", "OutputAttackResult", "dense_targeted_attack", "jacobian_column_norms",
           "output_attack"]


@dataclass
class OutputAttackResult:
    """What :func:`output_attack` found, per sample.

    ``gain`` is the first-order change ``||J eta||_2`` and ``gain / eps`` a lower bound on the
    operator norm ``||J||_{p->2}`` (exact for p = 1 and, up to convergence, p = 2 without a box);
    ``change`` is the true ``||f(x + eta) - f(x)||_2``. Passes count forward passes and products
    (a JVP or a VJP counts as one backward pass), per sample.
    """

    adversarials: torch.Tensor
    perturbations: torch.Tensor
    gain: torch.Tensor
    change: torch.Tensor
    forward_passes: torch.Tensor
    backward_passes: torch.Tensor
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class DenseAttackResult:
    """What :func:`dense_targeted_attack` found: ``target_fraction`` is the share of the
    (non-ignored) pixels of each sample predicted as their target, before (``clean_...``) and
    after; ``norms`` the lp norms of the perturbations."""

    adversarials: torch.Tensor
    target_fraction: torch.Tensor
    clean_target_fraction: torch.Tensor
    norms: torch.Tensor
    forward_passes: torch.Tensor
    backward_passes: torch.Tensor
    seconds: float


def _jvp(model, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.func.jvp(model, (x,), (v,))[1]


def _sq_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).pow(2).sum(1)


@torch.no_grad()  # the products are function transforms; no graph w.r.t. the weights
def jacobian_column_norms(model, inputs: torch.Tensor, *, chunk: int = 64, mode: str = "auto") -> torch.Tensor:
    """``||J e_k||_2`` for every input coordinate ``k`` of every sample, ``[B, *x]``, exactly.

    ``mode="reverse"``: one VJP per output coordinate (rows ``e_i^T J``, squares summed over
    ``i``); ``"forward"``: one JVP per input coordinate (the columns themselves); ``"auto"`` picks
    the one with fewer products, i.e. ``min(d_in, d_out)`` products per sample, batched over
    samples and over ``chunk`` basis vectors at once with ``torch.func.vmap``. Memory:
    ``chunk * B * max(d_in, d_out)`` numbers; ``J`` itself is never stored.
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be auto, forward or reverse, got {mode!r}")
    chunk = check_int("chunk", chunk)
    x = inputs.detach()
    with torch.no_grad():
        out = model(x)
    d_in, d_out = x[0].numel(), out[0].numel()
    if mode == "auto":
        mode = "forward" if d_in <= d_out else "reverse"
    total = torch.zeros(x.shape[0], d_in, dtype=x.dtype, device=x.device)
    if mode == "forward":
        for start in range(0, d_in, chunk):
            basis = torch.eye(d_in, dtype=x.dtype, device=x.device)[start:start + chunk]
            tangents = basis[:, None, :].expand(-1, x.shape[0], -1).reshape(-1, *x.shape)
            cols = torch.func.vmap(lambda v: _jvp(model, x, v))(tangents)  # [c, B, *out]
            total[:, start:start + basis.shape[0]] = cols.flatten(2).pow(2).sum(2).T
        return total.sqrt().view_as(x)
    _, pullback = torch.func.vjp(model, x)
    for start in range(0, d_out, chunk):
        basis = torch.eye(d_out, dtype=out.dtype, device=out.device)[start:start + chunk]
        cot = basis[:, None, :].expand(-1, x.shape[0], -1).reshape(-1, *out.shape)
        rows = torch.func.vmap(lambda u: pullback(u)[0])(cot)  # [c, B, *x]
        total += rows.flatten(2).pow(2).sum(0)
    return total.sqrt().view_as(x)


@torch.no_grad()
def output_attack(model, inputs: torch.Tensor, *, eps: float | torch.Tensor, norm: float | str = 2,
                  iterations: int = 50, tol: float = 1e-7, restarts: int = 4,
                  bounds: tuple[float, float] | None = None,
                  generator: torch.Generator | None = None) -> OutputAttackResult:
    """Maximise ``||f(x + eta) - f(x)||_2`` s.t. ``||eta||_p <= eps`` through its linearisation
    ``||J eta||_2`` (Sec. IV, eq. (9)); the model maps ``[B, ...]`` to any ``[B, ...]`` output.

    - p = 2: power iteration on ``J^T J`` (one JVP and one VJP per step, from a Gaussian start
      drawn from ``generator``) gives the leading right singular vector ``v``; ``eta = eps v``
      attains ``eps ||J||_2``. Each sample stops once its singular-value estimate changes by
      less than ``tol`` (relative).
    - p = 1: ``||J||_{1->2}`` is the largest column norm; ``eta = +-eps e_k*`` moves the single
      coordinate ``k*`` (:func:`jacobian_column_norms`, ``min(d_in, d_out)`` products).
    - other p (p = inf included), and any p with a box: ``||J||_{p->2}`` is NP-hard for p = inf
      (Rohn 2000, the paper's [22]). We take the conditional-gradient ascent
      ``eta <- argmax_{||e||_p <= eps, box} <J^T J eta, e>`` (the exact box step of
      :func:`~minnorm.core.norms.holder_step_in_box`), which never decreases the convex objective
      ``||J eta||^2`` and stops at a fixed point; for p = 2 without a box it *is* the power
      iteration, for p = inf it is the sign iteration ``eta <- eps sign(J^T J eta)``. It runs
      from the p = 2 direction rounded into the set (``+-v``) and from ``restarts`` Gaussian
      draws rounded likewise, all stacked in one batch, and keeps the best: the sign iteration
      has many fixed points, and ``+-v`` is often a poor one. A lower bound, not a
      certificate; the SDP relaxation of the paper's [23] is not implemented.
    - p = 1 with a box: the column with the largest ``||J e_k||_2 * min(eps, room_k)``.

    The first-order objective does not see the sign of ``eta``: the final step keeps ``eta`` or
    ``-eta`` (clipped into the box), whichever changes the true output more (two forward passes).
    """
    bounds = check_batch(inputs, bounds)
    p = parse_norm(norm)
    iterations = check_int("iterations", iterations)
    restarts = check_int("restarts", restarts, minimum=0)
    tol = check_positive("tol", tol, allow_zero=True)
    started = time.perf_counter()
    x = inputs.detach()
    b = x.shape[0]
    eps_t = per_sample_eps(eps, x)
    counted = CountedModel(model, b, x.device)
    gen = make_generator(generator, x.device)
    info: dict[str, Any] = {}
    if b == 0:
        eta = torch.zeros_like(x)
    elif p == 1:
        eta = _column_step(counted, model, x, eps_t, bounds, info)
    else:
        v = _power_iteration(counted, x, iterations, tol, gen)
        if p == 2 and bounds is None:
            eta = v * batch_view(eps_t, x)
        else:
            eta = _conditional_gradient(counted, x, v, p, eps_t, bounds, iterations, tol, restarts, gen)
    return _finish(counted, x, eta, bounds, started, info)


def _column_step(counted: CountedModel, model, x: torch.Tensor, eps: torch.Tensor, bounds: tuple[float, float] | None,
                 info: dict[str, Any]) -> torch.Tensor:
    """p = 1: the whole budget on the coordinate with the largest ``||J e_k||_2`` (times its room
    in the box), exactly (:func:`jacobian_column_norms`, ``min(d_in, d_out)`` products)."""
    b = x.shape[0]
    d_in, d_out = x[0].numel(), counted(x)[0].numel()
    cols = jacobian_column_norms(model, x)
    counted.charge(backward=min(d_in, d_out))  # its products (its forward pass is the one above)
    score = cols.flatten(1)
    rows = torch.arange(b, device=x.device)
    if bounds is not None:
        up, down = (bounds[1] - x).flatten(1), (x - bounds[0]).flatten(1)
        score = score * torch.minimum(torch.maximum(up, down), eps[:, None])
    k = score.argmax(1)
    info["coordinate"] = k
    info["column_norm"] = cols.flatten(1)[rows, k]
    eta = torch.zeros(b, x[0].numel(), dtype=x.dtype, device=x.device)
    if bounds is None:
        eta[rows, k] = eps
    else:  # the side with more room; the final step may still flip it
        uk, dk = up[rows, k], down[rows, k]
        eta[rows, k] = torch.where(uk >= dk, torch.minimum(eps, uk), -torch.minimum(eps, dk))
    return eta.view_as(x)


def _power_iteration(counted: CountedModel, x: torch.Tensor, iterations: int, tol: float,
                     gen: torch.Generator) -> torch.Tensor:
    """Unit leading right singular vectors of each sample's Jacobian, ``[B, *x]``: power iteration
    on ``J^T J`` (one JVP and one VJP per step), each sample until its ``||J v||`` settles."""
    def normal(v: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = counted.jvp(x[rows], v, rows)
        return counted.vjp(x[rows], u, rows), _sq_norm(u).sqrt()

    return power_iteration(normal, rand_like(x, gen, normal=True), iterations, tol)[0]


def _conditional_gradient(counted: CountedModel, x: torch.Tensor, v: torch.Tensor, p: float, eps: torch.Tensor,
                          bounds: tuple[float, float] | None, iterations: int, tol: float, restarts: int,
                          gen: torch.Generator) -> torch.Tensor:
    # Every start is ascended at once (the starts are stacked along the batch). The objective never
    # decreases: f(new) >= f + <grad f, new - old> >= f, as the step maximises that linear term
    # over the set. Starts: +-v (the box breaks their symmetry) and ``restarts`` Gaussian draws,
    # each rounded into the set; the sign iteration has many fixed points, and +-v alone is often
    # one of the poorer ones.
    b = x.shape[0]
    starts = torch.cat([v, -v] + [rand_like(x, gen, normal=True) for _ in range(restarts)])
    r = starts.shape[0] // b
    xr, er = x.repeat(r, *([1] * (x.dim() - 1))), eps.repeat(r)
    owner = torch.arange(b, device=x.device).repeat(r)
    eta = holder_step_in_box(starts, p, er, xr, bounds)
    value = _sq_norm(counted.jvp(xr, eta, owner))
    active = torch.arange(r * b, device=x.device)
    for _ in range(iterations):
        if active.numel() == 0:
            break
        xa, rows = xr[active], owner[active]
        grad = counted.vjp(xa, counted.jvp(xa, eta[active], rows), rows)
        new = holder_step_in_box(grad, p, er[active], xa, bounds)
        new_value = _sq_norm(counted.jvp(xa, new, rows))
        better = new_value > value[active] * (1 + tol)
        eta[active[better]] = new[better]
        value[active[better]] = new_value[better]
        active = active[better]
    best = value.view(r, b).argmax(0)
    return eta.view(r, *x.shape)[best, torch.arange(b, device=x.device)]


def _finish(counted: CountedModel, x: torch.Tensor, eta: torch.Tensor, bounds: tuple[float, float] | None,
            started: float, info: dict[str, Any]) -> OutputAttackResult:
    if x.shape[0] == 0:
        empty = x.new_zeros(0)
        return OutputAttackResult(x.clone(), x.clone(), empty, empty, counted.forward_passes,
                                  counted.backward_passes, time.perf_counter() - started, info)
    with torch.no_grad():
        clean = counted(x)
        cands = [x + eta, x - eta]
        if bounds is not None:
            cands = [c.clamp(*bounds) for c in cands]
        changes = [_sq_norm(counted(c) - clean).sqrt() for c in cands]
    plus = changes[0] >= changes[1]
    adv = torch.where(batch_view(plus, x), cands[0], cands[1])
    pert = adv - x
    gain = _sq_norm(counted.jvp(x, pert)).sqrt()
    return OutputAttackResult(adv, pert, gain, torch.where(plus, changes[0], changes[1]), counted.forward_passes,
                              counted.backward_passes, time.perf_counter() - started, info)


def dense_targeted_attack(model, inputs: torch.Tensor, targets: torch.Tensor | int, *, eps: float,
                          norm: float | str = "inf", steps: int = 10, scores: str = "logits",
                          ignore_index: int = -1, bounds: tuple[float, float] = (0.0, 1.0)) -> DenseAttackResult:
    """Targeted attack on a dense (per-pixel) classifier, Sec. IV of Balda et al.

    The model maps ``[B, ...]`` to scores ``[B, C, *S]``; ``targets`` is one class for every pixel
    or a map ``[B, *S]`` (``ignore_index`` marks pixels left alone). Each of ``steps`` (GNII)
    steps of radius ``eps / steps`` (Algorithm 1-n) minimises the linearised
    ``L_t = sum_{pixels not yet at target} f_k - f_t``, ``k`` each pixel's current class, by the
    exact box-constrained step (:func:`~minnorm.core.norms.holder_step_in_box`): one forward and
    one backward pass per step. A sample stops once all its pixels show their target; the
    iterate with the largest share of target pixels is returned.
    """
    bounds, p, steps, eps = _check_dense_settings(inputs, bounds, norm, steps, eps, scores)
    started = time.perf_counter()
    x0 = inputs.detach()
    b = x0.shape[0]
    counted = CountedModel(model, b, x0.device)
    out = _clean_dense_scores(counted, x0)
    t = _target_map(targets, out, x0, ignore_index)
    valid = t != ignore_index
    counts = valid.flatten(1).sum(1).clamp_min(1)

    def fraction(o: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return ((o.argmax(1) == t[idx]) & valid[idx]).flatten(1).sum(1) / counts[idx]

    if b == 0:
        empty = x0.new_zeros(0)
        return DenseAttackResult(x0.clone(), empty, empty, empty, counted.forward_passes, counted.backward_passes,
                                 time.perf_counter() - started)
    all_idx = torch.arange(b, device=x0.device)
    clean_frac = fraction(out, all_idx)
    best, best_frac = x0.clone(), clean_frac.clone()
    x = x0.clone()
    active = all_idx[best_frac < 1]
    radius = eps / steps
    for step in range(steps + 1):
        if active.numel() == 0:
            break
        with torch.enable_grad():
            xg = x[active].requires_grad_(True)
            o = counted(xg, active)
            frac = fraction(o.detach(), active)
            improved = frac > best_frac[active]
            best[active[improved]] = x[active[improved]]
            best_frac[active] = torch.maximum(best_frac[active], frac)
            keep = frac < 1
            if step == steps or not bool(keep.any()):
                break
            gap = _dense_gap(o, t[active], valid[active], scores)
            (grad,) = torch.autograd.grad(gap[keep].sum(), xg)
        active, grad = active[keep], grad[keep]
        counted.count_backward(active)
        eta = holder_step_in_box(-grad, p, radius, x[active], bounds)
        x[active] = (x[active] + eta).clamp(*bounds)
    return DenseAttackResult(best, best_frac, clean_frac, lp_norm(best - x0, p), counted.forward_passes,
                             counted.backward_passes, time.perf_counter() - started)


def _check_dense_settings(inputs: torch.Tensor, bounds: tuple[float, float], norm: float | str, steps: int,
                          eps: float, scores: str) -> tuple[tuple[float, float], float, int, float]:
    """The dense attack's settings, checked before any pass: bounds, norm, steps, eps."""
    bounds = check_batch(inputs, bounds)
    if scores not in ("logits", "probabilities"):
        raise ValueError(f"scores must be logits or probabilities, got {scores!r}")
    return bounds, parse_norm(norm), check_int("steps", steps), check_positive("eps", eps, allow_zero=True)


def _clean_dense_scores(counted: CountedModel, x0: torch.Tensor) -> torch.Tensor | None:
    """The scores ``[B, C, *S]`` at the clean inputs (one counted pass; None for an empty batch)."""
    if x0.shape[0] == 0:
        return None
    with torch.no_grad():
        out = counted(x0)
    if out.dim() < 3 or out.shape[0] != x0.shape[0]:
        raise ValueError(f"model output must be dense scores [B, C, ...], got shape {tuple(out.shape)}")
    return out


def _target_map(targets: torch.Tensor | int, out: torch.Tensor | None, x0: torch.Tensor, ignore_index: int
                ) -> torch.Tensor:
    """``targets`` as a checked integer map ``[B, *S]`` (``S`` the output's spatial dims)."""
    b = x0.shape[0]
    spatial = tuple(out.shape[2:]) if b else tuple(x0.shape[2:])
    t = torch.as_tensor(targets, device=x0.device)
    if t.dtype in (torch.bool,) or t.is_floating_point():
        raise TypeError(f"targets must be an integer class or an integer map, got {t.dtype}")
    t = t.expand(b, *spatial).long() if t.dim() == 0 else t.long()
    if t.shape != (b, *spatial):
        raise ValueError(f"targets must have shape {(b, *spatial)} (batch and the output's spatial dims), "
                         f"got {tuple(t.shape)}")
    if b and bool(((t != ignore_index) & ((t < 0) | (t >= out.shape[1]))).any()):
        raise ValueError(f"target classes must lie in [0, {out.shape[1]}) or equal ignore_index")
    return t


def _dense_gap(o: torch.Tensor, t: torch.Tensor, valid: torch.Tensor, scores: str) -> torch.Tensor:
    """``L_t`` per sample: ``sum`` over the valid pixels not yet at their target of ``f_k - f_t``
    (``k`` the pixel's current class), on logits or probabilities."""
    s = o.softmax(1) if scores == "probabilities" else o
    ta = t.clamp_min(0)
    wrong = (o.argmax(1) != ta) & valid
    own = s.amax(1)  # f_k with k the pixel's current class
    return ((own - s.gather(1, ta.unsqueeze(1)).squeeze(1)) * wrong).flatten(1).sum(1)
