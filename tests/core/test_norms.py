"""Property tests for the lp geometry in minnorm.core.norms (Hölder directions, projections)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from minnorm.core import (batch_view, clip_box, dual_exponent, holder_direction, lp_norm, parse_norm,
                          project_lp_ball, scale_to_norm)

INF = math.inf
FIXED_P = [1.0, 1.5, 2.0, 3.0, INF]
PROJ_P = [1.0, 2.0, INF]

p_any = st.one_of(st.sampled_from(FIXED_P), st.floats(1.01, 50.0))
radius_st = st.floats(0.01, 10.0)


@st.composite
def batches(draw, max_b: int = 3, max_n: int = 8, scale: float = 100.0) -> torch.Tensor:
    b = draw(st.integers(1, max_b))
    n = draw(st.integers(1, max_n))
    a = draw(arrays(np.float64, (b, n), elements=st.floats(-scale, scale, allow_subnormal=False)))
    return torch.from_numpy(a)


def np_norm(v: np.ndarray, p: float) -> float:
    return float(np.max(np.abs(v))) if math.isinf(p) else float(np.sum(np.abs(v) ** p) ** (1 / p))


# ---------------------------------------------------------------- norms and duals

@given(p_any)
def test_dual_exponent_identities(p):
    q = dual_exponent(p)
    assert q >= 1
    inv = (0.0 if math.isinf(p) else 1 / p) + (0.0 if math.isinf(q) else 1 / q)
    assert inv == pytest.approx(1.0)
    assert dual_exponent(q) == pytest.approx(p, rel=1e-9)


def test_dual_exponent_special_cases():
    assert dual_exponent(1) == INF and dual_exponent(INF) == 1.0 and dual_exponent(2) == 2.0
    assert dual_exponent("linf") == 1.0 and dual_exponent("l1") == INF
    with pytest.raises(ValueError, match="norm p"):
        dual_exponent(0.5)


@pytest.mark.parametrize("text,p", [("inf", INF), ("linf", INF), ("Linf", INF), ("l2", 2.0), ("L1", 1.0),
                                    ("2", 2.0), (2, 2.0), (INF, INF), ("1.5", 1.5), ("infinity", INF)])
def test_parse_norm(text, p):
    assert parse_norm(text) == p


@pytest.mark.parametrize("bad", [0, 0.99, -1, "l0", float("nan")])
def test_parse_norm_rejects(bad):
    with pytest.raises(ValueError):
        parse_norm(bad)


@pytest.mark.parametrize("bad", ["linf2", "l", "two", ""])
def test_parse_norm_names_what_it_takes(bad):
    """``--norm linf2`` said "could not convert string to float: 'inf2'"."""
    with pytest.raises(ValueError, match="a norm is l1, l2, linf or a number p >= 1, got"):
        parse_norm(bad)


@given(batches(), p_any)
def test_lp_norm_matches_numpy(v, p):
    got = lp_norm(v, p)
    want = [np_norm(row, p) for row in v.numpy()]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)


def test_lp_norm_shapes():
    assert lp_norm(torch.zeros(3, 0), 2).shape == (3,)
    assert lp_norm(torch.zeros(0, 1, 4, 4), INF).shape == (0,)
    x = torch.arange(24.0).view(2, 3, 4) - 10
    torch.testing.assert_close(lp_norm(x, 1), x.flatten(1).abs().sum(1))


# ---------------------------------------------------------------- Hölder directions

@given(batches(), p_any)
def test_holder_direction_is_optimal(g, p):
    """||d||_p = 1 and <g, d> = ||g||_q: the equality case of Hölder's inequality."""
    assume(bool((g.abs().amax(1) > 1e-3).all()))
    d = holder_direction(g, p)
    q = dual_exponent(p)
    torch.testing.assert_close(lp_norm(d, p), torch.ones(g.shape[0], dtype=g.dtype), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close((g * d).sum(1), lp_norm(g, q), rtol=1e-7, atol=1e-9)


@given(batches(), st.sampled_from(FIXED_P), st.integers(0, 2**31 - 1))
def test_holder_direction_beats_random_directions(g, p, seed):
    assume(bool((g.abs().amax(1) > 1e-3).all()))
    d = holder_direction(g, p)
    r = torch.randn(g.shape, generator=torch.Generator().manual_seed(seed), dtype=g.dtype)
    r = r / lp_norm(r, p)[:, None]
    assert bool(((g * r).sum(1) <= (g * d).sum(1) + 1e-9).all())


@pytest.mark.parametrize("p", FIXED_P)
def test_holder_direction_zero_and_shape(p):
    g = torch.zeros(2, 1, 3, 3)
    g[1, 0, 1, 2] = -2.0
    d = holder_direction(g, p)
    assert d.shape == g.shape
    assert bool((d[0] == 0).all()), "a zero gradient must give a zero direction"
    assert float(d[1, 0, 1, 2]) == -1.0 and float(d[1].abs().sum()) == 1.0


def test_holder_direction_special_cases():
    g = torch.tensor([[3.0, -3.0, 1.0, -0.5]])
    torch.testing.assert_close(holder_direction(g, INF), g.sign())
    torch.testing.assert_close(holder_direction(g, 1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # first of ties
    torch.testing.assert_close(holder_direction(g, 2), g / g.norm())


@given(batches(max_b=4), st.sampled_from(FIXED_P))
def test_holder_direction_is_per_sample(g, p):
    d = holder_direction(g, p)
    for i in range(g.shape[0]):
        torch.testing.assert_close(holder_direction(g[i:i + 1], p), d[i:i + 1])


def test_holder_direction_extreme_scales():
    """Tiny and huge gradients (float32) must not under/overflow to NaN."""
    for scale in (1e-30, 1e30):
        g = torch.tensor([[1.0, -2.0, 0.5]]) * scale
        for p in FIXED_P:
            d = holder_direction(g, p)
            assert bool(torch.isfinite(d).all())
            assert float(lp_norm(d, p)) == pytest.approx(1.0, rel=1e-5)


# ---------------------------------------------------------------- projections onto lp balls

@given(batches(), st.sampled_from(PROJ_P), radius_st)
def test_projection_inside_idempotent(v, p, r):
    out = project_lp_ball(v, p, r)
    assert out.shape == v.shape and out.dtype == v.dtype
    assert bool((lp_norm(out, p) <= r * (1 + 1e-9) + 1e-12).all()), "projection leaves the ball"
    torch.testing.assert_close(project_lp_ball(out, p, r), out, rtol=1e-9, atol=1e-9)
    inside = lp_norm(v, p) <= r
    torch.testing.assert_close(out[inside], v[inside], rtol=0, atol=0)


@given(batches(max_n=6), st.sampled_from(PROJ_P), radius_st)
def test_projection_is_euclidean(v, p, r):
    """<v - P(v), z - P(v)> <= 0 for every z in the ball characterises the Euclidean projection.
    The form is linear in z, so the vertices of the l1 / linf ball suffice; for l2 compare with
    the closed form v * min(1, r / ||v||)."""
    out = project_lp_ball(v, p, r)
    n = v.shape[1]
    if p == 2:
        want = v * torch.clamp(r / v.norm(dim=1, keepdim=True), max=1.0)
        torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)
        return
    if p == 1:
        z = torch.cat([torch.eye(n), -torch.eye(n)]).to(v) * r
    else:
        z = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=n)), dtype=v.dtype) * r
    res = v - out  # [B, n]
    gap = ((z[None] - out[:, None]) * res[:, None]).sum(-1)  # [B, vertices]
    scale = 1 + v.abs().amax(1, keepdim=True) * r
    assert bool((gap <= 1e-9 * scale).all()), f"not the Euclidean projection, max gap {float(gap.max())}"


