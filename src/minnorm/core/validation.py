"""Input checks shared by every attack (DESIGN item 6): clear errors, never garbage."""
from __future__ import annotations

import math
from contextlib import contextmanager
from itertools import chain
from typing import Iterator

import torch
from torch import nn


def check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    if isinstance(bounds, (str, bytes)):  # "01" would unpack into (0.0, 1.0)
        raise TypeError(f"bounds must be a pair (lower, upper) of numbers, got {bounds!r}")
    try:
        lower, upper = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"bounds must be a pair (lower, upper) of numbers, got {bounds!r}") from None
    if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
        raise ValueError(f"bounds must be finite with lower < upper, got {bounds!r}")
    return lower, upper


def _check_batch_tensor(inputs: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be floating point, got {inputs.dtype}")
    if inputs.dim() < 2:
        raise ValueError(f"inputs must be a batch [B, ...] with at least 2 dims, got shape {tuple(inputs.shape)}")


def check_batch(inputs: torch.Tensor, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """Validate a batch of inputs ``[B, ...]``: a finite floating-point tensor, inside the box
    ``bounds`` unless that is None. Returns the parsed bounds."""
    _check_batch_tensor(inputs)
    parsed = None if bounds is None else check_bounds(bounds)
    if inputs.numel():
        data = inputs.detach()  # inputs that require grad are fine; reading them must not warn
        if not bool(torch.isfinite(data).all()):
            raise ValueError("inputs contain NaN or inf")
        if parsed is not None:
            lower, upper = parsed
            lo, hi = float(data.min()), float(data.max())
            tol = 1e-6 * max(1.0, upper - lower)
            if lo < lower - tol or hi > upper + tol:
                raise ValueError(f"inputs lie outside the box [{lower}, {upper}]: min {lo:.6g}, max {hi:.6g}")
    return parsed


def check_inputs(inputs: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float]) -> tuple[float, float]:
    """Validate a batch and its labels before any model call; returns the parsed bounds."""
    _check_batch_tensor(inputs)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D [B], got shape {tuple(labels.shape)}")
    if labels.dtype in (torch.bool,) or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor (class indices), got {labels.dtype}; "
                        "convert integral values with labels.long()")
    if labels.shape[0] != inputs.shape[0]:
        raise ValueError(f"batch size mismatch: {inputs.shape[0]} inputs but {labels.shape[0]} labels")
    if labels.device != inputs.device:
        raise ValueError(f"inputs are on {inputs.device} but labels on {labels.device}")
    parsed = check_batch(inputs, check_bounds(bounds))
    check_label_range(labels)
    return parsed


def check_label_range(labels: torch.Tensor, num_classes: int | None = None) -> None:
    """Labels must be class indices: >= 0 and, once the model's class count is known, < K.
    The message names the first offending sample."""
    if not labels.numel():
        return
    bad = labels < 0 if num_classes is None else (labels < 0) | (labels >= num_classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        limit = ">= 0" if num_classes is None else f"in 0..{num_classes - 1} (the model has {num_classes} classes)"
        raise ValueError(f"label {int(labels[i])} at index {i} is out of range: labels must be {limit}")


def check_logits(logits: torch.Tensor, batch_size: int, labels: torch.Tensor | None = None) -> int:
    """Check the model's output is ``[B, K]`` and finite; check labels < K. Returns K."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model must return a tensor of logits, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != batch_size:
        raise ValueError(f"model output must have shape [B, K] = [{batch_size}, K], got {tuple(logits.shape)}")
    k = logits.shape[1]
    if k < 2:
        raise ValueError(f"model output must have at least 2 classes, got {k}")
    if logits.numel() and not bool(torch.isfinite(logits).all()):
        raise ValueError("model returned NaN or inf logits on the clean inputs")
    if labels is not None:
        check_label_range(labels, k)
    return k


def check_real(name: str, value: float) -> float:
    """``value`` as a float if it is a real number (a Python, numpy or 0-d tensor number, not a
    bool or a string: ``True`` would pass as 1.0), NaN excluded; else a ValueError naming ``name``."""
    if isinstance(value, (bool, str, bytes)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):  # None, lists, tensors of several values
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, got nan")
    return number


def check_output_shape(out, batch_size: int, num_classes: int | None = None) -> None:
    """Any model output during an attack must be ``[n, K]`` for a batch of ``n`` (``K`` the class
    count of the clean pass when given): a model that is right on the clean batch can still drop
    the batch axis of a batch of one (``squeeze()`` in ``forward``)."""
    k = out.shape[-1] if num_classes is None and isinstance(out, torch.Tensor) and out.dim() else num_classes
    if isinstance(out, torch.Tensor) and tuple(out.shape) == (batch_size, k):
        return
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    raise ValueError(f"model output must have shape [B, K] = [{batch_size}, {k if k is not None else 'K'}] for every "
                     f"batch, got {got} for a batch of {batch_size} (a squeeze() in forward drops the batch axis of "
                     "a batch of 1)")


def check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    """A finite number ``> 0`` (``>= 0`` with ``allow_zero``), or a ValueError naming ``name``."""
    limit = ">= 0" if allow_zero else "> 0"
    try:
        value = check_real(name, value)
    except ValueError:
        raise ValueError(f"{name} must be {limit} and finite, got {value!r}") from None
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        raise ValueError(f"{name} must be {limit} and finite, got {value}")
    return value


def check_switch(name: str, value: bool) -> bool:
    """An on/off argument: True or False (numpy's and 0/1 too); a string such as ``"no"`` would be
    truthy, so anything else is a TypeError naming ``name``."""
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be True or False, got {value!r}")
    try:
        if value in (True, False):
            return bool(value)
    except (RuntimeError, ValueError):  # a tensor of several values
        pass
    raise TypeError(f"{name} must be True or False, got {value!r}")


# The largest integer setting accepted: step counts and budgets go into int64 tensor arithmetic
# (2**63 - 1 at most), and a run of 2**62 steps would never end anyway.
MAX_INT = 2 ** 62


def check_int(name: str, value: int, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is a whole number (not a bool) in ``[minimum, MAX_INT]``,
    else a ValueError naming ``name`` (also for inf, NaN and strings)."""
    try:
        whole = not isinstance(value, (bool, str)) and int(value) == value
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) > MAX_INT:
        raise ValueError(f"{name} must be at most 2**62, got {value!r}")
    return int(value)


def model_input_mismatch(model, inputs: torch.Tensor) -> str | None:
    """Why ``model`` cannot take ``inputs``, when its floating-point parameters and buffers all
    differ from them in dtype or device (None when they do not, or it has none)."""
    if not isinstance(model, nn.Module):
        return None
    tensors = [t for t in chain(model.parameters(), model.buffers()) if t.is_floating_point()]
    for what, have in (("dtype", inputs.dtype), ("device", inputs.device)):
        kinds = {getattr(t, what) for t in tensors}
        if kinds and have not in kinds:
            theirs = ", ".join(sorted(str(k) for k in kinds))
            return (f"inputs have {what} {have} but the model's parameters have {theirs}: convert one to "
                    "the other (inputs.to(...) or model.to(...))")
    return None


@contextmanager
def model_errors_explained(model, inputs: torch.Tensor) -> Iterator[None]:
    """Around a forward pass of ``model`` on ``inputs``: torch's error from deep inside the model
    ("mat1 and mat2 must have the same dtype") becomes a TypeError naming the mismatch."""
    try:
        yield
    except RuntimeError as err:
        why = model_input_mismatch(model, inputs)
        if why is None:
            raise
        raise TypeError(why) from err
