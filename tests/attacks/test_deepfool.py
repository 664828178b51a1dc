"""DeepFool: closed-form oracle on affine classifiers, batching, counting, errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import minnorm
from minnorm.attacks.deepfool import deepfool


def affine_problem(num_classes: int, batch: int = 6, dim: int = 20, seed: int = 0, dtype=torch.float64):
    """An affine classifier and inputs near the box centre, so the minimal perturbation stays
    inside the box and equals the nearest hyperplane distance."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(dim, num_classes).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(num_classes, dim, generator=g, dtype=dtype))
        lin.bias.copy_(0.3 * torch.randn(num_classes, generator=g, dtype=dtype))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = (0.5 + 0.02 * torch.randn(batch, 1, dim, generator=g, dtype=dtype)).clamp(0, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, lin, x, y


def affine_oracle(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    """min over l != y of (f_y - f_l) / ||w_y - w_l||_q."""
    q = 1.0 if math.isinf(p) else p / (p - 1)
    with torch.no_grad():
        f = lin(x.flatten(1))
        w = lin.weight
        dist = (f.gather(1, y[:, None]) - f) / torch.linalg.vector_norm(w[y][:, None] - w[None], ord=q, dim=2)
    dist[torch.arange(len(y)), y] = math.inf
    return dist.min(1).values


def tiny_cnn(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 6))
    with torch.no_grad():  # default init is nearly input-blind at this size: sharpen it
        for layer in model:
            if hasattr(layer, "weight"):
                layer.weight.mul_(4)
                layer.bias.zero_()
    return model.to(dtype).eval()


@pytest.mark.parametrize("p", [2.0, math.inf])
@pytest.mark.parametrize("num_classes", [2, 5])
def test_affine_oracle_in_one_step(p, num_classes):
    model, lin, x, y = affine_problem(num_classes)
    oracle = affine_oracle(lin, x, y, p)
    res = deepfool(model, x, y, norm=p, overshoot=0.0)
    assert res.success.all()
    assert (res.info["iterations"] == 1).all()
    assert torch.all(res.norms >= oracle * (1 - 1e-9))
    assert torch.all(res.norms <= oracle * 1.01)
    # With the default overshoot the one step is exactly (1 + 0.02) (d + 1e-4) long.
    res = deepfool(model, x, y, norm=p)
    assert (res.info["iterations"] == 1).all()
    torch.testing.assert_close(res.norms, 1.02 * (oracle + 1e-4), rtol=1e-9, atol=0)


def test_binary_closed_form():
    model, lin, x, y = affine_problem(2, batch=4)
    w = lin.weight[1] - lin.weight[0]
    oracle = (lin(x.flatten(1)) @ torch.tensor([1.0, -1.0], dtype=x.dtype)).abs() / w.norm()
    res = deepfool(model, x, y, norm=2, overshoot=0.0)
    torch.testing.assert_close(res.norms, oracle.detach() + 1e-4, rtol=1e-9, atol=0)


def test_pass_counts_and_early_stop():
    model, lin, x, y = affine_problem(5)
    y = y.clone()
    y[0] = (y[0] + 1) % 5  # misclassified: already adversarial, costs nothing beyond clean + final pass
    res = deepfool(model, x, y, candidates=3)
    assert res.forward_passes[0] == 2 and res.backward_passes[0] == 0 and res.norms[0] == 0
    # One step: forward + (candidates - 1) backward, then a forward that finds it adversarial.
    assert (res.forward_passes[1:] == 4).all() and (res.backward_passes[1:] == 2).all()
    assert res.info["candidates"].shape == (6, 2)


def test_batch_equals_one_by_one():
    model = tiny_cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64)
    y = model(x).argmax(1)
    y[2] = (y[2] + 1) % 6
    batch = deepfool(model, x, y, norm=math.inf, candidates=4)
    assert batch.success.sum() >= 4
    for i in range(5):
        one = deepfool(model, x[i:i + 1], y[i:i + 1], norm=math.inf, candidates=4)
        torch.testing.assert_close(one.adversarials[0], batch.adversarials[i])
        assert one.forward_passes[0] == batch.forward_passes[i]
        assert one.backward_passes[0] == batch.backward_passes[i]
        assert one.info["iterations"][0] == batch.info["iterations"][i]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cnn_dtypes_box_and_no_mutation(dtype):
    model = tiny_cnn(dtype=dtype)
    x = torch.rand(4, 1, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    x_copy, y_copy = x.clone(), y.clone()
    params = [q.clone() for q in model.parameters()]
    res = deepfool(model, x, y, norm=2)
    assert res.adversarials.dtype == dtype and res.adversarials.shape == x.shape
    assert res.success.all()
    assert res.adversarials.min() >= 0 and res.adversarials.max() <= 1
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert all(q.grad is None for q in model.parameters())
    torch.testing.assert_close(res.norms, minnorm.core.lp_norm(res.adversarials - x, 2))


def test_empty_and_single_batch():
    model = tiny_cnn()
    res = deepfool(model, torch.zeros(0, 1, 8, 8, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    assert res.adversarials.shape == (0, 1, 8, 8) and res.success.shape == (0,)
    x = torch.full((1, 1, 8, 8), 0.5, dtype=torch.float64)
    res = deepfool(model, x, model(x).argmax(1))
    assert res.adversarials.shape == x.shape


@pytest.mark.parametrize("p", [2.0, math.inf])
def test_exact_box_step_reaches_the_box_minimum_in_one_step(p):
    """With coordinates on the faces, box="exact" lands on the exact box-constrained minimum
    (affine_oracle, checked against HiGHS) in one step, up to the 1e-4 pad; the paper's step
    (default) needs several and is never below that minimum either."""
    from affine_oracle import affine_model, inputs, untargeted_minimum
    model = affine_model(d=20, k=3)
    x = inputs(8, d=20, edge=True).view(8, 1, 20)
    with torch.no_grad():
        y = model(x).argmax(1)
    oracle = untargeted_minimum(model, x.flatten(1), y, p, (0.0, 1.0))
    exact = deepfool(model, x, y, norm=p, overshoot=0.0, box="exact")
    assert bool(exact.success.all()) and bool((exact.info["iterations"] == 1).all())
    assert bool((exact.norms >= oracle * (1 - 1e-9)).all()) and bool((exact.norms <= oracle * 1.002).all())
    paper = deepfool(model, x, y, norm=p, overshoot=0.0)
    assert bool(paper.success.all()) and bool((paper.norms >= oracle * (1 - 1e-9)).all())
    assert bool((paper.info["iterations"] > 1).any())


def test_errors():
    model, _, x, y = affine_problem(3)
    with pytest.raises(ValueError, match="box"):
        deepfool(model, x, y, box="clip")
    with pytest.raises(NotImplementedError):
        deepfool(model, x, y, targeted=True)
    for kwargs, name in [({"max_iterations": 0}, "max_iterations"), ({"overshoot": -0.1}, "overshoot"),
                         ({"candidates": 1}, "candidates")]:
        with pytest.raises(ValueError, match=name):
            deepfool(model, x, y, **kwargs)


def test_registry():
    for name, p in (("deepfool-l2", 2.0), ("deepfool-linf", math.inf)):
        spec = minnorm.attacks.get(name)
        assert spec.norm == p and spec.minimal and not spec.targeted
        model, lin, x, y = affine_problem(4)
        res = spec(model, x, y, **spec.quick)
        torch.testing.assert_close(res.norms, 1.02 * (affine_oracle(lin, x, y, p) + 1e-4), rtol=1e-9, atol=0)
