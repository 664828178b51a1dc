"""The value every attack returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .radius import broken_within, check_radius


@dataclass
class AttackResult:
    """Per-sample outcome of one attack on one batch.

    ``success`` comes from a final forward pass on exactly ``adversarials``; where it is
    False the clean input is returned and ``norms`` is ``inf``. ``norms`` are measured in
    the attack's own norm. Pass counts are per sample, so early-stopped samples cost less.
    """

    adversarials: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    forward_passes: torch.Tensor
    backward_passes: torch.Tensor
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    over_budget: torch.Tensor | None = None  # bool [B]: the sample hit its pass budget (None: no budget)

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if len(self) else float("nan")

    def median_norm(self) -> float:
        """Median over all samples; failures count as ``inf`` (Foolbox's convention)."""
        return float(self.norms.median()) if len(self) else float("nan")

    def to(self, device: torch.device | str) -> "AttackResult":
        return AttackResult(
            self.adversarials.to(device),
            self.success.to(device),
            self.norms.to(device),
            self.forward_passes.to(device),
            self.backward_passes.to(device),
            self.seconds,
            dict(self.info),
            None if self.over_budget is None else self.over_budget.to(device),
        )

    @property
    def passes(self) -> torch.Tensor:
        """Forward plus backward passes per sample."""
        return self.forward_passes + self.backward_passes

    def broken_within(self, eps: float) -> torch.Tensor:
        """Per sample: adversarial within radius ``eps`` (under the tolerance rule of
        :mod:`minnorm.core.radius`)."""
        return self.success & broken_within(self.norms, check_radius(eps))

    def robust_accuracy(self, eps: float) -> float:
        """Share of the samples not broken within ``eps``. Inputs already misclassified count as
        broken at norm 0 (untargeted attacks return them unchanged), so on correctly classified
        inputs this is robust accuracy among them; on all inputs, robust accuracy. An upper bound:
        a stronger attack can only lower it."""
        if not len(self):
            return float("nan")
        return 1.0 - float(self.broken_within(eps).double().mean())

    def summary(self) -> str:
        """One line: samples, success, median and mean norm over successes, passes, seconds."""
        n = len(self)
        ok = self.norms[self.success].double()
        median = f"{float(ok.median()):.4g}" if len(ok) else "-"
        mean = f"{float(ok.mean()):.4g}" if len(ok) else "-"
        passes = f"{float(self.passes.double().mean()):.1f}" if n else "-"
        over = "" if self.over_budget is None else f", {int(self.over_budget.sum())} over budget"
        rate = f"{100 * self.success_rate:.1f}%" if n else "-"
        return (f"AttackResult({n} samples, success {rate}, median norm {median}, mean norm {mean} "
                f"over successes, {passes} passes/sample{over}, {self.seconds:.3g} s)")

    def __repr__(self) -> str:
        return self.summary()
