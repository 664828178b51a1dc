"""Per-sample forward/backward pass accounting, and the pass budget as a hard cap.

Attacks call the model only through a :class:`CountedModel`, handing it the indices of the
samples in the sub-batch, so that samples stopped early stop costing passes (DESIGN item 3).
A vector-Jacobian or Jacobian-vector product counts as one backward pass (:meth:`CountedModel.charge`;
:meth:`CountedModel.jvp` and :meth:`CountedModel.vjp` compute and charge them, the VJP with the
forward pass that builds its pullback).

Budget (AttackBench's convention). Under :func:`pass_budget` every sample may spend ``budget``
passes in all: the clean pass, the attack's own passes and the one final pass that checks the
returned adversarial (reserved, so the search gets ``budget - 1``). A pass that would take a
sample beyond its search budget is not credited: the sample is marked exhausted, and its result
is the best adversarial among the forward passes that were credited (kept by a
:class:`~minnorm.core.best.BestAdversarial`), whatever the attack does afterwards. Once every
sample of the batch is exhausted, the next model call raises :class:`PassBudgetExceeded`, which
:func:`call_with_budget` catches to finish the attack early. Results do not depend on the batch:
a sample's credited passes are the same alone or in company.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .validation import check_output_shape


class PassBudgetExceeded(RuntimeError):
    """Every sample of an attack's batch has spent its pass budget (see the module docstring)."""


@dataclass
class _BudgetScope:
    budget: int | torch.Tensor
    run: Any = None  # the outermost AttackRun started inside the scope


_SCOPE: contextvars.ContextVar[_BudgetScope | None] = contextvars.ContextVar("minnorm_pass_budget", default=None)


def claim_budget(run_factory: Callable[[int | torch.Tensor | None], Any]) -> Any:
    """Used by ``start_attack``: the outermost attack started inside :func:`call_with_budget`
    gets the scope's budget and is remembered, so an early stop can still finish it; attacks an
    attack runs internally get none (their passes are charged to the outer one)."""
    scope = _SCOPE.get()
    if scope is None or scope.run is not None:
        return run_factory(None)
    scope.run = run_factory(scope.budget)
    return scope.run


def call_with_budget(attack: Callable[..., Any], model, inputs: torch.Tensor, labels: torch.Tensor, *,
                     budget: int | torch.Tensor | None, **kwargs: Any):
    """``attack(model, inputs, labels, **kwargs)`` with at most ``budget`` passes per sample
    (an int, or a ``[B]`` tensor of per-sample budgets); ``None`` runs it unbudgeted."""
    if budget is None:
        return attack(model, inputs, labels, **kwargs)
    scope = _BudgetScope(budget)
    token = _SCOPE.set(scope)
    try:
        return attack(model, inputs, labels, **kwargs)
    except PassBudgetExceeded:
        if scope.run is None:
            raise
        return scope.run.finish(scope.run.inputs, info={"stopped": "pass budget"})
    finally:
        _SCOPE.reset(token)


