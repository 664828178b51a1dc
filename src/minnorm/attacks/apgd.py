"""APGD (Croce & Hein, ICML 2020; l1-APGD: Croce & Hein, ICML 2021): a minimal-norm search
(per-sample bisection on eps with warm starts, CE or DLR loss, APGD-T over the top-k classes),
and APGD at a fixed eps (:func:`apgd_at_eps`, AutoAttack's APGD-CE / APGD-T)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core import (BestAdversarial, AttackResult, batch_view, check_int, check_positive, clip_box, dual_exponent, lp_norm,
                    project_lp_ball, register, start_attack)
from ..core.norms import project_l1_box, project_l2_box
from ..core.objectives import cross_entropy_objective, dlr_objective, logit_difference, margin_objective, top_other_classes
from ..core.steps import sparse_l1_direction
from ._minimal import refine_on_segment, safe_grad, start_tracking
from .noise import per_sample_eps

__all__ = ["apgd", "apgd_at_eps", "apgd_checkpoints"]


def apgd_checkpoints(n: int) -> list[int]:
    """Iterations where APGD may halve its step (Sec. 3.2): ``ceil(p_j n)`` with ``p_0 = 0``,
    ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``."""
    ps = [0.0, 0.22]
    while ps[-1] < 1:
        ps.append(ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06))
    marks = {math.ceil(p * n - 1e-9) for p in ps[1:]}  # 1e-9: 0.22 * 100 is 22.000000000000004 in floats
    return sorted(m for m in marks if 0 < m < n)


def apgd(model, inputs: torch.Tensor, labels: torch.Tensor, *, norm: float | str = "inf", targeted: bool = False,
         loss: str = "dlr", steps: int = 500, round_steps: int = 25, targets: int | None = None,
         momentum: float = 0.75, rho: float = 0.75, shrink: float = 0.97, growth: float = 2.0, tol: float = 1e-3,
         sparsity: float = 0.05, refine: int = 10, init: torch.Tensor | None = None,
         bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None) -> AttackResult:
    """Smallest eps at which APGD (Algorithm 1 of the paper) finds an adversarial, searched per sample.

    Each sample runs rounds of APGD at a radius ``eps``: the first step ``P(x + eta s(g))``, then
    ``z = P(x^k + eta s(g))``, ``x^(k+1) = P(x^k + momentum (z - x^k) + (1 - momentum)(x^k -
    x^(k-1)))`` (eq. (2)) with ``s`` the steepest-ascent direction of the norm (sign for Linf,
    ``g / ||g||_2`` for L2, the sparse top-``sparsity`` step of l1-APGD for L1) and ``P`` the
    projection onto the eps-ball and the box (exact, ``core.norms``). ``eta`` starts at ``2 eps``
    and halves at the checkpoints of Sec. 3.2 when fewer than ``rho`` of the steps since the last
    one increased the loss, or when neither ``eta`` nor the best loss changed; a halving restarts
    from the best-loss point. A round ends at its first adversarial point (its norm becomes the
    upper bound ``hi``) or after ``round_steps`` steps without one (``eps`` becomes the lower bound
    ``lo``). Next radius: ``max((lo + hi) / 2, shrink * hi)`` once an adversarial is known, else
    ``growth * eps`` (the first radius is 1.1 times the distance to the linearised boundary). Every round
    warm-starts from the best adversarial rescaled to the new radius, or, before the first one,
    from the last round's best-loss point. A sample stops when ``hi - lo <= tol * hi`` or after
    ``steps`` steps in all.

    ``loss``: ``"dlr"`` (eq. (6)) or ``"ce"``. ``targets=k`` splits ``steps`` over APGD-T runs with
    the targeted DLR loss (eq. (7)) towards each of the ``k`` largest clean logits besides the
    label. With ``targeted=True`` the given labels are the targets. ``init`` (``[B, *x]``, e.g. the
    best adversarial of an earlier attack): where a point is adversarial it is the first upper
    bound, so the search starts at ``shrink`` times its norm, warm-started from it (one forward
    pass). Cost: one forward and one backward pass per step, and ``refine`` forward passes of
    bisection on the segment from the input to the best point at the end (not in the paper).
    Deterministic (no random start).
    """
    momentum, rho, sparsity = _check_step_settings(loss, momentum, rho, sparsity)
    steps = check_int("steps", steps)
    refine = check_int("refine", refine, minimum=0)
    round_steps = check_int("round_steps", round_steps)
    if targets is not None:
        targets = check_int("targets", targets)
    shrink, growth, tol = (check_positive(n, v) for n, v in (("shrink", shrink), ("growth", growth), ("tol", tol)))
    if shrink >= 1 or growth <= 1:
        raise ValueError("shrink must be in (0, 1), growth > 1")
    _check_init(init, inputs)
    run = _start(model, inputs, labels, targeted, bounds, norm, generator)
    tracker, index = start_tracking(run)
    if len(index) == 0:
        return run.finish(tracker.points)
    if init is not None:
        _offer_starts(run, tracker, index, init)
    cfg = _Config(round_steps, momentum, rho, shrink, growth, tol, sparsity, apgd_checkpoints(round_steps))
    makes = _target_losses(run, index, targets) or [_loss(loss, run.labels, run.targeted)]
    for make in makes:  # APGD-T: the steps split over the targets
        _Search(run, tracker, index, make, cfg).search(max(steps // len(makes), 1))
    refine_on_segment(run, tracker, index, refine)
    return run.finish(tracker.points)


def apgd_at_eps(model, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float | torch.Tensor,
                norm: float | str = "inf", targeted: bool = False, loss: str = "ce", steps: int = 100,
                targets: int | None = None, momentum: float = 0.75, rho: float = 0.75, sparsity: float = 0.05,
                bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None) -> AttackResult:
    """APGD at the radius ``eps`` (float or ``[B]``): Algorithm 1 of the paper, one run of ``steps``
    steps per sample from the clean input (deterministic, no random start), the step rule, the
    step-size checkpoints and the projections of :func:`apgd`. A sample stops at its first
    adversarial point, which is what it returns (the fixed-eps attacks' rule).

    ``loss="ce"`` is AutoAttack's APGD-CE, ``"dlr"`` APGD-DLR (eq. (6)); ``targets=k`` runs, after
    it, APGD-T with the targeted DLR loss (eq. (7)) towards each of the ``k`` largest clean logits
    besides the label, ``steps`` steps each, on the samples not fooled yet (AutoAttack's second
    attack). Cost: one forward and one backward pass per step. Samples misclassified already (or
    at the target, targeted) are returned as they are, at norm 0.
    """
    momentum, rho, sparsity = _check_step_settings(loss, momentum, rho, sparsity)
    steps = check_int("steps", steps)
    targets = None if targets is None else check_int("targets", targets)
    run = _start(model, inputs, labels, targeted, bounds, norm, generator)
    radius = per_sample_eps(eps, run.inputs)
    tracker, index = start_tracking(run)
    cfg = _Config(steps, momentum, rho, 0.5, 2.0, 0.0, sparsity, apgd_checkpoints(steps))
    losses = [_loss(loss, run.labels, run.targeted)] + (_target_losses(run, index, targets) if len(index) else [])
    for make in losses:
        index = index[~torch.isfinite(tracker.norms[index])]
        if len(index) == 0:
            break
        _AtRadius(run, tracker, index, make, cfg, radius[index]).search(steps)
    return run.finish(tracker.points)


def _check_step_settings(loss: str, momentum: float, rho: float, sparsity: float) -> tuple[float, float, float]:
    """The loss and the step rule's settings, shared by the search and the fixed radius."""
    if loss not in ("dlr", "ce"):
        raise ValueError(f"loss must be 'dlr' or 'ce', got {loss!r}")
    momentum, rho, sparsity = (check_positive(n, v) for n, v in (("momentum", momentum), ("rho", rho),
                                                                 ("sparsity", sparsity)))
    if momentum > 1 or rho > 1 or sparsity > 1:
        raise ValueError("momentum, rho and sparsity must be in (0, 1]")
    return momentum, rho, sparsity


def _start(model, inputs, labels, targeted, bounds, norm, generator):
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=norm, generator=generator)
    if run.norm not in (1.0, 2.0, math.inf):
        raise ValueError(f"apgd supports norm 1, 2 or inf, got {run.norm}")
    return run


