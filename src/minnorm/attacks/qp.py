"""Batched dual solver for the region QP of Croce, Rauber and Hein (Sec. 4.1, eq. 15-19).

In the perturbation ``d = z - x`` the problem (15) reads, per batch row,

    min 1/2 ||d||^2   s.t.   A d <= b,   lower <= d <= upper   (lower <= 0 <= upper).

Dualising only ``A d <= b`` (multipliers ``mu >= 0``) and minimising over the box in closed form
gives ``d(mu) = clip(-A^T mu, lower, upper)`` -- this is eq. 17 with the box multipliers of
eq. 18 (``alpha``, ``beta`` are the parts of ``-A^T mu`` the clip cuts off) -- and the concave dual

    q(mu) = 1/2 ||d(mu)||^2 + <mu, A d(mu) - b>,    grad q(mu) = A d(mu) - b,

whose gradient is ``||A||^2``-Lipschitz (eq. 19 in this parametrisation). It is maximised by
accelerated projected gradient ascent with momentum ``k / (k + 3)`` and adaptive restart, with
``||A||^2`` estimated by power iteration. ``A`` is never formed: a :class:`Operator` gives
``A v`` and ``A^T mu``, so the same code serves the explicit test matrices and the network's
JVP/VJP products. Any ``q(mu)`` is a lower bound on the optimal ``1/2 ||d||^2``, which allows the
early stop of Sec. 4.1 once a row cannot beat an incumbent norm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["DenseOperator", "Operator", "QPSolution", "ScaledOperator", "block_scales", "ray_search", "solve_qp"]


class Operator(Protocol):
    """A batch of ``n`` matrices ``A_i`` (``m`` rows over inputs shaped ``shape``)."""

    n: int

    # ``rows``: the batch rows whose results are used (the rest are zero padding), for pass counting
    def matvec(self, v: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor: ...  # [n,*shape]->[n,m]

    def rmatvec(self, mu: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor: ...  # [n,m]->[n,*shape]

    def restrict(self, rows: torch.Tensor) -> "Operator": ...  # keep only these batch rows


class DenseOperator:
    """Explicit matrices ``A`` ``[n, m, d]``: for tests and small problems."""

    def __init__(self, a: torch.Tensor):
        self.a, self.n = a, a.shape[0]

    def matvec(self, v, rows=None):
        return torch.einsum("nmd,nd->nm", self.a, v)

    def rmatvec(self, mu, rows=None):
        return torch.einsum("nmd,nm->nd", self.a, mu)

    def restrict(self, rows):
        return DenseOperator(self.a[rows])


class ScaledOperator:
    """Rows rescaled: ``diag(scale) A`` for a per-row ``scale`` ``[n, m]`` (preconditioning)."""

    def __init__(self, op: Operator, scale: torch.Tensor):
        self.op, self.scale, self.n = op, scale, op.n

    def matvec(self, v, rows=None):
        return self.scale * self.op.matvec(v, rows)

    def rmatvec(self, mu, rows=None):
        return self.op.rmatvec(self.scale * mu, rows)

    def restrict(self, rows):
        return ScaledOperator(self.op.restrict(rows), self.scale[rows])


def block_scales(op: Operator, sizes: list[int], like: torch.Tensor, generator: torch.Generator,
                 rows: int = 10) -> torch.Tensor:
    """Per-row scales that bring each block of rows (one block per layer) to unit mean row norm,
    from ``rows`` sampled rows per block (Sec. 4.2). One ``A^T w`` per block: ``w`` puts random
    signs on the sampled rows, so ``||A^T w||^2 / rows`` estimates their mean squared norm
    (the cross terms vanish in expectation). Blocks whose sampled rows are zero keep scale 1."""
    n, total = like.shape[0], sum(sizes)
    out, start = [], 0
    for size in sizes:
        k = min(rows, size)
        w = torch.zeros(n, total, dtype=like.dtype, device=like.device)
        # rows drawn with replacement (cheap on wide layers); a repeated row is simply counted once
        pick = torch.randint(0, size, (n, k), generator=generator, device=generator.device).to(like.device)
        sign = torch.randint(0, 2, (n, k), generator=generator, device=generator.device).to(like) * 2 - 1
        w[:, start:start + size].scatter_(1, pick, sign)
        ms = op.rmatvec(w).flatten(1).pow(2).sum(1) / (w != 0).sum(1).clamp_min(1)
        scale = torch.where(ms > 0, ms.clamp_min(torch.finfo(like.dtype).tiny).rsqrt(), torch.ones_like(ms))
        out.append(scale[:, None].expand(n, size))
        start += size
    return torch.cat(out, 1)


@dataclass
class QPSolution:
    """``delta`` ``[n, *shape]`` after the ray search; ``feasible`` whether it meets all constraints
    (to ``tol``); ``dual`` the best dual value (a lower bound on ``1/2 ||d*||^2``); ``pruned`` rows
    stopped because ``dual`` proved they cannot beat ``bound``; ``iterations`` per row."""

    delta: torch.Tensor
    feasible: torch.Tensor
    dual: torch.Tensor
    pruned: torch.Tensor
    iterations: torch.Tensor


def _power_norm(op: Operator, like: torch.Tensor, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Estimate ``||A||_2^2 = ||A^T A||`` per row by power iteration on ``A^T A``."""
    v = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
    est = torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
    for _ in range(iterations):
        v = v / v.flatten(1).norm(dim=1).clamp_min(torch.finfo(like.dtype).tiny).view(-1, *[1] * (v.dim() - 1))
        w = op.rmatvec(op.matvec(v))
        est = w.flatten(1).norm(dim=1)
        v = w
    return est


