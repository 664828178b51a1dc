"""Adapters that run a peer library's implementation of a method (adv_lib, Foolbox 3,
torchattacks) on a model, a batch and a budget, and hand back the adversarials it returned.

A *method* (``deepfool-l2``, ``cw-l2``, ...) fixes a minnorm registry entry, a budget in one
shared vocabulary (``steps``, ``overshoot``, ``eps``...) and the peers that implement the same
method. Each side translates the budget into its own parameter names, so that every library
gets the same number of iterations / binary-search steps / the same eps. Where a peer cannot
express the budget exactly, its ``note`` says how it was mapped; compare.py prints the notes.

Peers' own success flags are never used: compare.py re-checks every returned tensor.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

STUBS = Path(__file__).resolve().parent / "stubs"
LIBRARIES = ("adv_lib", "foolbox", "torchattacks")

Budget = dict[str, Any]
PeerFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, Budget], torch.Tensor]


def use_stubs() -> None:
    """Let adv_lib import without torchvision/visdom (see stubs/README.md). Real packages win:
    the stand-ins are only put on the path for the ones that are missing."""
    missing = [m for m in ("torchvision", "visdom") if importlib.util.find_spec(m) is None]
    if missing and str(STUBS) not in sys.path:
        sys.path.append(str(STUBS))


def library_version(name: str) -> str | None:
    """The installed version of a peer library, or None when it does not import."""
    use_stubs()
    try:
        module = importlib.import_module(name)
    except Exception:  # a broken install is as good as none for a benchmark
        return None
    if name == "adv_lib":
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("adv-lib")
        except PackageNotFoundError:
            return "unknown"
    return str(getattr(module, "__version__", "unknown"))


@dataclass(frozen=True)
class Peer:
    library: str
    label: str  # the peer's own name for the attack
    run: PeerFn
    note: str = ""

    @property
    def available(self) -> bool:
        return library_version(self.library) is not None


@dataclass(frozen=True)
class Method:
    name: str
    attack: str  # minnorm registry name
    norm: float
    budget: Budget  # defaults, shared vocabulary
    minnorm_names: dict[str, tuple[str, ...]]  # budget key -> minnorm parameter names tried; () = peer-only
    peers: tuple[Peer, ...] = field(default_factory=tuple)
    fixed_eps: bool = False  # budget["eps"] bounds the norm; success needs norm <= eps

    def minnorm_kwargs(self, fn: Callable, budget: Budget) -> dict[str, Any]:
        """Budget in the attack function's own parameter names (found by signature, so a
        renamed parameter is caught here rather than silently ignored)."""
        params = inspect.signature(fn).parameters
        kwargs = {}
        for key, value in budget.items():
            names = self.minnorm_names.get(key, (key,))
            if not names:  # a peer-only setting
                continue
            match = next((n for n in names if n in params), None)
            if match is None:
                raise ValueError(f"{self.attack}: no parameter for budget key {key!r} (tried {', '.join(names)})")
            kwargs[match] = value
        return kwargs


# --------------------------------------------------------------------------- adapters

def _foolbox(attack_factory: Callable[[Budget], Any], fixed_eps: bool = False) -> PeerFn:
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, b: Budget) -> torch.Tensor:
        import foolbox
        fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
        attack = attack_factory(b)
        # epsilons=None asks a minimal-norm attack for its unbounded result
        _, clipped, _ = attack(fmodel, x, y, epsilons=b["eps"] if fixed_eps else None)
        return clipped
    return run


def _torchattacks(name: str, kwargs: Callable[[Budget], dict]) -> PeerFn:
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, b: Budget) -> torch.Tensor:
        import torchattacks
        return getattr(torchattacks, name)(model, **kwargs(b))(x, y)
    return run


def _adv_lib(path: str, kwargs: Callable[[Budget], dict]) -> PeerFn:
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, b: Budget) -> torch.Tensor:
        use_stubs()
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)(model, x, y, **kwargs(b))
    return run


def _fb(name: str, kwargs: Callable[[Budget], dict], fixed_eps: bool = False) -> PeerFn:
    def make(b: Budget):
        import foolbox
        return getattr(foolbox.attacks, name)(**kwargs(b))
    return _foolbox(make, fixed_eps)


def _deepfool(p: float) -> tuple[Peer, ...]:
    linf = math.isinf(p)
    fb_name = "LinfDeepFoolAttack" if linf else "L2DeepFoolAttack"
    peers = [
        Peer("adv_lib", "df",
             _adv_lib("adv_lib.attacks.df", lambda b: dict(steps=b["steps"], overshoot=b["overshoot"], norm=p)),
             "adv_lib considers all classes (no candidates limit)"),
        Peer("foolbox", fb_name, _fb(fb_name, lambda b: dict(
            steps=b["steps"], candidates=b["candidates"], overshoot=b["overshoot"], loss="logits"))),
    ]
    if not linf:
        peers.append(Peer("torchattacks", "DeepFool",
                          _torchattacks("DeepFool", lambda b: dict(steps=b["steps"], overshoot=b["overshoot"])),
                          "torchattacks: L2 only, all classes, one sample at a time"))
    return tuple(peers)


def _cw() -> tuple[Peer, ...]:
    def adv_lib_kwargs(b: Budget) -> dict:
        return {"binary_search_steps": b["binary_search_steps"], "max_iterations": b["steps"],
                "learning_rate": b["learning_rate"], "initial_const": b["initial_const"],
                "confidence": b["confidence"], "abort_early": b["abort_early"]}

    def foolbox_kwargs(b: Budget) -> dict:
        return {"binary_search_steps": b["binary_search_steps"], "steps": b["steps"], "stepsize": b["learning_rate"],
                "initial_const": b["initial_const"], "confidence": b["confidence"], "abort_early": b["abort_early"]}

    def torchattacks_kwargs(b: Budget) -> dict:
        # torchattacks has no binary search over c: give it the same total number of Adam steps
        # at its default c = 1 (c = initial_const would almost never succeed).
        return {"c": 1.0, "kappa": b["confidence"], "steps": b["binary_search_steps"] * b["steps"],
                "lr": b["learning_rate"]}

    return (Peer("adv_lib", "carlini_wagner_l2", _adv_lib("adv_lib.attacks.carlini_wagner_l2", adv_lib_kwargs)),
            Peer("foolbox", "L2CarliniWagnerAttack", _fb("L2CarliniWagnerAttack", foolbox_kwargs)),
            Peer("torchattacks", "CW", _torchattacks("CW", torchattacks_kwargs),
                 "torchattacks: no binary search; c = 1 and binary_search_steps x steps Adam steps"))


def _ddn() -> tuple[Peer, ...]:
    return (Peer("adv_lib", "ddn", _adv_lib("adv_lib.attacks.ddn", lambda b: {
                "steps": b["steps"], "γ": b["gamma"], "init_norm": b["init_norm"], "levels": b["levels"]})),
            Peer("foolbox", "DDNAttack", _fb("DDNAttack", lambda b: {
                "init_epsilon": b["init_norm"], "steps": b["steps"], "gamma": b["gamma"]}),
                 "foolbox: never quantises (levels ignored)"))


def _pgd(p: float) -> tuple[Peer, ...]:
    linf = math.isinf(p)
    fb_name = "LinfProjectedGradientDescentAttack" if linf else "L2ProjectedGradientDescentAttack"
    peers = [
        Peer("foolbox", fb_name, _fb(fb_name, lambda b: dict(
            abs_stepsize=b["step_size"], steps=b["steps"], random_start=b["random_start"]), fixed_eps=True)),
        Peer("torchattacks", "PGD" if linf else "PGDL2", _torchattacks("PGD" if linf else "PGDL2", lambda b: dict(
            eps=b["eps"], alpha=b["step_size"], steps=b["steps"], random_start=b["random_start"]))),
    ]
    if linf:
        peers.insert(0, Peer("adv_lib", "pgd_linf", _adv_lib("adv_lib.attacks.pgd_linf", lambda b: dict(
            ε=b["eps"], steps=b["steps"], random_init=b["random_start"], absolute_step_size=b["step_size"]))))
    return tuple(peers)


def _tr(p: float) -> tuple[Peer, ...]:
    # adv_lib stops each sample at its first adversarial iterate and has no refinement phase:
    # its iteration cap gets minnorm's search and refinement steps together.
    return (Peer("adv_lib", "tr", _adv_lib("adv_lib.attacks.tr", lambda b: dict(
        iter=b["steps"] + b["refine_steps"], adaptive=b["adaptive"], p=p,
        eps=1e-3 if b["radius"] is None else b["radius"], c=b["candidates"])),
        "adv_lib: iter = steps + refine_steps, initial radius 1e-3 when radius=None"),)


STEPS = ("steps", "max_iterations", "iterations", "max_iter")
METHODS: dict[str, Method] = {}


def _add(method: Method) -> None:
    METHODS[method.name] = method


for _p, _suffix in ((2.0, "l2"), (math.inf, "linf")):
    _add(Method(f"deepfool-{_suffix}", f"deepfool-{_suffix}", _p, {"steps": 50, "overshoot": 0.02, "candidates": 10},
                {"steps": STEPS}, _deepfool(_p)))
    _add(Method(f"tr-{_suffix}", f"tr-{_suffix}", _p,
                {"steps": 100, "refine_steps": 20 if _p == 2 else 10, "adaptive": True, "radius": None, "candidates": 9},
                {"steps": STEPS, "radius": ("radius", "init_radius", "initial_radius"),
                 "candidates": ("top_k", "candidates")}, _tr(_p)))
    _add(Method(f"pgd-{_suffix}", f"pgd-{_suffix}", _p,
                {"eps": 1.0 if _p == 2 else 0.1, "steps": 40, "step_size": 0.1 if _p == 2 else 0.01,
                 "random_start": True},
                {"steps": STEPS, "step_size": ("step_size", "alpha", "stepsize")}, _pgd(_p), fixed_eps=True))

_add(Method("cw-l2", "cw-l2", 2.0,
            {"binary_search_steps": 9, "steps": 100, "learning_rate": 0.01, "initial_const": 1e-3,
             "confidence": 0.0, "abort_early": True},
            {"steps": STEPS, "learning_rate": ("learning_rate", "lr", "stepsize")}, _cw()))
_add(Method("ddn", "ddn", 2.0, {"steps": 100, "gamma": 0.05, "init_norm": 1.0, "levels": None},
            {"steps": STEPS, "init_norm": ("init_norm", "init_epsilon")}, _ddn()))
_add(Method("fgsm", "fgsm", math.inf, {"eps": 0.1}, {}, (
    Peer("foolbox", "LinfFastGradientAttack", _fb("LinfFastGradientAttack", lambda b: dict(random_start=False),
                                                  fixed_eps=True)),
    Peer("torchattacks", "FGSM", _torchattacks("FGSM", lambda b: dict(eps=b["eps"]))),
), fixed_eps=True))
