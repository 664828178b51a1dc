"""Best-adversarial tracking: the smallest adversarial seen so far, per sample (DESIGN item 7)."""
from __future__ import annotations

import math

import torch

from .norms import lp_norm


def is_adversarial(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Targeted: the argmax is the target. Untargeted: the argmax is not the label. Never where a
    logit is NaN: argmax picks the first NaN, which says nothing about the model's decision (a
    model that breaks down off the data would count as fooled). An infinite logit is a decision."""
    pred = logits.argmax(dim=1)
    hit = pred == labels if targeted else pred != labels
    return hit & ~torch.isnan(logits).any(dim=1)


class BestAdversarial:
    """Per sample of ``inputs``: the adversarial of smallest lp distance offered so far.

    ``update`` takes candidate points for rows of the batch (rows may repeat, e.g. several
    starts of one image) with their logits; a candidate counts when it is adversarial (the argmax
    is not the label, or is the target when ``targeted``). Ties keep the earlier point.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, targeted: bool, norm: float):
        self.inputs = inputs
        self.labels = labels
        self.targeted = targeted
        self.norm = norm
        self.norms = torch.full((inputs.shape[0],), math.inf, dtype=inputs.dtype, device=inputs.device)
        self.points = inputs.clone()

    @property
    def found(self) -> torch.Tensor:
        return torch.isfinite(self.norms)

    def offer(self, rows: torch.Tensor, points: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """:meth:`update` for the rows ``rows`` of the batch; returns which points are adversarial."""
        adversarial = is_adversarial(logits, self.labels[rows], self.targeted)
        self.update(points, logits, rows, adversarial)
        return adversarial

    def update(self, points: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """Offer ``points`` (for samples ``rows``, all if None); ``mask`` limits which count.
        Returns, per row, whether it became its sample's best."""
        if rows is None:
            rows = torch.arange(self.inputs.shape[0], device=self.inputs.device)
        adversarial = is_adversarial(logits, self.labels[rows], self.targeted)
        if mask is not None:
            adversarial = adversarial & mask
        dist = lp_norm(points.to(self.inputs.dtype) - self.inputs[rows], self.norm)
        cand = torch.where(adversarial, dist, torch.full_like(dist, math.inf))
        n = self.inputs.shape[0]
        best = torch.full((n,), math.inf, dtype=cand.dtype, device=cand.device).scatter_reduce(
            0, rows, cand, reduce="amin")
        winner = torch.isfinite(cand) & (cand == best[rows])
        position = torch.arange(len(rows), device=rows.device)
        first = torch.full((n,), len(rows), dtype=torch.long, device=rows.device).scatter_reduce(
            0, rows[winner], position[winner], reduce="amin")
        improve = (first < len(rows)) & (best < self.norms)
        samples = improve.nonzero().flatten()
        self.norms[samples] = best[samples]
        self.points[samples] = points[first[samples]].to(self.points.dtype)
        became = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        became[first[samples]] = True
        return became
