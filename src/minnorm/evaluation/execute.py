"""One attack plan on one batch of correctly classified samples.

The attack is called through its registry entry and nothing else: evaluation reads only the
returned :class:`~minnorm.core.AttackResult` (adversarials, success, norms, per-sample passes).

Pass budget: a hard cap per sample and attack, enforced inside the attack by
:func:`minnorm.core.call_with_budget` (AttackBench's convention): a sample that spends its budget
keeps the best adversarial it found within it, and is flagged over budget. An epsilon search or
a grid of radii spends one budget over all its calls: each call gets what the sample has left,
and a sample with fewer than two passes left (the clean and the final check) is not attacked again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..core import AttackResult, call_with_budget, relative_perturbation
from ..core.segment import bisect
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
             bounds: tuple[float, float], budget: int | None = None, search_steps: int = 10,
             targeted: bool = False) -> Outcome:
    """Run ``plan`` on ``(x, y)`` (``y`` the targets when ``targeted``)."""
    started = time.perf_counter()
    if len(x) == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return Outcome(empty.bool(), empty, empty, empty.long(), empty.bool(), 0.0, x.detach().cpu(),
                       {e: empty.bool() for e in plan.epsilons})
    call = _caller(plan, model, generator, bounds, targeted)
    state = _State(x, budget)
    if plan.mode == "minimal":
        state.credit(torch.arange(len(x)), call, x, y)
    elif plan.mode == "fixed":
        for eps in plan.epsilons:  # increasing, so the budget is spent on the small radii first
            state.credit(torch.arange(len(x)), call, x, y, record=eps, eps=eps)
    else:
        _search(plan, call, x, y, state, search_steps)
    return state.outcome(x, plan, time.perf_counter() - started)


def _caller(plan: AttackPlan, model, generator: torch.Generator, bounds: tuple[float, float], targeted: bool):
    extra = {} if tuple(bounds) == (0.0, 1.0) else {"bounds": tuple(bounds)}
    if targeted:
        extra["targeted"] = True

    def call(x: torch.Tensor, y: torch.Tensor, budget: torch.Tensor | None, **kwargs) -> AttackResult:
        return call_with_budget(plan.spec, model, x, y, budget=budget, generator=generator, **plan.params,
                                **extra, **kwargs).to("cpu")

    return call


class _State:
    """Best adversarial found so far per sample, the passes spent and who hit the budget."""

    def __init__(self, x: torch.Tensor, budget: int | None):
        n = len(x)
        self.budget = budget
        self.norms = torch.full((n,), INF, dtype=torch.float64)
        self.passes = torch.zeros(n, dtype=torch.long)
        self.over = torch.zeros(n, dtype=torch.bool)
        self.adv = x.detach().cpu().clone()
        self.success_at: dict[float, torch.Tensor] = {}

    def credit(self, rows: torch.Tensor, call, x: torch.Tensor, y: torch.Tensor, record: float | None = None,
               **kwargs) -> torch.Tensor:
        """Attack the samples ``rows`` that have budget left; returns which rows it broke."""
        ok = torch.zeros(len(rows), dtype=torch.bool)
        left = None if self.budget is None else self.budget - self.passes[rows]
        go = torch.ones(len(rows), dtype=torch.bool) if left is None else left >= 2
        self.over[rows[~go]] = True
        sub = rows[go]
        if len(sub):
            kwargs = {k: (v[go].to(x.device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
            dev = sub.to(x.device)
            res = call(x[dev], y[dev], None if left is None else left[go].to(x.device), **kwargs)
            self.passes[sub] += res.passes.long()
            if res.over_budget is not None:
                self.over[sub] |= res.over_budget
            better = res.success & (res.norms.double() < self.norms[sub])
            self.norms[sub[better]] = res.norms.double()[better]
            self.adv[sub[better]] = res.adversarials[better].to(self.adv.dtype)
            ok[go] = res.success
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


def merge_outcomes(n: int, x: torch.Tensor, parts: list[tuple[torch.Tensor, Outcome]]) -> Outcome:
    """Outcomes of several runs on subsets ``rows`` of ``n`` samples (targets="all"): per sample
    the smallest norm and its adversarial; passes, seconds and over-budget flags add up."""
    empty = torch.zeros(n, dtype=torch.float64)
    out = Outcome(empty.bool(), empty + INF, empty + float("nan"), empty.long(), empty.bool(), 0.0,
                  x.detach().cpu().clone(), {})
    for rows, o in parts:
        better = o.norms < out.norms[rows]
        out.norms[rows[better]] = o.norms[better]
        out.relative[rows[better]] = o.relative[better]
        out.adversarials[rows[better]] = o.adversarials[better]
        out.passes[rows] += o.passes
        out.over_budget[rows] |= o.over_budget
        out.seconds += o.seconds
        for eps, hit in o.success_at.items():
            out.success_at.setdefault(eps, empty.bool().clone())[rows] |= hit
    out.success = torch.isfinite(out.norms)
    return out


def _search(plan: AttackPlan, call, x: torch.Tensor, y: torch.Tensor, state: _State, steps: int) -> None:
    """Per-sample bisection over the radius of a fixed-epsilon attack.

    Every sample starts with the bracket ``[0, search_max]``; a sample the attack cannot break at
    ``search_max`` counts as not broken. Each step runs the attack once on the samples still
    searching, at their own midpoints (attacks take a per-sample ``eps`` tensor), and keeps the
    smallest adversarial found. The reported norm is that of the adversarial itself, which may be
    below the radius it was found at.
    """
    n = len(x)
    top = torch.full((n,), float(plan.search_max), dtype=x.dtype)
    found = state.credit(torch.arange(n), call, x, y, eps=top)
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.full((n,), float(plan.search_max), dtype=torch.float64)
    bisect(lambda mid, idx: state.credit(idx, call, x, y, eps=mid.to(dtype=x.dtype)), lo, hi, steps,
           active=lambda: found & ~state.over)