def solve_qp(op: Operator, b: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, *, steps: int = 500,
             power_iterations: int = 20, bound: torch.Tensor | None = None, tol: float = 1e-6,
             line_tol: float = 0.0, generator: torch.Generator | None = None) -> QPSolution:
    """Solve the batch of QPs (15) in the dual; then recover ``d`` (eq. 17) and search the ray.

    ``b`` ``[n, m]``; ``lower``/``upper`` ``[n, *shape]`` with ``lower <= 0 <= upper``. ``bound``
    ``[n]`` (optional) is an incumbent norm: a row stops once ``sqrt(2 q) >= bound``. A row also
    stops when its primal point violates no constraint by more than ``tol`` and the duality gap
    ``-<mu, A d - b>`` is below ``tol * 1/2 ||d||^2``. ``line_tol`` is the constraint tolerance of
    the final :func:`ray_search`.
    """
    n = b.shape[0]
    dt, dev = b.dtype, b.device
    gen = generator if generator is not None else torch.Generator(device=dev).manual_seed(0)
    lip = _power_norm(op, lower, power_iterations, gen).mul(1.1).clamp_min(1e-12)
    shape = lower.shape[1:]
    view = (-1, *[1] * len(shape))
    mu = torch.zeros_like(b)
    mu_prev = torch.zeros_like(b)
    best_q = torch.full((n,), -torch.inf, dtype=dt, device=dev)
    best_d = torch.zeros_like(lower)
    best_ad = torch.zeros_like(b)
    k = torch.zeros(n, dtype=dt, device=dev)
    last_q = torch.full((n,), -torch.inf, dtype=dt, device=dev)
    iterations = torch.zeros(n, dtype=torch.long, device=dev)
    pruned = torch.zeros(n, dtype=torch.bool, device=dev)
    rows = torch.arange(n, device=dev)  # rows still iterating, into the full batch
    base, sel = op, torch.arange(n, device=dev)  # the operator in use and the rows' positions in it
    for _ in range(steps):
        if rows.numel() == 0:
            break
        m, mp = mu[rows], mu_prev[rows]
        beta = (k[rows] / (k[rows] + 3))[:, None]
        v = (m + beta * (m - mp)).clamp_min(0)  # projected extrapolation keeps q(v) a valid bound
        d = torch.minimum(torch.maximum(-_apply(base, "rmatvec", v, sel), lower[rows]), upper[rows])
        ad = _apply(base, "matvec", d, sel)
        grad = ad - b[rows]
        q = 0.5 * d.flatten(1).pow(2).sum(1) + (v * grad).sum(1)
        better = q > best_q[rows]
        best_q[rows] = torch.where(better, q, best_q[rows])
        best_d[rows] = torch.where(better.view(view), d, best_d[rows])
        best_ad[rows] = torch.where(better[:, None], ad, best_ad[rows])
        # adaptive restart (O'Donoghue and Candes): drop the momentum when the dual decreases
        k[rows] = torch.where(q < last_q[rows], torch.zeros_like(q), k[rows] + 1)
        last_q[rows] = q
        mu_prev[rows] = m
        mu[rows] = (v + grad / lip[rows, None]).clamp_min(0)
        iterations[rows] += 1
        primal = 0.5 * d.flatten(1).pow(2).sum(1)
        done = (grad.amax(1).clamp_min(0) <= tol) & (-(v * grad).sum(1) <= tol * primal.clamp_min(1e-12))
        if bound is not None:
            stop = 2 * best_q[rows] >= bound[rows].pow(2)
            pruned[rows] |= stop & ~done
            done |= stop
        if bool(done.any()):
            rows, sel = rows[~done], sel[~done]
            if 0 < sel.numel() <= 3 * base.n // 4:
                # re-linearise on the rows left, so that finished rows stop costing compute too
                base, sel = base.restrict(sel), torch.arange(sel.numel(), device=dev)
    delta, feasible = ray_search(best_d, best_ad, b, lower, upper, line_tol)
    return QPSolution(delta, feasible & ~pruned, best_q, pruned, iterations)


