"""Exact minimal perturbations: brute force on a 2-D input net, HiGHS against SCIP, and the bracket
certified <= exact <= every attack on mlp-tiny and a small conv net."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from helpers import tiny_cnn, tiny_inputs, true_labels
from scipy.optimize import linprog
from torch import nn

import minnorm
import minnorm.data
from minnorm import certify

NORMS = [math.inf, 2.0, 1.0]


def _net2d() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        net = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3))
        with torch.no_grad():
            net[0].weight.mul_(4)
            net[0].bias.copy_(-0.5 * net[0].weight.sum(1))
    return net.double().eval()


def _pieces(net, x):
    w = [net[i].weight.detach().numpy() for i in (0, 2, 4)]
    b = [net[i].bias.detach().numpy() for i in (0, 2, 4)]
    return w, b


def _region_min(net, pattern, x0, label, target, p) -> float:
    """min ||x - x0||_p over the closure of one linear region, f_target >= f_label, x in [0,1]^2."""
    (w1, w2, w3), (b1, b2, b3) = _pieces(net, x0)
    s1, s2 = (np.where(s, 1.0, -1.0) for s in pattern)
    d1, d2 = np.diag(pattern[0].astype(float)), np.diag(pattern[1].astype(float))
    a2, c2 = w2 @ d1 @ w1, w2 @ d1 @ b1 + b2          # z2 = a2 x + c2 in this region
    a3, c3 = w3 @ d2 @ a2, w3 @ d2 @ c2 + b3
    # G x <= h
    g = np.vstack([-s1[:, None] * w1, -s2[:, None] * a2, (a3[label] - a3[target])[None]])
    h = np.r_[s1 * b1, s2 * c2, c3[target] - c3[label]]
    if p == 2:
        return _qp2d(g, h, x0)
    n = 2
    c = np.r_[np.zeros(n), 1.0] if math.isinf(p) else np.r_[np.zeros(n), np.ones(n)]
    k = 1 if math.isinf(p) else n
    aux = np.ones((n, 1)) if math.isinf(p) else np.eye(n)
    a_ub = np.vstack([np.c_[g, np.zeros((g.shape[0], k))], np.c_[np.eye(n), -aux], np.c_[-np.eye(n), -aux]])
    b_ub = np.r_[h, x0, -x0]
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=[(0, 1)] * n + [(0, None)] * k, method="highs")
    return float(res.fun) if res.status == 0 else math.inf


def _qp2d(g, h, x0) -> float:
    """Exact 2-D projection onto a polygon: the optimum is x0, a projection onto an edge's line, or
    a vertex; check every candidate for feasibility."""
    g = np.vstack([g, np.eye(2), -np.eye(2)])
    h = np.r_[h, 1, 1, 0, 0]
    cands = [x0]
    for gi, hi in zip(g, h):
        nn2 = gi @ gi
        if nn2 > 0:
            cands.append(x0 - (gi @ x0 - hi) / nn2 * gi)
    for (ga, ha), (gb, hb) in itertools.combinations(zip(g, h), 2):
        m = np.vstack([ga, gb])
        if abs(np.linalg.det(m)) > 1e-12:
            cands.append(np.linalg.solve(m, [ha, hb]))
    best = math.inf
    for c in cands:
        if (g @ c <= h + 1e-9 * (1 + np.abs(h))).all():
            best = min(best, float(np.linalg.norm(c - x0)))
    return best


def _brute_force(net, x0: np.ndarray, label: int, p: float) -> tuple[float, float]:
    """(grid minimum over adversarial grid points, minimum over the grid's linear regions)."""
    t = np.linspace(0, 1, 301)
    grid = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
    with torch.no_grad():
        gx = torch.as_tensor(grid)
        z1 = net[0](gx)
        z2 = net[2](net[1](z1))
        pred = net(gx).argmax(1).numpy()
    norms = np.linalg.norm(grid - x0, ord=p, axis=1)
    grid_min = float(norms[pred != label].min()) if (pred != label).any() else math.inf
    patterns = {(tuple(a), tuple(b)) for a, b in zip((z1 >= 0).numpy(), (z2 >= 0).numpy())}
    best = math.inf
    for a, b in patterns:
        pat = (np.array(a), np.array(b))
        for j in range(3):
            if j != label:
                best = min(best, _region_min(net, pat, x0, label, j, p))
    return grid_min, best


@pytest.mark.parametrize("p", NORMS)
def test_2d_net_matches_brute_force(p):
    net = _net2d()
    x = torch.tensor([[0.3, 0.6], [0.7, 0.2], [0.55, 0.5]], dtype=torch.float64)
    y = net(x).argmax(1)
    grid_up = torch.tensor([_brute_force(net, xi.numpy(), int(yi), p)[0] for xi, yi in zip(x, y)])
    res = certify.exact(net, x, y, norm=p, upper=grid_up, time_limit=30)
    assert res.status == ["exact"] * 3
    for i in range(3):
        grid_min, region_min = _brute_force(net, x[i].numpy(), int(y[i]), p)
        assert abs(float(res.upper[i]) - region_min) <= 1e-4, (i, float(res.upper[i]), region_min)
        assert float(res.upper[i]) <= grid_min + 1e-9
        assert int(net(res.witnesses[i:i + 1]).argmax(1)) != int(y[i])


def test_highs_and_scip_agree_on_linf():
    net = _net2d()
    x = torch.tensor([[0.3, 0.6], [0.7, 0.2]], dtype=torch.float64)
    y = net(x).argmax(1)
    up = torch.tensor([1.0, 1.0])  # the box diameter: no attack needed
    a = certify.exact(net, x, y, norm="linf", upper=up, solver="highs", time_limit=30)
    b = certify.exact(net, x, y, norm="linf", upper=up, solver="scip", time_limit=30)
    model = minnorm.models.load_shipped("mlp-tiny")
    xs, ys = minnorm.data.load_sample()
    c = certify.exact(model, xs[:1], ys[:1], norm="linf", solver="highs", time_limit=60)
    d = certify.exact(model, xs[:1], ys[:1], norm="linf", solver="scip", time_limit=60)
    assert a.status == b.status == ["exact"] * 2 and c.status == d.status == ["exact"]
    torch.testing.assert_close(a.upper, b.upper, rtol=0, atol=1e-6)
    torch.testing.assert_close(c.upper, d.upper, rtol=0, atol=1e-6)


def _attacks(p: float):
    return [s for s in minnorm.attacks.specs() if s.minimal and s.norm == p]


def _check_bracket(model, x, y, p, time_limit=60):
    ex = certify.exact(model, x, y, norm=p, time_limit=time_limit)
    cert = certify.lower_bound(model, x, y, norm=p, upper=ex.upper, adversarials=ex.witnesses)
    assert all(s in ("exact", "misclassified") for s in ex.status), ex.status
    assert bool((cert.lower <= ex.lower * (1 + 1e-9) + 1e-12).all())
    with torch.no_grad():
        assert bool((model(ex.witnesses).argmax(1) != y).all())
    got = minnorm.core.lp_norm((ex.witnesses - x).double(), p)
    torch.testing.assert_close(got, ex.upper, rtol=1e-9, atol=1e-12)
    for spec in _attacks(p):
        res = spec(model, x, y, **spec.quick)
        norms = torch.where(res.success, res.norms.double(), torch.full_like(ex.upper, math.inf))
        # an attack below the solver's proven bound is a bug (of the attack or the solver); float32
        # slack only (the witness itself must flip the model by a margin, so it may sit 1e-5 higher)
        proven = torch.as_tensor(ex.info["proven_lower"], dtype=torch.float64)
        assert bool((norms >= proven * (1 - 2e-6) - 1e-7).all()), (spec.name, norms, proven)
        assert bool((proven <= ex.upper).all())
    return ex, cert


@pytest.mark.parametrize("p", [math.inf, 1.0])
def test_mlp_tiny_bracket(p):
    model = minnorm.models.load_shipped("mlp-tiny")
    x, y = minnorm.data.load_sample()
    _check_bracket(model, x[:2], y[:2], p)


def _mini_conv() -> nn.Module:
    """Conv(1->2, 3x3) -> ReLU -> MaxPool(2) -> Flatten -> Linear(8, 3) on 1x4x4 inputs: small
    enough for SCIP's L2 MIQP within the test budget."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
        with torch.no_grad():
            net[0].weight.mul_(4)
            net[0].bias.copy_(-0.5 * net[0].weight.flatten(1).sum(1))
    return net.eval()


def test_small_conv_bracket_linf():
    """tiny_cnn: 64 inputs, 256 ReLUs and a max-pool (its L1/L2 programs are left to the mini conv)."""
    model = tiny_cnn()
    x = tiny_inputs(2)
    _check_bracket(model, x, true_labels(model, x), math.inf)


@pytest.mark.parametrize("p", NORMS)
def test_mini_conv_bracket(p):
    model = _mini_conv()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    _check_bracket(model, x, y, p)


@pytest.mark.parametrize("p", NORMS)
def test_pgd_fails_inside_certified_radius(p):
    model = minnorm.models.load_shipped("mlp-tiny")
    x, y = minnorm.data.load_sample()
    x, y = x[:4], y[:4]
    cert = certify.lower_bound(model, x, y, norm=p)
    ok = torch.tensor([s != "misclassified" for s in cert.status])
    x, y, r = x[ok], y[ok], cert.lower[ok]
    name = {math.inf: "pgd-linf", 2.0: "pgd-l2", 1.0: "pgd-l1"}[p]
    for seed in range(3):
        res = minnorm.attacks.get(name)(model, x, y, eps=(0.999 * r).float(), steps=40, restarts=4,
                                       generator=torch.Generator().manual_seed(seed))
        assert not bool(res.success.any())


def test_misclassified_and_result_fields():
    model = _mini_conv()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    y[1] = (y[1] + 1) % 3
    res = certify.exact(model, x, y, norm="linf", time_limit=30)
    assert res.status[1] == "misclassified" and float(res.lower[1]) == float(res.upper[1]) == 0
    assert res.lower.shape == res.upper.shape == res.seconds.shape == (3,)
    assert res.witnesses.shape == x.shape and res.witnesses.dtype == x.dtype
    assert bool(res.proven.all())


def test_witness_on_box_faces_is_pushed_by_the_gradient():
    """An L1 witness whose moved pixels sit on the box's face and that ties the two logits cannot
    be pushed along the segment from x0 (the box clamps it back); the gradient push moves a free
    pixel instead, at a relative cost far below 1e-4 (the L1 image 72 of docs/certify.md)."""
    net = nn.Linear(4, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.5, 0.5]]))
        net.bias.copy_(torch.tensor([0.0, -2.5]))
    x0 = torch.full((4,), 0.5)
    cand = torch.tensor([1.0, 1.0, 0.5, 0.5])  # logits tie exactly: 0 and 1 + 1 + 0.25 + 0.25 - 2.5
    w, nrm = certify.verify_witness(net, x0, cand, 0, 1.0, (0.0, 1.0))
    assert w is not None and int(net(w[None]).argmax(1)) == 1
    assert 1.0 < nrm <= 1.0 + 1e-4


def test_qp_branch_and_bound_matches_scip_on_l2():
    """The experimental L2 branch and bound over ReLU phases (HiGHS QPs at the nodes) gives SCIP's
    minima on the 2-D net."""
    net = _net2d()
    x = torch.tensor([[0.3, 0.6], [0.7, 0.2], [0.55, 0.5]], dtype=torch.float64)
    y = net(x).argmax(1)
    a = certify.exact(net, x, y, norm=2, upper=torch.ones(3), time_limit=30, solver="scip")
    b = certify.exact(net, x, y, norm=2, upper=torch.ones(3), time_limit=30, solver="qp-bnb")
    assert a.status == b.status == ["exact"] * 3
    torch.testing.assert_close(a.upper, b.upper, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("limit", [math.inf, math.nan, 0.0, -1.0, 1e30])
def test_exact_refuses_a_time_limit_the_solver_cannot_take(limit):
    """inf and NaN made SCIP print errors and fail mid-run; one check for the API and both commands."""
    with pytest.raises(ValueError, match="time_limit must be"):
        minnorm.certify.exact(torch.nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), time_limit=limit)
