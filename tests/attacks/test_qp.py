"""The dual QP solver (eq. 15-19) against scipy's SLSQP on random and real region instances."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import tiny_inputs, tiny_mlp
from scipy.optimize import Bounds, LinearConstraint, minimize

from minnorm.attacks._piecewise import PiecewiseAffine, RegionOperator
from minnorm.attacks._qp import DenseOperator, ScaledOperator, block_scales, ray_search, solve_qp


def reference(a: np.ndarray, b: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[float, np.ndarray]:
    """min 1/2 ||d||^2 s.t. A d <= b, lower <= d <= upper, by SLSQP (trust-constr where SLSQP's
    line search gives up on a nearly degenerate instance)."""
    res = minimize(lambda d: 0.5 * d @ d, np.zeros(a.shape[1]), jac=lambda d: d, method="SLSQP",
                   bounds=list(zip(lower, upper)),
                   constraints=[{"type": "ineq", "fun": lambda d: b - a @ d, "jac": lambda d: -a}],
                   options={"ftol": 1e-12, "maxiter": 2000})
    if not res.success:
        res = minimize(lambda d: 0.5 * d @ d, np.zeros(a.shape[1]), jac=lambda d: d, hess=lambda d: np.eye(len(d)),
                       method="trust-constr", bounds=Bounds(lower, upper),
                       constraints=[LinearConstraint(a, -np.inf, b)], options={"gtol": 1e-12, "xtol": 1e-14,
                                                                              "maxiter": 5000})
        assert float((a @ res.x - b).max()) <= 1e-8
    assert res.success, res.message
    return float(res.fun), res.x


def random_instance(seed: int, n: int = 4, m: int = 12, d: int = 8):
    """Feasible by construction (a point z0 inside the box with slack), the origin mostly infeasible."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, m, d, generator=g, dtype=torch.float64)
    lower = -torch.rand(n, d, generator=g, dtype=torch.float64) - 0.5
    upper = torch.rand(n, d, generator=g, dtype=torch.float64) + 0.5
    z0 = torch.minimum(torch.maximum(0.5 * torch.randn(n, d, generator=g, dtype=torch.float64), 0.9 * lower),
                       0.9 * upper)
    b = torch.einsum("nmd,nd->nm", a, z0) + 0.3 * torch.rand(n, m, generator=g, dtype=torch.float64)
    return a, b, lower, upper


def check_against_reference(a, b, lower, upper, sol, rel=1e-3, feas=1e-5):
    for i in range(a.shape[0]):
        best, _ = reference(a[i].numpy(), b[i].numpy(), lower[i].numpy(), upper[i].numpy())
        d = sol.delta[i].flatten().numpy()
        assert bool(sol.feasible[i])
        assert abs(0.5 * d @ d - best) <= rel * best, (0.5 * d @ d, best)
        # violations as distances (per unit row norm), so that row scaling does not change them
        norms = np.linalg.norm(a[i].numpy(), axis=1)
        assert float(((a[i].numpy() @ d - b[i].numpy()) / norms).max()) <= feas
        assert (d >= lower[i].flatten().numpy() - 1e-12).all() and (d <= upper[i].flatten().numpy() + 1e-12).all()
        # the dual value is a lower bound on the optimum (weak duality)
        assert float(sol.dual[i]) <= best * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_instances_match_scipy(seed):
    a, b, lower, upper = random_instance(seed)
    sol = solve_qp(DenseOperator(a), b, lower, upper, steps=5000, tol=1e-8, line_tol=1e-7)
    check_against_reference(a, b, lower, upper, sol)


def test_preconditioned_instances_match_scipy():
    a, b, lower, upper = random_instance(3)
    factor = torch.tensor([1.0] * 6 + [50.0] * 6, dtype=a.dtype)  # the same polytope, badly scaled blocks
    a, b = a * factor[None, :, None], b * factor
    op = DenseOperator(a)
    scale = block_scales(op, [6, 6], lower, torch.Generator().manual_seed(0), rows=6)
    sol = solve_qp(ScaledOperator(op, scale), b * scale, lower, upper, steps=5000, tol=1e-8, line_tol=1e-7)
    check_against_reference(a, b, lower, upper, sol)


