"""Batched matrix-free solver for the region LP of the linear-region attack for p = inf and p = 1.

Croce, Rauber and Hein (Sec. 3) note that the minimal-norm problem of one linear region (eq. 10/11)
is a linear program for p = inf and p = 1. In the perturbation ``d = z - x`` it reads, per batch row,

    min ||d||_p   s.t.   A d <= b,   lower <= d <= upper   (lower <= 0 <= upper),

with ``A`` available only through products (:class:`~minnorm.attacks._qp.Operator`: JVP/VJP of the
frozen network). It is solved as the saddle point ``min_d max_{mu >= 0} f(d) + <mu, A d - b>``,
``f = ||.||_p + box``, by the primal-dual hybrid gradient method (Chambolle and Pock 2011):

    d+  = prox_{tau f}(d - tau A^T mu),      mu+ = max(0, mu + sigma (A (2 d+ - d) - b)),

one ``A^T mu`` and one ``A d`` per step (``A d`` is kept, so the extrapolated product is free), with
``tau sigma ||A||^2 < 1`` from power iteration. The prox of ``||.||_1`` + box is a clipped
soft-threshold; that of ``||.||_inf`` + box comes from a sort (:func:`prox_linf_box`). Restarts
with primal-weight updates (Applegate et al. 2021, PDLP) make it converge fast on LPs.

Every step also gives a certificate and a candidate: for any ``mu >= 0`` the dual function
``D(mu) = min_{d in box} ||d||_p + <A^T mu, d> - <mu, b>`` (closed form, :func:`box_norm_min`) is a
lower bound on the optimal norm (the early rejection of Sec. 4.1: a row stops once it proves it
cannot beat the incumbent), and the smallest feasible point on the ray through ``d``
(:func:`~minnorm.attacks._qp.ray_search`) an upper bound; the best such point is returned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ._qp import Operator, _apply, _power_norm, _stop_rows, ray_search

_CHECK = 4  # steps between bound, candidate and stopping checks (every other check also restarts)

__all__ = ["LPSolution", "box_norm_argmin", "box_norm_min", "prox_l1_box", "prox_linf_box", "solve_lp"]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def prox_l1_box(x: torch.Tensor, tau: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``argmin_{lower <= d <= upper} tau ||d||_1 + 1/2 ||d - x||^2``: soft-threshold, then clip
    (both terms are separable, and in 1-D the prox of ``|.|`` plus an interval is the clipped prox)."""
    t = tau.view(-1, *[1] * (x.dim() - 1))
    return torch.minimum(torch.maximum(torch.sign(x) * (x.abs() - t).clamp_min(0), lower), upper)


