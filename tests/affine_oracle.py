"""An affine classifier with exact minimal lp perturbations, for the FMN, FAB and APGD tests.

``z = W x + b`` on flattened inputs. Untargeted, the adversarial region is the union over
``j != y`` of the halfspaces ``(w_j - w_y) . x' + b_j - b_y >= 0``, so the minimal perturbation
is the smallest distance to one of them; within the box that distance is the box-constrained
hyperplane step of ``core.norms.min_step_to_hyperplane``, itself checked against HiGHS and a QP
solver in tests/core/test_norms.py. Targeted, the region is an intersection (a polytope): its
minimal L1/Linf distance is a linear program, solved here with HiGHS.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from minnorm.core.norms import min_step_to_hyperplane


def affine_model(d: int = 20, k: int = 3, seed: int = 0, scale: float = 1.0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64) * scale)
        lin.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64) * 0.1)
    return nn.Sequential(nn.Flatten(), lin).eval()


def inputs(n: int, d: int = 20, seed: int = 1, edge: bool = False) -> torch.Tensor:
    """``n`` points in [0, 1]^d: near the centre, or (``edge``) with a third of the coordinates on a face."""
    g = torch.Generator().manual_seed(seed)
    x = 0.4 + 0.2 * torch.rand(n, d, generator=g, dtype=torch.float64)
    if edge:
        face = torch.rand(n, d, generator=g, dtype=torch.float64)
        x = torch.where(face < 1 / 6, torch.zeros_like(x), torch.where(face < 1 / 3, torch.ones_like(x), x))
    return x


def untargeted_minimum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: float,
                       bounds: tuple[float, float] | None) -> torch.Tensor:
    """Exact minimal lp norm of an untargeted adversarial perturbation, per sample (inf if none)."""
    lin = model[1]
    w = lin.weight.detach()
    best = torch.full((x.shape[0],), math.inf, dtype=x.dtype)
    z = model(x).detach()
    for j in range(w.shape[0]):
        wj = (w[j] - w[y])  # [n, d]
        c = z[:, y].diagonal() - z[:, j]  # needed increase of (z_j - z_y)
        step, ok = min_step_to_hyperplane(wj, c, p, x if bounds else None, bounds)
        dist = torch.linalg.vector_norm(step, ord=p, dim=1)
        dist = torch.where(ok & (y != j), dist, torch.full_like(dist, math.inf))
        best = torch.minimum(best, dist)
    return best


def targeted_minimum_lp(model: nn.Module, x: torch.Tensor, t: torch.Tensor, p: float,
                        bounds: tuple[float, float]) -> torch.Tensor:
    """Minimal L1 or Linf norm reaching ``z_t >= z_j`` for all j within the box: an LP (HiGHS)."""
    from scipy.optimize import linprog
    lin = model[1]
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    out = []
    for xi, ti in zip(x.numpy(), t.tolist()):
        d, k = xi.shape[0], w.shape[0]
        rows = [j for j in range(k) if j != ti]
        a_cls = np.stack([w[j] - w[ti] for j in rows])  # (w_j - w_t) . (x + u - v) + b_j - b_t <= 0
        rhs = np.array([-(w[j] - w[ti]) @ xi - b[j] + b[ti] for j in rows])
        lo, hi = bounds
        if p == 1:
            res = linprog(np.ones(2 * d), A_ub=np.concatenate([a_cls, -a_cls], 1), b_ub=rhs,
                          bounds=[(0, hi - v) for v in xi] + [(0, v - lo) for v in xi], method="highs")
        else:
            a_ub = np.concatenate([np.concatenate([a_cls, np.zeros((len(rows), 1))], 1),
                                   np.concatenate([np.eye(d), -np.ones((d, 1))], 1),
                                   np.concatenate([-np.eye(d), -np.ones((d, 1))], 1)])
            cost = np.zeros(d + 1)
            cost[-1] = 1
            res = linprog(cost, A_ub=a_ub, b_ub=np.concatenate([rhs, np.zeros(2 * d)]),
                          bounds=[(lo - v, hi - v) for v in xi] + [(0, None)], method="highs")
        out.append(res.fun if res.status == 0 else math.inf)
    return torch.tensor(out, dtype=x.dtype)
