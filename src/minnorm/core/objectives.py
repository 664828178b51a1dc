"""Classification objectives the attacks share, each written once.

Every function maps logits ``[B, K]`` (or any per-class scores) and per-sample classes ``[B]``
to per-sample values; the ``*_objective`` factories close over the classes and return the
``objective(logits) -> [B]`` that :meth:`~minnorm.core.CountedModel.value_and_grad` ascends.
"Targeted" means the classes are the targets.

- :func:`logit_margin`: Carlini & Wagner's f_6 without its clamp, positive iff adversarial.
- :func:`cross_entropy`: the training loss, signed to be ascended (FGSM, PGD, DDN).
- :func:`logit_difference`: ``f_l - f_y`` for given classes ``l`` (DeepFool, the convex
  attacks, FAB: one linearised boundary per class).
- :func:`dlr`: the difference of logits ratio of Croce & Hein (2020) and its targeted form.

:func:`top_other_classes` picks the classes whose boundaries the per-class attacks linearise.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Objective = Callable[[torch.Tensor], torch.Tensor]


def _own(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, labels[:, None]).squeeze(1)


def _best_other(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``max_{j != labels} z_j`` per sample (``-inf`` with a single class)."""
    return logits.scatter(1, labels[:, None], -math.inf).amax(dim=1)


def logit_margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """The logit margin to *ascend* (Carlini & Wagner, 2017, objective f_6 without the clamp at
    ``-kappa``): ``max_{j != y} z_j - z_y`` untargeted, ``z_t - max_{j != t} z_j`` targeted.

    Positive iff the point is adversarial with a strict winner; 0 on a tie between the class and
    its strongest rival (where the argmax decides by index). ``[B, K], [B] -> [B]``."""
    own, other = _own(logits, labels), _best_other(logits, labels)
    return own - other if targeted else other - own


def margin_objective(labels: torch.Tensor, targeted: bool) -> Objective:
    """:func:`logit_margin` as an objective of the logits alone."""
    return lambda logits: logit_margin(logits, labels, targeted)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Per-sample cross-entropy to *ascend*: ``-log softmax(z)_y`` untargeted (move away from the
    label), its negative targeted (move towards the target). ``[B, K], [B] -> [B]``."""
    sign = -1.0 if targeted else 1.0
    return sign * F.cross_entropy(logits, labels, reduction="none")


def cross_entropy_objective(labels: torch.Tensor, targeted: bool) -> Objective:
    """:func:`cross_entropy` as an objective of the logits alone."""
    return lambda logits: cross_entropy(logits, labels, targeted)


def logit_difference(logits: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``f_l - f_y`` for every class ``l`` in ``classes`` ``[B, C]``, ``y = labels`` ``[B]``:
    the linearised boundaries of DeepFool (eq. (10), Moosavi-Dezfooli et al. 2016), Balda et al.'s
    pieces of eq. (3) (negated) and FAB (Croce & Hein 2020, eq. (4)). ``-> [B, C]``; positive where
    class ``l`` beats ``y``."""
    return logits.gather(1, classes) - logits.gather(1, labels[:, None])


def top_other_classes(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` classes with the largest logits besides ``labels`` (at most ``K - 1``), in
    decreasing order ``[B, k]``: the candidates DeepFool, FAB and the trust region linearise."""
    k = min(k, logits.shape[1] - 1)
    return logits.scatter(1, labels[:, None], -math.inf).topk(k, dim=1).indices


def dlr(logits: torch.Tensor, labels: torch.Tensor, targeted: bool = False,
        targets: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of logits ratio to *ascend* (Croce & Hein, ICML 2020, Sec. 3.2, eqs. (6)-(7)).

    Untargeted (eq. (6)): ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``. Towards a class ``t``
    (eq. (7), targeted DLR): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``t =
    targets`` and ``y = labels`` (APGD-T), or, ``targeted``, ``t = labels`` and ``y`` the
    strongest other class. ``pi`` sorts the logits in decreasing order; with fewer than 3 (4)
    classes the smallest logit stands in for the missing ones; ``1e-12`` keeps the ratio finite
    on equal logits. Shift and scale invariant in the logits. ``-> [B]``."""
    srt = logits.sort(dim=1, descending=True).values
    k = srt.shape[1]
    z3 = srt[:, min(2, k - 1)]
    if targeted or targets is not None:
        t = labels if targeted else targets
        z_t = _own(logits, t)
        z_y = _best_other(logits, t) if targeted else _own(logits, labels)
        z4 = srt[:, min(3, k - 1)]
        return -(z_y - z_t) / (srt[:, 0] - (z3 + z4) / 2 + 1e-12)
    return -(_own(logits, labels) - _best_other(logits, labels)) / (srt[:, 0] - z3 + 1e-12)


def dlr_objective(labels: torch.Tensor, targeted: bool, targets: torch.Tensor | None = None) -> Objective:
    """:func:`dlr` as an objective of the logits alone."""
    return lambda logits: dlr(logits, labels, targeted, targets)
