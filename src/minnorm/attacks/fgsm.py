"""Single-step gradient attacks: FGSM (Goodfellow et al., 2015) and its lp form FGM."""
from __future__ import annotations

import torch

from ..core import batch_view, holder_direction, register, start_attack
from ..core.objectives import cross_entropy_objective

__all__ = ["fgm", "fgsm"]



def fgm(model, inputs: torch.Tensor, labels: torch.Tensor, *, eps: float | torch.Tensor, norm: float | str = "inf",
        targeted: bool = False, bounds: tuple[float, float] = (0.0, 1.0),
        generator: torch.Generator | None = None):
    """Fast gradient method: one step of size ``eps`` along the Hölder-optimal direction of
    the cross-entropy gradient in the lp ball (sign of the gradient for Linf = FGSM)."""
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=norm, generator=generator)
    if run.batch_size == 0:
        return run.finish(inputs.clone())
    eps_t = torch.as_tensor(eps, dtype=inputs.dtype, device=inputs.device)
    if bool((eps_t < 0).any()) or not bool(torch.isfinite(eps_t).all()):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    _, _, grad = run.model.value_and_grad(inputs, cross_entropy_objective(run.labels, targeted))
    step = holder_direction(grad, run.norm) * batch_view(eps_t.expand(run.batch_size), inputs)
    return run.finish(inputs + step)


def fgsm(model, inputs, labels, *, eps: float | torch.Tensor, targeted: bool = False,
         bounds: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None):
    """FGSM: ``x + eps * sign(grad)``, the Linf case of :func:`fgm`."""
    return fgm(model, inputs, labels, eps=eps, norm="inf", targeted=targeted, bounds=bounds, generator=generator)


for _p, _name, _ball in ((1, "fgm-l1", "l1"), (2, "fgm-l2", "l2"), (float("inf"), "fgsm", "linf")):
    register(_name, fgm, norm=_p, minimal=False, targeted=True, paper="Goodfellow et al. 2015",
             description=f"fast gradient method, one step in the {_ball} ball",
             defaults={"norm": _p}, quick={"eps": {1: 10.0, 2: 1.0}.get(_p, 0.1)})
