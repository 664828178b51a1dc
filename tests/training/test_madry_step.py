"""Madry training's PGD and the registered pgd-* attack take the same step from the same point
(issue 11: pgd-l1 in training was not pgd-l1 in evaluation)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from minnorm.attacks import pgd
from minnorm.training.pgd import madry_pgd

F64 = torch.float64


class Recorder(nn.Module):
    """The points the model is asked about, in order."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def _setup():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).to(F64).eval()
    x = torch.rand(6, 1, 12, dtype=F64)
    x[:, :, :3] = 0.0  # some coordinates on the box's faces, where the l1 direction must skip them
    x[:, :, 3:5] = 1.0
    with torch.no_grad():
        y = net(x).argmax(1)  # every sample correctly classified: the attack steps them all
    return net, x, y


@pytest.mark.parametrize("norm,eps,alpha", [(1, 1.0, 0.5), (2, 0.3, 0.2), (math.inf, 0.05, 0.03)])
@pytest.mark.parametrize("random_start", [False, True])
def test_training_and_attack_take_the_same_step(norm, eps, alpha, random_start):
    net, x, y = _setup()
    attack, train = Recorder(net).eval(), Recorder(net).eval()
    kw = dict(eps=eps, norm=norm, steps=1, step_size=alpha, random_start=random_start, l1_sparsity=0.5)
    pgd(attack, x, y, generator=torch.Generator().manual_seed(7), **kw)
    out = madry_pgd(train, x, y, generator=torch.Generator().manual_seed(7), **kw)
    # attack: clean logits, the gradient point, the stepped point (then the result's check);
    # training: the gradient point
    clean, start, stepped = attack.seen[:3]
    assert torch.equal(clean, x) and torch.equal(train.seen[0], start)
    with torch.no_grad():
        going = net(start).argmax(1) == y  # a random start may fool some: the attack stops those
    assert int(going.sum()) >= 3
    assert torch.equal(stepped, out[going]) and not torch.equal(out, start)


def test_training_l1_step_is_sparse_not_one_coordinate():
    net, x, y = _setup()
    out = madry_pgd(net, x, y, eps=1.0, norm=1, steps=1, step_size=0.5, random_start=False, l1_sparsity=0.5)
    moved = ((out - x).flatten(1) != 0).sum(1)
    assert bool((moved > 1).all())  # Hölder's l1 direction would move one coordinate
    assert int(moved.max()) <= 6  # the top half of 12 coordinates
