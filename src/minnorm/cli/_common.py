"""Helpers shared by the sub-commands: model and data loading, attack settings, batching, tables.

Everything here turns command-line strings into library calls; errors are ``ValueError`` with a
message meant for the user (``minnorm.cli.main`` prints it and exits with code 2).
"""
from __future__ import annotations

import argparse
import ast
import importlib
import math
import os
import sys
from typing import Any, Sequence

import torch

from ..core import AttackSpec, get

TENSOR_SUFFIXES = (".pt", ".safetensors")


# --------------------------------------------------------------------------- arguments

def add_run_args(parser: argparse.ArgumentParser, batch_size: int = 100) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... or auto (default: auto)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the attacks' torch.Generator (default: 0)")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help=f"samples per attack call (default: {batch_size})")
    # Hidden: each attack's registered ``quick`` settings, for smoke tests.
    parser.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)


def positive_int(text: str) -> int:
    """An argparse type: an integer from 1 to 2**62 (counts and budgets go into int64 tensors)."""
    from ..core.validation import MAX_INT

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= value <= MAX_INT:
        raise argparse.ArgumentTypeError(f"expected a positive integer up to 2**62, got {text!r}")
    return value


def seconds(text: str) -> float:
    """An argparse type for solver time limits (``minnorm.certify.check_time_limit``)."""
    from ..certify.api import check_time_limit

    try:
        return check_time_limit(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0 and finite (at most 1e20), got {text!r}") from None


def seed_int(text: str) -> int:
    """An argparse type for ``--seed``: an integer from 0 to 2**63 - 1 (what a torch.Generator takes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 2**63 - 1, got {text!r}")
    return value


def radius(text: str) -> float:
    """An argparse type for radii: a finite number >= 0, fractions such as 8/255 accepted."""
    from ..core import check_radius

    try:
        return check_radius(text, "radius")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite radius >= 0 such as 0.5 or 8/255, got {text!r}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: minnorm runs on cpu and cuda devices, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA was asked for but is not available")
    return device


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_value(text: str) -> Any:
    """A Python literal (``100``, ``0.5``, ``True``, ``(0, 1)``), ``true``/``false``/``none`` in
    any case, or else the plain string."""
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_params(items: Sequence[str] | None, option: str = "--param") -> dict[str, Any]:
    """``KEY=VALUE`` items (of the command-line ``option``, named in errors) as a dict."""
    params: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"{option} expects key=value with a Python identifier as key, got {item!r}")
        params[key] = parse_value(value.strip())
    return params


# --------------------------------------------------------------------------- model and data

def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Bring-your-own-model options shared by the commands that load a model."""
    parser.add_argument("--model-arg", action="append", metavar="KEY=VALUE", default=[],
                        help="keyword argument for a pkg.module:factory model, e.g. width=64 (repeatable)")
    parser.add_argument("--normalize", metavar="MEAN/STD",
                        help="put a Normalize layer in front of the model (inputs stay in [0, 1]): per-channel "
                             "mean and std, e.g. 0.4914,0.4822,0.4465/0.2471,0.2435,0.2616 (Foolbox's preprocessing)")
    parser.add_argument("--input-shape", metavar="C,H,W", help="reshape flat data rows to this shape, e.g. 1,28,28")


def model_from_args(args: argparse.Namespace, device: torch.device | str = "cpu") -> torch.nn.Module:
    """``--model``/``--weights``/``--model-arg``/``--normalize``: weights load into the user's
    model first, then the Normalize layer goes in front."""
    model = load_model(args.model, args.weights, device, parse_params(getattr(args, "model_arg", None), "--model-arg"))
    if getattr(args, "normalize", None):
        from ..models import normalized

        model = normalized(model, *parse_normalize(args.normalize)).to(device)
    return model


def parse_normalize(text: str) -> tuple[list[float], list[float]]:
    """``MEAN/STD`` with comma-separated channels (``0.5/0.25`` or ``0.1,0.2,0.3/0.3,0.3,0.3``)."""
    mean, sep, std = text.partition("/")
    try:
        m, s = [float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]
    except ValueError:
        m, s = [], []
    if not sep or not m or len(m) != len(s) or not all(0 < v < math.inf for v in s) or not all(map(math.isfinite, m)):
        raise ValueError(f"--normalize expects MEAN/STD with as many channels on both sides, finite, std > 0, e.g. "
                         f"0.4914,0.4822,0.4465/0.2471,0.2435,0.2616; got {text!r}")
    return m, s


def reshape_inputs(x: torch.Tensor, shape_text: str | None) -> torch.Tensor:
    """``--input-shape C,H,W``: rows reshaped to it (their element count must match)."""
    if not shape_text:
        return x
    try:
        shape = tuple(int(v) for v in shape_text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise ValueError(f"--input-shape expects positive integers such as 1,28,28, got {shape_text!r}")
    if x[0].numel() != math.prod(shape):
        raise ValueError(f"--input-shape {shape_text}: {math.prod(shape)} values per sample, but the data has "
                         f"{x[0].numel()} ({tuple(x.shape[1:])})")
    return x.reshape(len(x), *shape)


def load_model(spec: str, weights: str | None = None, device: torch.device | str = "cpu",
               model_args: dict[str, Any] | None = None) -> torch.nn.Module:
    """A shipped model name (``cnn``, ``mlp``, ...), ``pkg.mod:factory`` (called with
    ``model_args``) or the ``.json`` that ``minnorm train --export`` wrote (its weights are the
    ``.safetensors`` beside it unless ``weights`` says otherwise); ``weights`` is loaded on top.

    The model is put in eval mode: attacks measure the deployed model, and BatchNorm/Dropout
    in train mode would make a batch differ from its samples one by one. For a factory, the
    working directory is importable, but searched last: a local folder named like an installed
    package (``matplotlib/``) does not shadow it.
    """
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if "" not in sys.path and os.getcwd() not in sys.path:
            # The `minnorm` script, unlike `python -m`, does not see the working directory.
            sys.path.append(os.getcwd())
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"--model: cannot import {spec!r}: {err}") from None
        try:
            model = factory(**(model_args or {}))
        except TypeError as err:
            given = "these arguments" if model_args else "no arguments (give them with --model-arg KEY=VALUE)"
            raise ValueError(f"--model {spec}: the factory cannot be called with {given} ({err})") from None
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"--model: {spec} returned {type(model).__name__}, not a torch.nn.Module")
    elif spec.endswith(".json"):
        model, weights = _model_from_recipe(spec, weights, model_args)
    else:
        from .. import models  # late: `minnorm --help` stays fast and factories need none of it

        if model_args:
            raise ValueError("--model-arg applies to a pkg.module:factory model, not to a shipped one")
        names = list(models.shipped_names())
        if spec not in names:
            raise ValueError(f"--model: unknown model {spec!r}; shipped models: {', '.join(names)}, "
                             "or give a factory as pkg.module:function")
        model = models.load_shipped(spec)
    if weights is not None:
        from ..evaluation.store import existing_file
        from ..models import load_weights

        existing_file(weights, "--weights")

        load_weights(model, weights)
    return model.eval().to(device)


