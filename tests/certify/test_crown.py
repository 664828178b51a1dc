"""Back-substitution bounds (certify/crown.py): every bound contains the network's values at points
sampled from the ball, the float32 search's radius is re-proven in float64, the certified radius
stays below the exact minimum and every attack, and PGD cannot succeed inside it."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_cnn, tiny_inputs, tiny_mlp, tiny_resnet, true_labels
from torch import nn

import minnorm
import minnorm.data
from minnorm import certify
from minnorm.certify.bounds import margin_spec, propagate
from minnorm.certify.crown import backward_bounds, certified_radius_fast, make_plan
from minnorm.models.architectures import Normalize

NORMS = [math.inf, 2.0, 1.0]


def _sibling(name: str):
    """A sibling test module (pytest imports with --import-mode=importlib: no plain import)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"_certify_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_bounds_tests, _exact_tests = _sibling("test_bounds"), _sibling("test_exact")
_affine, _ball_samples, _closed_form = _bounds_tests._affine, _bounds_tests._ball_samples, _bounds_tests._closed_form
_check_bracket = _exact_tests._check_bracket


def _chain() -> nn.Module:
    """Every layer kind of the back-substitution: Normalize, Conv (padding, stride), eval
    BatchNorm, LeakyReLU, max-pool after a ReLU and directly after a convolution (overlapping
    windows), Flatten, Linear; 1x8x8 inputs, 4 classes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12)
        net = nn.Sequential(Normalize([0.5], [0.25]), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
                            nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                            nn.MaxPool2d(2, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(6, 8), nn.ReLU(),
                            nn.Linear(8, 4))
        net[2].running_mean.uniform_(-0.2, 0.2)
        net[2].running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("make", [tiny_mlp, tiny_cnn, _chain])
def test_backward_bounds_contain_sampled_points(make, p):
    model = make()
    g = certify.build_graph(model)
    plan = make_plan(g, (1, 8, 8), torch.float64)
    assert plan is not None
    x0 = tiny_inputs(2).double()
    y = g.forward(x0)[-1].argmax(1)
    r = {math.inf: 0.05, 2.0: 0.5, 1.0: 2.0}[p]
    res, _ = backward_bounds(plan, x0, torch.full((2,), r, dtype=torch.float64), p, (0.0, 1.0), margin_spec(y, 4))
    for b in range(2):
        pts = _ball_samples(x0[b:b + 1], p, r, 300, torch.Generator().manual_seed(b))
        vals = g.forward(pts)
        for i, (lo, up) in res.neurons.items():
            v = vals[g.ops[i].inputs[0]]
            assert bool((v >= lo[b] - 1e-9).all()) and bool((v <= up[b] + 1e-9).all()), g.ops[i].name
        margins = vals[-1][:, y[b], None] - vals[-1]
        assert bool((margins >= res.spec_lower[b] - 1e-9).all())
        a, c = res.spec_form  # the input-level margin forms are valid lower bounds too
        forms = torch.einsum("nk,ks->ns", pts.flatten(1), a[b]) + c[b]
        assert bool((margins >= forms - 1e-9).all())


@pytest.mark.parametrize("p", NORMS)
def test_backward_tighter_than_forward_on_mlp_tiny(p):
    """Back-substitution never loses to the forward form here (it picks each relaxation after the
    weights have cancelled): margin bounds at least as high on every sample and class."""
    model = minnorm.models.load_shipped("mlp-tiny")
    x, y = minnorm.data.load_sample()
    g = certify.build_graph(model)
    x0 = x[:4].double()
    r = torch.full((4,), {math.inf: 0.01, 2.0: 0.3, 1.0: 1.5}[p], dtype=torch.float64)
    fwd = propagate(g, x0, r, p, (0.0, 1.0), margin_spec(y[:4], 10))
    back, _ = backward_bounds(make_plan(g, tuple(x0.shape[1:]), torch.float64), x0, r, p, (0.0, 1.0), margin_spec(y[:4], 10))
    assert bool((back.spec_lower >= fwd.spec_lower - 1e-9).all())


@pytest.mark.parametrize("p", NORMS)
def test_affine_classifier_radius_is_closed_form(p):
    model = _affine()
    x = tiny_inputs(5)
    y = true_labels(model, x)
    truth = _closed_form(model, x, y, p, (0.0, 1.0))
    got = certified_radius_fast(certify.build_graph(model), x.double(), y, p, (0.0, 1.0), truth * 1.5,
                                rel_tol=1e-6, max_rounds=20)
    assert bool((got <= truth * (1 + 1e-9)).all())
    torch.testing.assert_close(got, truth, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("p", NORMS)
def test_radius_reproven_in_float64(p):
    """The radius the float32 search returns is proven again from scratch by a float64 propagation
    (no float32 bounds reused)."""
    model = _chain()
    g = certify.build_graph(model)
    x = tiny_inputs(4).double()
    y = g.forward(x)[-1].argmax(1)
    high = torch.full((4,), {math.inf: 0.2, 2.0: 2.0, 1.0: 8.0}[p], dtype=torch.float64)
    r = certified_radius_fast(g, x, y, p, (0.0, 1.0), high)
    assert bool((r > 0).all())
    res, _ = backward_bounds(make_plan(g, (1, 8, 8), torch.float64), x, r, p, (0.0, 1.0), margin_spec(y, 4))
    assert bool((res.spec_lower.masked_fill(torch.eye(4, dtype=torch.bool)[y], 1.0) > 0).all())


@pytest.mark.parametrize("p", NORMS)
def test_chain_radius_below_attacks_and_pgd(p):
    """On the chain net (every layer kind): the certified radius is below every minimal-norm
    attack's norm, and PGD with restarts at 0.999x the radius never succeeds. (Its exact minima
    are out of the MILP's reach in a test's time; tiny_cnn and the mini conv net of test_exact
    check certified <= exact.)"""
    model = _chain()
    x = tiny_inputs(4)
    y = true_labels(model, x)
    cert = certify.lower_bound(model, x, y, norm=p, attack=[s.name for s in _exact_tests._attacks(p)][:1])
    assert "backward" in cert.info["method"] and bool((cert.lower > 0).all())
    for spec in _exact_tests._attacks(p):
        res = spec(model, x, y, **spec.quick)
        norms = torch.where(res.success, res.norms.double(), torch.full_like(cert.lower, math.inf))
        assert bool((cert.lower <= norms).all()), (spec.name, cert.lower, norms)
    name = {math.inf: "pgd-linf", 2.0: "pgd-l2", 1.0: "pgd-l1"}[p]
    for seed in range(2):
        res = minnorm.attacks.get(name)(model, x, y, eps=(0.999 * cert.lower).float(), steps=40, restarts=4,
                                       generator=torch.Generator().manual_seed(seed))
        assert not bool(res.success.any())


def test_unsupported_graph_falls_back():
    model = tiny_resnet()
    g = certify.build_graph(model)
    assert make_plan(g, (1, 8, 8)) is None
    x = tiny_inputs(2, dtype=torch.float64)
    y = true_labels(model, x)
    res = certify.lower_bound(model, x, y, norm="linf", upper=torch.full((2,), 0.5))
    assert "forward" in res.info["method"]
    with pytest.raises(ValueError, match="chain"):
        certify.lower_bound(model, x, y, norm="linf", upper=torch.full((2,), 0.5), method="backward")


def test_pgd_fails_inside_certified_radius_cnn():
    """The shipped cnn: PGD with restarts at 0.999x the (backward) certified Linf radius never
    flips the prediction, and the radius stays below the attack's norm."""
    model = minnorm.models.load_shipped("cnn")
    x, y = minnorm.data.load_sample()
    x, y = x[:2], y[:2]
    cert = certify.lower_bound(model, x, y, norm="linf")
    assert "backward" in cert.info["method"]
    ok = torch.tensor([s != "misclassified" for s in cert.status])
    assert bool((cert.lower[ok] > 0).all()) and bool((cert.lower <= cert.upper).all())
    x, y, r = x[ok], y[ok], cert.lower[ok]
    for seed in range(2):
        res = minnorm.attacks.get("pgd-linf")(model, x, y, eps=(0.999 * r).float(), steps=40, restarts=4,
                                             generator=torch.Generator().manual_seed(seed))
        assert not bool(res.success.any())
