"""Carlini-Wagner L2: closed-form oracle on affine classifiers, best-not-last, batching, errors."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import affine_minimum
from torch import nn

import minnorm
from minnorm.attacks.carlini_wagner import carlini_wagner_l2


def affine_problem(num_classes: int, batch: int = 6, dim: int = 20, seed: int = 0, dtype=torch.float64):
    """An affine classifier and inputs near the box centre, where the minimal L2 perturbation
    (``affine_minimum`` without a box) stays inside the box."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(dim, num_classes).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(num_classes, dim, generator=g, dtype=dtype))
        lin.bias.copy_(0.3 * torch.randn(num_classes, generator=g, dtype=dtype))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = (0.5 + 0.02 * torch.randn(batch, 1, dim, generator=g, dtype=dtype)).clamp(0, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, affine_minimum(model, x, y, 2)


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


def cnn_batch(n: int = 4, dtype=torch.float64, seed: int = 1):
    model = tiny_cnn(dtype=dtype)
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("num_classes", [2, 5])
def test_affine_oracle(num_classes):
    model, x, y, oracle = affine_problem(num_classes)
    res = carlini_wagner_l2(model, x, y, binary_search_steps=9, max_iterations=200)
    assert res.success.all()
    assert torch.all(res.norms >= oracle * (1 - 1e-6))
    assert torch.all(res.norms <= oracle * 1.02)


def test_targeted_binary_oracle():
    # With two classes, targeting the other class is the untargeted problem.
    model, x, y, oracle = affine_problem(2)
    res = carlini_wagner_l2(model, x, 1 - y, targeted=True, binary_search_steps=9, max_iterations=200)
    assert res.success.all() and torch.all(res.norms <= oracle * 1.02)


def test_targeted_cnn():
    model, x, y = cnn_batch()
    target = (y + 1) % 6
    res = carlini_wagner_l2(model, x, target, targeted=True, binary_search_steps=4, max_iterations=60)
    assert res.success.all()
    assert torch.equal(model(res.adversarials).argmax(1), target)


class Recorder(nn.Module):
    """Wraps a model and keeps every batch it sees with its logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.calls.append((x.detach().clone(), out.detach().clone()))
        return out


@pytest.mark.parametrize("searches, const", [(1, 1.0), (3, 0.01)])
def test_returns_best_not_last(searches, const):
    model, x, y = cnn_batch(1)
    rec = Recorder(model).eval()
    res = carlini_wagner_l2(rec, x, y, binary_search_steps=searches, max_iterations=40, initial_const=const,
                            abort_early=False)
    assert res.success.all()
    iterates = rec.calls[1:-1]  # neither the clean nor the final pass
    norms = torch.stack([(xi - x).flatten().norm() if bool(out.argmax(1) != y) else torch.tensor(math.inf)
                         for xi, out in iterates]).to(x.dtype)
    torch.testing.assert_close(res.norms[0], norms.min())
    if searches == 1:  # the check means something: Adam overshoots, the last adversarial is farther
        assert norms[torch.isfinite(norms)][-1] > 1.05 * norms.min()


def test_batch_equals_one_by_one():
    model, x, y = cnn_batch(4)
    y[1] = (y[1] + 1) % 6  # misclassified already: norm 0, no passes beyond clean + final
    kwargs = dict(binary_search_steps=3, max_iterations=30)
    batch = carlini_wagner_l2(model, x, y, **kwargs)
    assert batch.norms[1] == 0 and batch.forward_passes[1] == 2 and batch.backward_passes[1] == 0
    for i in range(4):
        one = carlini_wagner_l2(model, x[i:i + 1], y[i:i + 1], **kwargs)
        torch.testing.assert_close(one.adversarials[0], batch.adversarials[i])
        assert one.forward_passes[0] == batch.forward_passes[i]
        assert one.backward_passes[0] == batch.backward_passes[i]
        torch.testing.assert_close(one.info["const"][0], batch.info["const"][i])


def test_early_abort_saves_passes():
    model, x, y, _ = affine_problem(5, batch=3)
    full = carlini_wagner_l2(model, x, y, binary_search_steps=2, max_iterations=100, abort_early=False)
    assert (full.forward_passes == 2 + 2 * 100).all() and (full.backward_passes == 200).all()
    short = carlini_wagner_l2(model, x, y, binary_search_steps=2, max_iterations=100)
    assert (short.forward_passes < full.forward_passes).all()


def test_confidence_margin():
    model, x, y = cnn_batch(3)
    res = carlini_wagner_l2(model, x, y, binary_search_steps=4, max_iterations=60, confidence=1.0)
    assert res.success.all()
    logits = model(res.adversarials)
    own = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    assert torch.all(other - own >= 1.0 - 1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inputs_on_the_box_faces(dtype):
    # atanh must stay finite on the faces of the box (dtypes, mutation and the box itself are the
    # contract suite's, tests/test_contract.py)
    model, x, y = cnn_batch(3, dtype=dtype)
    x[0, 0, :2] = 0.0
    x[1, 0, :2] = 1.0
    y = model(x).argmax(1)
    res = carlini_wagner_l2(model, x, y, binary_search_steps=3, max_iterations=40, initial_const=0.1)
    assert bool(res.success.all()) and bool(torch.isfinite(res.adversarials).all())
    torch.testing.assert_close(res.norms, minnorm.core.lp_norm(res.adversarials - x, 2))


def test_bad_hyper_parameters():
    model, x, y, _ = affine_problem(3)
    for kwargs, name in [({"binary_search_steps": 0}, "binary_search_steps"), ({"max_iterations": 0}, "max_iterations"),
                         ({"learning_rate": 0}, "learning_rate"), ({"initial_const": -1}, "initial_const"),
                         ({"confidence": -1}, "confidence")]:
        with pytest.raises(ValueError, match=name):
            carlini_wagner_l2(model, x, y, **kwargs)


def test_registry():
    spec = minnorm.attacks.get("cw-l2")
    assert spec.norm == 2 and spec.minimal and spec.targeted
    model, x, y, oracle = affine_problem(4)
    res = spec(model, x, y, **spec.quick)
    assert res.success.all() and torch.all(res.norms <= oracle * 1.2)


def test_failed_rounds_continue_where_they_ended():
    # A binary affine model whose boundary is 1.5 away in L2 from inputs at the box centre: 30
    # Adam steps at lr 0.01 (each coordinate moves at most ~0.15) never get there, so with the
    # authors' reset every round fails; continuing failed rounds adds their paths up and
    # crosses, never below the closed-form minimum.
    dim, dist = 64, 1.5
    g = torch.Generator().manual_seed(3)
    w = torch.randn(dim, generator=g, dtype=torch.float64)
    lin = nn.Linear(dim, 2).to(torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([w, torch.zeros_like(w)]))
        lin.bias.copy_(torch.tensor([dist * float(w.norm()), 0.0]))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.full((3, 1, dim), 0.5, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    kwargs = dict(binary_search_steps=6, max_iterations=30, initial_const=10.0, abort_early=False)
    reset = carlini_wagner_l2(model, x, y, continue_failed=False, **kwargs)
    resumed = carlini_wagner_l2(model, x, y, **kwargs)
    assert not bool(reset.success.any())
    assert bool(resumed.success.all())
    assert torch.all(resumed.norms >= dist * (1 - 1e-6))