def explicit_rows(op: RegionOperator, like: torch.Tensor) -> torch.Tensor:
    """The dense constraint matrix of a region, row by row from A^T e_i (test only)."""
    m = op.value.shape[1]
    rows = [op.rmatvec(torch.eye(m, dtype=like.dtype)[i].expand(op.n, m)).flatten(1) for i in range(m)]
    return torch.stack(rows, 1)


@contextlib.contextmanager
def real_region():
    """The tiny MLP's region at another input's pattern, for three inputs: (x, op, b) inside the capture."""
    model = tiny_mlp(dtype=torch.float64, hidden=8)
    x = tiny_inputs(3, dtype=torch.float64)
    y = tiny_inputs(3, seed=7, dtype=torch.float64)  # representatives of other regions
    with PiecewiseAffine(model) as net:
        logits, region = net.capture(y)
        label = model(x).argmax(1)
        other = logits.scatter(1, label[:, None], -torch.inf).argmax(1)
        eye = torch.eye(logits.shape[1], dtype=x.dtype)
        op = RegionOperator(net, region, y, x, (eye[other] - eye[label])[:, None])
        yield x, op, op.offsets()


def test_real_region_matches_scipy():
    with real_region() as (x, op, b):
        a = explicit_rows(op, x)
        # the explicit matrix agrees with the products
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
        torch.testing.assert_close(op.matvec(v), torch.einsum("nmd,nd->nm", a, v.flatten(1)))
        scale = block_scales(op, op.sizes, x, torch.Generator().manual_seed(0))
        sol = solve_qp(ScaledOperator(op, scale), b * scale, -x, 1 - x, steps=5000, tol=1e-9, line_tol=1e-7)
    lower, upper = (-x).flatten(1), (1 - x).flatten(1)
    scaled_a, scaled_b = a * scale[:, :, None], b * scale
    check_against_reference(scaled_a, scaled_b, lower, upper, sol)
    # and in the unscaled constraints, which is what the attack needs
    viol = (torch.einsum("nmd,nd->nm", a, sol.delta.flatten(1)) - b) / a.norm(dim=2).clamp_min(1e-12)
    assert float(viol.max()) <= 1e-5


def test_early_stop_on_dual_bound():
    a, b, lower, upper = random_instance(4)
    full = solve_qp(DenseOperator(a), b, lower, upper, steps=5000, tol=1e-9)
    optimum = (2 * full.dual).sqrt()
    stopped = solve_qp(DenseOperator(a), b, lower, upper, steps=5000, tol=1e-9, bound=0.5 * optimum)
    assert bool(stopped.pruned.all()) and not bool(stopped.feasible.any())
    assert bool((stopped.iterations < full.iterations).all())
    assert bool(((2 * stopped.dual).sqrt() >= 0.5 * optimum).all())


