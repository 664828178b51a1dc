"""Convex-programming attacks (Balda et al.): the exact box-constrained (GNII) step against a
generic solver, affine oracles, FGSM and DeepFool as special cases, the shipped models."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels
from scipy.optimize import linprog, minimize
from torch import nn

import minnorm
from minnorm.data import load_sample
from minnorm.models import load_shipped
from minnorm.attacks.convex import algorithm1, algorithm2, convex_min_norm, gnii_attack
from minnorm.attacks.deepfool import deepfool
from minnorm.attacks.fgsm import fgm, fgsm
from minnorm.core import holder_direction, lp_norm
from minnorm.core.norms import holder_step_in_box

INF = math.inf
WIDE = (-10.0, 10.0)  # a box no step reaches: the unboxed closed forms apply


# ---------------------------------------------------------------- the closed-form step vs scipy

def reference_min(g: np.ndarray, x: np.ndarray, eps: float, p: float, box) -> float:
    """min <g, eta> s.t. ||eta||_p <= eps (and box[0] <= x + eta <= box[1]) by a generic solver:
    linear programs for p in {1, inf}, SLSQP for the others (its point is scaled back into the
    ball, since SLSQP may end a hair outside the constraint)."""
    d = len(g)
    lo, hi = (np.full(d, -np.inf), np.full(d, np.inf)) if box is None else (box[0] - x, box[1] - x)
    if math.isinf(p):
        return linprog(g, bounds=list(zip(np.maximum(lo, -eps), np.minimum(hi, eps))), method="highs").fun
    if p == 1:  # eta = s - r with s, r >= 0
        bnds = [(0, min(h, eps)) for h in hi] + [(0, min(-v, eps)) for v in lo]
        return linprog(np.concatenate([g, -g]), A_ub=np.ones((1, 2 * d)), b_ub=[eps], bounds=bnds,
                       method="highs").fun
    bnds = [(max(v, -eps), min(h, eps)) for v, h in zip(lo, hi)]
    cons = {"type": "ineq", "fun": lambda e: eps ** p - np.sum(np.abs(e) ** p),
            "jac": lambda e: -p * np.abs(e) ** (p - 1) * np.sign(e)}
    res = minimize(lambda e: g @ e, np.zeros(d), jac=lambda e: g, bounds=bnds, constraints=[cons],
                   method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000})
    norm = np.sum(np.abs(res.x) ** p) ** (1 / p)
    return float(g @ res.x * min(1.0, eps / norm)) if norm > 0 else 0.0


def random_instances(seed: int, n: int = 12, d: int = 7):
    """Gradients with zeros and mixed scales, points on and off the box's faces, radii from
    inside the box to far beyond it (where the box alone binds)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, d)) * rng.choice([0.01, 1.0, 100.0], size=(n, 1))
    g[rng.random((n, d)) < 0.2] = 0
    x = rng.random((n, d))
    x[rng.random((n, d)) < 0.15] = 0.0
    x[rng.random((n, d)) < 0.15] = 1.0
    eps = rng.choice([0.05, 0.5, 2.0, 10.0], size=n)
    return g, x, eps


