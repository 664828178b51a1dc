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
from typing import Callable, Protocol

import torch

from ..core.linalg import power_iteration

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
        return self.op.matvec(v, rows).mul_(self.scale)  # the inner product is a fresh tensor

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
    mu: torch.Tensor | None = None  # the last multipliers per row (for warm starts)


def _power_norm(op: Operator, like: torch.Tensor, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Estimate ``||A||_2^2 = ||A^T A||`` per row by power iteration on ``A^T A`` (every row, every step)."""
    v = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
    return power_iteration(lambda u, rows: op.rmatvec(op.matvec(u)), v, iterations)[1]


def _stop_rows(done: torch.Tensor, rows: torch.Tensor, stop: Callable[[], torch.Tensor | None] | None) -> torch.Tensor:
    """``done`` or'ed with the rows that ``stop`` (an answer over every row of the batch) ends."""
    halt = None if stop is None else stop()
    return done if halt is None else done | halt[rows]


def solve_qp(op: Operator, b: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, *, steps: int = 500,
             power_iterations: int = 20, bound: torch.Tensor | None = None, tol: float = 1e-6,
             line_tol: float = 0.0, generator: torch.Generator | None = None,
             mu0: torch.Tensor | None = None, step_scale: float = 1.0,
             stop: Callable[[], torch.Tensor | None] | None = None) -> QPSolution:
    """Solve the batch of QPs (15) in the dual; then recover ``d`` (eq. 17) and search the ray.

    ``b`` ``[n, m]``; ``lower``/``upper`` ``[n, *shape]`` with ``lower <= 0 <= upper``. ``bound``
    ``[n]`` (optional) is an incumbent norm: a row stops once ``sqrt(2 q) >= bound``. A row also
    stops when its primal point violates no constraint by more than ``tol ||d||`` (rows of about
    unit norm, so a distance relative to the step) and the duality gap ``-<mu, A d - b>`` is below
    ``tol * 1/2 ||d||^2``. ``line_tol`` is the constraint tolerance of the final :func:`ray_search`.
    ``stop`` (optional, asked every 4 steps): ``[n]`` rows to end now (say, out of pass budget).
    ``mu0`` (``[n, m]``, ``>= 0``) warm-starts the dual (zero by default). The loop keeps only the
    rows still iterating, so a finished row costs nothing more.

    ``step_scale``: the first step of every row is ``step_scale / (1.1 L)`` (``L`` the power estimate
    of ``||A||^2``), longer than the safe ``1 / (1.1 L)`` because the clipped coordinates make the
    dual's curvature smaller than ``||A||^2``; the step halves (down to the safe one) whenever the
    dual value drops, i.e. at every adaptive restart, so a too-long step corrects itself, and
    doubles again (up to the first) after 10 steps without a drop. ``step_scale = 1`` is the
    plain method with the safe step.
    """
    n = b.shape[0]
    dev = b.device
    gen = generator if generator is not None else torch.Generator(device=dev).manual_seed(0)
    lip = _power_norm(op, lower, power_iterations, gen).mul(1.1).clamp_min(1e-12)
    out = _DualState.start(n, b, lower, mu0)
    s = _DualState.start(n, b, lower, mu0)  # the active rows (all, to begin with)
    s.lower, s.upper, s.bound = lower, upper, bound
    s.lip_max, s.lip_min = lip[:, None], lip[:, None] / step_scale  # steps between 1 / lip_max and 1 / lip_min
    s.lip = s.lip_min.clone()
    base, sel = op, torch.arange(n, device=dev)  # the operator in use and the rows' positions in it
    for it in range(steps):
        if s.rows.numel() == 0:
            break
        done = s.step(base, sel, tol)
        if it % 4 == 3:
            done = _stop_rows(done, s.rows, stop)
        if bool(done.any()):
            out.store(s, done)
            s = s.keep(~done)
            sel = sel[~done]
            if 0 < sel.numel() <= 7 * base.n // 8:
                # re-linearise on the rows left, so that finished rows stop costing compute too
                base, sel = base.restrict(sel), torch.arange(sel.numel(), device=dev)
    out.store(s, torch.ones_like(s.rows, dtype=torch.bool))
    # A d of the best points in one product at the end (cheaper than keeping it at every step)
    delta, feasible = ray_search(out.best_d, op.matvec(out.best_d), b, lower, upper, line_tol)
    return QPSolution(delta, feasible & ~out.pruned, out.best_q, out.pruned, out.iterations, out.mu)


_GROW = 10  # steps without a drop of the dual after which a halved step doubles again (measured: 10 and 25 alike)


class _DualState:
    """Accelerated projected dual ascent on a set of rows (Sec. 4.1): multipliers, momentum
    counters and the best dual point so far, with the row data they need."""

    @classmethod
    def start(cls, n: int, b: torch.Tensor, lower: torch.Tensor, mu0: torch.Tensor | None) -> "_DualState":
        s = cls()
        dt, dev = b.dtype, b.device
        s.rows = torch.arange(n, device=dev)
        s.b = b
        s.mu = torch.zeros_like(b) if mu0 is None else mu0.to(b).clamp_min(0)
        s.mu_prev = s.mu.clone()
        s.best_q = torch.full((n,), -torch.inf, dtype=dt, device=dev)
        s.best_d = torch.zeros_like(lower)
        s.k = torch.zeros(n, dtype=dt, device=dev)
        s.last_q = torch.full((n,), -torch.inf, dtype=dt, device=dev)
        s.iterations = torch.zeros(n, dtype=torch.long, device=dev)
        s.pruned = torch.zeros(n, dtype=torch.bool, device=dev)
        return s

    def step(self, base: Operator, sel: torch.Tensor, tol: float) -> torch.Tensor:
        """One accelerated step with momentum ``k/(k+3)``, projected extrapolation (so that ``q(v)``
        is a valid bound) and adaptive restart (O'Donoghue and Candes); returns the finished rows."""
        m, mp = self.mu, self.mu_prev
        beta = (self.k / (self.k + 3))[:, None]
        v = torch.lerp(m, mp, -beta).clamp_min_(0)  # m + beta (m - mp), projected
        d = torch.minimum(torch.maximum(-_apply(base, "rmatvec", v, sel), self.lower), self.upper)
        grad = _apply(base, "matvec", d, sel).sub_(self.b)  # A d - b (a fresh tensor)
        primal = 0.5 * d.flatten(1).pow(2).sum(1)
        vg = torch.linalg.vecdot(v, grad)
        q = primal + vg
        better = q > self.best_q
        self.best_q = torch.where(better, q, self.best_q)
        self.best_d = torch.where(better.view(-1, *[1] * (d.dim() - 1)), d, self.best_d)
        drop = q < self.last_q
        self.k = torch.where(drop, torch.zeros_like(q), self.k + 1)
        # a drop also means the step may be too long for this row: halve it, down to the safe 1 / lip_max;
        # after every _GROW steps without a drop double it again, up to the first step 1 / lip_min
        grow = (self.k % _GROW == 0) & (self.k > 0)
        self.lip = torch.where(drop[:, None], torch.minimum(2 * self.lip, self.lip_max),
                               torch.where(grow[:, None], torch.maximum(self.lip / 2, self.lip_min), self.lip))
        self.last_q = q
        self.mu_prev = m
        self.mu = v.addcdiv_(grad, self.lip).clamp_min_(0)  # v is not used again
        self.iterations += 1
        # scale-aware stop: the (preconditioned, about unit-norm) rows are violated by at most tol ||d||,
        # a distance relative to the step, and the duality gap is at most tol of the primal value
        done = (grad.amax(1) <= tol * (2 * primal).sqrt()) & (-vg <= tol * primal)
        if self.bound is not None:
            stop = 2 * self.best_q >= self.bound.pow(2)
            self.pruned |= stop & ~done
            done |= stop
        return done

    def keep(self, mask: torch.Tensor) -> "_DualState":
        s = _DualState()
        for name, value in vars(self).items():
            s.__dict__[name] = value if value is None else value[mask]
        return s

    def store(self, s: "_DualState", mask: torch.Tensor) -> None:
        """Write the rows ``mask`` of the active state ``s`` into this full-size result."""
        rows = s.rows[mask]
        for name in ("best_q", "best_d", "iterations", "pruned", "mu"):
            getattr(self, name)[rows] = getattr(s, name)[mask]


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
