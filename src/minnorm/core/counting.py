"""Per-sample forward/backward pass accounting.

Attacks call the model only through a :class:`CountedModel`, handing it the indices of the
samples in the sub-batch, so that samples stopped early stop costing passes (DESIGN item 3).
A vector-Jacobian or Jacobian-vector product counts as one backward pass.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class PassBudgetExceeded(RuntimeError):
    """Raised when a sample would exceed the forward+backward budget given to a CountedModel."""


class CountedModel:
    def __init__(self, model: nn.Module | Callable, batch_size: int, device: torch.device | str = "cpu",
                 budget: int | None = None):
        self.model = model
        self.forward_passes = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.backward_passes = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.budget = budget

    def _index(self, index: torch.Tensor | None) -> torch.Tensor | slice:
        return slice(None) if index is None else index

    def _charge(self, counter: torch.Tensor, index: torch.Tensor | None) -> None:
        counter[self._index(index)] += 1
        if self.budget is not None:
            total = self.forward_passes + self.backward_passes
            if bool((total > self.budget).any()):
                raise PassBudgetExceeded(f"a sample exceeded its budget of {self.budget} passes")

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``x``; charges one forward pass to the samples ``index`` (all if None)."""
        out = self.model(x)
        self._charge(self.forward_passes, index)
        return out

    def count_backward(self, index: torch.Tensor | None = None) -> None:
        self._charge(self.backward_passes, index)

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