@pytest.mark.parametrize("box", [None, (0.0, 1.0)], ids=["ball", "ball+box"])
@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, INF])
def test_closed_form_matches_generic_solver(p, box):
    g, x, eps = random_instances(seed=int(10 * p if p < INF else 99))
    xt = torch.from_numpy(x)
    eta = holder_step_in_box(-torch.from_numpy(g), p, torch.from_numpy(eps), None if box is None else xt, box)
    assert bool((lp_norm(eta, p) <= torch.from_numpy(eps) * (1 + 1e-12)).all()), "step leaves the lp ball"
    if box is not None:
        assert bool(((xt + eta >= -1e-12) & (xt + eta <= 1 + 1e-12)).all()), "step leaves the box"
    ours = (torch.from_numpy(g) * eta).sum(1).numpy()
    for i in range(len(g)):
        ref = reference_min(g[i], x[i], float(eps[i]), p, box)
        assert abs(ours[i] - ref) <= 1e-5 * max(abs(ref), 1e-12), f"instance {i}: {ours[i]} vs solver {ref}"


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, INF])
def test_closed_form_without_active_box_is_eq_6(p):
    g = torch.randn(5, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = torch.full_like(g, 0.5)
    radius = torch.tensor([0.0, 1e-3, 0.01, 0.05, 0.1], dtype=torch.float64)
    expected = holder_direction(g, p) * radius.view(-1, 1, 1)
    torch.testing.assert_close(holder_step_in_box(g, p, radius, x, (0.0, 1.0)), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(holder_step_in_box(g, p, radius), expected, rtol=0, atol=0)


def test_closed_form_when_the_whole_box_fits_in_the_ball():
    # radius far beyond the box: every coordinate with a nonzero gradient goes to its face
    g = torch.tensor([[1.0, -2.0, 0.0, 3.0]], dtype=torch.float64)
    x = torch.tensor([[0.2, 0.7, 0.5, 1.0]], dtype=torch.float64)
    for p in (1.0, 1.5, 2.0, INF):
        eta = holder_step_in_box(g, p, 100.0, x, (0.0, 1.0))
        torch.testing.assert_close(eta, torch.tensor([[0.8, -0.7, 0.0, 0.0]], dtype=torch.float64))


# ---------------------------------------------------------------- affine oracles

def affine(num_classes: int = 5, dim: int = 12, batch: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(dim, num_classes).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(num_classes, dim, generator=g, dtype=torch.float64))
        lin.bias.copy_(0.3 * torch.randn(num_classes, generator=g, dtype=torch.float64))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.5 + 0.05 * torch.randn(batch, 1, dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, lin, x, y


def boundary_distance(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    """Prop. 1 is tight for an affine classifier: min_l (f_k - f_l) / ||w_k - w_l||_q."""
    q = 1.0 if math.isinf(p) else (INF if p == 1 else p / (p - 1))
    with torch.no_grad():
        f = lin(x.flatten(1))
        dist = (f.gather(1, y[:, None]) - f) / torch.linalg.vector_norm(lin.weight[y][:, None] - lin.weight[None],
                                                                         ord=q, dim=2)
    dist[torch.arange(len(y)), y] = INF
    return dist.min(1).values


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF])
def test_algorithm1_fools_an_affine_model_exactly_beyond_prop1_bound(p):
    model, lin, x, y = affine()
    dist = boundary_distance(lin, x, y, p)
    above = algorithm1(model, x, y, eps=dist * 1.001, norm=p, bounds=WIDE)
    below = algorithm1(model, x, y, eps=dist * 0.999, norm=p, bounds=WIDE)
    assert bool(above.success.all()), "Alg. 1 misses a boundary within eps: wrong class choice"
    assert not bool(below.success.any()), "fooled below the Prop. 1 lower bound"


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF])
def test_min_norm_form_is_exact_on_an_affine_model(p):
    model, lin, x, y = affine()
    res = convex_min_norm(model, x, y, norm=p, overshoot=0.0, class_choice="linearised", bounds=WIDE)
    assert bool(res.success.all()) and bool((res.info["iterations"] == 1).all())
    torch.testing.assert_close(res.norms, boundary_distance(lin, x, y, p) + 1e-4, rtol=1e-6, atol=1e-9)


def test_probabilities_give_the_logit_step_for_two_classes():
    # two classes: p_k - p_l = tanh((z_k - z_l) / 2), a monotone map, so the linf steps agree
    model, _, x, y = affine(num_classes=2)
    eps = 0.02
    a = algorithm1(model, x, y, eps=eps, scores="probabilities")
    b = algorithm1(model, x, y, eps=eps)
    torch.testing.assert_close(a.adversarials, b.adversarials)


# ---------------------------------------------------------------- FGSM and DeepFool as special cases

@pytest.fixture(scope="module")
def shipped_mlp():
    model = load_shipped("mlp")
    x, y = load_sample()
    with torch.no_grad():
        keep = model(x[:40]).argmax(1) == y[:40]
    return model, x[:40][keep][:12], y[:40][keep][:12]


