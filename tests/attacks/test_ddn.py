"""DDN (Rony et al. 2019) against closed forms on affine classifiers, plus its options."""
from __future__ import annotations

import pytest
import torch
from helpers import affine_distances
from torch import nn

from minnorm.attacks import ddn

torch.set_num_threads(1)
F64 = torch.float64


def affine(d: int, k: int, scale: float = 1.0, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k).to(F64)
    with torch.no_grad():
        lin.weight.copy_(scale * torch.randn(k, d, generator=g, dtype=F64))
        lin.bias.copy_(0.3 * scale * torch.randn(k, generator=g, dtype=F64))
    return lin.eval()


def interior(n: int, d: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, d, generator=g, dtype=F64)


def boundary_distances(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[B, K]: L2 distance from x to the hyperplane f_y = f_l (inf for l = y), without the box."""
    return affine_distances(lin, x, y, 2)


def assert_optimum_inside_box(lin, x, y, dist):
    # the closed form ignores the box, so the test is only valid when the optimum lies inside it
    l_star = dist.argmin(1)
    u = lin.weight[l_star] - lin.weight[y]
    opt = x + dist.min(1).values[:, None] * u / u.norm(dim=1, keepdim=True)
    assert bool(((opt > 0) & (opt < 1)).all())


def test_binary_affine_reaches_closed_form_on_every_sample():
    lin, x = affine(20, 2), interior(32, 20)
    y = lin(x).argmax(1).detach()
    dist = boundary_distances(lin, x, y)
    assert_optimum_inside_box(lin, x, y, dist)
    res = ddn(lin, x, y, steps=1000)
    ratio = res.norms / dist.min(1).values
    assert bool(res.success.all())
    assert float(ratio.min()) >= 1 - 1e-9  # nothing adversarial lies closer than the hyperplane
    assert float(ratio.max()) <= 1.02


def test_multiclass_affine_converges_to_the_boundary_it_crosses():
    # With several classes the cross-entropy gradient can lead DDN to a class that is not the
    # nearest one (docs/ddn.md), so every sample is checked against the boundary it crossed and
    # only the median against the global optimum.
    lin, x = affine(20, 5, scale=5.0), interior(32, 20)
    y = lin(x).argmax(1).detach()
    dist = boundary_distances(lin, x, y)
    assert_optimum_inside_box(lin, x, y, dist)
    res = ddn(lin, x, y, steps=1000)
    assert bool(res.success.all())
    crossed = dist.gather(1, lin(res.adversarials).argmax(1)[:, None]).squeeze(1)
    optimum = dist.min(1).values
    assert float((res.norms / optimum).min()) >= 1 - 1e-9
    assert float((res.norms / crossed).max()) <= 1.02
    assert float((res.norms / optimum).median()) <= 1.02


def test_targeted_reaches_the_target_near_the_qp_optimum():
    optimize = pytest.importorskip("scipy.optimize")
    lin, x = affine(10, 4, scale=5.0), interior(8, 10)
    y = lin(x).argmax(1).detach()
    target = (y + 1 + torch.arange(8) % 3) % 4
    res = ddn(lin, x, target, targeted=True, steps=1000)
    assert bool(res.success.all())
    assert bool((lin(res.adversarials).argmax(1) == target).all())
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    ratios = []
    for i in range(8):  # the closest point of the polyhedron {f_t >= f_l for all l} is a small QP
        t, xi = int(target[i]), x[i].numpy()
        cons = [{"type": "ineq", "fun": lambda d, t=t, l=l, xi=xi: (w[t] - w[l]) @ (xi + d) + b[t] - b[l]}
                for l in range(4) if l != t]
        qp = optimize.minimize(lambda d: d @ d, 0.5 * (w[t] - w[y[i]]), jac=lambda d: 2 * d, constraints=cons,
                               method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
        ratios.append(float(res.norms[i]) / float(qp.fun) ** 0.5)
    # Never below the optimum; near it, though not always within 2%: where the optimum sits on
    # an edge of the polyhedron the cross-entropy direction settles a little off it (docs/ddn.md).
    ratios = torch.tensor(ratios)
    assert float(ratios.min()) >= 1 - 1e-4
    assert float(ratios.median()) <= 1.02 and float(ratios.max()) <= 1.2


class Recorder(nn.Module):
    """Remembers every batch the attack evaluates, to find the best adversarial it has seen."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


@pytest.mark.parametrize("levels", [None, 16])
def test_returns_best_iterate_not_last(levels):
    # Rounding to a coarse grid can make a later adversarial iterate larger than an earlier
    # one, which catches "keep the latest adversarial" as well as "keep the last iterate".
    lin, x = affine(20, 3, scale=5.0, seed=3), interior(16, 20)
    y = lin(x).argmax(1).detach()
    rec = Recorder(lin).eval()
    res = ddn(rec, x, y, steps=40, gamma=0.3, levels=levels)
    steps = torch.stack(rec.seen[1:-1])  # drop the clean pass and the final check
    assert steps.shape[:2] == (40, 16)
    with torch.no_grad():
        adv = lin(steps.flatten(0, 1)).argmax(1).view(40, 16) != y
    norms = torch.where(adv, (steps - x).flatten(2).norm(dim=2), torch.tensor(float("inf"), dtype=F64))
    best = norms.min(0).values
    torch.testing.assert_close(res.norms, best, rtol=0, atol=1e-12)
    # the test can tell: for most samples the last iterate is not the best one
    assert int((norms[-1] > best).sum()) >= 8


@pytest.mark.parametrize("bounds,levels", [((0.0, 1.0), 256), ((-1.0, 1.0), 16)])
def test_quantised_adversarials_lie_on_the_grid(bounds, levels):
    lo, hi = bounds
    lin, x = affine(20, 3, seed=2), interior(16, 20) * (hi - lo) + lo
    y = lin(x).argmax(1).detach()
    res = ddn(lin, x, y, steps=100, levels=levels, bounds=bounds)
    assert bool(res.success.all())
    t = (res.adversarials - lo) / ((hi - lo) / (levels - 1))
    assert float((t - t.round()).abs().max()) < 1e-6


def test_max_norm_caps_the_perturbation():
    lin, x = affine(20, 3, seed=4), interior(32, 20)
    y = lin(x).argmax(1).detach()
    free = ddn(lin, x, y, steps=100)
    cap = float(free.norms.median())
    res = ddn(lin, x, y, steps=100, max_norm=cap)
    assert float(res.norms[res.success].max()) <= cap + 1e-12
    within = free.norms <= cap
    assert bool(res.success[within].all()) and not bool(res.success[~within].any())
    torch.testing.assert_close(res.adversarials[within], free.adversarials[within])
    perturbed = res.info["perturbed"]
    norms = (perturbed - x).flatten(1).norm(dim=1)
    assert float(norms.max()) <= cap + 1e-12
    torch.testing.assert_close(perturbed[within], res.adversarials[within])
    assert float(norms[~within].min()) > 0.9 * cap  # the others are renormed to the cap, not dropped


def test_max_norm_with_quantisation_stays_on_grid_and_under_cap():
    lin = affine(20, 3, seed=4)
    x = (interior(32, 20) * 255).round() / 255  # on the grid, as 8-bit images are
    y = lin(x).argmax(1).detach()
    res = ddn(lin, x, y, steps=50, levels=256, max_norm=0.3)
    perturbed = res.info["perturbed"]
    assert float((perturbed - x).flatten(1).norm(dim=1).max()) <= 0.3 + 1e-12
    t = perturbed * 255
    assert float((t - t.round()).abs().max()) < 1e-6


class Dead(nn.Module):
    """Class 1 gets a logit only past a ReLU that is off around the inputs: zero gradient there."""

    def forward(self, x):
        z = torch.relu(x.flatten(1).sum(1) - 0.55 * x[0].numel())
        return torch.stack([torch.zeros_like(z), 10 * z], 1)


def test_zero_gradient_takes_random_directions_deterministically():
    x = torch.full((3, 8), 0.5, dtype=F64)
    y = torch.zeros(3, dtype=torch.long)
    state = torch.get_rng_state()
    runs = [ddn(Dead().eval(), x, y, steps=60, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(torch.get_rng_state(), state)
    assert bool(runs[0].success.all())
    assert torch.equal(runs[0].adversarials, runs[1].adversarials)
    assert not torch.equal(runs[0].adversarials, runs[2].adversarials)
    # the same input three times in one batch gets three different random directions
    assert not torch.equal(runs[0].adversarials[0], runs[0].adversarials[1])


def mlp(seed: int = 0, dtype=F64) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype).eval()


def test_samples_already_adversarial_cost_no_passes():
    model = mlp()
    x = torch.rand(8, 3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    pred = model(x).argmax(1)
    y = torch.where(torch.arange(8) % 2 == 0, pred, (pred + 1) % 4)  # odd rows start misclassified
    res = ddn(model, x, y, steps=20)
    odd = torch.arange(8) % 2 == 1
    assert bool(res.success[odd].all()) and bool((res.norms[odd] == 0).all())
    assert res.forward_passes[odd].tolist() == [2] * 4  # clean pass and final check
    assert res.backward_passes[odd].tolist() == [0] * 4
    assert res.forward_passes[~odd].tolist() == [22] * 4  # plus one per step
    assert res.backward_passes[~odd].tolist() == [19] * 4  # the last step needs no gradient


@pytest.mark.parametrize("kwargs,name", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"gamma": 0.0}, "gamma"), ({"gamma": 1.0}, "gamma"),
    ({"init_norm": 0.0}, "init_norm"), ({"alpha": -1.0}, "alpha"), ({"levels": 1}, "levels"),
    ({"max_norm": 0.0}, "max_norm"),
])
def test_bad_hyper_parameters_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ddn(mlp(), torch.rand(2, 3, 4, dtype=F64), torch.tensor([0, 1]), **kwargs)
