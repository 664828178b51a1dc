"""Solve a :class:`~minnorm.certify.milp.Problem` with HiGHS (MILP) or SCIP (MILP and MIQP).

Both return a :class:`Solution`: the best point found (or ``None``), its objective, the
solver's proven lower bound on the optimum, and a status: ``optimal`` (gap closed to the
tolerances below), ``infeasible`` (nothing below the cutoff, so the optimum is at least the
cutoff), or ``limit`` (time ran out: the bracket ``[bound, objective]``).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from .milp import Problem

__all__ = ["Solution", "solve", "solve_highs", "solve_qp_bnb", "solve_scip"]

REL_GAP = 1e-7
ABS_GAP = 1e-9
QUAD_REL_GAP = 1e-4  # on the squared norm, i.e. 5e-5 on the norm: SCIP's outer approximation of the
# 784-term quadratic stalls near 1e-5 (measured), and "exact" only asks for 1e-4 on the norm
FEAS_TOL = 1e-9  # solver witnesses then flip the model without a visible push outward


@dataclass
class Solution:
    status: str
    x: np.ndarray | None
    objective: float
    bound: float
    seconds: float


def solve(problem: Problem, time_limit: float, solver: str = "auto") -> Solution:
    """``solver``: ``highs``, ``scip`` or ``auto`` (SCIP: on the bound-tightened programs of this
    package it proves optimality 10-50x sooner than HiGHS, whose root cut loop dominates; see
    docs/certify.md)."""
    if solver == "auto":
        solver = "scip"
    if solver == "highs":
        if problem.quadratic:
            raise ValueError("HiGHS does not solve mixed-integer quadratic programs; use solver='scip' for L2")
        return solve_highs(problem, time_limit)
    if solver == "scip":
        return solve_scip(problem, time_limit)
    if solver == "qp-bnb":
        if not problem.quadratic:
            raise ValueError("solver='qp-bnb' is the L2 branch and bound; use highs or scip for Linf/L1")
        return solve_qp_bnb(problem, time_limit)
    raise ValueError(f"unknown solver {solver!r}; choose highs, scip, qp-bnb or auto")


def _finite(v: np.ndarray, inf: float) -> np.ndarray:
    return np.clip(v, -inf, inf)


def _new_highs():
    """A HiGHS instance; its constructor prints a banner on the C-level stdout, silenced here."""
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            return highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _highs(problem: Problem, time_limit: float, relax: bool = False):
    import highspy

    h = _new_highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("time_limit", max(float(time_limit), 0.01))
    h.setOptionValue("mip_rel_gap", REL_GAP)
    h.setOptionValue("mip_abs_gap", ABS_GAP)
    h.setOptionValue("mip_feasibility_tolerance", FEAS_TOL)
    h.setOptionValue("primal_feasibility_tolerance", FEAS_TOL)
    inf = highspy.kHighsInf
    lp = highspy.HighsLp()
    a = problem.A.tocsc()
    lp.num_col_, lp.num_row_ = a.shape[1], a.shape[0]
    lp.col_cost_ = problem.cost
    lp.col_lower_, lp.col_upper_ = _finite(problem.lb, inf), _finite(problem.ub, inf)
    lp.row_lower_, lp.row_upper_ = _finite(problem.row_lo, inf), _finite(problem.row_hi, inf)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = a.indptr
    lp.a_matrix_.index_ = a.indices
    lp.a_matrix_.value_ = a.data
    if not relax:
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in problem.integer]
    h.passModel(lp)
    return h


def lp_bounds(problem: Problem, rows, consts: np.ndarray, deadline: float):
    """Min and max of each affine expression ``rows[k] . v + consts[k]`` over the LP relaxation
    of ``problem`` (warm-started HiGHS dual simplex, costs changed in place); ``None`` if the
    relaxation is infeasible. Expressions not reached before ``deadline`` get -inf/+inf."""
    import highspy

    h = _highs(problem, max(deadline - time.perf_counter(), 0.01), relax=True)
    n = problem.A.shape[1]
    k = rows.shape[0]
    lo, hi = np.full(k, -np.inf), np.full(k, np.inf)
    idx = np.arange(n, dtype=np.int32)
    rows = rows.tocsr()
    for r in range(k):
        for sign, out in ((1.0, lo), (-1.0, hi)):
            if time.perf_counter() > deadline:
                return lo, hi
            h.changeColsCost(n, idx, sign * rows[r].toarray().ravel())
            h.setOptionValue("time_limit", max(deadline - time.perf_counter(), 0.01))
            h.run()
            status = h.getModelStatus()
            if status == highspy.HighsModelStatus.kInfeasible:
                return None
            if status == highspy.HighsModelStatus.kOptimal:
                # the dual objective of an optimal LP is a valid bound; pad by the tolerance
                val = sign * h.getInfo().objective_function_value + consts[r]
                out[r] = val - 1e-7 * (1 + abs(val)) if sign > 0 else val + 1e-7 * (1 + abs(val))
    return lo, hi


def solve_highs(problem: Problem, time_limit: float) -> Solution:
    """HiGHS's branch and cut (Huangfu and Hall 2018), single-threaded, silent."""
    import highspy

    start = time.perf_counter()
    h = _highs(problem, time_limit)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    seconds = time.perf_counter() - start
    ms = highspy.HighsModelStatus
    if status == ms.kInfeasible:
        return Solution("infeasible", None, math.inf, math.inf, seconds)
    has = info.primal_solution_status == 2  # kSolutionStatusFeasible
    x = np.asarray(h.getSolution().col_value) if has else None
    obj = float(info.objective_function_value) if has else math.inf
    bound = float(info.mip_dual_bound) if problem.binaries else obj
    if status == ms.kOptimal:
        return Solution("optimal", x, obj, obj if not problem.binaries else min(bound, obj), seconds)
    return Solution("limit", x, obj, bound if math.isfinite(bound) else 0.0, seconds)