def test_fgsm_is_gnii_with_the_training_loss(shipped_mlp):
    model, x, y = shipped_mlp
    ours = gnii_attack(model, x, y, eps=0.05, norm=INF, loss="ce")
    theirs = fgsm(model, x, y, eps=0.05)
    torch.testing.assert_close(ours.adversarials, theirs.adversarials, rtol=0, atol=1e-6)
    assert torch.equal(ours.success, theirs.success)
    # the lp form FGM too, where the box does not bind
    ours2 = gnii_attack(model, x, y, eps=1.0, norm=2, loss="ce", bounds=WIDE)
    theirs2 = fgm(model, x, y, eps=1.0, norm=2, bounds=WIDE)
    torch.testing.assert_close(ours2.adversarials, theirs2.adversarials, rtol=0, atol=1e-6)


@pytest.mark.parametrize("p", [2.0, INF])
def test_deepfool_is_the_min_norm_form_with_linearised_pieces(shipped_mlp, p):
    model, x, y = shipped_mlp
    ours = convex_min_norm(model, x, y, norm=p, class_choice="linearised", bounds=WIDE)
    theirs = deepfool(model, x, y, norm=p, candidates=10, bounds=WIDE)
    torch.testing.assert_close(ours.adversarials, theirs.adversarials, rtol=0, atol=1e-5)
    assert torch.equal(ours.info["iterations"], theirs.info["iterations"])
    assert torch.equal(ours.backward_passes, theirs.backward_passes)


# ---------------------------------------------------------------- behaviour on real models

@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_registered_attacks_on_the_shipped_models(name):
    model = load_shipped(name)
    x, y = load_sample()
    x, y = x[:8], y[:8]
    for attack, eps in (("alg1-linf", 0.05), ("alg1n-linf", 0.05), ("alg2-linf", 0.05), ("alg1-l2", 1.5),
                        ("alg1-l1", 15.0)):
        res = minnorm.attacks.get(attack)(model, x, y, eps=eps)
        ok = res.success
        assert bool((res.norms[ok] <= eps * (1 + 1e-5)).all()), attack
        assert bool(((res.adversarials >= 0) & (res.adversarials <= 1)).all()), attack
    res = minnorm.attacks.get("convex-min-l2")(model, x, y)
    assert res.success_rate >= 0.75


def test_iterations_help_and_stay_in_the_ball():
    # Alg. 1-n re-linearises: on a curved (ReLU) model it fools at least as often as one step here,
    # and the n steps of eps/n never add up beyond eps
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(64, seed=3, dtype=torch.float64)
    y = true_labels(model, x)
    one = algorithm1(model, x, y, eps=0.05)
    many = algorithm1(model, x, y, eps=0.05, steps=10)
    assert many.success.sum() >= one.success.sum()
    assert bool((lp_norm(many.adversarials - x, INF) <= 0.05 * (1 + 1e-9)).all())


def test_box_aware_l1_step_beats_clipping():
    # Two affine classes, the coordinate with the largest |g| pushed onto the face the step points
    # to: the unboxed l1 step (eq. (6) for p = 1) is clipped away entirely, while the exact step
    # attains the LP optimum of the margin decrease over the l1 ball and the box.
    model, lin, x, y = affine(num_classes=2, batch=4)
    w = (lin.weight[y] - lin.weight[1 - y]).detach()  # gradient of the margin f_y - f_other
    top = w.abs().argmax(1)
    rows = torch.arange(len(y))
    x = x.clone()
    x[rows, 0, top] = torch.where(w[rows, top] < 0, 1.0, 0.0).double()
    naive = (x + holder_direction(-w, 1).unsqueeze(1) * 0.3).clamp(0, 1)
    assert torch.equal(naive, x), "the unboxed l1 step should be clipped to nothing"
    res = gnii_attack(model, x, y, eps=0.3, norm=1, steps=1)
    moved = torch.where(res.success[:, None, None], res.adversarials, x)
    # failed samples come back clean; redo the step directly to measure every sample's decrease
    eta = holder_step_in_box(-w.unsqueeze(1), 1, 0.3, x, (0.0, 1.0))
    decrease = -(w.unsqueeze(1) * eta).flatten(1).sum(1)
    for i in range(len(y)):
        best = -reference_min(w[i].numpy(), x[i, 0].numpy(), 0.3, 1.0, (0.0, 1.0))
        assert decrease[i].item() == pytest.approx(best, rel=1e-9) and best > 0
    torch.testing.assert_close(moved[res.success], (x + eta).clamp(0, 1)[res.success])


