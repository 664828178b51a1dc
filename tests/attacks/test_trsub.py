"""Trust-region subproblem solver against a dense Moré–Sorensen reference (numpy/scipy)."""
import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from minnorm.attacks._trsub import lanczos, solve_trust_region_subproblem


def dense_trs(g: np.ndarray, h: np.ndarray, radius: float) -> tuple[np.ndarray, float]:
    """Global minimiser of g.d + d.H d / 2 on ||d|| <= radius via the secular equation (no hard case)."""
    lam_i, v = np.linalg.eigh(h)
    c = v.T @ g
    if lam_i[0] > 0:
        d = -np.linalg.solve(h, g)
        if np.linalg.norm(d) <= radius:
            return d, float(g @ d + 0.5 * d @ h @ d)
    lo = max(0.0, -lam_i[0])
    norm = lambda lam: np.linalg.norm(c / (lam_i + lam)) - radius
    hi = lo + np.linalg.norm(g) / radius + 1.0
    lam = brentq(norm, lo + 1e-14 * max(1.0, lo), hi, xtol=1e-15, rtol=1e-15, maxiter=500)
    d = -v @ (c / (lam_i + lam))
    return d, float(g @ d + 0.5 * d @ h @ d)


def make_problems(kind: str, b: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    gs, hs = [], []
    for _ in range(b):
        a = rng.standard_normal((n, n))
        if kind == "pd":
            h = a @ a.T / n + 0.1 * np.eye(n)
        else:
            h = (a + a.T) / 2
        gs.append(rng.standard_normal(n))
        hs.append(h)
    return np.stack(gs), np.stack(hs)


def hvp_from(h: torch.Tensor, calls: list):
    def hvp(v, active):
        calls.append(active.clone())
        return torch.einsum("bij,bj->bi", h, v)
    return hvp


@pytest.mark.parametrize("kind", ["pd", "indefinite"])
@pytest.mark.parametrize("radius", [0.05, 0.5, 5.0, 100.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_dense_moré_sorensen(kind, radius, dtype):
    b, n = 6, 12
    g, h = make_problems(kind, b, n, seed=int(radius * 100) + (kind == "pd"))
    calls = []
    res = solve_trust_region_subproblem(torch.tensor(g, dtype=dtype), hvp_from(torch.tensor(h, dtype=dtype), calls),
                                        radius, max_iter=n, tol=1e-10)
    d = res.step.double().numpy()
    tol = 1e-4 if dtype == torch.float32 else 1e-7
    for i in range(b):
        _, ref_val = dense_trs(g[i], h[i], radius)
        val = float(g[i] @ d[i] + 0.5 * d[i] @ h[i] @ d[i])
        assert np.linalg.norm(d[i]) <= radius * (1 + tol)
        assert abs(val - ref_val) <= tol * abs(ref_val), (i, val, ref_val)
        assert abs(float(res.value[i]) - ref_val) <= tol * abs(ref_val)
    assert not bool(res.hessian_zero.any())


def test_fewer_iterations_are_feasible_and_no_better_than_optimum():
    b, n = 4, 30
    g, h = make_problems("indefinite", b, n, seed=3)
    res = solve_trust_region_subproblem(torch.tensor(g), hvp_from(torch.tensor(h), []), 1.0, max_iter=5)
    for i in range(b):
        d = res.step[i].numpy()
        _, ref_val = dense_trs(g[i], h[i], 1.0)
        assert np.linalg.norm(d) <= 1.0 + 1e-9
        assert float(g[i] @ d + 0.5 * d @ h[i] @ d) >= ref_val - 1e-9
        assert float(g[i] @ d + 0.5 * d @ h[i] @ d) < 0
    assert int(res.iterations.max()) <= 5


def test_krylov_basis_answers_every_radius():
    g, h = make_problems("indefinite", 3, 10, seed=5)
    kry = lanczos(torch.tensor(g), hvp_from(torch.tensor(h), []), max_iter=10)
    for radius in (0.1, 1.0, 10.0):
        _, value, _ = kry.solve(radius)
        for i in range(3):
            assert abs(float(value[i]) - dense_trs(g[i], h[i], radius)[1]) <= 1e-7 * abs(float(value[i]))


def test_zero_hessian_is_reported_and_gives_steepest_descent():
    g = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = []
    res = solve_trust_region_subproblem(g, lambda v, active: (calls.append(active), torch.zeros_like(v))[1], 2.0)
    assert bool(res.hessian_zero.all())
    assert len(calls) == 1 and res.iterations.tolist() == [1, 1, 1]
    expected = -2.0 * g / g.norm(dim=1, keepdim=True)
    torch.testing.assert_close(res.step, expected)


def test_rows_stop_independently_and_zero_gradient_gives_zero_step():
    g, h = make_problems("pd", 3, 6, seed=7)
    g[1] = 0
    h[2] = np.diag(np.full(6, 2.0))  # H = 2I: Krylov space of dimension 1
    calls = []
    res = solve_trust_region_subproblem(torch.tensor(g), hvp_from(torch.tensor(h), calls), 10.0, max_iter=6)
    assert torch.equal(res.step[1], torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(res.step[2], -torch.tensor(g[2]) / 2)
    assert res.iterations.tolist()[1:] == [0, 1]
    assert all(not bool(a[1]) for a in calls)


def test_hard_case_in_the_small_problem():
    # T = diag(-1, 1) with g = e2: no weight on the negative direction; the minimiser fills the ball along e1.
    from minnorm.attacks._trsub import _secular
    evals = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    y, lam = _secular(evals, torch.tensor([[0.0, 1.0]], dtype=torch.float64), torch.eye(2, dtype=torch.float64)[None],
                      torch.tensor([2.0], dtype=torch.float64), 60)
    assert float(lam) == pytest.approx(1.0)
    assert float(y.norm()) == pytest.approx(2.0)
    assert float(y[0, 1]) == pytest.approx(-0.5)
