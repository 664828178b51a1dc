"""Bound propagation: the graph reproduces the model, bounds contain every sampled point, and on an
affine classifier the certified radius (and the exact solve) equal independent closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import tiny_cnn, tiny_inputs, tiny_mlp, tiny_resnet, true_labels
from scipy.optimize import linprog
from torch import nn

from minnorm import certify
from minnorm.certify.bounds import certified_radius, margin_spec, propagate
from minnorm.core import project_lp_ball

NORMS = [math.inf, 2.0, 1.0]


@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn, tiny_resnet])
def test_graph_reproduces_model(make):
    model = make()
    x = tiny_inputs(4, dtype=next(model.parameters()).dtype)
    g = certify.build_graph(model)
    with torch.no_grad():
        torch.testing.assert_close(g.forward(x.double())[-1], model(x).double(), rtol=1e-5, atol=1e-5)


def _ball_samples(x0, p, r, n, gen):
    """Points of the ball ∩ [0, 1] box, many on its surface, some at the box's faces."""
    d = torch.randn(n, *x0.shape[1:], generator=gen, dtype=torch.float64)
    if math.isinf(p):
        d = d.sign() * torch.rand(d.shape, generator=gen, dtype=torch.float64).pow(0.2)
    d = d / torch.linalg.vector_norm(d.flatten(1), ord=p, dim=1).view(-1, *[1] * (d.dim() - 1)) * r
    d = project_lp_ball(d, p, r)
    return (x0 + d).clamp(0, 1)


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn, tiny_resnet])
def test_bounds_contain_sampled_points(make, p):
    model = make()
    g = certify.build_graph(model)
    x0 = tiny_inputs(1).double()
    y = g.forward(x0)[-1].argmax(1)
    r = {math.inf: 0.05, 2.0: 0.5, 1.0: 2.0}[p]
    res = propagate(g, x0, torch.tensor([r], dtype=torch.float64), p, (0.0, 1.0), margin_spec(y, 4))
    pts = _ball_samples(x0, p, r, 300, torch.Generator().manual_seed(0))
    vals = g.forward(pts)
    for i, (lo, up) in res.neurons.items():
        v = vals[g.ops[i].inputs[0]]
        assert bool((v >= lo - 1e-9).all()) and bool((v <= up + 1e-9).all()), g.ops[i].name
    margins = vals[-1][:, y] - vals[-1]
    assert bool((margins >= res.spec_lower - 1e-9).all())


def _affine(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
        model[1].bias.data.copy_(-0.5 * model[1].weight.data.sum(1))
    return model.eval()


def _halfspace_min(a: np.ndarray, m: float, x0: np.ndarray, p: float, box) -> float:
    """min ||d||_p s.t. a.d >= m, box[0] <= x0 + d <= box[1] (inf if infeasible), by an LP
    (scipy's HiGHS) for p in {1, inf} and by the KKT root d = clip(lam a) for p = 2."""
    n = a.size
    lo, hi = box[0] - x0, box[1] - x0
    if p == 2:
        def d(lam):
            return np.clip(lam * a, lo, hi)
        if a @ d(1e12) < m:
            return math.inf
        lam_lo, lam_hi = 0.0, 1.0
        while a @ d(lam_hi) < m:
            lam_hi *= 2
        for _ in range(200):
            mid = (lam_lo + lam_hi) / 2
            lam_lo, lam_hi = (mid, lam_hi) if a @ d(mid) < m else (lam_lo, mid)
        return float(np.linalg.norm(d(lam_hi)))
    if math.isinf(p):  # variables d, t
        c = np.r_[np.zeros(n), 1.0]
        a_ub = np.vstack([np.c_[np.eye(n), -np.ones(n)], np.c_[-np.eye(n), -np.ones(n)], np.r_[-a, 0.0][None]])
        b_ub = np.r_[np.zeros(2 * n), -m]
        bnds = list(zip(lo, hi)) + [(0, None)]
    else:  # variables d, s
        c = np.r_[np.zeros(n), np.ones(n)]
        a_ub = np.vstack([np.c_[np.eye(n), -np.eye(n)], np.c_[-np.eye(n), -np.eye(n)], np.r_[-a, np.zeros(n)][None]])
        b_ub = np.r_[np.zeros(2 * n), -m]
        bnds = list(zip(lo, hi)) + [(0, None)] * n
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bnds, method="highs")
    return float(res.fun) if res.status == 0 else math.inf


def _closed_form(model, x, y, p, box):
    w, b = model[1].weight.detach().double().numpy(), model[1].bias.detach().double().numpy()
    out = []
    for xi, yi in zip(x.double().flatten(1).numpy(), y.tolist()):
        out.append(min(_halfspace_min(w[j] - w[yi], (w[yi] - w[j]) @ xi + b[yi] - b[j], xi, p, box)
                       for j in range(4) if j != yi))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("boxed", [True, False], ids=["box", "no-box"])
@pytest.mark.parametrize("p", NORMS)
def test_affine_classifier_closed_form(p, boxed):
    """Certified radius == exact == the minimal step onto the nearest decision hyperplane (with the
    box: the box-constrained minimal step, an LP / KKT root computed independently)."""
    model = _affine()
    box = (0.0, 1.0) if boxed else (-100.0, 100.0)
    x = tiny_inputs(5)
    y = true_labels(model, x)
    truth = _closed_form(model, x, y, p, box)
    if not boxed:  # without an active box the closed form is margin / ||w_y - w_j||_q
        w = model[1].weight.detach().double()
        q = {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}[p]
        logits = model(x).detach().double()
        plain = torch.stack([min((logits[i, y[i]] - logits[i, j]) / torch.linalg.vector_norm(w[y[i]] - w[j], ord=q)
                                 for j in range(4) if j != y[i]) for i in range(5)])
        torch.testing.assert_close(truth, plain, rtol=1e-6, atol=1e-9)
    g = certify.build_graph(model)
    cert = certified_radius(g, x.double(), y, p, box, truth * 1.5)
    torch.testing.assert_close(cert, truth, rtol=2e-5, atol=1e-9)
    ex = certify.exact(model, x, y, norm=p, bounds=box, upper=truth * 1.01, time_limit=30)
    assert ex.status == ["exact"] * 5
    torch.testing.assert_close(ex.upper, truth, rtol=2e-4, atol=1e-6)
    assert bool((ex.lower <= ex.upper).all())
    lb = certify.lower_bound(model, x, y, norm=p, bounds=box, upper=truth * 1.5)
    assert bool((lb.lower <= truth * (1 + 1e-6)).all())


def test_unboxed_concretization_is_dual_norm():
    """Without a box, min a.x over the ball is a.x0 - r ||a||_q."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    x0 = torch.rand(2, 5, generator=g, dtype=torch.float64)
    r = torch.tensor([0.3, 0.7], dtype=torch.float64)
    for p, q in ((math.inf, 1.0), (2.0, 2.0), (1.0, math.inf)):
        got = certify.concretize(a, torch.zeros(2, 3, dtype=torch.float64), x0, r, p, None)
        want = torch.einsum("bnm,bn->bm", a, x0) - r[:, None] * torch.linalg.vector_norm(a, ord=q, dim=1)
        torch.testing.assert_close(got, want)


def test_refuses_unsupported_layers():
    with pytest.raises(ValueError, match="SiLU"):
        certify.build_graph(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.SiLU(), nn.Linear(4, 2)))
    bn = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    with pytest.raises(ValueError, match="train mode"):
        certify.build_graph(bn)
    with pytest.raises(ValueError, match="sigmoid"):
        certify.build_graph(_Sig())


class _Sig(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))
