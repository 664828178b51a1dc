"""Safe weight files and the weights shipped inside the package.

Weights load from safetensors, or through ``torch.load(weights_only=True)``; nothing here
unpickles arbitrary objects. Each shipped ``weights/{name}.safetensors`` has a
``weights/{name}.json`` beside it saying how to build the model and how it was trained.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .architectures import Normalize, build_model

__all__ = ["WEIGHTS_DIR", "load_shipped", "load_state", "load_weights", "save_weights", "shipped_info",
           "shipped_names"]

WEIGHTS_DIR = Path(__file__).with_name("weights")


def _listing(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (``weights_only=True``).
    A training checkpoint (``{"model": state, ...}``) or ``{"state_dict": state}`` is unwrapped."""
    from ..evaluation.store import read_tensor_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state: Any = read_tensor_file(path, "weights file")
    for key in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors")
    return dict(state)


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load weights from ``path`` into ``model`` (in place; returns it).

    Raises ``ValueError`` naming the missing, unexpected or wrongly shaped keys (with
    ``strict=False`` missing and unexpected keys are allowed, shape mismatches never are).
    A ``module.`` prefix left by DataParallel/DDP is stripped.
    """
    state = load_state(path)
    check_architecture(model, weights_info(path), path)
    expected = model.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in expected):
        state = {k[len("module."):]: v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if strict and missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if shapes:
        problems.append(f"shape mismatch: {_listing(shapes, 3)}")
    if problems:
        raise ValueError(f"{path} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=strict)
    return model


def weights_info(path: str | os.PathLike) -> dict[str, Any]:
    """What a weights file says about the model it came from: ``architecture`` and
    ``model_kwargs`` (activation, ...) from a safetensors header (``minnorm train --export``,
    the shipped weights) or a sibling ``.json``; empty when it says nothing."""
    path = Path(path)
    info: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                info = dict(f.metadata() or {})
        except Exception:  # noqa: BLE001 (an unreadable header: load_state reports the file itself)
            info = {}
    if not info and path.with_suffix(".json").is_file():
        try:
            info = json.loads(path.with_suffix(".json").read_text())
        except (ValueError, OSError):
            info = {}
    kwargs = info.get("model_kwargs")
    if isinstance(kwargs, str):
        try:
            info["model_kwargs"] = json.loads(kwargs)
        except ValueError:
            info["model_kwargs"] = {}
    return info if isinstance(info, dict) else {}


def check_architecture(model: nn.Module, info: Mapping[str, Any], path: str | os.PathLike = "weights") -> None:
    """Refuse weights recorded for another architecture or activation than ``model``'s (a SiLU
    model's weights load without a shape error into a ReLU net, and give a different model)."""
    from .architectures import ACTIVATIONS, ARCHITECTURES

    arch = info.get("architecture")
    net = model[-1] if isinstance(model, nn.Sequential) and len(model) and isinstance(model[0], Normalize) else model
    reference = tuple(ARCHITECTURES.values())
    if isinstance(arch, str) and arch in ARCHITECTURES and isinstance(net, reference) \
            and not isinstance(net, ARCHITECTURES[arch]):
        raise ValueError(f"{path} holds weights of a {arch!r} model, not of {type(net).__name__}")
    act = (info.get("model_kwargs") or {}).get("activation") if isinstance(info.get("model_kwargs"), Mapping) else None
    key = str(act).lower().replace("-", "_") if act else None
    if key not in ACTIVATIONS:
        return
    kinds = {type(m) for m in net.modules() if isinstance(m, tuple({type(f()) for f in ACTIVATIONS.values()}))}
    wanted = type(ACTIVATIONS[key]())
    if kinds and wanted not in kinds:
        have = ", ".join(sorted(k.__name__ for k in kinds))
        raise ValueError(f"{path} holds weights trained with {wanted.__name__} activations (activation={act!r}), but the "
                         f"model uses {have}: build the matching model (a shipped name such as cnn-silu, the JSON "
                         "that minnorm train wrote, or --model-arg activation=...)")


def save_weights(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a model's state dict as safetensors (string metadata goes in the header too)."""
    from safetensors.torch import save

    from ..evaluation.store import atomic_write, json_text

    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {k: v if isinstance(v, str) else json_text(v, indent=None) for k, v in (metadata or {}).items()}
    atomic_write(path, save(tensors, metadata=header))
    return path


def shipped_names() -> list[str]:
    """Names of the weights shipped with the package (each has a ``.json`` beside it)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors") if p.with_suffix(".json").is_file())


def shipped_info(name: str) -> dict[str, Any]:
    """The JSON metadata of a shipped model: architecture, model_kwargs, recipe, accuracy, ..."""
    path = WEIGHTS_DIR / f"{name}.json"
    if not path.is_file() or not path.with_suffix(".safetensors").is_file():
        raise ValueError(f"no shipped model {name!r}; available: {', '.join(shipped_names()) or 'none'}")
    return json.loads(path.read_text())


def load_shipped(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """A shipped model (e.g. ``"cnn"``, ``"mlp"``) with its weights, in eval mode."""
    info = shipped_info(name)
    model = build_model(info["architecture"], **info.get("model_kwargs", {}))
    load_weights(model, WEIGHTS_DIR / f"{name}.safetensors")
    return model.to(device).eval()
