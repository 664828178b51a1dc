"""Start and finish of every attack: validation, the clean pass, the final pass.

``start_attack`` checks the inputs, runs the clean forward pass and sets up pass counting and
randomness; ``AttackRun.finish`` enforces the contract's output invariants (DESIGN items 2, 5):
adversarials clipped into the box, success from one final forward pass on exactly the returned
tensor, failures replaced by the clean input with an ``inf`` norm.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .best import BestAdversarial, is_adversarial
from .counting import CountedModel, claim_budget
from .norms import batch_view, lp_norm, parse_norm
from .result import AttackResult
from .validation import check_inputs, check_logits, check_switch, model_errors_explained


def make_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The caller's generator, or a fresh one seeded with 0 so runs are reproducible by default
    and the global RNG is never touched (DESIGN item 4)."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    return torch.Generator(device=device).manual_seed(0)


def rand_like(x: torch.Tensor, generator: torch.Generator, normal: bool = False) -> torch.Tensor:
    """Uniform [0, 1) (or standard normal) noise shaped like ``x``, drawn from ``generator``
    on the generator's device and moved to ``x``'s."""
    draw = torch.randn if normal else torch.rand
    return draw(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


@dataclass
class AttackRun:
    model: CountedModel
    inputs: torch.Tensor
    labels: torch.Tensor
    targeted: bool
    bounds: tuple[float, float]
    norm: float
    num_classes: int
    clean_logits: torch.Tensor
    generator: torch.Generator
    started: float = field(default_factory=time.perf_counter)

    @property
    def batch_size(self) -> int:
        return int(self.inputs.shape[0])

    def is_adversarial(self, logits: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        labels = self.labels if index is None else self.labels[index]
        return is_adversarial(logits, labels, self.targeted)

    def finish(self, adversarials: torch.Tensor, info: dict[str, Any] | None = None) -> AttackResult:
        x = self.inputs
        if adversarials.shape != x.shape:
            raise RuntimeError(f"attack produced shape {tuple(adversarials.shape)}, expected {tuple(x.shape)}")
        adv = adversarials.detach().to(dtype=x.dtype, device=x.device).clamp(*self.bounds)
        adv = torch.where(torch.isfinite(adv), adv, x)
        over = self.model.over_budget()
        if self.model.tracker is not None and bool(over.any()):
            # Past its budget a sample keeps the best adversarial of its credited passes only.
            adv = torch.where(batch_view(over, x), self.model.tracker.points.clamp(*self.bounds), adv)
        if self.batch_size:
            with torch.no_grad():
                success = self.is_adversarial(self.model.verify(adv))
        else:
            success = torch.zeros(0, dtype=torch.bool, device=x.device)
        mask = success.view(-1, *([1] * (x.dim() - 1)))
        adv = torch.where(mask, adv, x)
        norms = torch.where(success, lp_norm(adv - x, self.norm),
                            torch.full_like(success, float("inf"), dtype=x.dtype))
        return AttackResult(
            adversarials=adv,
            success=success,
            norms=norms,
            forward_passes=self.model.forward_passes,
            backward_passes=self.model.backward_passes,
            seconds=time.perf_counter() - self.started,
            info=info or {},
            over_budget=over,
        )


def start_attack(model, inputs: torch.Tensor, labels: torch.Tensor, *, targeted: bool,
                 bounds: tuple[float, float], norm: float | str,
                 generator: torch.Generator | None = None) -> AttackRun:
    """Validate, count, and run the clean forward pass (DESIGN item 6 errors come from here).

    Inside :func:`~minnorm.core.counting.call_with_budget` the outermost attack gets the pass
    budget (see :mod:`minnorm.core.counting`)."""
    started = time.perf_counter()
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
    check_eval_mode(model)
    targeted = check_switch("targeted", targeted)
    bounds = check_inputs(inputs, labels, bounds)
    labels = labels.detach().long()
    p = parse_norm(norm)
    generator = make_generator(generator, inputs.device)

    def make_run(budget):
        counted = CountedModel(model, inputs.shape[0], inputs.device, budget=budget)
        if budget is not None:
            counted.tracker = BestAdversarial(inputs.detach(), labels, targeted, p)
        return AttackRun(counted, inputs.detach(), labels, targeted, bounds, p, 0,
                         torch.zeros(0, 0, dtype=inputs.dtype, device=inputs.device), generator, started)

    run = claim_budget(make_run)
    if inputs.shape[0]:
        with torch.no_grad(), model_errors_explained(model, inputs):
            clean = run.model(inputs.detach())
        run.num_classes = run.model.num_classes = check_logits(clean, inputs.shape[0], labels)
        run.clean_logits = clean.detach()
    return run


def check_eval_mode(model) -> None:
    """Attacks need a deterministic, per-sample model: refuse one with modules in training mode
    (BatchNorm would update its running statistics, Dropout would make success flags random)."""
    if isinstance(model, nn.Module):
        training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
        if training:
            raise ValueError(f"the model is in training mode ({', '.join(training[:3])}"
                             f"{', ...' if len(training) > 3 else ''}): call model.eval() before attacking it")