def prox_linf_box(x: torch.Tensor, tau: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``argmin_{lower <= d <= upper} tau ||d||_inf + 1/2 ||d - x||^2`` (``lower <= 0 <= upper``).

    For a level ``t`` the best ``d`` is ``clip(x', -t, t)`` with ``x' = clip(x, lower, upper)``; the
    derivative of the cost in ``t``, ``tau + sum_{|x'_j| > t} (t - |x_j|)``, is nondecreasing, so
    its root is found exactly from ``|x'|`` sorted in decreasing order and prefix sums of ``|x|``."""
    xc = torch.minimum(torch.maximum(x, lower), upper)
    a, order = _flat(xc).abs().sort(1, descending=True)
    w = _flat(x).abs().gather(1, order)
    n = a.shape[1]
    k = torch.arange(1, n + 1, device=x.device, dtype=x.dtype)
    cum = w.cumsum(1)
    nxt = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], 1)
    # h just above the next breakpoint with the k largest in the active set; nonincreasing in k
    h_lo = tau[:, None] + k * nxt - cum
    first = (h_lo > 0).sum(1).clamp_max(n - 1)  # index of the smallest k with h_lo <= 0
    kk = first + 1
    t = ((cum.gather(1, first[:, None]).squeeze(1) - tau) / kk.to(x.dtype))
    t = torch.minimum(t, a.gather(1, first[:, None]).squeeze(1)).clamp_min(0)
    t = torch.where(h_lo[:, -1] > 0, torch.zeros_like(t), t)  # even all active: the level is 0
    tv = t.view(-1, *[1] * (x.dim() - 1))
    return torch.minimum(torch.maximum(xc, -tv), tv)


def box_norm_min(g: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, p: float) -> torch.Tensor:
    """``min_{lower <= d <= upper} ||d||_p + <g, d>`` per row, in closed form (``lower <= 0 <= upper``).

    Moving along ``-sign(g_j)`` the room is ``c_j`` (``upper_j`` where ``g_j < 0``, else ``-lower_j``).
    p = 1: separable, ``sum_j min(0, (1 - |g_j|) c_j)``. p = inf: with ``||d||_inf = t`` the best is
    ``t - sum_j |g_j| min(t, c_j)``, convex and piecewise linear in ``t`` with breakpoints ``c_j``,
    minimised over ``t in {0} u {c_j}`` with a sort and prefix sums."""
    g, lo, up = _flat(g), _flat(lower), _flat(upper)
    c = torch.where(g < 0, up, -lo)
    ag = g.abs()
    if p == 1:
        return torch.minimum((1 - ag) * c, torch.zeros_like(c)).sum(1)
    cs, order = c.sort(1)
    gs = ag.gather(1, order)
    below = (gs * cs).cumsum(1)  # sum over c_j <= c_(k) of |g_j| c_j
    above = gs.sum(1, keepdim=True) - gs.cumsum(1)  # sum over c_j > c_(k) of |g_j|
    values = cs - below - cs * above
    return torch.minimum(values.amin(1), torch.zeros_like(values[:, 0]))  # t = 0 gives 0


def box_norm_argmin(g: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, p: float) -> torch.Tensor:
    """A minimiser of :func:`box_norm_min` (the primal point the multipliers ask for): each
    coordinate moves along ``-sign(g_j)``, by its room ``c_j`` where ``|g_j| > 1`` (p = 1), or by
    ``min(t, c_j)`` at the minimising level ``t`` (p = inf)."""
    shape = g.shape
    g, lo, up = _flat(g), _flat(lower), _flat(upper)
    c = torch.where(g < 0, up, -lo)
    if p == 1:
        step = torch.where(g.abs() > 1, c, torch.zeros_like(c))
    else:
        cs, order = c.sort(1)
        gs = g.abs().gather(1, order)
        values = cs - (gs * cs).cumsum(1) - cs * (gs.sum(1, keepdim=True) - gs.cumsum(1))
        best, at = values.min(1)
        t = torch.where(best < 0, cs.gather(1, at[:, None]).squeeze(1), torch.zeros_like(best))
        step = torch.minimum(c, t[:, None])
    return (-torch.sign(g) * step).view(shape)


@dataclass
class LPSolution:
    """``delta`` ``[n, *shape]``: the best point found that violates no constraint by more than
    ``line_tol`` (an iterate, or the smallest feasible point on the ray through one; the last
    iterate where there is none); ``feasible`` whether there is one; ``norm`` its p-norm (inf where none);
    ``dual`` the best dual bound (a lower bound on the optimal norm); ``pruned`` rows stopped
    because ``dual`` reached ``bound``; ``iterations`` per row; ``mu`` the last multipliers."""

    delta: torch.Tensor
    feasible: torch.Tensor
    norm: torch.Tensor
    dual: torch.Tensor
    pruned: torch.Tensor
    iterations: torch.Tensor
    mu: torch.Tensor


def solve_lp(op: Operator, b: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, *, p: float,
             steps: int = 1000, power_iterations: int = 20, bound: torch.Tensor | None = None, tol: float = 1e-6,
             line_tol: float = 0.0, restart: int = 256, generator: torch.Generator | None = None,
             mu0: torch.Tensor | None = None, stop: Callable[[], torch.Tensor | None] | None = None) -> LPSolution:
    """Solve the batch of region LPs (eq. 10/11 for p = inf or 1) by restarted PDHG.

    ``b`` ``[n, m]``; ``lower``/``upper`` ``[n, *shape]``. ``bound`` ``[n]`` (optional): a row stops
    (``pruned``) once its dual bound reaches it. A row also stops once its best feasible norm is
    within ``tol`` (relative) of its dual bound. ``restart``: PDHG restarts from the current point
    with a new primal weight every ``restart`` steps (and when the gap has shrunk fivefold).
    ``line_tol``: constraint tolerance of the ray search. ``mu0`` warm-starts the multipliers.
    ``stop`` (optional): ``[n]`` rows to stop now (say, out of pass budget), asked at every check.
    """
    if p not in (1, math.inf):
        raise ValueError(f"p must be 1 or inf, got {p}")
    n, dev = b.shape[0], b.device
    gen = generator if generator is not None else torch.Generator(device=dev).manual_seed(0)
    eta = 1 / _power_norm(op, lower, power_iterations, gen).clamp_min(1e-24).sqrt()
    out = _PDState.start(n, b, lower, mu0, p)
    s = _PDState.start(n, b, lower, mu0, p)
    s.lower, s.upper, s.eta, s.bound, s.line_tol = lower, upper, eta, bound, line_tol
    base, sel = op, torch.arange(n, device=dev)
    for it in range(steps):
        if s.rows.numel() == 0:
            break
        check = it % _CHECK == _CHECK - 1 or it == steps - 1
        done = s.step(base, sel, tol, restart, check=check)
        if check:
            done = _stop_rows(done, s.rows, stop)
        if bool(done.any()):
            out.store(s, done)
            s, sel = s.keep(~done), sel[~done]
            if 0 < sel.numel() <= 7 * base.n // 8:
                base, sel = base.restrict(sel), torch.arange(sel.numel(), device=dev)
    out.store(s, torch.ones_like(s.rows, dtype=torch.bool))
    feasible = torch.isfinite(out.best_norm)
    # where no point met the tolerance, the last iterate (nearly feasible; the attack checks it)
    delta = torch.where(feasible.view(-1, *[1] * (lower.dim() - 1)), out.best, out.d)
    return LPSolution(delta, feasible & ~out.pruned, out.best_norm, out.dual, out.pruned, out.iterations, out.mu)


class _PDState:
    """PDHG iterates of a set of rows, their running averages since the last restart, and the best
    bounds so far."""

    @classmethod
    def start(cls, n: int, b: torch.Tensor, lower: torch.Tensor, mu0: torch.Tensor | None, p: float) -> "_PDState":
        s = cls()
        dt, dev = b.dtype, b.device
        s.p, s.rows, s.b = p, torch.arange(n, device=dev), b
        s.mu = torch.zeros_like(b) if mu0 is None else mu0.to(b).clamp_min(0)
        s.d = torch.zeros_like(lower)
        s.ad = torch.zeros_like(b)
        s.atmu = s.base = s.sel = None
        s.omega = torch.ones(n, dtype=dt, device=dev)  # primal weight: tau = eta / omega, sigma = eta omega
        s.sums = None  # running sums of (d, ad, mu, atmu) since the last restart
        s.anchor_d, s.anchor_mu = s.d.clone(), s.mu.clone()
        s.anchor_err = torch.full((n,), math.inf, dtype=dt, device=dev)
        s.since = torch.zeros(n, dtype=torch.long, device=dev)
        s.best = torch.zeros_like(lower)
        s.best_norm = torch.full((n,), math.inf, dtype=dt, device=dev)
        s.dual = torch.full((n,), -math.inf, dtype=dt, device=dev)
        s.iterations = torch.zeros(n, dtype=torch.long, device=dev)
        s.pruned = torch.zeros(n, dtype=torch.bool, device=dev)
        return s

    def _dual_value(self, mu: torch.Tensor, atmu: torch.Tensor) -> torch.Tensor:
        return box_norm_min(atmu, self.lower, self.upper, self.p) - (mu * self.b).sum(1)

    def step(self, base: Operator, sel: torch.Tensor, tol: float, restart: int, check: bool = True) -> torch.Tensor:
        """One PDHG step; with ``check``, bounds and a candidate from the new point, restarts and
        the stopping tests; returns the finished rows."""
        if self.atmu is None:
            self.atmu = _apply(base, "rmatvec", self.mu, sel)
        tau, sigma = self.eta / self.omega, self.eta * self.omega
        view = (-1, *[1] * (self.d.dim() - 1))
        prox = prox_linf_box if self.p == math.inf else prox_l1_box
        d = prox(self.d - tau.view(view) * self.atmu, tau, self.lower, self.upper)
        ad = _apply(base, "matvec", d, sel)
        mu = (self.mu + sigma[:, None] * (2 * ad - self.ad - self.b)).clamp_min(0)
        atmu = _apply(base, "rmatvec", mu, sel)
        if check:  # every trial point gives a valid bound and candidate, accepted or not
            self.dual = torch.maximum(self.dual, self._dual_value(mu, atmu))
            self._candidate(d, ad)
        self._adapt(d, ad, mu, atmu)
        new = (d, ad, self.mu, self.atmu)
        self.sums = list(new) if self.sums is None else [a + x for a, x in zip(self.sums, new)]
        self.iterations += 1
        self.since += 1
        if not check:
            return torch.zeros_like(self.rows, dtype=torch.bool)
        if int(self.iterations[0]) % (2 * _CHECK) == 0:
            self.base, self.sel = base, sel
            self._restart(restart)
            self.base = self.sel = None
        gap = self.best_norm - self.dual
        done = torch.isfinite(self.best_norm) & (gap <= tol * self.best_norm.clamp_min(1e-12))
        if self.bound is not None:
            stop = self.dual >= self.bound
            self.pruned |= stop & ~done
            done = done | stop
        return done

    def _adapt(self, d: torch.Tensor, ad: torch.Tensor, mu: torch.Tensor, atmu: torch.Tensor) -> None:
        """PDLP's adaptive step size: the step is accepted where ``eta <= ||dz||_omega^2 / (2 |dmu^T A dd|)``
        (rejected rows keep their point), and ``eta`` moves towards that limit either way."""
        dd, dmu = _flat(d - self.d), mu - self.mu
        inner = (dmu * (ad - self.ad)).sum(1).abs()
        size = self.omega * dd.pow(2).sum(1) + dmu.pow(2).sum(1) / self.omega
        limit = torch.where(inner > 0, size / (2 * inner).clamp_min(1e-300), torch.full_like(size, math.inf))
        ok = self.eta <= limit
        k = float(self.iterations[0]) + 2 if self.iterations.numel() else 2.0
        self.eta = torch.minimum((1 - k ** -0.3) * limit, (1 + k ** -0.6) * self.eta)  # limit may be inf
        w = ok.view(-1, *[1] * (d.dim() - 1))
        self.d, self.ad = torch.where(w, d, self.d), torch.where(ok[:, None], ad, self.ad)
        self.mu, self.atmu = torch.where(ok[:, None], mu, self.mu), torch.where(w, atmu, self.atmu)

    def _candidate(self, d: torch.Tensor, ad: torch.Tensor) -> None:
        """Keep ``d`` if it violates no constraint by more than ``line_tol`` and beats the best;
        else the smallest feasible point on the ray through it (where there is one)."""
        point, ok = ray_search(d, ad, self.b, self.lower, self.upper, self.line_tol)
        close = (ad - self.b).amax(1) <= self.line_tol
        point = torch.where(close.view(-1, *[1] * (d.dim() - 1)), d, point)
        norm = torch.where(ok | close, _flat(point).norm(p=self.p, dim=1), torch.full_like(self.best_norm, math.inf))
        better = norm < self.best_norm
        self.best_norm = torch.where(better, norm, self.best_norm)
        self.best = torch.where(better.view(-1, *[1] * (d.dim() - 1)), point, self.best)

    def _error(self, d, ad, mu, atmu) -> torch.Tensor:
        """A KKT error: constraint violation plus the gap between the objective and the dual."""
        violation = (ad - self.b).clamp_min(0).norm(dim=1)
        return violation + (_flat(d).norm(p=self.p, dim=1) - self._dual_value(mu, atmu)).abs()

    def _restart(self, every: int) -> None:
        """Adaptive restarts of PDLP (Applegate et al. 2021): restart at the better of the current
        and the average iterate once its KKT error fell fivefold since the last restart, or after
        ``every`` steps; then ``omega = sqrt(omega ||dmu|| / ||dd||)`` (primal weight update)."""
        k = self.since.to(self.b.dtype)
        avg = [s / k.view(-1, *[1] * (s.dim() - 1)) for s in self.sums]
        self._candidate(avg[0], avg[1])
        if self.base is not None:  # the primal point the current multipliers ask for (one product)
            lag = box_norm_argmin(self.atmu, self.lower, self.upper, self.p)
            self._candidate(lag, _apply(self.base, "matvec", lag, self.sel))
        e_cur, e_avg = self._error(self.d, self.ad, self.mu, self.atmu), self._error(*avg)
        self.dual = torch.maximum(self.dual, self._dual_value(avg[2], avg[3]))
        use_avg = e_avg < e_cur
        err = torch.minimum(e_cur, e_avg)
        now = (err <= 0.2 * self.anchor_err) | (self.since >= every)
        if not bool(now.any()):
            return
        pick = [torch.where((now & use_avg).view(-1, *[1] * (x.dim() - 1)), a, x)
                for a, x in zip(avg, (self.d, self.ad, self.mu, self.atmu))]
        self.d, self.ad, self.mu, self.atmu = pick
        dd = _flat(self.d - self.anchor_d).norm(dim=1)
        dm = (self.mu - self.anchor_mu).norm(dim=1)
        ok = now & (dd > 1e-12) & (dm > 1e-12)
        self.omega = torch.where(ok, (self.omega * dm / dd.clamp_min(1e-12)).sqrt(), self.omega).clamp(1e-6, 1e6)
        w = now.view(-1, *[1] * (self.d.dim() - 1))
        self.anchor_d = torch.where(w, self.d, self.anchor_d)
        self.anchor_mu = torch.where(now[:, None], self.mu, self.anchor_mu)
        self.anchor_err = torch.where(now, err, self.anchor_err)
        self.since = torch.where(now, torch.zeros_like(self.since), self.since)
        for i, x in enumerate((self.d, self.ad, self.mu, self.atmu)):
            keep = ~now.view(-1, *[1] * (x.dim() - 1))
            self.sums[i] = torch.where(keep, self.sums[i], torch.zeros_like(x))

    def keep(self, mask: torch.Tensor) -> "_PDState":
        s = _PDState()
        for name, value in vars(self).items():
            if isinstance(value, list):
                value = [v[mask] for v in value]
            elif isinstance(value, torch.Tensor):
                value = value[mask]
            s.__dict__[name] = value
        return s

    def store(self, s: "_PDState", mask: torch.Tensor) -> None:
        rows = s.rows[mask]
        for name in ("best", "best_norm", "dual", "iterations", "pruned", "mu", "d"):
            getattr(self, name)[rows] = getattr(s, name)[mask]
