"""Batched trust-region subproblem solver (Lanczos / GLTR, Gould et al. 1999).

Solves, independently for every row of a batch,

    min_d  <g, d> + 1/2 <d, H d>    subject to  ||d||_2 <= radius,

with ``H`` symmetric and possibly indefinite, known only through Hessian-vector products. This
is the QCQP of the Trust Region attack's second-order step (Yao et al., Section 3, eq. (3)),
which the paper solves with "the Lanczos algorithm ... in a Krylov subspace".

Lanczos builds an orthonormal basis ``Q_k`` of span{g, Hg, ..., H^(k-1) g} and the tridiagonal
``T_k = Q_k^T H Q_k``; the subproblem restricted to that subspace, with ``g = ||g|| q_1``, is a
k-dimensional one solved exactly by an eigen-decomposition of ``T_k`` and the secular equation
1/||h(lam)|| = 1/radius (Moré & Sorensen 1983), safeguarded Newton on ``lam``. Negative curvature
is handled there (lam >= -lambda_min). The Krylov basis does not depend on the radius, so one
Lanczos run answers every radius: :func:`lanczos` and :meth:`Krylov.solve` are separate, and the
attack searches the radius at which the model predicts the class change without new products.

The "hard case" (g orthogonal to the leftmost eigenvector) cannot be seen from a Krylov space
started at g; like GLTR we return the best point of the space, which is then not the global
minimiser. Random instances hit it with probability zero.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = ["Krylov", "TRSubResult", "lanczos", "solve_trust_region_subproblem"]

Hvp = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TRSubResult(NamedTuple):
    step: torch.Tensor            # [B, n] minimiser d
    value: torch.Tensor           # [B] model value <g, d> + 1/2 <d, H d>
    multiplier: torch.Tensor      # [B] lam >= 0, (H + lam I) d = -g in the Krylov space
    iterations: torch.Tensor      # [B] Hessian-vector products spent per row
    hessian_zero: torch.Tensor    # [B] bool: the first product H g was exactly zero


@dataclass
class Krylov:
    """Lanczos factorisation per row: basis ``q`` [B, k, n], tridiagonal ``diag``/``off`` (float64)."""

    q: torch.Tensor
    diag: torch.Tensor
    off: torch.Tensor
    size: torch.Tensor
    gnorm: torch.Tensor
    iterations: torch.Tensor
    hessian_zero: torch.Tensor

    def __post_init__(self) -> None:
        # T_k does not depend on the radius: decompose it once for all the solves to come.
        k = self.diag.shape[1]
        idx = torch.arange(k, device=self.diag.device)
        real = idx[None, :] < self.size[:, None]
        # Rows that stopped early get a decoupled diagonal block above their spectrum (Gershgorin
        # bound), so it never carries the leftmost eigenvalue and receives no part of g.
        bound = (self.diag.abs() + 2 * self.off.abs()).masked_fill(~real, 0).amax(1, keepdim=True) + 1
        diag = torch.where(real, self.diag, bound)
        off = torch.where(real[:, 1:] & real[:, :-1], self.off[:, : k - 1], torch.zeros_like(self.off[:, : k - 1]))
        t = torch.diag_embed(diag) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        self.evals, self.evecs = torch.linalg.eigh(t)
        self.coef = self.gnorm[:, None] * self.evecs[:, 0, :]   # V^T (||g|| e1)

    def small(self, radius: torch.Tensor | float, newton_steps: int = 60) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Solution in Krylov coordinates: ``(h [B, k], value [B], lam [B])``; no product with the basis."""
        h, lam = _secular(self.evals, self.coef, self.evecs, _as_rows(radius, self.gnorm), newton_steps)
        th = (self.evecs * self.evals[:, None, :]) @ (self.evecs.transpose(1, 2) @ h[:, :, None])
        value = self.gnorm * h[:, 0] + 0.5 * (h * th[:, :, 0]).sum(1)
        return h, value, lam

    def solve(self, radius: torch.Tensor | float, newton_steps: int = 60) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Minimiser in the Krylov space for each radius: ``(step [B, n], value [B], lam [B])``."""
        h, value, lam = self.small(radius, newton_steps)
        return torch.einsum("bk,bkn->bn", h.to(self.q.dtype), self.q), value, lam


def _as_rows(radius: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    r = torch.as_tensor(radius, dtype=torch.float64, device=like.device)
    return r.expand(like.shape[0]).clone()


def _secular(evals: torch.Tensor, c: torch.Tensor, evecs: torch.Tensor, radius: torch.Tensor,
             newton_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact solution of min c^T y + 1/2 y^T diag(evals) y, ||y|| <= radius in the eigenbasis,
    mapped back by ``evecs``. Moré–Sorensen: lam >= max(0, -lambda_min), ||y(lam)|| = radius."""
    lmin = evals[:, 0]
    tiny = torch.finfo(evals.dtype).tiny

    def ynorm(lam: torch.Tensor) -> torch.Tensor:
        den = (evals + lam[:, None]).clamp_min(tiny)
        return torch.where(c == 0, torch.zeros_like(c), c / den).norm(dim=1)

    gnorm = c.norm(dim=1)
    zero = torch.zeros_like(lmin)
    interior = (lmin > 0) & (ynorm(zero) <= radius)
    lo = (-lmin).clamp_min(0)
    # ||y(lam)|| <= ||c|| / (lam - lo) for lam > lo, so the root lies below lo + ||c|| / radius.
    a, b = lo.clone(), lo + gnorm / radius.clamp_min(tiny)
    lam = b.clone()
    for _ in range(newton_steps):
        den = (evals + lam[:, None]).clamp_min(tiny)
        y2 = (c / den).square().sum(1)
        yn = y2.sqrt().clamp_min(tiny)
        phi = 1 / yn - 1 / radius
        a = torch.where(phi < 0, lam, a)
        b = torch.where(phi >= 0, lam, b)
        dphi = (c.square() / den.pow(3)).sum(1) / yn.pow(3)
        nxt = lam - phi / dphi.clamp_min(tiny)
        inside = (nxt > a) & (nxt < b) & torch.isfinite(nxt)
        lam = torch.where(inside, nxt, (a + b) / 2)
    # Hard case inside T_k: no weight on the leftmost eigenvector, and y(lo) stays inside the ball;
    # fill up to the boundary along that eigenvector.
    scale = evals.abs().amax(1).clamp_min(1.0)
    leftmost = (evals - lmin[:, None]) <= 1e-12 * scale[:, None]
    c_left = torch.where(leftmost, c, torch.zeros_like(c)).norm(dim=1)
    y_lo = torch.where(leftmost | (c == 0), torch.zeros_like(c), -c / (evals + lo[:, None]).clamp_min(tiny))
    hard = ~interior & (lmin <= 0) & (c_left <= 1e-10 * gnorm.clamp_min(tiny)) & (y_lo.norm(dim=1) <= radius)
    lam = torch.where(interior, zero, torch.where(hard, lo, lam))
    y = torch.where(c == 0, torch.zeros_like(c), -c / (evals + lam[:, None]).clamp_min(tiny))
    fill = (radius.square() - y_lo.square().sum(1)).clamp_min(0).sqrt()
    y_hard = y_lo.clone()
    y_hard[:, 0] = y_hard[:, 0] + fill
    y = torch.where(hard[:, None], y_hard, y)
    return (evecs @ y[:, :, None])[:, :, 0], lam