@pytest.mark.parametrize("p", [1.0, 2.0, INF])
def test_min_norm_box_modes_against_the_exact_box_minimum(p):
    """Inputs with a third of their coordinates on faces (affine_oracle): no box mode ends below
    the exact box-constrained minimum; box="exact" reaches it (up to the 1e-4 pad) in one step;
    the default is (8) as written for p > 1 and the face mask for p = 1, where (8) stalls."""
    from affine_oracle import affine_model, inputs, untargeted_minimum
    model = affine_model(d=20, k=3)
    x = inputs(8, d=20, edge=True).view(8, 1, 20)
    with torch.no_grad():
        y = model(x).argmax(1)
    oracle = untargeted_minimum(model, x.flatten(1), y, p, (0.0, 1.0))
    runs = {box: convex_min_norm(model, x, y, norm=p, overshoot=0.0, class_choice="linearised", box=box)
            for box in ("none", "faces", "exact")}
    for box, res in runs.items():
        if res.success.any():
            assert bool((res.norms[res.success] >= oracle[res.success] * (1 - 1e-9)).all()), box
    exact = runs["exact"]
    assert bool(exact.success.all()) and bool((exact.info["iterations"] == 1).all())
    assert bool((exact.norms <= oracle * 1.002).all())
    default = convex_min_norm(model, x, y, norm=p, overshoot=0.0, class_choice="linearised")
    torch.testing.assert_close(default.adversarials, runs["faces" if p == 1 else "none"].adversarials, rtol=0, atol=0)
    if p == 1:
        assert not bool(runs["none"].success.any()), "(8) as written should stall on the faces in l1"


def test_bad_options():
    model, _, x, y = affine()
    with pytest.raises(ValueError, match="box"):
        convex_min_norm(model, x, y, box="clip")
    with pytest.raises(ValueError, match="loss"):
        gnii_attack(model, x, y, eps=0.1, loss="hinge")
    with pytest.raises(ValueError, match="scores"):
        algorithm2(model, x, y, eps=0.1, scores="softmax")
    with pytest.raises(ValueError, match="class_choice"):
        convex_min_norm(model, x, y, class_choice="nearest")
    with pytest.raises(ValueError, match="steps"):
        algorithm1(model, x, y, eps=0.1, steps=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([1.0, 1.2, 2.0, 3.0, 8.0, 30.0, INF]),
       st.floats(1e-3, 5.0), st.sampled_from([torch.float32, torch.float64]))
def test_closed_form_beats_random_feasible_points(seed, p, radius, dtype):
    # feasibility, and optimality against 64 random points of the ball-and-box (a random point of
    # the ball clipped into the box stays in the ball, as x lies in the box)
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(3, 9, generator=gen, dtype=torch.float64).to(dtype)
    x = torch.rand(3, 9, generator=gen, dtype=torch.float64).round(decimals=1).to(dtype)
    eta = holder_step_in_box(g, p, radius, x, (0.0, 1.0))
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert bool((lp_norm(eta, p) <= radius * (1 + tol)).all())
    assert bool(((x + eta >= -tol) & (x + eta <= 1 + tol)).all())
    cand = torch.randn(64, 3, 9, generator=gen, dtype=torch.float64).to(dtype)
    cand = (x + cand / lp_norm(cand.flatten(0, 1), p).view(64, 3, 1) * radius).clamp(0, 1) - x
    best = (g * eta).sum(-1)
    assert bool(((g * cand).sum(-1) <= best + tol * (1 + best.abs())).all())
