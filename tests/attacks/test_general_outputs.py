"""Attacks on general outputs (Balda et al., Sec. IV): dense Jacobians as oracles on a small
regression model, brute force over the cube's vertices, and an affine per-pixel classifier."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from minnorm.attacks.general_outputs import dense_targeted_attack, jacobian_column_norms, output_attack
from minnorm.core import lp_norm
from minnorm.data import load_sample
from minnorm.models import load_shipped

INF = math.inf


def regression_model(d_in: int = 10, d_out: int = 4, seed: int = 0) -> nn.Module:
    """A small tanh MLP with a vector output: the Jacobian changes from point to point."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(d_in, 32), nn.Tanh(), nn.Linear(32, d_out))
    return model.double().eval()


def dense_jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, d_out, d_in], one sample at a time (test oracle only)."""
    return torch.stack([torch.autograd.functional.jacobian(model, xi) for xi in x]).detach()


@pytest.fixture(scope="module")
def problem():
    model = regression_model()
    x = torch.rand(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x, dense_jacobians(model, x)


def test_l2_attack_attains_the_spectral_norm(problem):
    model, x, jac = problem
    eps = torch.linspace(0.01, 0.2, 6, dtype=torch.float64)
    res = output_attack(model, x, eps=eps, norm=2, generator=torch.Generator().manual_seed(0))
    sigma = torch.linalg.matrix_norm(jac, ord=2)
    assert bool((lp_norm(res.perturbations, 2) <= eps * (1 + 1e-9)).all())
    assert bool((res.gain >= 0.99 * eps * sigma).all()), (res.gain / (eps * sigma)).tolist()
    first_order = torch.linalg.vector_norm(torch.einsum("boi,bi->bo", jac, res.perturbations), dim=1)
    torch.testing.assert_close(res.gain, first_order)
    # no dense Jacobian: two products (JVP + VJP) per power step, plus the final gain
    assert bool((res.backward_passes <= 2 * 50 + 1).all())


def test_l1_attack_moves_the_largest_column(problem):
    model, x, jac = problem
    res = output_attack(model, x, eps=0.05, norm=1)
    cols = jac.norm(dim=1)
    assert torch.equal(res.info["coordinate"], cols.argmax(1))
    nonzero = (res.perturbations != 0).sum(1)
    assert bool((nonzero == 1).all()), "a single-coordinate attack"
    torch.testing.assert_close(res.gain, 0.05 * cols.amax(1))
    torch.testing.assert_close(jacobian_column_norms(model, x), cols)
    torch.testing.assert_close(jacobian_column_norms(model, x, mode="forward", chunk=3), cols)
    torch.testing.assert_close(jacobian_column_norms(model, x, mode="reverse", chunk=3), cols)


def test_linf_ascent_against_brute_force(problem):
    # ||J||_{inf->2} is attained at a vertex of the cube: 2^10 of them here
    model, x, jac = problem
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=10)), dtype=torch.float64)
    best = torch.stack([(signs @ j.T).norm(dim=1).max() for j in jac]) * 0.1
    start = torch.stack([(torch.linalg.svd(j).Vh[0].sign() @ j.T).norm() for j in jac]) * 0.1
    for restarts in (0, 4):
        res = output_attack(model, x, eps=0.1, norm=INF, restarts=restarts)
        torch.testing.assert_close(res.perturbations.abs(), torch.full_like(x, 0.1), msg="not a vertex of the cube")
        assert bool((res.gain <= best * (1 + 1e-9)).all())
        assert bool((res.gain >= start * (1 - 1e-9)).all()), "the ascent fell below its sign(v) start"
    # from +-v alone it stops at 0.86-0.91 of the optimum; the default 4 random starts find it
    assert bool((res.gain >= 0.99 * best).all()), (res.gain / best).tolist()


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF])
def test_box_and_budget_are_respected(problem, p):
    model, x, _ = problem
    res = output_attack(model, x, eps=0.5, norm=p, bounds=(0.0, 1.0))
    assert bool((lp_norm(res.perturbations, p) <= 0.5 * (1 + 1e-9)).all())
    assert bool(((res.adversarials >= 0) & (res.adversarials <= 1)).all())
    with torch.no_grad():
        true = (model(res.adversarials) - model(x)).norm(dim=1)
    torch.testing.assert_close(res.change, true)
    assert bool((res.change > 0).all())


def test_shipped_models_batched():
    x, _ = load_sample()
    for name in ("mlp", "cnn"):
        model = load_shipped(name)
        # restarts=0: the random restarts of a batch and of one sample are different draws
        res = output_attack(model, x[:4], eps=1.0, norm=2, bounds=(0.0, 1.0), iterations=10, restarts=0)
        one = output_attack(model, x[:1], eps=1.0, norm=2, bounds=(0.0, 1.0), iterations=10, restarts=0)
        assert res.adversarials.shape == x[:4].shape and bool((res.change > 0).all())
        torch.testing.assert_close(res.gain[:1], one.gain, rtol=1e-4, atol=1e-5)


def test_errors(problem):
    model, x, _ = problem
    with pytest.raises(ValueError, match="eps"):
        output_attack(model, x, eps=-1.0)
    with pytest.raises(ValueError, match="box"):
        output_attack(model, x + 2, eps=0.1, bounds=(0.0, 1.0))
    with pytest.raises(TypeError, match="Tensor"):
        output_attack(model, x.numpy(), eps=0.1)
    with pytest.raises(ValueError, match="mode"):
        jacobian_column_norms(model, x, mode="dense")


# ---------------------------------------------------------------- dense prediction

def brightness_segmenter(k: float = 30.0) -> nn.Module:
    """A per-pixel classifier of the 3x3 local mean m: class 0 (dark) for m < 1/3, 1 for
    1/3 < m < 2/3, 2 (bright) above. Logits (k(1/3 - m), 0, k(m - 2/3)) are affine in the image."""
    conv = nn.Conv2d(1, 3, 3, padding=1, padding_mode="replicate").double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([-k, 0.0, k], dtype=torch.float64).view(3, 1, 1, 1) / 9)
        conv.bias.copy_(torch.tensor([k / 3, 0.0, -2 * k / 3], dtype=torch.float64))
    return conv.eval()


def test_dense_targeted_attack_meets_the_affine_oracle():
    model = brightness_segmenter()
    g = torch.Generator().manual_seed(0)
    x = 0.35 + 0.1 * torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)  # local means in [0.35, 0.45]
    with torch.no_grad():
        assert bool((model(x).argmax(1) == 1).all())
    # every pixel's mean must rise above 2/3: impossible within linf 0.2, certain beyond 0.32
    low = dense_targeted_attack(model, x, 2, eps=0.2, steps=5)
    high = dense_targeted_attack(model, x, 2, eps=0.33, steps=5)
    assert bool((low.target_fraction == 0).all()) and bool((low.clean_target_fraction == 0).all())
    assert bool((high.target_fraction == 1).all())
    assert bool((high.norms <= 0.33 + 1e-12).all())
    # a target map with ignored pixels: only the top half must turn dark (class 0)
    t = torch.full((3, 8, 8), -1, dtype=torch.long)
    t[:, :4] = 0
    half = dense_targeted_attack(model, x, t, eps=0.3, steps=5)
    with torch.no_grad():
        pred = model(half.adversarials).argmax(1)
    assert bool((pred[:, :4] == 0).all()) and bool((half.target_fraction == 1).all())


def test_dense_errors():
    model = brightness_segmenter()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="shape"):
        dense_targeted_attack(model, x, torch.zeros(2, 4, 4, dtype=torch.long), eps=0.1)
    with pytest.raises(ValueError, match="target classes"):
        dense_targeted_attack(model, x, 5, eps=0.1)
    with pytest.raises(ValueError, match="dense"):
        dense_targeted_attack(regression_model(64, 4).float(), x.flatten(1).float(), 0, eps=0.1)