# Cut separation costs more than it saves on these small, bound-tightened programs (measured in
# docs/certify.md: 0.47 s against 1.5 s with SCIP's default cuts on an mlp-tiny sample).
SCIP_SETTINGS: dict[str, str] = {"separating": "off"}


def solve_scip(problem: Problem, time_limit: float) -> Solution:
    """SCIP (Bestuzheva et al. 2021) through pyscipopt; the L2 objective ``sum (x - x0)^2``
    becomes an epigraph variable ``t >= sum (x_i - x0_i)^2`` (a convex quadratic constraint)."""
    from pyscipopt import Model, quicksum

    start = time.perf_counter()
    m = Model()
    m.hideOutput()
    m.setParam("limits/time", max(float(time_limit), 0.01))
    m.setParam("limits/gap", QUAD_REL_GAP if problem.quadratic else REL_GAP)
    m.setParam("limits/absgap", ABS_GAP)
    m.setParam("parallel/maxnthreads", 1)
    m.setParam("numerics/feastol", 1e-7 if problem.quadratic else FEAS_TOL)  # t is scaled to about 1
    from pyscipopt import SCIP_PARAMSETTING
    for what, level in ({} if problem.quadratic else SCIP_SETTINGS).items():  # L2 needs its outer-approximation cuts
        getattr(m, f"set{what.capitalize()}")(getattr(SCIP_PARAMSETTING, level.upper()))
    v = [m.addVar(lb=None if math.isinf(lo) else lo, ub=None if math.isinf(hi) else hi,
                  vtype="B" if integer and lo >= 0 and hi <= 1 else ("I" if integer else "C"))
         for lo, hi, integer in zip(problem.lb, problem.ub, problem.integer)]
    a = problem.A.tocsr()
    for r in range(a.shape[0]):
        s, e = a.indptr[r], a.indptr[r + 1]
        expr = quicksum(float(c) * v[j] for j, c in zip(a.indices[s:e], a.data[s:e]))
        for cons in _rows(expr, problem.row_lo[r], problem.row_hi[r]):
            m.addCons(cons)
    objective = quicksum(float(c) * v[j] for j, c in enumerate(problem.cost) if c)
    scale = 1.0
    if problem.quadratic:
        # scaled so that t is about 1 at the cutoff: SCIP's feasibility tolerance is absolute
        scale = 1.0 / max(problem.info.get("cutoff", 1.0), 1e-12) ** 2
        # separable epigraph: one univariate t_i >= (x_i - x0_i)^2 per coordinate; SCIP's tangent
        # cuts close these far sooner than one constraint over all coordinates (docs/certify.md)
        ts = []
        for j, c in zip(problem.x, problem.x0):
            t = m.addVar(lb=0.0, ub=None)
            m.addCons(scale * (v[j] - float(c)) * (v[j] - float(c)) <= t)
            ts.append(t)
        objective = quicksum(ts)
    m.setObjective(objective, "minimize")
    m.optimize()
    status = m.getStatus()
    seconds = time.perf_counter() - start
    if status == "infeasible":
        return Solution("infeasible", None, math.inf, math.inf, seconds)
    sol = m.getBestSol() if m.getNSols() else None
    x = np.array([m.getSolVal(sol, vi) for vi in v]) if sol is not None else None
    obj = float(m.getSolObjVal(sol)) / scale if sol is not None else math.inf
    bound = float(m.getDualbound()) / scale
    if status in ("optimal", "gaplimit"):  # gaplimit: closed to limits/gap, our definition of optimal
        return Solution("optimal", x, obj, min(bound, obj), seconds)
    return Solution("limit", x, obj, bound if math.isfinite(bound) else 0.0, seconds)


