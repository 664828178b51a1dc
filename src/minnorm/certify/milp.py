"""The minimal adversarial perturbation of a piecewise-linear network as a mixed-integer program.

For one sample ``x0`` with label ``c`` and one target ``j``:

    minimise ||x - x0||_p   s.t.  lo <= x <= hi,  f_j(x) >= f_c(x),  f the network,

with each unstable ReLU ``y = max(z, a z)`` (pre-activation bounds ``l < 0 < u``) encoded by one
binary ``delta`` and the big-M constraints of Tjeng, Xiao and Tedrake (MIPVerify, ICLR 2019,
eq. 5, generalised to a leaky slope ``a``):

    y >= z,  y >= a z,  y <= z - (1 - a) l (1 - delta),  y <= a z + (1 - a) u delta,

stable ReLUs replaced by ``z`` or ``a z`` (no variable at all), and each max-pool by one binary
per window member that can be the maximum (MIPVerify eq. 6). Affine layers are folded into the
expressions of the next variables, so the program only has the input, the unstable neurons and
the norm's auxiliary variables. The Linf objective is ``t`` with ``|x_i - x0_i| <= t``; L1 sums
``s_i >= |x_i - x0_i|``; L2 keeps ``sum (x_i - x0_i)^2`` as a quadratic objective (for SCIP).
Every variable is bounded by the ball of the cutoff radius, which makes the bounds from
``bounds.propagate`` at that radius valid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from .bounds import _windows
from .graph import Graph

__all__ = ["Problem", "encode"]


@dataclass
class Problem:
    """``min cost.v (+ sum (v[x] - x0)^2 if quadratic)`` s.t. ``row_lo <= A v <= row_hi``,
    ``lb <= v <= ub``, ``v[integer]`` integral. ``x`` indexes the input variables."""

    cost: np.ndarray
    A: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integer: np.ndarray
    x: np.ndarray
    x0: np.ndarray
    quadratic: bool = False
    binaries: int = 0
    info: dict = field(default_factory=dict)


class _Builder:
    def __init__(self):
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.int: list[np.ndarray] = []
        self.nv = 0
        self.rows: list[tuple[sp.csr_matrix, np.ndarray, np.ndarray]] = []

    def add_vars(self, lb, ub, integer: bool = False) -> np.ndarray:
        lb, ub = np.asarray(lb, float).ravel(), np.asarray(ub, float).ravel()
        idx = np.arange(self.nv, self.nv + lb.size)
        self.nv += lb.size
        self.lb.append(lb)
        self.ub.append(ub)
        self.int.append(np.full(lb.size, integer))
        return idx

    def add_rows(self, m: sp.spmatrix, lo, hi) -> None:
        m = sp.csr_matrix(m)
        n = m.shape[0]
        self.rows.append((m, np.broadcast_to(np.asarray(lo, float), n), np.broadcast_to(np.asarray(hi, float), n)))

    def select(self, idx: np.ndarray, coef=1.0) -> sp.csr_matrix:
        """Sparse rows picking variables ``idx`` (times ``coef``)."""
        coef = np.broadcast_to(np.asarray(coef, float), idx.size)
        return sp.csr_matrix((coef, (np.arange(idx.size), idx)), shape=(idx.size, self.nv))

    def problem(self, cost: np.ndarray, x: np.ndarray, x0: np.ndarray, quadratic: bool) -> Problem:
        mats = [_widen(m, self.nv) for m, _, _ in self.rows]
        a = sp.vstack(mats).tocsr() if mats else sp.csr_matrix((0, self.nv))
        lo = np.concatenate([r[1] for r in self.rows]) if self.rows else np.zeros(0)
        hi = np.concatenate([r[2] for r in self.rows]) if self.rows else np.zeros(0)
        integer = np.concatenate(self.int)
        return Problem(cost, a, lo, hi, np.concatenate(self.lb), np.concatenate(self.ub), integer, x, x0, quadratic,
                       int(integer.sum()))


def _widen(m: sp.csr_matrix, n: int) -> sp.csr_matrix:
    m = m.tocsr(copy=True)
    m.resize((m.shape[0], n))
    return m


@dataclass
class _Expr:
    """Affine expressions ``M v + c`` of a node's elements (flattened, ``M`` sparse)."""

    m: sp.csr_matrix
    c: np.ndarray

    def widen(self, n: int) -> "_Expr":
        return _Expr(_widen(self.m, n), self.c)


def _jacobian(op, shape_in: tuple[int, ...]) -> tuple[sp.csr_matrix, np.ndarray]:
    """The linear part of an affine op as a sparse ``[N_out, N_in]`` matrix, and its bias."""
    with torch.no_grad():
        zero = torch.zeros(1, *shape_in, dtype=torch.float64)
        bias = op.fn(zero).reshape(-1).numpy()
        mod = op.module
        if isinstance(mod, torch.nn.Linear) and len(shape_in) == 1:
            return sp.csr_matrix(mod.weight.detach().double().numpy()), bias
        n_in = int(np.prod(shape_in))
        blocks = []
        for s in range(0, n_in, 1024):
            e = torch.zeros(min(1024, n_in - s), n_in, dtype=torch.float64)
            e[torch.arange(e.shape[0]), torch.arange(s, s + e.shape[0])] = 1
            cols = (op.fn(e.view(-1, *shape_in)) - op.fn(zero)).reshape(e.shape[0], -1)
            blocks.append(sp.csr_matrix(cols.numpy()))
    return sp.vstack(blocks).T.tocsr(), bias


