"""The region LP solver of lra-linf / lra-l1 (attacks/_lp.py) against HiGHS, and its closed forms
(prox operators, the dual function) against brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import tiny_cnn, tiny_inputs, tiny_mlp

from minnorm.attacks._lp import box_norm_argmin, box_norm_min, prox_l1_box, prox_linf_box, solve_lp
from minnorm.attacks._piecewise import PiecewiseAffine, RegionOperator
from minnorm.attacks._qp import DenseOperator, ScaledOperator, block_scales

highspy = pytest.importorskip("highspy")
F64 = torch.float64


def highs_min_norm(a: np.ndarray, b: np.ndarray, lower: np.ndarray, upper: np.ndarray, p: float,
                   g: np.ndarray | None = None) -> float:
    """min ||d||_p (+ <g, d>) s.t. a d <= b, lower <= d <= upper, as an LP for HiGHS: an epigraph
    variable t >= |d_j| for p = inf, one s_j >= |d_j| per coordinate for p = 1."""
    m, n = a.shape
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    inf = highspy.kHighsInf
    extra = 1 if p == math.inf else n
    cost = np.r_[np.zeros(n) if g is None else g, np.ones(extra)]
    h.addVars(n + extra, np.r_[lower, np.zeros(extra)], np.r_[upper, np.full(extra, inf)])
    h.changeColsCost(n + extra, np.arange(n + extra, dtype=np.int32), cost)
    link = -np.ones((n, 1)) if p == math.inf else -np.eye(n)
    rows = np.vstack([np.c_[a, np.zeros((m, extra))], np.c_[np.eye(n), link], np.c_[-np.eye(n), link]])
    rhs = np.r_[b, np.zeros(2 * n)]
    for r, v in zip(rows, rhs):
        idx = np.nonzero(r)[0].astype(np.int32)
        h.addRow(-inf, float(v), len(idx), idx, r[idx])
    h.run()
    assert h.getModelStatus() == highspy.HighsModelStatus.kOptimal
    return h.getInfo().objective_function_value


def random_instance(seed: int, n: int = 4, dim: int = 12, rows: int = 20):
    """Feasible LPs whose origin violates the first (decision) row, like a region's."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, rows, dim, generator=g, dtype=F64)
    lower = -0.5 * torch.rand(n, dim, generator=g, dtype=F64)
    upper = 0.5 * torch.rand(n, dim, generator=g, dtype=F64)
    inside = lower + (upper - lower) * torch.rand(n, dim, generator=g, dtype=F64)
    a[:, 0] = -torch.sign(inside) * torch.rand(n, dim, generator=g, dtype=F64)
    b = torch.einsum("nmd,nd->nm", a, inside) + 0.3 * torch.rand(n, rows, generator=g, dtype=F64)
    b[:, 0] = 0.5 * torch.einsum("nd,nd->n", a[:, 0], inside)  # < 0: the origin is infeasible
    return a, b, lower, upper


def reference(a, b, lower, upper, p) -> torch.Tensor:
    return torch.tensor([highs_min_norm(*(t[i].numpy() for t in (a, b, lower, upper)), p) for i in range(len(a))],
                        dtype=F64)


def check(a, b, lower, upper, sol, p, rtol=1e-4):
    ref = reference(a, b, lower, upper, p)
    assert bool(sol.feasible.all())
    torch.testing.assert_close(sol.norm, ref, rtol=rtol, atol=0)
    torch.testing.assert_close(sol.delta.flatten(1).norm(p=p, dim=1), sol.norm)
    assert bool((sol.dual <= ref * (1 + 1e-9)).all()), "weak duality"
    assert bool((sol.dual >= ref * (1 - rtol)).all()), "dual bound not tight"
    d = sol.delta.flatten(1)
    assert float((torch.einsum("nmd,nd->nm", a, d) - b).max()) <= 1e-7
    assert bool(((d >= lower - 1e-12) & (d <= upper + 1e-12)).all())


@pytest.mark.parametrize("p", [math.inf, 1])
def test_random_instances_match_highs(p):
    a, b, lower, upper = random_instance(0)
    sol = solve_lp(DenseOperator(a), b, lower, upper, p=p, steps=3000, tol=1e-8, line_tol=1e-9)
    check(a, b, lower, upper, sol, p)


@pytest.mark.parametrize("p", [math.inf, 1])
def test_badly_scaled_blocks_match_highs_after_preconditioning(p):
    a, b, lower, upper = random_instance(3)
    factor = torch.tensor([1.0] * 10 + [40.0] * 10, dtype=F64)
    a, b = a * factor[None, :, None], b * factor
    op = DenseOperator(a)
    scale = block_scales(op, [10, 10], lower, torch.Generator().manual_seed(0), rows=10)
    sol = solve_lp(ScaledOperator(op, scale), b * scale, lower, upper, p=p, steps=4000, tol=1e-8, line_tol=1e-9)
    check(a * scale[:, :, None], b * scale, lower, upper, sol, p)


def explicit_rows(op: RegionOperator, like: torch.Tensor) -> torch.Tensor:
    m = op.value.shape[1]
    return torch.stack([op.rmatvec(torch.eye(m, dtype=like.dtype)[i].expand(op.n, m)).flatten(1) for i in range(m)], 1)