def _rows(expr, lo: float, hi: float) -> list:
    if lo == hi:
        return [expr == hi]
    out = []
    if not math.isinf(lo):
        out.append(expr >= lo)
    if not math.isinf(hi):
        out.append(expr <= hi)
    return out


def solve_qp_bnb(problem: Problem, time_limit: float) -> Solution:
    """The L2 program by branch and bound over its binaries (ReLU phases, max-pool choices) whose
    nodes are convex QPs: the binaries fixed so far as bounds, the rest relaxed to [0, 1] (the
    big-M triangle), solved by HiGHS's QP solver (Huangfu and Hall 2018). Depth first, branching
    on the most fractional binary, pruning nodes whose QP is not below the incumbent (the
    attack's cutoff at the start) by the relative gap ``QUAD_REL_GAP``. The objective is the
    squared norm, scaled by ``1 / cutoff^2`` as in :func:`solve_scip`."""
    import highspy

    start = time.perf_counter()
    h = _highs(problem, time_limit, relax=True)
    scale = 1.0 / max(problem.info.get("cutoff", 1.0), 1e-12) ** 2
    ncol = problem.A.shape[1]
    diag = np.zeros(ncol)
    diag[problem.x] = 2 * scale
    cols = np.arange(ncol, dtype=np.int32)
    h.passHessian(ncol, ncol, highspy.HessianFormat.kTriangular, np.arange(ncol + 1, dtype=np.int32), cols, diag)
    cost = np.zeros(ncol)
    cost[problem.x] = -2 * scale * problem.x0
    h.changeColsCost(ncol, cols, cost)
    offset = scale * float(problem.x0 @ problem.x0)
    h.setOptionValue("qp_nullspace_limit", ncol + 1)  # the default (4000) stops wide QPs with an error
    ints = np.flatnonzero(problem.integer).astype(np.int32)
    lb0, ub0 = problem.lb[ints].copy(), problem.ub[ints].copy()
    incumbent, best_x, floor = 1.0, None, math.inf  # scaled squared cutoff; the bound of pruned-by-gap nodes
    stack = [(lb0, ub0, 0.0)]
    while stack:
        if time.perf_counter() - start > time_limit:
            floor = min([floor] + [b for _, _, b in stack])
            break
        lb, ub, parent = stack.pop()
        try:
            val, x = _qp_node(h, ints, lb, ub, offset, max(time_limit - (time.perf_counter() - start), 0.01))
        except RuntimeError:  # unresolved (time limit, solver error): the node keeps its parent's bound
            stack.append((lb, ub, parent))
            floor = min([floor] + [b for _, _, b in stack])
            break
        if x is None or val >= incumbent:
            continue
        if val * (1 + QUAD_REL_GAP) >= incumbent:
            floor = min(floor, val)
            continue
        frac = np.abs(x[ints] - np.round(x[ints]))
        k = int(frac.argmax())
        if frac[k] <= 1e-6:
            incumbent, best_x = val, x
            continue
        for v in ((1.0, 0.0) if x[ints[k]] < 0.5 else (0.0, 1.0)):  # the nearer side is explored first
            lo2, up2 = lb.copy(), ub.copy()
            lo2[k] = up2[k] = v
            stack.append((lo2, up2, val))
    seconds = time.perf_counter() - start
    bound = min(floor, incumbent)
    if best_x is None:
        done = not stack and math.isinf(floor)
        return Solution("infeasible" if done else "limit", None, math.inf, math.inf if done else bound / scale, seconds)
    status = "optimal" if not stack else "limit"
    return Solution(status, best_x, incumbent / scale, min(bound, incumbent) / scale, seconds)


def _qp_node(h, ints, lb, ub, offset, time_limit):
    """One node's QP: ``(objective padded down by the tolerance, solution)`` or ``(inf, None)``."""
    import highspy

    h.changeColsBounds(len(ints), ints, lb, ub)
    h.setOptionValue("time_limit", time_limit)
    h.run()
    status = h.getModelStatus()
    if status not in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kInfeasible):
        h.clearSolver()  # HiGHS's QP solver sometimes fails from a warm start: once more, cold
        h.run()
        status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return math.inf, None
    if status != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(f"HiGHS QP: {h.modelStatusToString(status)}")
    val = h.getInfo().objective_function_value + offset
    return val - 1e-7 * (1 + abs(val)), np.asarray(h.getSolution().col_value)