def test_ray_search_is_exact():
    # one constraint d_0 >= 1 (-d_0 <= -1) and a box: from d = (0.5, 0.5) the ray needs a = 2
    d = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    a = torch.tensor([[[-1.0, 0.0]]], dtype=torch.float64)
    b = torch.tensor([[-1.0]], dtype=torch.float64)
    ad = torch.einsum("nmd,nd->nm", a, d)
    out, ok = ray_search(d, ad, b, torch.full_like(d, -3.0), torch.full_like(d, 3.0))
    assert bool(ok[0]) and torch.allclose(out, torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    # a box that stops the ray before the constraint holds: infeasible
    _, ok = ray_search(d, ad, b, torch.full_like(d, -0.8), torch.full_like(d, 0.8))
    assert not bool(ok[0])


def _ray_by_scan(d, ad, rhs, lower, upper):
    """The feasible interval of ``a >= 0`` with ``a ad_j <= rhs_j`` for every j and ``a d`` in the
    box, one constraint at a time in plain Python; returns (a* or None)."""
    lo, hi = 0.0, float("inf")
    for adj, r in zip(ad, rhs):
        if adj > 0:
            hi = min(hi, r / adj)
        elif adj < 0:
            lo = max(lo, r / adj)
        elif r < 0:
            return None
    for dj, lj, uj in zip(d, lower, upper):
        if dj > 0:
            hi = min(hi, uj / dj)
        elif dj < 0:
            hi = min(hi, lj / dj)
    return lo if lo <= hi else None


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 0.5), st.sampled_from([0.0, 1e-6]))
def test_ray_search_matches_a_constraint_by_constraint_scan(seed, zeros, tol):
    """Zeros (signed), negative and zero right-hand sides and +inf rows included."""
    g = torch.Generator().manual_seed(seed)
    n, m = 4, 12
    ad = torch.randn(n, m, generator=g, dtype=torch.float64)
    ad[torch.rand(n, m, generator=g) < zeros] = 0.0
    ad[torch.rand(n, m, generator=g) < zeros / 4] = -0.0
    b = torch.randn(n, m, generator=g, dtype=torch.float64).abs()
    b[torch.rand(n, m, generator=g) < 0.15] *= -1  # mostly >= 0, as at a region's own point
    b[torch.rand(n, m, generator=g) < zeros / 2] = 0.0
    b[torch.rand(n, m, generator=g) < 0.05] = float("inf")
    d = 0.2 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    lower = -torch.rand(n, 3, generator=g, dtype=torch.float64)
    upper = 1 + lower
    out, ok = ray_search(d, ad, b, lower, upper, tol)
    for i in range(n):
        want = _ray_by_scan(d[i].tolist(), ad[i].tolist(), (b[i] + tol).tolist(), lower[i].tolist(), upper[i].tolist())
        assert bool(ok[i]) == (want is not None), (i, want)
        if want is not None:
            torch.testing.assert_close(out[i], d[i] * want, rtol=0, atol=0)


@pytest.mark.parametrize("step_scale", [8.0, 1000.0])
def test_long_first_steps_still_match_scipy(step_scale):
    # a first step far beyond 2 / L diverges unless the halving on every drop of the dual brings it back
    for seed in (0, 5):
        a, b, lower, upper = random_instance(seed)
        sol = solve_qp(DenseOperator(a), b, lower, upper, steps=5000, tol=1e-8, line_tol=1e-7, step_scale=step_scale)
        check_against_reference(a, b, lower, upper, sol)


def test_long_first_steps_and_the_stop_test_on_a_real_region():
    with real_region() as (x, op, b):
        scale = block_scales(op, op.sizes, x, torch.Generator().manual_seed(0))
        runs = [solve_qp(ScaledOperator(op, scale), b * scale, -x, 1 - x, steps=20000, tol=1e-6, step_scale=s)
                for s in (1.0, 8.0)]
    # the scale-aware stop test fires well before the cap, at the same optimum for either first step
    assert all(bool((r.iterations < 1000).all()) for r in runs)
    torch.testing.assert_close(runs[1].dual, runs[0].dual, rtol=1e-5, atol=0)


@pytest.mark.parametrize("c", [1e-6, 1e3])
def test_stop_test_is_scale_aware(c):
    # scaling the whole problem by c scales the solution by c and must not change when the solver stops
    # (an absolute feasibility tolerance stops a tiny problem at once, far from its optimum)
    a, b, lower, upper = random_instance(6)
    one = solve_qp(DenseOperator(a), b, lower, upper, steps=5000, tol=1e-6)
    scaled = solve_qp(DenseOperator(a), c * b, c * lower, c * upper, steps=5000, tol=1e-6)
    assert bool((one.iterations < 5000).all())
    assert (scaled.iterations - one.iterations).abs().max() <= 2
    torch.testing.assert_close(scaled.delta / c, one.delta, rtol=1e-5, atol=1e-8)
