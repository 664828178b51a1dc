"""The piecewise-affine view: frozen networks, region constraints, supported and refused layers."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_cnn, tiny_inputs, tiny_mlp, tiny_resnet
from torch import nn

from minnorm.attacks._piecewise import PiecewiseAffine, RegionOperator
from minnorm.models import Normalize


def leaky_pool_net() -> nn.Module:
    """Normalize, LeakyReLU, a padded overlapping max-pool, average pooling, BatchNorm and Dropout."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        net = nn.Sequential(Normalize([0.5], [0.25]), nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3),
                            nn.LeakyReLU(0.1), nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(2),
                            nn.Flatten(), nn.Dropout(0.5), nn.Linear(12, 6), nn.ReLU(inplace=True), nn.Linear(6, 4))
        net[2].running_mean.uniform_(-0.5, 0.5)
        net[2].running_var.uniform_(0.5, 2.0)
    return net.double().eval()


MODELS = {"mlp": lambda: tiny_mlp(dtype=torch.float64), "cnn-maxpool": lambda: tiny_cnn(dtype=torch.float64),
          "leaky-pool-bn": leaky_pool_net, "resnet": tiny_resnet}


def operator(net: PiecewiseAffine, y: torch.Tensor, x0: torch.Tensor, **kw) -> RegionOperator:
    logits, region = net.capture(y)
    k = logits.shape[1]
    decision = (torch.eye(k, dtype=y.dtype)[1] - torch.eye(k, dtype=y.dtype)[0]).expand(y.shape[0], 1, k)
    return RegionOperator(net, region, y, x0, decision.contiguous(), **kw)


@pytest.mark.parametrize("name", list(MODELS))
def test_frozen_network_is_affine_and_exact_at_the_representative(name):
    model = MODELS[name]()
    y, v = tiny_inputs(4, dtype=torch.float64), tiny_inputs(4, seed=1, dtype=torch.float64) - 0.5
    with PiecewiseAffine(model) as net:
        logits, region = net.capture(y)
        frozen = net.frozen(region)
        torch.testing.assert_close(frozen(y)[0], model(y))
        torch.testing.assert_close(logits, model(y))
        # affine: values along a line are linear in t, even far outside the region
        f = [torch.cat([out, *cons], 1) for out, cons in (frozen(y + t * v) for t in (0.0, 1.0, 3.0))]
        torch.testing.assert_close(f[2] - f[0], 3 * (f[1] - f[0]))
        cons = frozen(y)[1]
        assert all(bool((c >= 0).all()) for c in cons), "the representative violates its own region"
    assert not model._forward_hooks and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not any("forward" in m.__dict__ for m in model.modules()), "a shadowed forward was left behind"
    with torch.no_grad():
        torch.testing.assert_close(model(y), logits)  # the model itself is unchanged


@pytest.mark.parametrize("name", list(MODELS))
def test_constraints_describe_the_region(name):
    """A nearby point has the same activation pattern iff it satisfies every region constraint."""
    model = MODELS[name]()
    y = tiny_inputs(1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    radius = torch.logspace(-6, -1, 64, dtype=torch.float64).view(-1, 1, 1, 1)  # from inside to far outside
    pts = y + radius * torch.randn(64, *y.shape[1:], generator=g, dtype=torch.float64)
    with PiecewiseAffine(model) as net:
        _, region = net.capture(y)
        _, others = net.capture(pts)
        op = operator(net, y.expand_as(pts).contiguous(), pts)
        inside = op.offsets()[:, 1:].amin(1) >= 0  # F(pts) of y's frozen network, decision row left out
    same = (region.hashes() == others.hashes()).all(1)
    assert torch.equal(inside, same)
    assert 0 < int(same.sum()) < len(pts), "the test needs points inside and outside the region"


@pytest.mark.parametrize("name", list(MODELS))
def test_products_are_transposes_and_match_forward_mode(name):
    model = MODELS[name]()
    y = tiny_inputs(3, dtype=torch.float64)
    x0 = tiny_inputs(3, seed=2, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    with PiecewiseAffine(model) as net:
        op = operator(net, y, x0)
        v = torch.randn(y.shape, generator=g, dtype=y.dtype)
        mu = torch.randn(op.value.shape, generator=g, dtype=y.dtype)
        av, atmu = op.matvec(v), op.rmatvec(mu)
        torch.testing.assert_close((av * mu).sum(1), (v * atmu).flatten(1).sum(1))
        fwd = operator(net, y, x0, forward_mode=True)
        torch.testing.assert_close(fwd.matvec(v), av)
        assert op.sizes[0] == 1 and sum(op.sizes) == op.value.shape[1]
        sub = op.restrict(torch.tensor([2, 0]))
        torch.testing.assert_close(sub.matvec(v[[2, 0]]), av[[2, 0]])


def test_hashes_tell_patterns_apart():
    model = tiny_mlp(dtype=torch.float64)
    y = tiny_inputs(6, dtype=torch.float64)
    with PiecewiseAffine(model) as net:
        _, a = net.capture(torch.cat([y, y]))
    h = a.hashes()
    assert torch.equal(h[:6], h[6:])
    masks = a.patterns[0]
    differ = (masks[:, None] != masks[None]).flatten(2).any(2)
    assert torch.equal((h[:, None] != h[None]).any(2), differ)


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 64))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T


@pytest.mark.parametrize("model,pattern,error", [
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Tanh(), nn.Linear(4, 2)), "Tanh", TypeError),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Sigmoid()), "Sigmoid", TypeError),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, ceil_mode=True)), "ceil_mode", TypeError),
    (nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64).train(), nn.Linear(64, 2)), "train mode", ValueError),
    (nn.Sequential(nn.Flatten(), nn.Dropout(0.1).train(), nn.Linear(64, 2)), "Dropout", ValueError),
    (Custom(), "Custom", TypeError),
])
def test_unsupported_layers_raise(model, pattern, error):
    with pytest.raises(error, match=pattern):
        PiecewiseAffine(model)
