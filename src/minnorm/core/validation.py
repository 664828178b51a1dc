"""Input checks shared by every attack (DESIGN item 6): clear errors, never garbage."""
from __future__ import annotations

import math

import torch


def check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
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


def check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value}")
    return value


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
