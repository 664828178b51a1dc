"""The pluggable adversary of adversarial training: any registered attack, looked up by name.

The attacks with the ``madry-training`` role (``pgd-linf``, ``pgd-l2``, ``pgd-l1``)
give Madry et al. (2018) training: the training images
come from :func:`~minnorm.training.pgd.madry_pgd`, which runs every step and returns the last
iterate (the registered PGD attack stops at the first adversarial point and returns the clean
input where it fails, which suits evaluation, not Madry's inner maximisation). ``ddn`` gives DDN
training as in Rony et al. (2019), Sec. 5: the model in eval mode while attacking, the
perturbation renormed to at most ``max_norm``, then a training step on the adversarial images
only. Any other registered attack works too: fixed-epsilon attacks get ``eps=max_norm``;
minimal-norm attacks have their perturbation projected onto the ``max_norm`` ball, unless the
attack takes ``max_norm`` itself and returns ``info["perturbed"]`` (DDN does: there samples
never found adversarial get the capped last iterate). Registered attacks return the clean input
where they fail (the contract), so such samples train on clean images.

The per-epoch robust accuracy always comes from the registered attack of that name.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core import AttackSpec, clip_box, lp_norm, project_lp_ball
from .pgd import madry_pgd

__all__ = ["Adversary", "attack_mode"]

_MADRY_KEYS = set(inspect.signature(madry_pgd).parameters) - {"model", "x", "y", "norm", "generator"}


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters while attacking; every module's own mode and every
    parameter's ``requires_grad`` are restored afterwards, even on error.

    Eval mode keeps BatchNorm statistics clean of attack iterates (DDN paper, Sec. 5); frozen
    parameters spare the weight gradients an input-gradient attack does not need.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


@dataclass
class Adversary:
    """A registered attack bound to its training settings."""

    name: str
    max_norm: float | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..core import get
        self.spec: AttackSpec = get(self.name)
        self.madry = "madry-training" in self.spec.roles
        self.kwargs = dict(self.kwargs)
        if self.max_norm is not None and not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ValueError(f"max_norm must be > 0 and finite, got {self.max_norm}")
        for key in ("eps", "max_norm"):  # one radius: the log, the projection and the attack must agree
            if self.max_norm is not None and key in self.kwargs and self.kwargs[key] != self.max_norm:
                raise ValueError(f"the adversary's radius is given twice: max_norm={self.max_norm} and "
                                 f"{key}={self.kwargs[key]!r} among its parameters; give it once")
        if self.spec.minimal:
            if self.max_norm is None:
                raise ValueError(f"adversary {self.name!r} is a minimal-norm attack: give max_norm")
        else:
            if "eps" not in self.kwargs:
                if self.max_norm is None:
                    raise ValueError(f"adversary {self.name!r} is a fixed-epsilon attack: give max_norm (or eps)")
                self.kwargs["eps"] = self.max_norm
            if self.max_norm is None:
                self.max_norm = float(self.kwargs["eps"])
        self.bounds = tuple(self.kwargs.get("bounds", (0.0, 1.0)))
        # A minimal-norm attack that takes max_norm (DDN does) caps its own output and returns
        # the training input of every sample, found or not, in info["perturbed"].
        self._train_kwargs = dict(self.kwargs)
        if self.madry:
            unknown = sorted(set(self.kwargs) - _MADRY_KEYS)
            if unknown:
                raise ValueError(f"Madry PGD training takes {', '.join(sorted(_MADRY_KEYS))}; "
                                 f"got also {', '.join(unknown)}")
        elif self.spec.minimal and "max_norm" in inspect.signature(self.spec.fn).parameters:
            self._train_kwargs.setdefault("max_norm", self.max_norm)

    @property
    def norm(self) -> float:
        return self.spec.norm

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None,
             kwargs: dict[str, Any]):
        with attack_mode(model):
            return self.spec(model, x, y, generator=generator, **kwargs)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Adversarial training images: the attack's output with its perturbation in the max_norm ball."""
        if self.madry:
            with attack_mode(model):
                return madry_pgd(model, x, y, norm=self.spec.norm, generator=generator,
                                 **self._train_kwargs)
        result = self._run(model, x, y, generator, self._train_kwargs)
        if "perturbed" in result.info:
            return clip_box(result.info["perturbed"], self.bounds).detach()
        delta = result.adversarials - x  # failures come back as x: trained on clean, as in DDN's code
        if self.spec.minimal and self.norm in (1.0, 2.0, math.inf):
            delta = project_lp_ball(delta, self.norm, self.max_norm)
        elif self.spec.minimal:  # no closed-form projection for other p: shrink radially instead
            n = lp_norm(delta, self.norm)
            delta = delta * (self.max_norm / n.clamp_min(self.max_norm)).view(-1, *([1] * (x.dim() - 1)))
        return clip_box(x + delta, self.bounds).detach()

    def robust_correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Per sample: correctly classified and not broken within max_norm (a small relative
        tolerance absorbs float error on the ball's surface)."""
        result = self._run(model, x, y, generator, self.kwargs)
        with torch.no_grad(), attack_mode(model):
            correct = model(x).argmax(1) == y
        broken = result.success & (result.norms <= self.max_norm * (1 + 1e-5) + 1e-7)
        return correct & ~broken