def _apply(op: Operator, method: str, x: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """``op.method`` on the operator's whole batch with zeros in the rows not in ``sel``; ``sel``
    is handed on so that an operator can charge passes to those rows only."""
    fn = getattr(op, method)
    if sel.numel() == op.n:  # sel is sorted and unique, so it is every row
        return fn(x, sel)
    full = torch.zeros(op.n, *x.shape[1:], dtype=x.dtype, device=x.device)
    full[sel] = x
    return fn(full, sel)[sel]


def ray_search(d: torch.Tensor, ad: torch.Tensor, b: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
               tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The point of smallest norm on the ray ``{a d : a >= 0}`` satisfying ``A (a d) <= b + tol``
    and the box, in closed form from ``A d`` (every constraint is affine in ``a``): the final
    line search of Sec. 4.2 made exact for the region's own constraints. Returns ``(a* d, ok)``;
    where no such ``a`` exists ``ok`` is False and ``d`` comes back unchanged."""
    inf = torch.full_like(ad, torch.inf)
    rhs = b + tol
    ratio = rhs / torch.where(ad != 0, ad, torch.ones_like(ad))
    hi = torch.where(ad > 0, ratio, inf).amin(1)
    lo = torch.where(ad < 0, ratio, -inf).amax(1).clamp_min(0)
    ok = ~((ad == 0) & (rhs < 0)).any(1)
    fd = d.flatten(1)
    box = torch.where(fd > 0, upper.flatten(1) / torch.where(fd > 0, fd, torch.ones_like(fd)),
                      torch.where(fd < 0, lower.flatten(1) / torch.where(fd < 0, fd, -torch.ones_like(fd)),
                                  torch.full_like(fd, torch.inf)))
    hi = torch.minimum(hi, box.amin(1) if fd.shape[1] else hi)
    ok = ok & (lo <= hi)
    a = torch.where(ok, lo, torch.ones_like(lo))
    return d * a.view(-1, *[1] * (d.dim() - 1)), ok
