"""One attack plan on one batch of correctly classified samples.

The attack is called through its registry entry and nothing else: evaluation reads only the
returned :class:`~minnorm.core.AttackResult` (adversarials, success, norms, per-sample passes).

Pass budget. Attacks count passes per sample with :class:`~minnorm.core.CountedModel` and
report them in the result; the evaluation enforces a per-sample budget on those counts: an
outcome is credited only if the sample's cumulative forward+backward passes, as counted by the
attack, are within the budget. Attacks that stop a sample at its first adversarial (PGD, FGSM,
DeepFool) are judged exactly; a minimal-norm attack that keeps refining a sample past the budget
gets no credit for it (a conservative reading, since the result of a truncated run is unknown).
The epsilon search and fixed-epsilon grids credit each call in order until the budget is spent.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..core import AttackResult, relative_perturbation
from .plan import AttackPlan

INF = float("inf")


@dataclass
class Outcome:
    """Per-sample outcome of one plan on one batch (CPU tensors, ``n`` attacked samples)."""

    success: torch.Tensor  # bool
    norms: torch.Tensor  # float64, inf where not broken
    relative: torch.Tensor  # float64 ||dx|| / ||x||, nan where not broken
    passes: torch.Tensor  # int64, forward + backward passes spent
    over_budget: torch.Tensor  # bool: passes beyond the budget were spent on it
    seconds: float
    adversarials: torch.Tensor  # the clean input where not broken
    success_at: dict[float, torch.Tensor] = field(default_factory=dict)  # mode "fixed": per radius


def run_plan(plan: AttackPlan, model, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator,
             bounds: tuple[float, float], budget: int | None = None, search_steps: int = 10) -> Outcome:
    started = time.perf_counter()
    if len(x) == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return Outcome(empty.bool(), empty, empty, empty.long(), empty.bool(), 0.0, x.detach().cpu(),
                       {e: empty.bool() for e in plan.epsilons})
    call = _caller(plan, model, generator, bounds)
    rows = torch.arange(len(x))
    if plan.mode == "minimal":
        state = _State(x)
        state.credit(rows, call(x, y), budget)
    elif plan.mode == "fixed":
        state = _State(x)
        for eps in plan.epsilons:  # increasing, so the budget is spent on the small radii first
            state.credit(rows, call(x, y, eps=eps), budget, record=eps)
    else:
        state = _search(plan, call, x, y, budget, search_steps)
    return state.outcome(x, plan, time.perf_counter() - started)


def _caller(plan: AttackPlan, model, generator: torch.Generator, bounds: tuple[float, float]):
    extra = {} if tuple(bounds) == (0.0, 1.0) else {"bounds": tuple(bounds)}

    def call(x: torch.Tensor, y: torch.Tensor, **kwargs) -> AttackResult:
        return plan.spec(model, x, y, generator=generator, **plan.params, **extra, **kwargs).to("cpu")

    return call


class _State:
    """Best adversarial credited so far per sample, and the passes spent."""

    def __init__(self, x: torch.Tensor):
        n = len(x)
        self.norms = torch.full((n,), INF, dtype=torch.float64)
        self.passes = torch.zeros(n, dtype=torch.long)
        self.over = torch.zeros(n, dtype=torch.bool)
        self.adv = x.detach().cpu().clone()
        self.success_at: dict[float, torch.Tensor] = {}

    def credit(self, rows: torch.Tensor, res: AttackResult, budget: int | None,
               record: float | None = None) -> torch.Tensor:
        """Add ``res`` (on samples ``rows``) to the tally; returns which rows it broke within budget."""
        self.passes[rows] += (res.forward_passes + res.backward_passes).long()
        within = torch.ones(len(rows), dtype=torch.bool) if budget is None else self.passes[rows] <= budget
        self.over[rows] |= ~within
        ok = res.success & within
        better = ok & (res.norms.double() < self.norms[rows])
        self.norms[rows[better]] = res.norms.double()[better]
        self.adv[rows[better]] = res.adversarials[better].to(self.adv.dtype)
        if record is not None:
            hit = torch.zeros(len(self.norms), dtype=torch.bool)
            hit[rows] = ok
            self.success_at[record] = hit
        return ok

    def outcome(self, x: torch.Tensor, plan: AttackPlan, seconds: float) -> Outcome:
        success = torch.isfinite(self.norms)
        rel = relative_perturbation(self.adv.double(), x.detach().cpu().double(), plan.spec.norm)
        rel = torch.where(success, rel, torch.full_like(rel, float("nan")))
        return Outcome(success, self.norms, rel, self.passes, self.over, seconds, self.adv, self.success_at)


def _search(plan: AttackPlan, call, x: torch.Tensor, y: torch.Tensor, budget: int | None,
            steps: int) -> _State:
    """Per-sample bisection over the radius of a fixed-epsilon attack.

    Every sample starts with the bracket ``[0, search_max]``; a sample the attack cannot break at
    ``search_max`` counts as not broken. Each step runs the attack once on the samples still
    searching, at their own midpoints (attacks take a per-sample ``eps`` tensor), and keeps the
    smallest adversarial found. The reported norm is that of the adversarial itself, which may be
    below the radius it was found at.
    """
    n = len(x)
    top = torch.full((n,), float(plan.search_max), dtype=x.dtype, device=x.device)
    state = _State(x)
    rows = torch.arange(n)
    found = state.credit(rows, call(x, y, eps=top), budget)
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.full((n,), float(plan.search_max), dtype=torch.float64)
    active = found.clone()
    for _ in range(steps):
        active &= ~state.over
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        mid = (lo[idx] + hi[idx]) / 2
        ok = state.credit(idx, call(x[idx.to(x.device)], y[idx.to(y.device)],
                                    eps=mid.to(dtype=x.dtype, device=x.device)), budget)
        hi[idx[ok]] = mid[ok]
        lo[idx[~ok]] = mid[~ok]
    return state