def _l1_projection_bisection(v: np.ndarray, r: float) -> np.ndarray:
    """Independent oracle: soft-threshold at the theta with sum(max(|v| - theta, 0)) = r."""
    if np.abs(v).sum() <= r:
        return v
    lo, hi = 0.0, float(np.abs(v).max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(np.abs(v) - mid, 0).sum() > r:
            lo = mid
        else:
            hi = mid
    return np.sign(v) * np.maximum(np.abs(v) - hi, 0)


@given(batches(max_n=8), radius_st)
def test_l1_projection_matches_bisection(v, r):
    out = project_lp_ball(v, 1, r).numpy()
    for row, got in zip(v.numpy(), out):
        np.testing.assert_allclose(got, _l1_projection_bisection(row, r), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p", PROJ_P)
def test_projection_matches_scipy(p, seed):
    """The closest point of the ball found by a generic solver (SLSQP) on tiny vectors."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=5) * 2
    r = 0.7
    cons = [{"type": "ineq", "fun": lambda z: r - np_norm(z, p)}] if p == 2 else []
    if p == 1:  # |z|_1 <= r as a smooth problem: z = a - b, a, b >= 0, sum(a + b) <= r
        fun = lambda ab: 0.5 * np.sum((ab[:5] - ab[5:] - v) ** 2)  # noqa: E731
        sol = minimize(fun, np.zeros(10), method="SLSQP", bounds=[(0, None)] * 10,
                       constraints=[{"type": "ineq", "fun": lambda ab: r - ab.sum()}], options={"ftol": 1e-14})
        want = sol.x[:5] - sol.x[5:]
    else:
        bounds = [(-r, r)] * 5 if math.isinf(p) else None
        sol = minimize(lambda z: 0.5 * np.sum((z - v) ** 2), np.zeros(5), method="SLSQP", bounds=bounds,
                       constraints=cons, options={"ftol": 1e-14})
        want = sol.x
    got = project_lp_ball(torch.from_numpy(v)[None], p, r)[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("p", PROJ_P)
def test_projection_per_sample_radius(p):
    v = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = torch.tensor([0.0, 0.1, 1.0, 100.0], dtype=torch.float64)
    out = project_lp_ball(v, p, r)
    for i in range(4):
        torch.testing.assert_close(out[i:i + 1], project_lp_ball(v[i:i + 1], p, float(r[i])))
    assert bool((out[0] == 0).all())
    torch.testing.assert_close(out[3], v[3])


def test_projection_float32_and_unsupported_p():
    v = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))
    for p in PROJ_P:
        out = project_lp_ball(v, p, 0.5)
        assert out.dtype == torch.float32
        assert bool((lp_norm(out, p) <= 0.5 * (1 + 1e-5)).all())
    with pytest.raises(ValueError, match="l3"):
        project_lp_ball(v, 3, 1.0)


# ---------------------------------------------------------------- sphere, box, broadcasting

@given(batches(), p_any, radius_st)
def test_scale_to_norm(v, p, r):
    out = scale_to_norm(v, p, r)
    nonzero = v.abs().amax(1) > 1e-3
    torch.testing.assert_close(lp_norm(out[nonzero], p), torch.full((int(nonzero.sum()),), r, dtype=v.dtype),
                               rtol=1e-9, atol=1e-12)
    # same direction: a non-negative multiple of v
    ratio = lp_norm(out, p) / lp_norm(v, p).clamp_min(1e-300)
    torch.testing.assert_close(out[nonzero], v[nonzero] * ratio[nonzero, None], rtol=1e-9, atol=1e-12)


def test_scale_to_norm_zero_and_per_sample_radius():
    v = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    out = scale_to_norm(v, 2, torch.tensor([5.0, 10.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [6.0, 8.0], [2.0, 0.0]], dtype=torch.float64))


def test_scale_to_norm_extreme_scales():
    """float32 rows of size 1e-30 or 1e30 must still land on the sphere, not at 0, inf or NaN."""
    for scale in (1e-30, 1e30):
        v = torch.tensor([[1.0, -2.0, 0.5]]) * scale
        for p in FIXED_P:
            out = scale_to_norm(v, p, 0.5)
            assert float(lp_norm(out, p)) == pytest.approx(0.5, rel=1e-5)
            torch.testing.assert_close(out.sign(), v.sign())


def test_batch_view_and_clip_box():
    like = torch.zeros(3, 2, 4, 4)
    assert batch_view(torch.ones(3), like).shape == (3, 1, 1, 1)
    assert batch_view(0.5, like) == 0.5
    scalar = torch.tensor(2.0)
    assert batch_view(scalar, like) is scalar
    x = torch.tensor([[-1.0, 0.5, 3.0]])
    torch.testing.assert_close(clip_box(x, (0.0, 2.0)), torch.tensor([[0.0, 0.5, 2.0]]))


# ---------------------------------------------------------------- l1 ball x box projection, hyperplane steps

def _qp_l1_box(v: np.ndarray, x: np.ndarray, r: float) -> float:
    """Reference: min ||d - v||^2 over the l1 ball and the box, as a smooth QP in d = u - w (u, w >= 0)."""
    n = v.shape[0]
    cons = [{"type": "ineq", "fun": lambda z: r - z.sum()},
            {"type": "ineq", "fun": lambda z: (1 - x) - (z[:n] - z[n:])},
            {"type": "ineq", "fun": lambda z: x + (z[:n] - z[n:])}]
    res = minimize(lambda z: ((z[:n] - z[n:] - v) ** 2).sum(), np.zeros(2 * n), bounds=[(0, None)] * (2 * n),
                   constraints=cons, method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
    return float(res.fun)


@pytest.mark.parametrize("seed", range(12))
def test_project_l1_box_matches_qp(seed):
    from minnorm.core.norms import project_l1_box
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(3, 7, generator=g, dtype=torch.float64) * 0.6
    x = torch.rand(3, 7, generator=g, dtype=torch.float64)
    r = torch.rand(3, generator=g, dtype=torch.float64) * 1.5
    d = project_l1_box(v, r, x, (0.0, 1.0))
    assert bool((lp_norm(d, 1) <= r * (1 + 1e-12) + 1e-15).all())
    assert bool(((x + d >= -1e-15) & (x + d <= 1 + 1e-15)).all())
    for i in range(3):
        ours = float(((d[i] - v[i]) ** 2).sum())
        ref = _qp_l1_box(v[i].numpy(), x[i].numpy(), float(r[i]))
        assert ours <= ref + 1e-9, f"sample {i}: {ours} > reference {ref}"


def test_project_l1_box_inside_and_ties():
    from minnorm.core.norms import project_l1_box
    x = torch.full((2, 5), 0.5, dtype=torch.float64)
    v = torch.tensor([[0.1, -0.1, 0.0, 0.05, 0.0], [0.3, 0.3, 0.3, 0.3, 0.3]], dtype=torch.float64)
    d = project_l1_box(v, torch.tensor([1.0, 0.5], dtype=torch.float64), x, (0.0, 1.0))
    torch.testing.assert_close(d[0], v[0])  # already feasible: unchanged
    torch.testing.assert_close(d[1], torch.full((5,), 0.1, dtype=torch.float64))  # equal shares of the mass
    # coordinates with no room in their direction stay put, the mass goes elsewhere
    x2 = torch.tensor([[1.0, 0.5, 0.5]], dtype=torch.float64)
    d2 = project_l1_box(torch.tensor([[5.0, 0.4, 0.0]], dtype=torch.float64), 0.3, x2, (0.0, 1.0))
    torch.testing.assert_close(d2, torch.tensor([[0.0, 0.3, 0.0]], dtype=torch.float64))


def _lp_min_step(w: np.ndarray, x: np.ndarray, c: float, p: float) -> float | None:
    """Reference minimal ||d||_p with <w, d> = c in the unit box: HiGHS LP (p = 1, inf), SLSQP (p = 2)."""
    from scipy.optimize import linprog
    n = w.shape[0]
    if p == 1:
        res = linprog(np.ones(2 * n), A_eq=np.concatenate([w, -w])[None], b_eq=[c],
                      bounds=[(0, 1 - xi) for xi in x] + [(0, xi) for xi in x], method="highs")
        return float(res.fun) if res.status == 0 else None
    if math.isinf(p):
        a_ub = np.concatenate([np.concatenate([np.eye(n), -np.ones((n, 1))], 1),
                               np.concatenate([-np.eye(n), -np.ones((n, 1))], 1)])
        cost = np.zeros(n + 1)
        cost[-1] = 1
        res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.concatenate([w, [0.0]])[None], b_eq=[c],
                      bounds=[(-xi, 1 - xi) for xi in x] + [(0, None)], method="highs")
        return float(res.fun) if res.status == 0 else None
    res = minimize(lambda z: (z ** 2).sum(), np.zeros(n), bounds=list(zip(-x, 1 - x)), method="SLSQP",
                   constraints=[{"type": "eq", "fun": lambda z: w @ z - c}], options={"ftol": 1e-15, "maxiter": 1000})
    return float(np.sqrt(res.fun)) if res.success and abs(w @ res.x - c) < 1e-9 else None


@pytest.mark.parametrize("p", PROJ_P)
@pytest.mark.parametrize("seed", range(10))
def test_min_step_to_hyperplane_matches_reference(p, seed):
    from minnorm.core.norms import min_step_to_hyperplane
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    x = torch.rand(4, 6, generator=g, dtype=torch.float64)
    c = torch.randn(4, generator=g, dtype=torch.float64) * 0.6
    d, feasible = min_step_to_hyperplane(w, c, p, x, (0.0, 1.0))
    assert bool(((x + d >= -1e-15) & (x + d <= 1 + 1e-15)).all()), "step leaves the box"
    for i in range(4):
        ref = _lp_min_step(w[i].numpy(), x[i].numpy(), float(c[i]), p)
        if p != 2:
            assert bool(feasible[i]) == (ref is not None)
        if bool(feasible[i]):
            assert abs(float((w[i] * d[i]).sum()) - float(c[i])) < 1e-9, "the step misses the hyperplane"
            if ref is not None:
                assert abs(float(lp_norm(d[i:i + 1], p)) - ref) < 1e-7
        else:
            # out of reach: the step uses the whole room towards the hyperplane
            room = torch.where(w[i] * c[i].sign() > 0, 1 - x[i], x[i])
            torch.testing.assert_close(d[i].abs(), torch.where(w[i] != 0, room, torch.zeros_like(room)))


@pytest.mark.parametrize("p", [1.5, 3.0, 7.0])
@pytest.mark.parametrize("seed", range(6))
def test_min_step_to_hyperplane_any_p_matches_slsqp(p, seed):
    """1 < p < inf, p != 2: the water level on |w|^(q-1) against a generic solver of
    min sum |z_i|^p s.t. <w, z> = c inside the box (ours is exact, so never worse)."""
    from minnorm.core.norms import min_step_to_hyperplane
    g = torch.Generator().manual_seed(100 + seed)
    w = torch.randn(3, 6, generator=g, dtype=torch.float64)
    x = torch.rand(3, 6, generator=g, dtype=torch.float64)
    x[:, 0] = 0.0  # one coordinate on a face
    c = torch.randn(3, generator=g, dtype=torch.float64) * 0.4
    d, feasible = min_step_to_hyperplane(w, c, p, x, (0.0, 1.0))
    assert bool(((x + d >= -1e-15) & (x + d <= 1 + 1e-15)).all()), "step leaves the box"
    for i in range(3):
        wi, xi, ci = w[i].numpy(), x[i].numpy(), float(c[i])
        if not bool(feasible[i]):
            reach = np.where(wi * np.sign(ci) > 0, 1 - xi, xi) @ np.abs(wi)
            assert reach < abs(ci)
            continue
        assert abs(float((w[i] * d[i]).sum()) - ci) < 1e-9, "the step misses the hyperplane"
        ours = float(lp_norm(d[i:i + 1], p))
        res = minimize(lambda z, s=ours: (np.abs(z / s) ** p).sum(), np.clip(d[i].numpy() * 0.5, -xi, 1 - xi),
                       bounds=list(zip(-xi, 1 - xi)), method="SLSQP",
                       constraints=[{"type": "eq", "fun": lambda z, wi=wi, ci=ci: wi @ z - ci}],
                       options={"ftol": 1e-15, "maxiter": 2000})
        assert abs(wi @ res.x - ci) < 1e-8  # status 8 (no further descent) at the optimum is fine
        ref = float((np.abs(res.x) ** p).sum() ** (1 / p))
        assert ours <= ref + 1e-9 and ours >= ref * (1 - 1e-4)


@pytest.mark.parametrize("p", PROJ_P + [1.5, 3.0])
def test_min_step_to_hyperplane_without_box_is_holder(p):
    from minnorm.core.norms import min_step_to_hyperplane
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3, 9, generator=g, dtype=torch.float64)
    c = torch.tensor([0.5, -0.2, 0.0], dtype=torch.float64)
    d, feasible = min_step_to_hyperplane(w, c, p)
    assert bool(feasible.all())
    torch.testing.assert_close(lp_norm(d, p), c.abs() / lp_norm(w, dual_exponent(p)))
    torch.testing.assert_close((w * d).sum(1), c)


@pytest.mark.parametrize("seed", range(10))
def test_project_l2_box_matches_qp(seed):
    from minnorm.core.norms import project_l2_box
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(3, 6, generator=g, dtype=torch.float64) * 0.8
    x = torch.rand(3, 6, generator=g, dtype=torch.float64)
    x[:, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # on the faces: the box binds
    r = torch.rand(3, generator=g, dtype=torch.float64)
    d = project_l2_box(v, r, x, (0.0, 1.0))
    assert bool((lp_norm(d, 2) <= r * (1 + 1e-12)).all())
    assert bool(((x + d >= -1e-15) & (x + d <= 1 + 1e-15)).all())
    for i in range(3):
        vi, xi, ri = v[i].numpy(), x[i].numpy(), float(r[i])
        res = minimize(lambda z, vi=vi: ((z - vi) ** 2).sum(), np.zeros(6), bounds=list(zip(-xi, 1 - xi)),
                       constraints=[{"type": "ineq", "fun": lambda z, ri=ri: ri ** 2 - (z ** 2).sum()}],
                       method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
        assert float(((d[i] - v[i]) ** 2).sum()) <= res.fun + 1e-9
    # the ball-then-clip shortcut is worse on some of these
    short = (x + project_lp_ball(v, 2, r)).clamp(0, 1) - x
    assert bool((((short - v) ** 2).sum(1) >= ((d - v) ** 2).sum(1) - 1e-12).all())


@pytest.mark.parametrize("p,name,label", [(2, "l2", "L2"), (1.0, "l1", "L1"), (1.5, "l1.5", "L1.5"), (INF, "linf", "Linf"),
                                          ("inf", "linf", "Linf"), ("l2", "l2", "L2"), ("Linf", "linf", "Linf")])
def test_norm_name_and_label(p, name, label):
    from minnorm.core.norms import norm_label, norm_name
    assert norm_name(p) == name and norm_label(p) == label
    assert parse_norm(norm_name(p)) == parse_norm(p)  # the tag parses back to the norm
