"""PGD / BIM against closed forms on affine classifiers, plus the attack contract's invariants."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import affine_minimum
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import minnorm
from minnorm.attacks import bim, pgd
from minnorm.core import lp_norm

torch.set_num_threads(1)
NORMS = [1.0, 2.0, math.inf]
F64 = torch.float64


def affine(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype))
    with torch.no_grad():
        model[1].weight.copy_(weight)
        model[1].bias.copy_(bias)
    return model.eval()


def affine_problem(num_classes: int, dim: int = 50, batch: int = 32, seed: int = 0):
    """f(x) = Wx + b with f(0.5) = offsets and inputs within 0.02 of 0.5, so that the minimal
    perturbations stay far inside the box [0, 1] (the oracle ``affine_minimum`` without a box).

    With more than two classes, classes 2.. sit 10 logits lower: their boundaries are far and
    their softmax weight tiny, so gradient ascent on CE heads for the nearest boundary.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num_classes, dim, dtype=F64, generator=g)
    offsets = torch.zeros(num_classes, dtype=F64)
    offsets[2:] = -10.0
    model = affine(w, offsets - 0.5 * w.sum(1))
    x = 0.5 + 0.02 * (2 * torch.rand(batch, 1, dim, dtype=F64, generator=g) - 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def tiny_mlp(dtype=F64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype).eval()


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 5)).to(F64).eval()


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("random_start", [True, False])
def test_binary_affine_closed_form(p, random_start):
    model, x, y = affine_problem(2)
    dmin = affine_minimum(model, x, y, p)
    # l1_sparsity=0.999 moves one coordinate per step, the exact l1 steepest ascent
    res = pgd(model, x, y, eps=1.05 * dmin, norm=p, random_start=random_start, l1_sparsity=0.999)
    assert bool(res.success.all())
    assert bool((res.norms <= 1.05 * dmin * (1 + 1e-9)).all())
    res = pgd(model, x, y, eps=0.95 * dmin, norm=p, random_start=random_start, l1_sparsity=0.999)
    assert not bool(res.success.any())


@pytest.mark.parametrize("p", NORMS)
def test_binary_affine_targeted(p):
    model, x, y = affine_problem(2)
    dmin = affine_minimum(model, x, y, p)
    target = 1 - y
    res = pgd(model, x, target, eps=1.05 * dmin, norm=p, targeted=True, l1_sparsity=0.999)
    assert bool(res.success.all())
    assert bool((model(res.adversarials).argmax(1) == target).all())
    assert not bool(pgd(model, x, target, eps=0.95 * dmin, norm=p, targeted=True).success.any())


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_multiclass_affine_closed_form(p, loss):
    model, x, y = affine_problem(5, seed=1)
    dmin = affine_minimum(model, x, y, p)
    res = pgd(model, x, y, eps=1.05 * dmin, norm=p, loss=loss, l1_sparsity=0.999)
    assert bool(res.success.all())
    assert not bool(pgd(model, x, y, eps=0.95 * dmin, norm=p, loss=loss).success.any())


def test_bim_affine():
    model, x, y = affine_problem(2)
    dmin = affine_minimum(model, x, y, math.inf)
    assert bool(bim(model, x, y, eps=1.05 * dmin).success.all())
    assert not bool(bim(model, x, y, eps=0.95 * dmin).success.any())
    assert minnorm.attacks.ifgsm is bim


@settings(max_examples=25, deadline=None)
@given(p=st.sampled_from(NORMS), eps=st.floats(0.0, 3.0), random_start=st.booleans(),
       loss=st.sampled_from(["ce", "margin"]), bounds=st.sampled_from([(0.0, 1.0), (-1.0, 0.5)]),
       seed=st.integers(0, 2**16))
