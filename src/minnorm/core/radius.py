"""When a sample counts as broken at a radius: the one tolerance rule every number uses.

An attack run at radius ``eps`` in float32 returns perturbations whose measured norm is a hair
above ``eps`` (0.10000002 for eps = 0.1): the projection and the box clip round, and ``x + d - x``
is not exactly ``d``. Compared with a bare ``norm <= eps`` such a sample would count as robust at
the very radius it was broken at. The rule, applied here and only here:

    a sample is broken at ``eps`` when its norm is <= eps * (1 + EPS_RTOL) + EPS_ATOL

with ``EPS_RTOL = 1e-4`` (a hundredth of a percent, far above float32 rounding, far below any
radius anyone reports) and ``EPS_ATOL = 1e-6`` (for radii so small that rounding of the inputs
themselves, ~6e-8 per coordinate on [0, 1] data, dominates). The tolerance only ever counts more
samples as broken, so robust accuracy stays an upper bound: it can be lower than a bare
comparison would say by the samples whose norm lies within 0.01% above ``eps``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

EPS_RTOL = 1e-4
EPS_ATOL = 1e-6


def radius_limit(eps: float) -> float:
    """The largest norm still counted as broken at ``eps``."""
    return float(eps) * (1 + EPS_RTOL) + EPS_ATOL


def broken_within(norms: Any, eps: Any) -> Any:
    """Per sample: found adversarial with a norm within ``eps`` (the rule above).

    ``norms`` are a tensor or array (``inf`` where not broken, ``nan`` where not attacked, both
    never count); ``eps`` a number or a per-sample tensor/array of the same kind.
    """
    if isinstance(norms, torch.Tensor):
        limit = (torch.as_tensor(eps, dtype=torch.float64, device=norms.device) * (1 + EPS_RTOL) + EPS_ATOL)
        return norms.double() <= limit
    norms = np.asarray(norms, dtype=float)
    with np.errstate(invalid="ignore"):
        return norms <= np.asarray(eps, dtype=float) * (1 + EPS_RTOL) + EPS_ATOL


def check_radius(eps: Any, name: str = "eps") -> float:
    """A radius: a finite number >= 0 (``8/255`` as text is accepted), or a ValueError."""
    value = parse_fraction(eps) if isinstance(eps, str) else eps
    try:
        if isinstance(value, bool):  # True would be the radius 1.0
            raise TypeError
        value = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a number, got {eps!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite radius >= 0, got {eps!r}")
    return value


def parse_fraction(text: str) -> float:
    """``0.03``, ``8/255``, ``1e-2``: a number or a quotient of two numbers."""
    num, sep, den = str(text).strip().partition("/")
    try:
        value = float(num) / float(den) if sep else float(num)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a number or a fraction such as 8/255, got {text!r}") from None
    return value


def radius_text(eps: float) -> str:
    """``8/255`` for a multiple of 1/255 that has no short decimal form, else ``0.5``-style."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and len(f"{eps:g}") > 6 and round(k) != 0:
        return f"{round(k)}/255"
    return f"{eps:g}"