def _check_init(init, inputs: torch.Tensor) -> None:
    if init is not None and (not isinstance(init, torch.Tensor) or tuple(init.shape) != tuple(inputs.shape)):
        raise ValueError(f"init must be a tensor of the inputs' shape {tuple(inputs.shape)}, got "
                         f"{tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__}")


def _offer_starts(run, tracker: BestAdversarial, index: torch.Tensor, init: torch.Tensor) -> None:
    """The given starting points of the rows ``index`` (in the box), one forward pass: each
    adversarial one becomes its sample's first upper bound."""
    points = clip_box(init.detach().to(run.inputs.dtype)[index], run.bounds)
    with torch.no_grad():
        tracker.offer(index, points, run.model(points, index))


def _target_losses(run, index: torch.Tensor, targets: int | None) -> list:
    """APGD-T: the targeted DLR objective towards each of the ``targets`` largest clean logits
    besides the label (none when untargeted runs do not apply: no ``targets``, a targeted run,
    or two classes)."""
    if targets is None or run.targeted or run.num_classes < 3:
        return []
    top = top_other_classes(run.clean_logits[index], run.labels[index], targets)
    return [_loss("dlr-t", run.labels, False, torch.zeros_like(run.labels).index_copy(0, index, top[:, j]))
            for j in range(top.shape[1])]


