"""Random noise baseline and the samplers behind PGD's random start."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

import minnorm
from minnorm.attacks import random_noise
from minnorm.attacks.noise import lp_ball_noise, lp_sphere_noise
from minnorm.core import lp_norm

torch.set_num_threads(1)
NORMS = [1.0, 2.0, math.inf]
F64 = torch.float64


class Radial(nn.Module):
    """Class 0 within lp distance ``c / k`` of ``centre``, class 1 beyond: every perturbation of
    norm eps from the centre flips it exactly when eps > c / k, whatever its direction."""

    def __init__(self, p: float, c: float = 1.0, k: float = 4.0, centre: float = 0.5):
        super().__init__()
        self.p, self.c, self.k, self.centre = p, c, k, centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z0 = self.c - self.k * lp_norm(x - self.centre, self.p)
        return torch.stack([z0, torch.zeros_like(z0)], dim=1)


@pytest.mark.parametrize("p", NORMS)
def test_sphere_noise_exact_radius(p):
    like = torch.zeros(64, 3, 5, 5, dtype=F64)
    r = torch.linspace(0.1, 2.0, 64, dtype=F64)
    noise = lp_sphere_noise(like, p, r, torch.Generator().manual_seed(0))
    torch.testing.assert_close(lp_norm(noise, p), r)
    if math.isinf(p):
        torch.testing.assert_close(noise.abs(), r.view(-1, 1, 1, 1).expand_as(noise))


@pytest.mark.parametrize("p", NORMS)
def test_ball_noise_is_uniform(p):
    """Kolmogorov-Smirnov checks of the laws implied by uniformity on the unit ball in d dims:
    linf: coordinates U(-1, 1); l2: ||x||^d ~ U(0, 1); l1: P(|x_1| > t) = (1 - t)^d."""
    d = 6
    x = lp_ball_noise(torch.zeros(4000, d, dtype=F64), p, torch.ones(4000, dtype=F64), torch.Generator().manual_seed(1))
    assert bool((lp_norm(x, p) <= 1 + 1e-12).all())
    if math.isinf(p):
        u = (x.flatten() + 1) / 2
    elif p == 2:
        u = lp_norm(x, 2) ** d
    else:
        u = 1 - (1 - x[:, 0].abs()) ** d
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3


def test_l1_sphere_noise_is_uniform_on_faces():
    # on the unit l1 sphere in d dims, uniform over each face: P(|x_1| > t) = (1 - t)^(d - 1)
    d = 6
    x = lp_sphere_noise(torch.zeros(4000, d, dtype=F64), 1.0, torch.ones(4000, dtype=F64),
                        torch.Generator().manual_seed(2))
    assert stats.kstest((1 - (1 - x[:, 0].abs()) ** (d - 1)).numpy(), "uniform").pvalue > 1e-3


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("targeted", [False, True])
def test_radial_model_closed_form(p, targeted):
    model = Radial(p).eval()
    x = torch.full((8, 1, 4, 4), 0.5, dtype=F64)
    labels = torch.ones(8, dtype=torch.long) if targeted else torch.zeros(8, dtype=torch.long)
    res = random_noise(model, x, labels, eps=1.05 / 4, norm=p, targeted=targeted)
    assert bool(res.success.all())
    torch.testing.assert_close(res.norms, torch.full((8,), 1.05 / 4, dtype=F64))
    if math.isinf(p):
        torch.testing.assert_close((res.adversarials - x).abs(), torch.full_like(x, 1.05 / 4))
    res = random_noise(model, x, labels, eps=0.95 / 4, norm=p, targeted=targeted, trials=5)
    assert not bool(res.success.any())
    assert bool((res.forward_passes == 1 + 5 + 1).all()) and bool((res.backward_passes == 0).all())


def test_trials_never_reduce_success_and_stop_early():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).to(F64).eval()
    with torch.no_grad():  # logits 0 at the centre of the box, where the inputs are
        model[1].weight.normal_()
        model[1].bias.copy_(-0.5 * model[1].weight.sum(1))
    g = torch.Generator().manual_seed(3)
    x = 0.3 + 0.4 * torch.rand(64, 1, 12, dtype=F64, generator=g)
    y = model(x).argmax(1)
    one = random_noise(model, x, y, eps=0.2, norm=2, generator=torch.Generator().manual_seed(0))
    many = random_noise(model, x, y, eps=0.2, norm=2, trials=8, generator=torch.Generator().manual_seed(0))
    assert 0 < int(one.success.sum()) < int(many.success.sum()) < 64
    assert torch.equal(many.adversarials[one.success], one.adversarials[one.success])
    assert bool((many.forward_passes[one.success] == 3).all())
    assert bool((many.forward_passes[~many.success] == 1 + 8 + 1).all())


@settings(max_examples=20, deadline=None)
@given(p=st.sampled_from(NORMS), eps=st.floats(0.0, 3.0), trials=st.integers(1, 3), seed=st.integers(0, 2**16),
       bounds=st.sampled_from([(0.0, 1.0), (-1.0, 0.5)]))
def test_ball_and_box_respected(p, eps, trials, seed, bounds):
    lo, hi = bounds
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(6, 1, 12, dtype=F64, generator=g)
    x[:, :, :3] = lo
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)).to(F64).eval()
    y = model(x).argmax(1)
    res = random_noise(model, x, y, eps=eps, norm=p, trials=trials, bounds=bounds, generator=g)
    adv = res.adversarials
    assert bool((adv >= lo).all()) and bool((adv <= hi).all())
    assert bool((lp_norm(adv - x, p) <= eps * (1 + 1e-9) + 1e-12).all())
    assert torch.equal(res.success, model(adv).argmax(1) != y)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"eps": -1.0}, ValueError, "eps"), ({"eps": math.inf}, ValueError, "eps"),
    ({"trials": 0}, ValueError, "trials"), ({"norm": 3}, NotImplementedError, "norm"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        random_noise(Radial(2.0).eval(), torch.rand(2, 1, 4, 4), torch.tensor([0, 0]), **{"eps": 0.1, **kwargs})


@pytest.mark.parametrize("name", ["noise-l2", "noise-linf"])
def test_registry_quick(name):
    spec = minnorm.attacks.get(name)
    assert not spec.minimal and spec.targeted
    x = torch.full((3, 1, 4, 4), 0.5)
    res = spec(Radial(spec.norm, c=0.01).eval(), x, torch.zeros(3, dtype=torch.long), **spec.quick)
    assert bool(res.success.all())
