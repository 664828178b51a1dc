"""The value every attack returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


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
        )