class CountedModel:
    """The model as attacks see it: logits, plus per-sample pass counts and the budget."""

    def __init__(self, model: nn.Module | Callable, batch_size: int, device: torch.device | str = "cpu",
                 budget: int | torch.Tensor | None = None):
        self.model = model
        self.forward_passes = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.backward_passes = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.exhausted = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.limit = None if budget is None else (torch.as_tensor(budget, device=device).long() - 1).expand(batch_size)
        self.tracker = None  # a BestAdversarial that sees every credited forward pass (set by start_attack)
        self.num_classes: int | None = None  # once set (by start_attack), every output must be [n, num_classes]

    @property
    def budgeted(self) -> bool:
        return self.limit is not None

    def _rows(self, index: torch.Tensor | None) -> torch.Tensor:
        n = self.forward_passes.shape[0]
        if index is None:
            return torch.arange(n, device=self.forward_passes.device)
        index = torch.as_tensor(index, device=self.forward_passes.device)
        return index.nonzero().flatten() if index.dtype == torch.bool else index.long().flatten()

    def _charge(self, counter: torch.Tensor, rows: torch.Tensor, n: int | torch.Tensor = 1) -> torch.Tensor | None:
        """Add ``n`` passes per row (an int, or per row; rows may repeat); under a budget, returns
        which rows were credited."""
        if isinstance(n, torch.Tensor):
            need = torch.zeros_like(counter).index_add_(0, rows, n.to(counter))
        else:
            need = torch.bincount(rows, minlength=counter.shape[0]) * n
        if self.limit is None:
            counter += need
            return None
        spent = self.forward_passes + self.backward_passes
        ok = ~self.exhausted & (spent + need <= self.limit)
        counter += torch.where(ok, need, torch.zeros_like(need))
        self.exhausted |= (need > 0) & ~ok
        return ok[rows]

    def passes_left(self) -> torch.Tensor | None:
        """Per sample, the search passes still creditable under the budget (``None`` without one)."""
        if self.limit is None:
            return None
        return self.limit - self.forward_passes - self.backward_passes

    def _check_budget(self) -> None:
        if self.limit is not None and len(self.exhausted) and bool(self.exhausted.all()):
            raise PassBudgetExceeded("every sample has spent its pass budget")

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``x``; charges one forward pass to the samples ``index`` (all if None)."""
        self._check_budget()
        out = self._logits(x)
        rows = self._rows(index)
        credited = self._charge(self.forward_passes, rows)
        if self.tracker is not None and credited is not None and len(rows):
            self.tracker.update(x.detach(), out.detach(), rows, credited)
        return out

    def count_backward(self, index: torch.Tensor | None = None) -> None:
        self._charge(self.backward_passes, self._rows(index))

    def charge(self, index: torch.Tensor | None = None, *, forward: int | torch.Tensor = 0,
               backward: int | torch.Tensor = 0) -> None:
        """Charge passes done outside :meth:`__call__` (JVPs, VJPs, a nested attack's passes);
        counts are an int per row or a tensor of per-row counts."""
        rows = self._rows(index)
        for counter, n in ((self.forward_passes, forward), (self.backward_passes, backward)):
            if isinstance(n, torch.Tensor) or n:
                self._charge(counter, rows, n)

    def jvp(self, x: torch.Tensor, v: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The Jacobian-vector product ``J(x) v`` (output-shaped, forward mode, no graph); one
        backward pass per row of ``index`` (rows may repeat: each occurrence is charged)."""
        self._check_budget()
        with torch.no_grad():  # function transforms: no graph w.r.t. the weights either
            out = torch.func.jvp(self.model, (x.detach(),), (v.detach(),))[1]
        self.charge(index, backward=1)
        return out

    def vjp(self, x: torch.Tensor, u: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The vector-Jacobian product ``J(x)^T u`` (input-shaped, no graph): one forward pass
        (the pullback is built from one) and one backward pass per row of ``index``."""
        self._check_budget()
        with torch.no_grad():
            _, pullback = torch.func.vjp(self.model, x.detach())
            (out,) = pullback(u.detach())
        self.charge(index, forward=1, backward=1)
        return out

    def verify(self, x: torch.Tensor) -> torch.Tensor:
        """The final check of the returned adversarials: one pass per sample, always charged
        (the budget reserves it), never offered to the tracker."""
        out = self._logits(x)
        self.forward_passes += 1
        return out

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output on ``x``, checked to be ``[n, K]`` once K is known (see
        :func:`~minnorm.core.validation.check_output_shape`)."""
        out = self.model(x)
        if self.num_classes is not None:
            check_output_shape(out, x.shape[0], self.num_classes)
        return out

    def over_budget(self) -> torch.Tensor:
        """Samples that hit their budget (or were charged past it by hand)."""
        if self.limit is None:
            return torch.zeros_like(self.exhausted)
        return self.exhausted | (self.forward_passes + self.backward_passes > self.limit)

    def value_and_grad(self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor],
                       index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward and one backward pass.

        ``objective`` maps logits ``[b, K]`` to per-sample values ``[b]``; returns
        ``(logits, values, d values / d x)``, all detached. Per-sample values are summed before
        differentiating, so each sample's gradient is its own (the model must not mix samples).
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = self(x, index)
            values = objective(logits)
            (grad,) = torch.autograd.grad(values.sum(), x)
        self.count_backward(index)
        return logits.detach(), values.detach(), grad.detach()