@pytest.mark.parametrize("p", [math.inf, 1])
@pytest.mark.parametrize("net_name", ["mlp", "cnn-maxpool"])
def test_real_regions_match_highs(p, net_name):
    """Region instances of a ReLU MLP and a max-pool CNN: the representative of another input's
    region, the decision row towards the runner-up class, the [0, 1] box. The dual bound (a
    certificate) is within 1e-4 of HiGHS's optimum and never above it; the point returned violates
    no constraint by more than ``line_tol`` per unit row norm and its norm is within 1e-4 too."""
    model = tiny_mlp(dtype=F64, hidden=8) if net_name == "mlp" else tiny_cnn(dtype=F64)
    x = tiny_inputs(3, dtype=F64)
    y = tiny_inputs(3, seed=7, dtype=F64)
    line_tol = 1e-9 if net_name == "mlp" else 1e-5  # the degenerate max-pool LPs converge slowly in the primal
    with PiecewiseAffine(model) as net:
        logits, region = net.capture(y)
        label = model(x).argmax(1)
        other = logits.scatter(1, label[:, None], -torch.inf).argmax(1)
        eye = torch.eye(logits.shape[1], dtype=F64)
        op = RegionOperator(net, region, y, x, (eye[other] - eye[label])[:, None])
        b = op.offsets()
        a = explicit_rows(op, x)
        norm = a.norm(dim=2)
        scale = torch.where(norm > 0, 1 / norm.clamp_min(1e-30), torch.ones_like(norm))  # unit rows
        sol = solve_lp(ScaledOperator(op, scale), b * scale, -x, 1 - x, p=p, steps=5000, tol=2e-5, line_tol=line_tol)
    live = norm > 0  # max-pool argmax members give identically zero rows
    lower, upper = (-x).flatten(1), (1 - x).flatten(1)
    ref = torch.tensor([highs_min_norm(a[i][live[i]].numpy(), b[i][live[i]].numpy(), lower[i].numpy(),
                                       upper[i].numpy(), p) for i in range(len(a))], dtype=F64)
    assert bool(sol.feasible.all())
    torch.testing.assert_close(sol.norm, ref, rtol=1e-4, atol=0)
    assert bool((sol.dual <= ref * (1 + 1e-9)).all()) and bool((sol.dual >= ref * (1 - 1e-4)).all())
    viol = (torch.einsum("nmd,nd->nm", a, sol.delta.flatten(1)) - b) / norm.clamp_min(1e-12)
    assert float(viol.max()) <= line_tol * (1 + 1e-6)


@pytest.mark.parametrize("p", [math.inf, 1])
def test_dual_function_and_its_minimiser_match_highs(p):
    g = torch.Generator().manual_seed(5)
    grad = 0.6 * torch.randn(6, 9, generator=g, dtype=F64)
    lower, upper = -torch.rand(6, 9, generator=g, dtype=F64), torch.rand(6, 9, generator=g, dtype=F64)
    ours = box_norm_min(grad, lower, upper, p)
    empty = np.zeros((0, 9))
    ref = torch.tensor([highs_min_norm(empty, np.zeros(0), lower[i].numpy(), upper[i].numpy(), p, g=grad[i].numpy())
                        for i in range(6)], dtype=F64)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    d = box_norm_argmin(grad, lower, upper, p)
    torch.testing.assert_close(d.norm(p=p, dim=1) + (grad * d).sum(1), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("p", [math.inf, 1])
def test_prox_operators_beat_a_dense_search(p):
    """The prox point's objective is at most that of every point of a dense sample of the box
    (and of the exact per-level solution over a fine grid of levels for p = inf)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 7, generator=g, dtype=F64)
    lower, upper = -torch.rand(5, 7, generator=g, dtype=F64), torch.rand(5, 7, generator=g, dtype=F64)
    tau = torch.rand(5, generator=g, dtype=F64) + 0.05
    prox = prox_linf_box if p == math.inf else prox_l1_box
    d = prox(x, tau, lower, upper)
    assert bool(((d >= lower) & (d <= upper)).all())

    def cost(z):  # z [5, k, 7]
        return tau[:, None] * z.norm(p=p, dim=2) + 0.5 * (z - x[:, None]).pow(2).sum(2)

    ours = cost(d[:, None])[:, 0]
    u = torch.rand(5, 20000, 7, generator=g, dtype=F64)
    sample = lower[:, None] + (upper - lower)[:, None] * u
    if p == math.inf:  # the exact best point at each of many levels t
        t = torch.linspace(0, 1, 20001, dtype=F64).view(1, -1, 1)
        xc = torch.minimum(torch.maximum(x, lower), upper)[:, None]
        sample = torch.cat([sample, torch.minimum(torch.maximum(xc, -t), t)], 1)
    assert bool((ours <= cost(sample).amin(1) + 1e-12).all())


def test_early_stop_on_dual_bound():
    a, b, lower, upper = random_instance(4)
    full = solve_lp(DenseOperator(a), b, lower, upper, p=math.inf, steps=4000, tol=1e-6)
    stopped = solve_lp(DenseOperator(a), b, lower, upper, p=math.inf, steps=4000, tol=1e-8, bound=0.5 * full.norm)
    assert bool(stopped.pruned.all()) and not bool(stopped.feasible.any())
    assert bool((stopped.iterations < full.iterations).all())
    assert bool((stopped.dual >= 0.5 * full.norm).all())
    kept = solve_lp(DenseOperator(a), b, lower, upper, p=math.inf, steps=4000, tol=1e-8, bound=2 * full.norm)
    assert not bool(kept.pruned.any())
