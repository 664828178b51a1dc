"""A model wrapper that records, per attacked sample, the forward rows and backward passes the model
really saw, for the pass-count contract test (tests/test_pass_count.py).

What counts (DESIGN.md, "The attack contract"; ``minnorm.core.counting``):

- a forward pass: one row of a forward call of the model;
- a backward pass: one reverse sweep of autograd through the graph of a forward call, per row of
  that call. A custom autograd Function on the model's input sees every sweep (a vectorised
  backward call of ``k`` cotangents is ``k`` sweeps); per row it tallies
  ``seen`` (every row the sweep ran over) and ``live`` (rows whose input gradient is not all
  zero). A Hessian-vector product by double backward is one more sweep; a batched per-class
  gradient by ``k`` sweeps of one retained graph is ``k``;
- a Jacobian-vector product: the linear-region attack evaluates the network's linear part (its
  offsets, such as biases, swapped out for zeros) on a tangent; such a call is one backward pass
  per row, not a forward pass.

Rows are attributed to samples by position: each row goes to the clean input nearest to it in L1,
provided it is nearer to it than ``margin`` times its distance to any other (see
:func:`separated_inputs`); rows that are not, and the tangents of JVP calls, are unattributed. With a
single clean input every row is that sample's.
"""
from __future__ import annotations

import torch
from torch import nn


class _Tap(torch.autograd.Function):
    """Identity on the model's input whose backward reports which rows each sweep ran over."""

    @staticmethod
    def forward(ctx, x, owners, log):
        ctx.owners, ctx.log = owners, log
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        for sweep in _sweeps(grad):
            ctx.log.record_backward(ctx.owners, sweep)
        return grad, None, None


def _sweeps(grad: torch.Tensor) -> list[torch.Tensor]:
    """The cotangents of one backward call, one per sweep: a vectorised call (``torch.autograd.grad(...,
    is_grads_batched=True)``, which hands this backward a batched tensor of torch's legacy vmap)
    carries one per slice of its batch dimension."""
    if not torch._C._functorch.is_legacy_batchedtensor(grad):
        return [grad.detach()]
    level = torch._C._vmapmode_increment_nesting() - 1  # the level of the vmap we are inside
    torch._C._vmapmode_decrement_nesting()
    whole = torch._remove_batch_dim(grad, level, 1, 0)  # [k, *grad.shape]: batch size ignored when batched
    return [s for part in whole for s in _sweeps(part)]


class PassLog:
    """Per-sample tallies of what the model saw (``forward``, ``backward_seen``, ``backward_live``,
    ``jvp``) and the counts of rows that could not be attributed to a sample."""

    def __init__(self, clean: torch.Tensor, margin: float = 0.9):
        self.clean = clean.detach().flatten(1).double().cpu()
        self.margin = margin
        n = clean.shape[0]
        self.forward, self.backward_seen, self.backward_live, self.jvp = (torch.zeros(n, dtype=torch.long)
                                                                           for _ in range(4))
        self.stray_forward = self.stray_backward = self.jvp_rows = 0

    def owners(self, x: torch.Tensor) -> torch.Tensor:
        """The sample each row of ``x`` belongs to, -1 where that is unclear."""
        flat = x.detach().flatten(1).double().cpu()
        if self.clean.shape[0] == 1 or flat.shape[0] == 0:
            return torch.zeros(flat.shape[0], dtype=torch.long)
        two = torch.cdist(flat, self.clean, p=1).topk(2, dim=1, largest=False)
        clear = two.values[:, 0] < self.margin * two.values[:, 1]
        return torch.where(clear, two.indices[:, 0], -1)

    @staticmethod
    def _add(counter: torch.Tensor, owners: torch.Tensor) -> int:
        counter += torch.bincount(owners[owners >= 0], minlength=counter.shape[0])
        return int((owners < 0).sum())

    def record_forward(self, owners: torch.Tensor) -> None:
        self.stray_forward += self._add(self.forward, owners)

    def record_jvp(self, rows: int) -> None:
        """A JVP call on ``rows`` tangents: attributable only with a single sample."""
        self.jvp_rows += rows
        if self.clean.shape[0] == 1:
            self.jvp += rows

    def record_backward(self, owners: torch.Tensor, grad: torch.Tensor) -> None:
        live = grad.flatten(1).ne(0).any(1).cpu()
        self.stray_backward += self._add(self.backward_seen, owners)
        self._add(self.backward_live, owners[live])


class PassRecorder(nn.Module):
    """Wraps ``model``; every call is tallied on ``self.log`` against the samples of ``clean``."""

    def __init__(self, model: nn.Module, clean: torch.Tensor, margin: float = 0.9):
        super().__init__()
        self.inner = model
        self.log = PassLog(clean, margin)
        self._own = {id(t) for t in list(model.parameters()) + list(model.buffers())}
        self.train(model.training)

    def _offsets_swapped(self) -> bool:
        """True inside the linear-region attack's evaluation of the linear part (a JVP)."""
        return any(id(t) not in self._own for t in list(self.inner.parameters()) + list(self.inner.buffers()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._offsets_swapped():
            self.log.record_jvp(x.shape[0])
            return self.inner(x)
        owners = self.log.owners(x)
        self.log.record_forward(owners)
        if torch.is_grad_enabled() and x.requires_grad:
            x = _Tap.apply(x, owners, self.log)
        return self.inner(x)