def lanczos(grad: torch.Tensor, hvp: Hvp, radius: torch.Tensor | float | None = None, *, max_iter: int = 20,
            tol: float = 1e-6) -> Krylov:
    """Lanczos with full reorthogonalisation, started at ``grad`` [B, n].

    ``hvp(v, active)`` returns H v [B, n]; ``active`` (bool [B]) marks the rows still iterating,
    so the caller can charge products to them only. A row stops on breakdown (invariant Krylov
    space), or, when ``radius`` is given, once the GLTR residual ``||(H + lam I) d + g|| =
    beta_k |h_k|`` of the subproblem at that radius falls below ``tol * ||g||``.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    b, n = grad.shape
    m = min(max_iter, n)
    f64 = {"dtype": torch.float64, "device": grad.device}
    gnorm = grad.norm(dim=1)
    q = torch.zeros(b, m + 1, n, dtype=grad.dtype, device=grad.device)
    q[:, 0] = grad / gnorm.clamp_min(torch.finfo(grad.dtype).tiny)[:, None]
    diag, off = torch.zeros(b, m, **f64), torch.zeros(b, m, **f64)
    size = torch.zeros(b, dtype=torch.long, device=grad.device)
    iters = torch.zeros_like(size)
    active = gnorm > 0
    hessian_zero = torch.zeros_like(active)
    scale = torch.zeros(b, **f64)
    eps = 10 * torch.finfo(grad.dtype).eps
    for j in range(m):
        if not bool(active.any()):
            break
        w = hvp(q[:, j], active.clone())
        if j == 0:
            hessian_zero = active & (w == 0).all(dim=1)
        iters += active.long()
        size += active.long()
        alpha = (w * q[:, j]).sum(1)
        # Full reorthogonalisation, twice: k is small and it keeps T_k faithful in float32.
        for _ in range(2):
            w = w - torch.einsum("bk,bkn->bn", torch.einsum("bkn,bn->bk", q[:, : j + 1], w), q[:, : j + 1])
        beta = w.norm(dim=1)
        diag[:, j] = torch.where(active, alpha.double(), diag[:, j])
        scale = torch.maximum(scale, alpha.double().abs() + beta.double())
        # Breakdown: the Krylov space is invariant (a zero Hessian stops here at once).
        stop = beta.double() <= eps * scale
        if radius is not None and not bool(stop.all()):
            kry = Krylov(q[:, : j + 1], diag[:, : j + 1], off[:, : j + 1], size.clone(), gnorm.double(), iters, hessian_zero)
            h, _ = _secular(kry.evals, kry.coef, kry.evecs, _as_rows(radius, gnorm), 60)
            last = h.gather(1, (size - 1).clamp_min(0)[:, None])[:, 0]
            stop = stop | (beta.double() * last.abs() <= tol * gnorm.double())
        cont = active & ~stop
        off[:, j] = torch.where(cont, beta.double(), torch.zeros_like(off[:, j]))
        q[:, j + 1] = torch.where(cont[:, None], w / beta.clamp_min(torch.finfo(w.dtype).tiny)[:, None],
                                  torch.zeros_like(w))
        active = cont
    k = max(int(size.max()), 1)
    return Krylov(q[:, :k], diag[:, :k], off[:, :k], size, gnorm.double(), iters, hessian_zero)


def solve_trust_region_subproblem(grad: torch.Tensor, hvp: Hvp, radius: torch.Tensor | float, *,
                                  max_iter: int = 20, tol: float = 1e-6) -> TRSubResult:
    """min <g, d> + 1/2 <d, H d> over ||d||_2 <= radius, batched over rows of ``grad`` [B, n].

    ``hvp(v, active)`` computes H v for the batch (see :func:`lanczos`). With ``max_iter >= n``
    the answer is exact except in the hard case; otherwise it is the GLTR point of the Krylov space.
    """
    kry = lanczos(grad, hvp, radius, max_iter=max_iter, tol=tol)
    step, value, lam = kry.solve(radius)
    return TRSubResult(step.to(grad.dtype), value.to(grad.dtype), lam.to(grad.dtype), kry.iterations, kry.hessian_zero)