def _loss(kind: str, labels: torch.Tensor, targeted: bool, targets: torch.Tensor | None = None):
    """``make(rows, first)``: the objective to ascend on the full-batch rows ``rows``; where
    ``first`` is set, the logit margin instead (positive iff adversarial, towards the target in
    APGD-T), whose gradient gives the first radius."""
    def make(rows: torch.Tensor, first: torch.Tensor):
        y = labels[rows]
        if kind == "ce":
            main = cross_entropy_objective(y, targeted)
        else:
            main = dlr_objective(y, targeted, None if targets is None else targets[rows])
        margin = margin_objective(y, targeted) if targets is None else _towards(y, targets[rows])

        def objective(logits: torch.Tensor) -> torch.Tensor:
            return torch.where(first, margin(logits), main(logits)) if bool(first.any()) else main(logits)
        return objective
    return make


def _towards(labels: torch.Tensor, targets: torch.Tensor):
    return lambda z: logit_difference(z, labels, targets[:, None])[:, 0]


@dataclass(frozen=True)
class _Config:
    round_steps: int
    momentum: float
    rho: float
    shrink: float
    growth: float
    tol: float
    sparsity: float
    checkpoints: list[int]


class _Search:
    """Per-sample state of the eps search and of the APGD round in progress, rows ``index``."""

    def __init__(self, run, tracker: BestAdversarial, index: torch.Tensor, make_objective, cfg: _Config):
        self.run, self.tracker, self.index, self.make, self.cfg = run, tracker, index, make_objective, cfg
        self.x0 = run.inputs[index]
        b, dt, dev = len(index), self.x0.dtype, self.x0.device
        self.lo = torch.zeros(b, dtype=dt, device=dev)
        self.eps = torch.full((b,), math.nan, dtype=dt, device=dev)  # set by the first gradient
        self.x, self.prev, self.xmax = self.x0.clone(), self.x0.clone(), self.x0.clone()
        self.fmax = torch.full((b,), -math.inf, dtype=dt, device=dev)
        self.fprev = torch.full((b,), -math.inf, dtype=dt, device=dev)
        self.k = torch.zeros(b, dtype=torch.long, device=dev)
        self.eta = torch.zeros(b, dtype=dt, device=dev)
        self.ups = torch.zeros(b, dtype=torch.long, device=dev)
        self.fmax_ck = torch.full((b,), -math.inf, dtype=dt, device=dev)
        self.reduced = torch.zeros(b, dtype=torch.bool, device=dev)
        self.last_ck = torch.zeros(b, dtype=torch.long, device=dev)
        self.alive = torch.ones(b, dtype=torch.bool, device=dev)
        hi = tracker.norms[index]
        known = torch.isfinite(hi)
        self.eps = torch.where(known, self.cfg.shrink * hi, self.eps)
        self._start_round(known)

    @property
    def hi(self) -> torch.Tensor:
        return self.tracker.norms[self.index]

    def search(self, steps: int) -> None:
        for _ in range(steps):
            if not bool(self.alive.any()):
                break
            self.step(self.alive.nonzero().squeeze(1))
        # the points produced by the last steps are never looked at again: evaluate them once
        rows = self.alive.nonzero().squeeze(1)
        if len(rows):
            with torch.no_grad():
                self.tracker.offer(self.index[rows], self.x[rows], self.run.model(self.x[rows], self.index[rows]))

    def step(self, r: torch.Tensor) -> None:
        """One APGD iteration on the rows ``r`` (one forward and one backward pass each)."""
        run, idx, x = self.run, self.index[r], self.x[r]
        first = torch.isnan(self.eps[r])
        logits, f, g = run.model.value_and_grad(x, self.make(idx, first), idx)
        adv = self.tracker.offer(idx, x, logits)
        g = safe_grad(g, run.generator)
        if bool(first.any()):  # the first radius: 1.1 x the distance to the linearised boundary, |m| / ||g||_q
            q = dual_exponent(run.norm)  # (not 1.0 x: on an affine piece that point is a float coin toss)
            lin = 1.1 * f[first].abs() / lp_norm(g[first], q).clamp_min(torch.finfo(g.dtype).tiny)
            lin = lin.clamp_min(1e-6 * (run.bounds[1] - run.bounds[0]))
            self.eps[r[first]], self.eta[r[first]] = lin, 2 * lin
            f = torch.where(first, torch.full_like(f, -math.inf), f)  # a margin is not comparable to the loss
        self._track_loss(r, f, x)
        self._move(r, g)
        self._checkpoint(r)
        self.k[r] += 1
        self._end_rounds(r, adv)

    def _track_loss(self, r: torch.Tensor, f: torch.Tensor, x: torch.Tensor) -> None:
        self.ups[r] += (f > self.fprev[r]).long()
        better = f > self.fmax[r]
        self.fmax[r] = torch.where(better, f, self.fmax[r])
        self.xmax[r] = torch.where(batch_view(better, x), x, self.xmax[r])
        self.fprev[r] = f

    def _move(self, r: torch.Tensor, g: torch.Tensor) -> None:
        """Eq. (2): a projected steepest-ascent step, then momentum (none at a round's first step)."""
        x, eps = self.x[r], self.eps[r]
        z = self._project(r, x + batch_view(self.eta[r], x) * self._direction(g, x), eps)
        mixed = self._project(r, x + self.cfg.momentum * (z - x) + (1 - self.cfg.momentum) * (x - self.prev[r]), eps)
        self.prev[r] = x
        self.x[r] = torch.where(batch_view(self.k[r] == 0, x), z, mixed)

    def _checkpoint(self, r: torch.Tensor) -> None:
        """Sec. 3.2, conditions 1 and 2: halve eta and restart from the best-loss point."""
        at = torch.isin(self.k[r], torch.tensor(self.cfg.checkpoints, device=self.k.device, dtype=self.k.dtype))
        if not bool(at.any()):
            return
        c = r[at]
        span = (self.k[c] + 1 - self.last_ck[c]).to(self.eta.dtype)
        halve = (self.ups[c].to(span.dtype) < self.cfg.rho * span) | (~self.reduced[c] & (self.fmax[c] <= self.fmax_ck[c]))
        self.eta[c] = torch.where(halve, self.eta[c] / 2, self.eta[c])
        back = batch_view(halve, self.x[c])
        self.x[c] = torch.where(back, self.xmax[c], self.x[c])
        self.prev[c] = torch.where(back, self.xmax[c], self.prev[c])
        self.reduced[c], self.fmax_ck[c], self.ups[c], self.last_ck[c] = halve, self.fmax[c], 0, self.k[c] + 1

    def _end_rounds(self, r: torch.Tensor, adv: torch.Tensor) -> None:
        """Close the rounds that found an adversarial or ran out of steps; choose the next radius."""
        cfg, hi = self.cfg, self.hi[r]
        failed = ~adv & (self.k[r] >= cfg.round_steps)
        lo = torch.where(failed, torch.maximum(self.lo[r], self.eps[r]), self.lo[r])
        lo = torch.where(lo > hi, torch.zeros_like(lo), lo)  # a later success below a failed radius: lo was wrong
        self.lo[r] = lo
        known = torch.isfinite(hi)
        nxt = torch.where(known, torch.maximum((lo + hi) / 2, cfg.shrink * hi), cfg.growth * self.eps[r])
        ended = adv | failed
        self.eps[r] = torch.where(ended, nxt, self.eps[r])
        self.alive[r] = self.alive[r] & ~(known & (hi - lo <= cfg.tol * hi))
        mask = torch.zeros_like(self.alive)
        mask[r] = ended
        self._start_round(mask & self.alive)

    def _start_round(self, mask: torch.Tensor) -> None:
        """Warm start: the best adversarial rescaled to the new radius, else the last best-loss point."""
        r = mask.nonzero().squeeze(1)
        if len(r) == 0:
            return
        x0, eps, hi = self.x0[r], self.eps[r], self.hi[r]
        known = torch.isfinite(hi)
        best = self.tracker.points[self.index[r]]
        scaled = x0 + (best - x0) * batch_view(torch.where(known, eps / hi.clamp_min(1e-30), torch.zeros_like(eps)), x0)
        last = torch.where(batch_view(torch.isnan(eps), x0), x0, self._project(r, self.xmax[r], torch.nan_to_num(eps)))
        x = torch.where(batch_view(known, x0), scaled, last)
        self.x[r], self.prev[r], self.xmax[r] = x, x, x
        self.eta[r] = 2 * eps
        self.k[r], self.ups[r], self.last_ck[r] = 0, 0, 0
        self.fmax[r], self.fprev[r], self.fmax_ck[r] = -math.inf, -math.inf, -math.inf
        self.reduced[r] = False

    def _direction(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = self.run.norm
        if math.isinf(p):
            return g.sign()
        if p == 2:
            return g / batch_view(lp_norm(g, 2).clamp_min(torch.finfo(g.dtype).tiny), g)
        k = max(1, math.ceil(self.cfg.sparsity * g[0].numel()))
        return sparse_l1_direction(g, x, self.run.bounds, k)

    def _project(self, r: torch.Tensor, point: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Onto the eps-ball around the input and the box, exactly."""
        x0, p, (lo, hi) = self.x0[r], self.run.norm, self.run.bounds
        if p == 1:
            return x0 + project_l1_box(point - x0, eps, x0, (lo, hi))
        if p == 2:
            return x0 + project_l2_box(point - x0, eps, x0, (lo, hi))
        return (x0 + project_lp_ball(point - x0, p, eps)).clamp(lo, hi)


class _AtRadius(_Search):
    """APGD at a fixed radius per sample: one round of ``round_steps`` steps from the clean input
    that ends at the sample's first adversarial point."""

    def __init__(self, run, tracker: BestAdversarial, index: torch.Tensor, make_objective, cfg: _Config,
                 eps: torch.Tensor):
        super().__init__(run, tracker, index, make_objective, cfg)
        self.eps = eps.to(self.eps.dtype)
        self._start_round(torch.ones_like(self.alive))

    def _end_rounds(self, r: torch.Tensor, adv: torch.Tensor) -> None:
        self.alive[r] = self.alive[r] & ~adv & (self.k[r] < self.cfg.round_steps)


for _p, _name in ((1.0, "apgd-l1"), (2.0, "apgd-l2"), (math.inf, "apgd-linf")):
    register(_name, apgd, norm=_p, minimal=True, targeted=True, paper="Croce & Hein 2020 (APGD), minimal-norm search",
             description="APGD-T (top 3 classes, DLR-T) with a per-sample bisection on eps, warm-started",
             defaults={"norm": _p, "targets": 3}, quick={"steps": 60, "round_steps": 10})
    register(f"apgd-at-eps-{_name[5:]}", apgd_at_eps, norm=_p, minimal=False, targeted=True,
             paper="Croce & Hein 2020 (APGD)",
             description="APGD-CE at a fixed eps, 100 steps (targets=k: then APGD-T towards k classes)",
             defaults={"norm": _p}, quick={"eps": {1.0: 10.0, 2.0: 1.0}.get(_p, 0.1), "steps": 10})