def encode(graph: Graph, x0: torch.Tensor, label: int, target: int, p: float,
           neurons: dict[int, tuple[torch.Tensor, torch.Tensor]], cutoff: float,
           box: tuple[float, float]) -> Problem:
    """The MILP (or MIQP for ``p = 2``) of the minimal perturbation of ``x0`` (one sample,
    ``[1, ...]``) to class ``target``, restricted to norms ``<= cutoff``. ``neurons`` holds the
    pre-activation bounds of every ReLU/max-pool op valid on that ball (``bounds.propagate``)."""
    b = _Builder()
    x0n = x0.reshape(-1).double().numpy()
    x = b.add_vars(np.maximum(box[0], x0n - cutoff), np.minimum(box[1], x0n + cutoff))
    values = graph.forward(x0.double())
    exprs: list[_Expr | None] = []
    pre: dict[int, _Expr] = {}
    for i, op in enumerate(graph.ops):
        if op.kind == "input":
            exprs.append(_Expr(b.select(x), np.zeros(x.size)))
            continue
        e = exprs[op.inputs[0]].widen(b.nv)
        if op.kind == "add":
            g = exprs[op.inputs[1]].widen(b.nv)
            exprs.append(_Expr((e.m + g.m).tocsr(), e.c + g.c))
        elif op.kind == "affine":
            jac, bias = _jacobian(op, tuple(values[op.inputs[0]].shape[1:]))
            exprs.append(_Expr((jac @ e.m).tocsr(), jac @ e.c + bias))
        elif op.kind == "relu":
            pre[i] = e
            l, u = (t.reshape(-1).double().numpy() for t in neurons[i])
            exprs.append(_relu(b, e, l, u, op.slope))
        else:
            pre[i] = e
            l, u = (t[0].double() for t in neurons[i])
            exprs.append(_maxpool(b, e, op, l, u))
    logits = exprs[-1].widen(b.nv)
    diff = logits.m[target] - logits.m[label]
    b.add_rows(diff, logits.c[label] - logits.c[target], np.inf)
    prob = _objective(b, x, x0n, p, cutoff)
    prob.info["pre"] = pre
    prob.info["cutoff"] = cutoff
    return prob


def _objective(b: _Builder, x: np.ndarray, x0n: np.ndarray, p: float, cutoff: float) -> Problem:
    n = x.size
    if math.isinf(p):
        t = b.add_vars([0.0], [cutoff])
        ones = sp.csr_matrix(np.ones((n, 1)))
        tt = sp.hstack([sp.csr_matrix((n, t[0])), ones]).tocsr()
        b.add_rows(b.select(x) - _widen(tt, b.nv), -np.inf, x0n)
        b.add_rows(b.select(x) + _widen(tt, b.nv), x0n, np.inf)
        cost = np.zeros(b.nv)
        cost[t] = 1
        return b.problem(cost, x, x0n, False)
    if p == 1:
        s = b.add_vars(np.zeros(n), np.full(n, cutoff))
        b.add_rows(b.select(x) - b.select(s), -np.inf, x0n)
        b.add_rows(b.select(x) + b.select(s), x0n, np.inf)
        b.add_rows(sp.csr_matrix(np.ones((1, n))) @ b.select(s), -np.inf, cutoff)
        cost = np.zeros(b.nv)
        cost[s] = 1
        return b.problem(cost, x, x0n, False)
    if p == 2:
        return b.problem(np.zeros(b.nv), x, x0n, True)
    raise ValueError(f"exact minimal perturbations support the L1, L2 and Linf norms, got p={p}")


def _relu(b: _Builder, e: _Expr, l: np.ndarray, u: np.ndarray, a: float) -> _Expr:
    """MIPVerify's big-M encoding of ``max(z, a z)`` for the unstable neurons (eq. 5)."""
    active, inactive = l >= 0, u <= 0
    scale = np.where(active, 1.0, a)
    unstable = np.flatnonzero(~active & ~inactive)
    m = sp.diags(scale) @ e.m
    c = scale * e.c
    if unstable.size:
        k = unstable.size
        lu, uu = l[unstable], u[unstable]
        y = b.add_vars(a * lu, uu)
        d = b.add_vars(np.zeros(k), np.ones(k), integer=True)
        z = e.m[unstable]
        zc = e.c[unstable]
        z = _widen(z, b.nv)
        sy, sd = b.select(y), b.select(d)
        b.add_rows(sy - z, zc, np.inf)                                             # y >= z
        b.add_rows(sy - a * z, a * zc, np.inf)                                     # y >= a z
        b.add_rows(sy - z - sp.diags((1 - a) * lu) @ sd, -np.inf, zc - (1 - a) * lu)  # y <= z - (1-a) l (1-d)
        b.add_rows(sy - a * z - sp.diags((1 - a) * uu) @ sd, -np.inf, a * zc)       # y <= a z + (1-a) u d
        m = _widen(m, b.nv).tolil()
        m[unstable] = sy
        m = m.tocsr()
        c = c.copy()
        c[unstable] = 0
    return _Expr(m.tocsr(), c)


