"""The attack registry: the only way the CLI and the evaluation find attacks."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .norms import norm_name
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
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)  # what else uses it: role -> extra params

    def __call__(self, model, inputs, labels, **kwargs) -> AttackResult:
        return self.fn(model, inputs, labels, **{**self.defaults, **kwargs})

    @property
    def norm_name(self) -> str:
        return norm_name(self.norm)

    def accepted_params(self) -> set[str] | None:
        """Hyper-parameters a user may set (None: the function takes ``**kwargs``)."""
        sig = inspect.signature(self.fn)
        if any(q.kind is q.VAR_KEYWORD for q in sig.parameters.values()):
            return None
        return {n for n, q in sig.parameters.items()
                if q.kind in (q.KEYWORD_ONLY, q.POSITIONAL_OR_KEYWORD) and n not in CONTRACT_ARGS
                and n not in self.fixed_params}

    @property
    def fixed_params(self) -> set[str]:
        """Defaults that make the entry what it is (its norm, its order): never overridden."""
        return {k for k in self.defaults if k in IDENTITY_PARAMS}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` if each is a hyper-parameter this entry lets a user set, else a ValueError
        naming the right option: contract arguments have options of their own, and a parameter
        the entry fixes (``norm``) would relabel the attack."""
        accepted = self.accepted_params()
        for key in params:
            if key in CONTRACT_ARGS:
                raise ValueError(f"{key!r} is not a hyper-parameter of {self.name}: {CONTRACT_ARGS[key]}")
            if key in self.fixed_params:
                others = [s.name for s in specs() if s.fn is self.fn and s.name != self.name]
                hint = f"; use another entry: {', '.join(others)}" if others else ""
                raise ValueError(f"{self.name} fixes {key}={self.defaults[key]!r} (it is what the name says){hint}")
            if accepted is not None and key not in accepted:
                raise ValueError(f"attack {self.name!r} takes no parameter {key!r}; it takes: "
                                 f"{', '.join(sorted(accepted)) or 'none'}")
        switches = {k for k, v in self.parameters().items() if isinstance(v, bool)}
        for key in switches & set(params):
            if not isinstance(params[key], bool):  # a string "false" would be truthy
                raise ValueError(f"{self.name}: {key} is a switch, True or False; got {params[key]!r}")
        return dict(params)

    def parameters(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every hyper-parameter the attack runs with: signature defaults, then the entry's
        defaults, then ``params`` (what a run records)."""
        sig = inspect.signature(self.fn)
        out = {n: q.default for n, q in sig.parameters.items()
               if q.default is not q.empty and n not in CONTRACT_ARGS}
        return {**out, **self.defaults, **(params or {})}


# Arguments of the attack contract, not hyper-parameters: what to use instead.
CONTRACT_ARGS = {
    "model": "the model is --model (Python: the first argument)",
    "inputs": "the inputs are --data (Python: the second argument)",
    "labels": "labels come with --data; for targets use --targeted (Python: targeted=True with target labels)",
    "targeted": "ask for a targeted attack with --targeted (Python: targeted=True)",
    "bounds": "the input box is a setting of the run (Python: bounds=(lower, upper))",
    "generator": "randomness comes from --seed (Python: generator=torch.Generator().manual_seed(...))",
}
IDENTITY_PARAMS = ("norm", "order")

_REGISTRY: dict[str, AttackSpec] = {}


def register(name: str, fn: Callable[..., AttackResult], *, norm: float, minimal: bool, targeted: bool,
             paper: str, description: str = "", defaults: dict[str, Any] | None = None,
             quick: dict[str, Any] | None = None, roles: dict[str, dict[str, Any]] | None = None) -> AttackSpec:
    if name in _REGISTRY:
        raise ValueError(f"attack {name!r} is already registered")
    spec = AttackSpec(name, fn, float(norm), minimal, targeted, paper, description or (fn.__doc__ or "").strip().split("\n")[0],
                      dict(defaults or {}), dict(quick or {}), {k: dict(v) for k, v in (roles or {}).items()})
    _REGISTRY[name] = spec
    return spec


def _load() -> None:
    """The attack modules register themselves when ``minnorm.attacks`` is imported; the registry
    imports it on first use, so no caller has to import it for that side effect."""
    importlib.import_module("minnorm.attacks")


def get(name: str) -> AttackSpec:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def available() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def specs() -> list[AttackSpec]:
    return [_REGISTRY[n] for n in available()]


def with_role(role: str, norm: float) -> tuple[AttackSpec, dict[str, Any]]:
    """The registered attack that fills ``role`` in the lp norm ``norm`` (the first one with no
    extra parameters for it, else the first), and those parameters; a ValueError if none."""
    found = [s for s in specs() if role in s.roles and s.norm == norm]
    if not found:
        raise ValueError(f"no registered attack has the role {role!r} in the l{norm:g} norm")
    best = min(found, key=lambda s: (bool(s.roles[role]), s.name))
    return best, dict(best.roles[role])