def test_ball_and_box_respected(p, eps, random_start, loss, bounds, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = bounds
    x = lo + (hi - lo) * torch.rand(6, 1, 12, dtype=F64, generator=g)
    x[:, :, :3] = lo  # coordinates on the box's faces, where clipping binds
    x[:, :, 3:5] = hi
    model = tiny_mlp()
    y = torch.randint(0, 4, (6,), generator=g)
    res = pgd(model, x, y, eps=eps, norm=p, steps=5, random_start=random_start, loss=loss, bounds=bounds,
              generator=g)
    adv = res.adversarials
    assert adv.dtype == x.dtype and adv.shape == x.shape
    assert bool((adv >= lo).all()) and bool((adv <= hi).all())
    assert bool((lp_norm(adv - x, p) <= eps * (1 + 1e-9) + 1e-12).all())
    assert torch.equal(res.success, model(adv).argmax(1) != y)
    assert torch.equal(adv[~res.success], x[~res.success])
    assert bool(torch.isinf(res.norms[~res.success]).all())


@pytest.mark.parametrize("attack, p", [("pgd", 1.0), ("pgd", 2.0), ("pgd", math.inf), ("bim", math.inf)])
def test_batch_equals_one_by_one(attack, p):
    model = tiny_cnn()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 1, 8, 8, dtype=F64, generator=g)
    y = model(x).argmax(1)
    eps = {1.0: 0.5, 2.0: 0.1, math.inf: 0.02}[p] * (0.5 + torch.rand(6, dtype=F64, generator=g))

    def run(i):
        if attack == "bim":
            return bim(model, x[i], y[i], eps=eps[i], steps=6)
        return pgd(model, x[i], y[i], eps=eps[i], norm=p, steps=6, random_start=False, loss="margin")

    full = run(slice(None))
    assert 0 < int(full.success.sum()) < 6, "want a mix of successes and failures"
    for i in range(6):
        one = run(slice(i, i + 1))
        torch.testing.assert_close(one.adversarials, full.adversarials[i:i + 1])
        assert torch.equal(one.success, full.success[i:i + 1])
        assert torch.equal(one.forward_passes, full.forward_passes[i:i + 1])
        assert torch.equal(one.backward_passes, full.backward_passes[i:i + 1])


@pytest.mark.parametrize("p", NORMS)
def test_restarts_never_reduce_success(p):
    model = tiny_cnn(seed=1)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(16, 1, 8, 8, dtype=F64, generator=g)
    y = model(x).argmax(1)
    eps = {1.0: 1.0, 2.0: 0.2, math.inf: 0.05}[p]
    one = pgd(model, x, y, eps=eps, norm=p, steps=4, generator=torch.Generator().manual_seed(0))
    many = pgd(model, x, y, eps=eps, norm=p, steps=4, restarts=4, generator=torch.Generator().manual_seed(0))
    assert bool((many.success >= one.success).all())
    # the first run draws the same start, so its successes are kept as they were
    assert torch.equal(many.adversarials[one.success], one.adversarials[one.success])
    assert bool((many.forward_passes[one.success] == one.forward_passes[one.success]).all())


def test_pass_counts_and_early_stop():
    model, x, y = affine_problem(2, batch=4)
    dmin = affine_minimum(model, x, y, 2.0)
    labels = y.clone()
    labels[0] = 1 - y[0]  # misclassified already: clean pass + final pass, nothing else
    eps = torch.stack([dmin[0], 5 * dmin[1], 1.05 * dmin[2], 0.5 * dmin[3]])
    res = pgd(model, x, labels, eps=eps, norm=2, steps=10, restarts=3)
    assert res.success.tolist() == [True, True, True, False]
    assert res.norms[0] == 0 and torch.equal(res.adversarials[0], x[0])
    assert res.forward_passes[0] == 2 and res.backward_passes[0] == 0
    assert res.forward_passes[3] == 1 + 3 * 11 + 1 and res.backward_passes[3] == 3 * 10
    assert res.backward_passes[1] < res.backward_passes[2] < res.backward_passes[3]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"eps": -0.1}, ValueError, "eps"), ({"eps": math.nan}, ValueError, "eps"),
    ({"eps": torch.ones(5)}, ValueError, "eps"), ({"steps": 0}, ValueError, "steps"),
    ({"restarts": 0}, ValueError, "restarts"), ({"loss": "dlr"}, ValueError, "loss"),
    ({"l1_sparsity": 1.0}, ValueError, "l1_sparsity"), ({"step_size": 0.0}, ValueError, "step_size"),
    ({"restarts": 2, "random_start": False}, ValueError, "restarts"), ({"norm": 3}, NotImplementedError, "norm"),
])
def test_bad_arguments(kwargs, error, match):
    model = tiny_mlp()
    with pytest.raises(error, match=match):
        pgd(model, torch.rand(3, 1, 12, dtype=F64), torch.tensor([0, 1, 2]), **{"eps": 0.1, **kwargs})
