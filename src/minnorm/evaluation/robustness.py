"""Robustness measures of Balda, Behboodi and Mathar (2018), Sec. III and Table I.

- :func:`feasibility_bound`: Proposition 1. The linearised problem (GN) has no solution with
  ``||eta||_p <= eps`` while ``eps < L(x) / ||grad L(x)||_q``; with the margin of eq. (3),
  linearised piece by piece, the per-sample bound is
  ``min_{l != k} (f_k - f_l) / ||grad f_k - grad f_l||_q`` (the authors' code takes this minimum
  of ratios). It is exact for an affine classifier and a first-order estimate otherwise.
- :func:`rho_hat_2`: the mean of that bound over the data (the paper's rho-hat-2).
- :func:`rho_hat_1`: DeepFool's measure, the mean relative minimal perturbation
  ``||r(x)||_p / ||x||_p`` with ``r`` found by DeepFool.
- :func:`smallest_fooling_eps`: the smallest eps at which a minimal-norm attack (DeepFool in
  Table I) fools more than 99% of the samples.

``k`` is the model's own prediction, as in the paper: the measures describe the classifier, not
the labels. :func:`robustness_measures` computes all of them; given labels it keeps the samples
the model classifies correctly (the fooling ratio's convention) before measuring. Attacks are
called through the registry only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core import dual_exponent, get, lp_norm, parse_norm, per_objective_gradients, with_role
from ..core.objectives import logit_difference

__all__ = ["RobustnessReport", "feasibility_bound", "minimal_norms", "rho_hat_1", "rho_hat_2", "robustness_measures",
           "smallest_fooling_eps"]


def _batches(n: int, batch_size: int, desc: str, progress: bool):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return tqdm(range(0, n, batch_size), desc=desc, unit="batch", leave=False, disable=None if progress else True)


def feasibility_bound(model, inputs: torch.Tensor, *, norm: float | str = "inf", scores: str = "logits",
                      batch_size: int = 100, progress: bool = True) -> torch.Tensor:
    """Per-sample lower bound of Proposition 1 (eq. (5)) on the lp radius at which the
    linearised margin can be driven to zero: ``min_{l != k} (f_k - f_l) / ||grad (f_k - f_l)||_q``.

    ``scores`` is ``"logits"`` or ``"probabilities"`` (softmax). Cost: one forward and K
    backward passes per sample (the gradient of every difference ``f_k - f_l``, in one call of
    :func:`~minnorm.core.per_objective_gradients`). A zero gradient gives inf.
    """
    if scores not in ("logits", "probabilities"):
        raise ValueError(f"scores must be logits or probabilities, got {scores!r}")
    q = dual_exponent(parse_norm(norm))
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    out = []
    for i in _batches(len(inputs), batch_size, "Prop. 1 bound", progress):
        with torch.enable_grad():
            x = inputs[i:i + batch_size].detach().requires_grad_(True)
            z = model(x)
            if z.dim() != 2:
                raise ValueError(f"model output must be logits [B, K], got shape {tuple(z.shape)}")
            f = z.softmax(1) if scores == "probabilities" else z
            k = f.detach().argmax(1)
            every = torch.arange(f.shape[1], device=k.device).expand(len(k), -1)
            gaps = -logit_difference(f, k, every)  # f_k - f_l, [b, K]
            grads = per_objective_gradients(gaps, x)  # grad (f_k - f_l), [b, K, *x]
        gaps = gaps.detach()
        gnorm = lp_norm(grads.flatten(0, 1), q).view_as(gaps)
        ratio = torch.where(gnorm > 0, gaps / gnorm.clamp_min(torch.finfo(gaps.dtype).tiny),
                            torch.full_like(gaps, math.inf))
        ratio[torch.arange(len(k), device=k.device), k] = math.inf
        out.append(ratio.amin(1))
    return torch.cat(out) if out else inputs.new_zeros(0)


def rho_hat_2(model, inputs: torch.Tensor, *, norm: float | str = "inf", **kwargs: Any) -> float:
    """rho-hat-2 of Balda et al.: the mean of :func:`feasibility_bound` over ``inputs``."""
    return float(feasibility_bound(model, inputs, norm=norm, **kwargs).double().mean())


def _attack_name(norm: float) -> tuple[str, dict[str, Any]]:
    """The registered attack with the ``fooling`` role in this norm (DeepFool where it exists,
    else the minimal-norm form (8) with the linearised class choice, DeepFool's step for any p)."""
    spec, extra = with_role("fooling", norm)
    return spec.name, extra


def minimal_norms(model, inputs: torch.Tensor, labels: torch.Tensor | None = None, *, norm: float | str = "inf",
                  attack: str | None = None, batch_size: int = 100, seed: int = 0, progress: bool = True,
                  **params: Any) -> torch.Tensor:
    """Per-sample minimal-norm perturbation sizes from a registered minimal-norm attack
    (DeepFool by default), ``inf`` where it failed; labels default to the model's predictions."""
    p = parse_norm(norm)
    name, extra = (attack, {}) if attack else _attack_name(p)
    spec = get(name)
    if not spec.minimal:
        raise ValueError(f"{name} is a fixed-epsilon attack; a minimal-norm attack is needed")
    if spec.norm != p:
        raise ValueError(f"{name} measures l{spec.norm:g} norms, not l{p:g}")
    gen = torch.Generator(device=inputs.device).manual_seed(seed)
    out = []
    for i in _batches(len(inputs), batch_size, name, progress):
        x = inputs[i:i + batch_size]
        with torch.no_grad():
            y = model(x).argmax(1) if labels is None else labels[i:i + batch_size]
        out.append(spec(model, x, y, generator=gen, **{**extra, **params}).norms)
    return torch.cat(out) if out else inputs.new_zeros(0)


def rho_hat_1(model, inputs: torch.Tensor, *, norm: float | str = "inf", norms: torch.Tensor | None = None,
              **kwargs: Any) -> float:
    """rho-hat-1 (DeepFool, eq. (15) of Moosavi-Dezfooli et al.; Balda et al. Sec. III): the mean
    of ``||r(x)||_p / ||x||_p``. ``norms`` reuses minimal norms already computed."""
    p = parse_norm(norm)
    if norms is None:
        norms = minimal_norms(model, inputs, norm=p, **kwargs)
    return float((norms.double() / lp_norm(inputs, p).double()).mean())


def smallest_fooling_eps(norms: torch.Tensor, rate: float = 0.99) -> float:
    """The smallest eps at which more than ``rate`` of the samples are fooled, given each
    sample's minimal adversarial norm (``inf`` where none was found): Table I's last column.

    A minimal-norm attack fools a sample at every eps >= its norm, so the fooling ratio at eps
    is the share of norms <= eps, and the answer is the m-th smallest norm with m the least
    count above ``rate * n``; inf when fewer samples than that were fooled at all.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    n = norms.numel()
    if n == 0:
        return math.nan
    m = math.floor(rate * n) + 1
    return float(norms.flatten().double().sort().values[m - 1])


@dataclass
class RobustnessReport:
    """Table I of Balda et al. for one model: rho-hat-1, rho-hat-2 and the smallest eps at which
    DeepFool fools more than 99%, plus the per-sample numbers they come from."""

    norm: float
    samples: int
    test_error: float | None
    rho1: float
    rho2: float
    eps_99: float
    attack: str
    bounds: torch.Tensor = field(repr=False)
    minimal_norms: torch.Tensor = field(repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("bounds")
        d.pop("minimal_norms")
        d["norm"] = "inf" if math.isinf(self.norm) else self.norm
        # the bound is a first-order estimate: how often the attack beat it is worth knowing
        d["attack_below_bound"] = float((self.minimal_norms < self.bounds).double().mean()) if self.samples else math.nan
        return d


def robustness_measures(model, inputs: torch.Tensor, labels: torch.Tensor | None = None, *,
                        norm: float | str = "inf", rate: float = 0.99, attack: str | None = None,
                        scores: str = "logits", batch_size: int = 100, seed: int = 0,
                        progress: bool = True) -> RobustnessReport:
    """All Table I measures on ``inputs``. With ``labels``, the test error is reported and only
    correctly classified samples are measured; without, all samples with the predicted labels."""
    p = parse_norm(norm)
    name = attack or _attack_name(p)[0]
    with torch.no_grad():
        pred = torch.cat([model(inputs[i:i + batch_size]).argmax(1) for i in range(0, len(inputs), batch_size)]) \
            if len(inputs) else torch.zeros(0, dtype=torch.long)
    error = None
    if labels is not None:
        correct = pred == labels
        error = float(1 - correct.double().mean()) if len(labels) else math.nan
        inputs = inputs[correct]
    bounds = feasibility_bound(model, inputs, norm=p, scores=scores, batch_size=batch_size, progress=progress)
    norms = minimal_norms(model, inputs, norm=p, attack=attack, batch_size=batch_size, seed=seed, progress=progress)
    return RobustnessReport(norm=p, samples=len(inputs), test_error=error,
                            rho1=rho_hat_1(model, inputs, norm=p, norms=norms) if len(inputs) else math.nan,
                            rho2=float(bounds.double().mean()) if len(inputs) else math.nan,
                            eps_99=smallest_fooling_eps(norms, rate), attack=name, bounds=bounds,
                            minimal_norms=norms)