def _model_from_recipe(spec: str, weights: str | None, model_args: dict[str, Any] | None):
    """The architecture a ``minnorm train --export`` JSON records, and its weights file."""
    from ..evaluation.store import existing_file, read_json
    from ..models import build_model

    path = existing_file(spec, "--model")
    info = read_json(path, "the model description")
    if not isinstance(info, dict) or "architecture" not in info:
        raise ValueError(f"--model {spec}: not a model description written by minnorm train --export "
                         "(no 'architecture' in it)")
    model = build_model(info["architecture"], **{**(info.get("model_kwargs") or {}), **(model_args or {})})
    return model, weights if weights is not None else str(path.with_suffix(".safetensors"))


def load_data(spec: str, model: torch.nn.Module | None = None,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``sample``, ``fashion-mnist[:train]``, a dataset path, or a tensor file this CLI wrote.

    Tensor files (``.pt`` read with ``weights_only=True``, or ``.safetensors``) hold ``x``/``y``
    or the ``adversarials``/``labels`` that ``minnorm attack`` saves, so saved adversarials can
    be attacked or transferred again. Every source is checked (:func:`minnorm.data.check_pair`:
    uint8 scaled to [0, 1], one integer label per input, no channels-last images); with
    ``model``, also that the inputs fit it (:func:`fit_data`). Errors are ``ValueError``s that
    name the file.
    """
    from .. import data

    if spec.endswith(TENSOR_SUFFIXES):
        x, y = _load_tensor_file(spec)
    else:
        x, y = data.resolve_dataset(spec)
    x, y = data.check_pair(x, y, f"--data {spec}")
    return fit_data(model, x, y, device, spec) if model is not None else (x, y)


def _load_tensor_file(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    from ..evaluation.store import read_tensor_file

    tensors = read_tensor_file(path, "--data")
    if not isinstance(tensors, dict):
        raise ValueError(f"--data {path} must hold a dict of tensors, found {type(tensors).__name__}")
    for xk, yk in (("x", "y"), ("adversarials", "labels")):
        if xk in tensors and yk in tensors:
            return tensors[xk], tensors[yk]  # checked by data.check_pair
    raise ValueError(f"--data {path} must hold tensors 'x' and 'y' (or 'adversarials' and 'labels'); "
                     f"found {sorted(map(str, tensors))}")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (float32 if none)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


@torch.no_grad()
def fit_data(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str = "cpu",
             source: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs converted to the model's floating dtype (float64 data for a float32 model becomes
    float32, and the reverse), checked by one forward pass on the first sample: the model must
    accept their shape and return logits ``[1, K]``, and every label must lie in ``[0, K)``."""
    x = x.to(model_dtype(model))
    try:
        logits = model(x[:1].to(device))
    except Exception as err:  # noqa: BLE001 (the model says why the inputs do not fit; reported as such)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"--data {source}: inputs of shape {tuple(x.shape[1:])} do not fit the model "
                         f"({type(err).__name__}: {first})") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"--model must return logits [N, classes]; for one input of shape {tuple(x.shape[1:])} "
                         f"it returned {shape}")
    classes = logits.shape[1]
    if bool((y >= classes).any()):
        i = int((y >= classes).nonzero()[0])
        raise ValueError(f"--data {source}: label {i} is {int(y[i])}, but the model has {classes} classes (0-{classes - 1})")
    return x, y


def check_out(path: str | None) -> None:
    """Pre-flight check of ``--out`` (see :func:`minnorm.evaluation.store.check_out_dir`), before anything runs;
    an empty ``--out ""`` is refused (attack read it as ".", certify as "print only", train as its default)."""
    if path is not None and not path.strip():
        raise ValueError("--out is empty: give a folder, or leave --out out")
    if path:
        from ..evaluation.store import check_out_dir

        check_out_dir(path)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Clean logits on CPU, batched; not counted against any attack."""
    out = [model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


# --------------------------------------------------------------------------- reporting

def fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table: text columns left, number columns right."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return text == "-"
    return True


def registry_rows() -> list[list[str]]:
    from ..core import specs

    return [[s.name, s.norm_name, "minimal" if s.minimal else "fixed eps", "yes" if s.targeted else "no", s.paper]
            for s in specs()]


REGISTRY_HEADERS = ["attack", "norm", "kind", "targeted", "paper"]


def get_attack(name: str) -> AttackSpec:
    return get(name)
