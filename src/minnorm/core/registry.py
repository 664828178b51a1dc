"""The attack registry: the only way the CLI and the evaluation find attacks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .result import AttackResult


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: the function, the defaults this entry fixes, and metadata.

    ``minimal`` is True for minimal-norm attacks and False for fixed-epsilon ones (which take
    an ``eps`` argument). ``quick`` holds small settings for smoke runs and the demo.
    """

    name: str
    fn: Callable[..., AttackResult]
    norm: float
    minimal: bool
    targeted: bool
    paper: str
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)

    def __call__(self, model, inputs, labels, **kwargs) -> AttackResult:
        return self.fn(model, inputs, labels, **{**self.defaults, **kwargs})

    @property
    def norm_name(self) -> str:
        return "linf" if math.isinf(self.norm) else f"l{self.norm:g}"


_REGISTRY: dict[str, AttackSpec] = {}


def register(name: str, fn: Callable[..., AttackResult], *, norm: float, minimal: bool, targeted: bool,
             paper: str, description: str = "", defaults: dict[str, Any] | None = None,
             quick: dict[str, Any] | None = None) -> AttackSpec:
    if name in _REGISTRY:
        raise ValueError(f"attack {name!r} is already registered")
    spec = AttackSpec(name, fn, float(norm), minimal, targeted, paper, description or (fn.__doc__ or "").strip().split("\n")[0],
                      dict(defaults or {}), dict(quick or {}))
    _REGISTRY[name] = spec
    return spec


def get(name: str) -> AttackSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def available() -> list[str]:
    return sorted(_REGISTRY)


def specs() -> list[AttackSpec]:
    return [_REGISTRY[n] for n in available()]