def _maxpool(b: _Builder, e: _Expr, op, l: torch.Tensor, u: torch.Tensor) -> _Expr:
    """A max-pool: members that cannot be the maximum are dropped; a window with one member
    left is that member, otherwise one binary per member selects it (MIPVerify eq. 6)."""
    mod = op.module
    pos = torch.arange(1, l.numel() + 1, dtype=torch.float64).view(1, *l.shape)
    members = _windows(pos, mod, 0.0)[0].long() - 1          # [C, k, L], -1 marks padding
    c_, k, nwin = members.shape
    rows, consts = [], []
    lf, uf = l.reshape(-1).numpy(), u.reshape(-1).numpy()
    for ch in range(c_):
        for w in range(nwin):
            idx = [int(v) for v in members[ch, :, w] if v >= 0]
            top = max(lf[i] for i in idx)
            cand = [i for i in idx if uf[i] >= top]
            if len(cand) == 1:
                rows.append(_widen(e.m[cand[0]], b.nv))
                consts.append(e.c[cand[0]])
                continue
            umax = max(uf[i] for i in cand)
            y = b.add_vars([top], [umax])
            d = b.add_vars(np.zeros(len(cand)), np.ones(len(cand)), integer=True)
            z = _widen(e.m[cand], b.nv)
            zc = e.c[cand]
            sy = b.select(np.repeat(y, len(cand)))  # the window's output, once per candidate row
            gap = np.array([umax - lf[i] for i in cand])
            b.add_rows(sy - z, zc, np.inf)                                           # y >= z_i
            b.add_rows(sy - z + sp.diags(gap) @ b.select(d), -np.inf, zc + gap)      # y <= z_i + (umax - l_i)(1 - d_i)
            b.add_rows(sp.csr_matrix(np.ones((1, len(cand)))) @ b.select(d), 1.0, 1.0)
            rows.append(b.select(y))
            consts.append(0.0)
    m = sp.vstack([_widen(r, b.nv) for r in rows]).tocsr()
    return _Expr(m, np.asarray(consts, float))


def tighten(graph: Graph, x0: torch.Tensor, label: int, target: int, p: float,
            neurons: dict[int, tuple[torch.Tensor, torch.Tensor]], cutoff: float, box: tuple[float, float],
            deadline: float) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Optimisation-based bound tightening: each unstable ReLU's pre-activation is minimised and
    maximised over the LP relaxation of the whole problem for this target (every earlier and
    later ReLU relaxed to its triangle, the margin constraint ``f_target >= f_label`` and the ball
    included), layer by layer, re-encoding with the tightened bounds before the next layer
    (Tjeng et al. 2019, Sec. 4.1, with the target's constraint added). The bounds only need to
    hold on this target's feasible set, so they may be much tighter than bound propagation's.
    L2 balls enter the LP through their Linf box only. Layers that are affine in the input are
    skipped (their propagated bounds are exact). Stops at ``deadline`` (perf_counter)."""
    import time

    from .solvers import lp_bounds
    neurons = {k: (lo.clone(), up.clone()) for k, (lo, up) in neurons.items()}
    static: list[bool] = []  # affine in the input: bound propagation's bounds are already exact there
    for op in graph.ops:
        static.append(op.kind == "input" or (op.kind in ("affine", "add") and all(static[j] for j in op.inputs)))
    for i, op in enumerate(graph.ops):
        if op.kind != "relu" or static[op.inputs[0]] or time.perf_counter() > deadline:
            continue
        lo, up = neurons[i]
        flat_l, flat_u = lo.view(-1), up.view(-1)
        unstable = ((flat_l < 0) & (flat_u > 0)).nonzero().flatten().tolist()
        if not unstable:
            continue
        prob = encode(graph, x0, label, target, p, neurons, cutoff, box)
        e = prob.info["pre"][i].widen(prob.A.shape[1])
        found = lp_bounds(prob, e.m[unstable], e.c[unstable], deadline)
        if found is None:  # the relaxation is infeasible: no input reaches this target
            return None
        new_l, new_u = found
        flat_l[unstable] = torch.maximum(flat_l[unstable], torch.as_tensor(new_l, dtype=flat_l.dtype))
        flat_u[unstable] = torch.minimum(flat_u[unstable], torch.as_tensor(new_u, dtype=flat_u.dtype))
    return neurons
