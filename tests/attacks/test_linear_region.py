"""The linear-region attack (lra-l2): exact on affine models, at least as strong as DDN, CW and
PGD on a tiny ReLU MLP, and working on max-pooling and residual networks."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_cnn, tiny_inputs, tiny_mlp, tiny_resnet, true_labels
from torch import nn

import minnorm
import minnorm.data
from minnorm.attacks import carlini_wagner_l2, ddn, deepfool, linear_region_attack, pgd


def test_affine_model_gets_the_closed_form_distance():
    """A linear classifier is one region: the answer is the distance to the nearest class
    hyperplane, min_l (f_c - f_l) / ||w_l - w_c|| (inputs in the middle so the box is slack)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).double().eval()
    x = 0.45 + 0.1 * tiny_inputs(5, dtype=torch.float64)
    y = model(x).argmax(1)
    res = linear_region_attack(model, x, y, regions=2, qp_steps=2000, qp_tol=1e-9)
    w = model[1].weight
    logits = model(x)
    gap = logits.gather(1, y[:, None]) - logits
    dist = gap / (w[None] - w[y][:, None]).norm(dim=2)
    expected = dist.scatter(1, y[:, None], torch.inf).amin(1)
    assert bool(res.success.all())
    torch.testing.assert_close(res.norms, expected, rtol=1e-3, atol=0)


def test_at_least_as_strong_as_ddn_cw_and_pgd_on_a_tiny_mlp():
    """Acceptance: norm <= min(DDN-1000, CW-L2 9x1000, PGD-L2) on >= 95% of the images; never a
    non-adversarial output. PGD is fixed-epsilon: it must fail at 0.999 of our norm."""
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(20, dtype=torch.float64)
    y = true_labels(model, x)
    reference = tiny_inputs(300, seed=5, dtype=torch.float64)  # the "training set" for the starts
    ours = linear_region_attack(model, x, y, regions=100, starting_points=reference)
    assert bool(ours.success.all())
    assert bool((model(ours.adversarials).argmax(1) != y).all())
    best = torch.minimum(ddn(model, x, y, steps=1000).norms,
                         carlini_wagner_l2(model, x, y, binary_search_steps=9, max_iterations=1000).norms)
    below = pgd(model, x, y, eps=0.999 * ours.norms, norm=2, steps=100, restarts=3,
                generator=torch.Generator().manual_seed(0))
    wins = (ours.norms <= best * (1 + 1e-6)) & ~below.success
    assert float(wins.float().mean()) >= 0.95, (ours.norms / best, below.success)


@pytest.mark.parametrize("name", ["cnn-maxpool", "resnet"])
def test_maxpool_and_residual_networks(name):
    model = tiny_cnn(dtype=torch.float64) if name == "cnn-maxpool" else tiny_resnet()
    x = tiny_inputs(4, dtype=torch.float64)
    y = true_labels(model, x)
    res = linear_region_attack(model, x, y, regions=5, qp_steps=60)
    start = deepfool(model, x, y)
    assert bool(res.success.all())
    assert bool((model(res.adversarials).argmax(1) != y).all())
    # the search starts from DeepFool's point and only ever improves on it
    assert bool((res.norms <= start.norms * (1 + 1e-9)).all())
    assert bool((res.norms < start.norms).any()), "no region improved on the starting point"
    assert bool((res.info["regions_solved"] > 0).all())


def test_targeted_reaches_the_target():
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(6, dtype=torch.float64)
    t = (model(x).argmax(1) + 2) % 4
    res = linear_region_attack(model, x, t, targeted=True, regions=10, qp_steps=100)
    assert bool(res.success.all()) and torch.equal(model(res.adversarials).argmax(1), t)
    start = ddn(model, x, t, targeted=True, steps=100)
    assert bool((res.norms <= start.norms * (1 + 1e-9)).all())


def test_ddn_start_only_improves_on_ddn():
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(6, dtype=torch.float64)
    y = true_labels(model, x)
    res = linear_region_attack(model, x, y, regions=5, qp_steps=60, init="ddn", init_steps=30,
                               generator=torch.Generator().manual_seed(1))
    start = ddn(model, x, y, steps=30, generator=torch.Generator().manual_seed(1))
    assert bool(res.success.all()) and bool((res.norms <= start.norms * (1 + 1e-9)).all())


def test_init_params_reach_the_named_starting_attack():
    """The start is the named attack run with ``init_params``: lra never ends above it, and its
    passes include the start's (FMN's ``steps`` set here, not its registry default)."""
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(5, dtype=torch.float64)
    y = true_labels(model, x)
    params = {"steps": 15, "targets": 2}
    start = minnorm.attacks.get("fmn-l1")(model, x, y, generator=torch.Generator().manual_seed(3), **params)
    res = linear_region_attack(model, x, y, norm=1, regions=1, qp_steps=20, init="fmn-l1", init_params=params,
                               generator=torch.Generator().manual_seed(3))
    assert bool(start.success.all()) and bool(res.success.all())
    assert bool((res.norms <= start.norms * (1 + 1e-9)).all())
    assert bool((res.forward_passes >= start.forward_passes).all())
    assert int(res.forward_passes.max()) < 500  # FMN's 15 steps, far from its default 1,000


def test_bad_init_params_raise():
    model = tiny_mlp()
    x = tiny_inputs(2)
    y = true_labels(model, x)
    with pytest.raises(ValueError, match="takes no parameter 'stepz'"):
        linear_region_attack(model, x, y, norm=1, init="fmn-l1", init_params={"stepz": 3})
    with pytest.raises(ValueError, match="init_params apply to a registered attack"):
        linear_region_attack(model, x, y, init="deepfool", init_params={"steps": 3})
    with pytest.raises(ValueError, match="init_params must be a dict"):
        linear_region_attack(model, x, y, norm=1, init="fmn-l1", init_params=[("steps", 3)])
    with pytest.raises(ValueError, match="no targeted mode"):  # DeepFool-L2 untargeted only: params unused
        linear_region_attack(model, x, (y + 1) % 3, targeted=True, init="deepfool-l2", init_params={"max_iterations": 3})


def test_region_cache_skips_visited_regions():
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(4, dtype=torch.float64)
    y = true_labels(model, x)
    res = linear_region_attack(model, x, y, regions=20, qp_steps=50, retries=0)
    # with one sample per iteration, every iteration either solves a new region or hits the cache
    assert torch.equal(res.info["regions_solved"] + res.info["cache_hits"], torch.full((4,), 20))
    assert bool((res.info["cache_hits"] > 0).all())


def test_bad_arguments_raise():
    model = tiny_mlp()
    x = tiny_inputs(2)
    y = true_labels(model, x)
    with pytest.raises(ValueError, match="starting_points"):
        linear_region_attack(model, x, y, starting_points=torch.rand(5, 3))
    with pytest.raises(ValueError, match="init"):
        linear_region_attack(model, x, y, init="pgd")
    with pytest.raises(ValueError, match="q must"):
        linear_region_attack(model, x, y, q=0.2)
    with pytest.raises(TypeError, match="Tanh"):
        linear_region_attack(nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Tanh()).eval(), x, y)


def test_registered():
    spec = minnorm.attacks.get("lra-l2")
    assert spec.norm == 2 and spec.minimal and spec.targeted


# ---------------------------------------------------------------- lra-linf and lra-l1 (region LPs)

@pytest.mark.parametrize("p", [math.inf, 1])
def test_lp_variants_give_the_closed_form_distance_on_an_affine_model(p):
    """One region: the distance to the nearest class hyperplane in the lp norm is
    min_l (f_c - f_l) / ||w_l - w_c||_q with q the dual exponent (the box is slack here)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).double().eval()
    x = 0.45 + 0.1 * tiny_inputs(5, dtype=torch.float64)
    y = model(x).argmax(1)
    with torch.no_grad():  # 90% of the way to the nearest boundary, so that the L1 optimum stays in the box
        w, logits = model[1].weight, model(x)
        dw = w[None] - w[y][:, None]
        l2 = ((logits.gather(1, y[:, None]) - logits) / dw.norm(dim=2)).scatter(1, y[:, None], torch.inf)
        near = l2.argmin(1)
        step = dw[torch.arange(5), near]
        x = (x.flatten(1) + 0.9 * (l2.amin(1) / step.norm(dim=1))[:, None] * step).view(5, 1, 8, 8)
    res = linear_region_attack(model, x, y, norm=p, regions=2, qp_steps=2000, qp_tol=1e-9)
    w, logits = model[1].weight, model(x)
    gap = logits.gather(1, y[:, None]) - logits
    dist = gap / (w[None] - w[y][:, None]).norm(p=1 if p == math.inf else math.inf, dim=2)
    expected = dist.scatter(1, y[:, None], torch.inf).amin(1)
    assert float(expected.max()) < 0.4  # so the box [0, 1] does not bind
    assert bool(res.success.all())
    torch.testing.assert_close(res.norms, expected, rtol=1e-3, atol=0)


@pytest.mark.parametrize("p", [math.inf, 1])
def test_lp_variants_are_near_minimal_on_a_tiny_mlp(p):
    """Never worse than their DeepFool start, and PGD with restarts finds nothing at 0.99 of the
    norm on >= 90% of the images (a check that the point is close to the smallest)."""
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(10, dtype=torch.float64)
    y = true_labels(model, x)
    res = linear_region_attack(model, x, y, norm=p, regions=30, qp_steps=200)
    assert bool(res.success.all()) and bool((model(res.adversarials).argmax(1) != y).all())
    start = deepfool(model, x, y, norm=p)
    assert bool((res.norms <= torch.where(start.success, start.norms, torch.inf) * (1 + 1e-9)).all())
    below = pgd(model, x, y, eps=0.99 * res.norms, norm=p, steps=100, restarts=3,
                generator=torch.Generator().manual_seed(0))
    assert int(below.success.sum()) <= 1, (res.norms, below.success)


@pytest.mark.parametrize("p", [math.inf, 1])
def test_lp_variants_on_maxpool_cnn_and_targeted(p):
    model = tiny_cnn(dtype=torch.float64)
    x = tiny_inputs(4, dtype=torch.float64)
    y = true_labels(model, x)
    res = linear_region_attack(model, x, y, norm=p, regions=4, qp_steps=60)
    assert bool(res.success.all()) and bool((res.info["regions_solved"] > 0).all())
    t = (y + 1) % 4
    tres = linear_region_attack(model, x, t, norm=p, targeted=True, regions=4, qp_steps=60)
    assert bool(tres.success.all()) and torch.equal(model(tres.adversarials).argmax(1), t)


def test_lp_variants_registered():
    for name, p in (("lra-linf", math.inf), ("lra-l1", 1)):
        spec = minnorm.attacks.get(name)
        assert spec.norm == p and spec.minimal and spec.targeted and spec.defaults["norm"] == p
    with pytest.raises(ValueError, match="norm"):
        linear_region_attack(tiny_mlp(), tiny_inputs(2), torch.zeros(2, dtype=torch.long), norm=3)


@pytest.mark.parametrize("p", [2, math.inf, 1])
def test_region_solves_stay_creditable_under_a_pass_budget(p):
    """A linear model is one region. Started at 1.5x DeepFool's L2 point and given 3/4 of the
    passes the unbudgeted run takes, the region's QP/LP (``pay_as_you_go``) stops while its
    sample can still pay for it, so its solution is credited and within 5% of the unbudgeted one (before the solver
    asked for the budget its products were charged after the solve, past the budget, and the
    start came back)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4)).double().eval()
    x = 0.45 + 0.1 * tiny_inputs(3, dtype=torch.float64)
    y = model(x).argmax(1)
    start = x + 1.5 * (deepfool(model, x, y).adversarials - x)
    kw = dict(norm=p, init=start, regions=1, classes=1, qp_steps=3000, qp_tol=1e-9, search_steps=1,
              generator=torch.Generator().manual_seed(0), pay_as_you_go=True)
    free = linear_region_attack(model, x, y, **kw)
    budget = free.passes * 3 // 4
    res = minnorm.core.call_with_budget(linear_region_attack, model, x, y, budget=budget, **kw)
    assert bool(res.success.all()) and bool((res.passes <= budget).all())
    assert bool((res.norms <= 1.05 * free.norms).all()), res.norms / free.norms


def test_flipped_regions_switch_exactly_the_named_relus():
    """``_flipped`` toggles the named ReLUs (flat indices over all layers, -1 for none) of each
    representative and nothing else; max-pool patterns are never touched."""
    from minnorm.attacks._piecewise import Region
    from minnorm.attacks.linear_region import _flipped
    gen = torch.Generator().manual_seed(0)
    relu1, pool, relu2 = torch.rand(3, 2, 2, generator=gen) > 0.5, torch.randint(0, 4, (3, 5), generator=gen), \
        torch.rand(3, 3, generator=gen) > 0.5
    region = Region([relu1, pool, relu2], 3)
    sizes = [4, 3 * 5, 3]  # a max-pool layer has more constraints than pattern entries
    index = torch.tensor([[0, -1], [3, 4 + 15 + 1], [-1, -1]])  # layer 1 pos 0; layer 1 pos 3 and layer 3 pos 1
    out = _flipped(region, index, sizes)
    assert torch.equal(out.patterns[1], pool)
    want1, want2 = relu1.clone().view(3, -1), relu2.clone()
    want1[0, 0] ^= True
    want1[1, 3] ^= True
    want2[1, 1] ^= True
    assert torch.equal(out.patterns[0], want1.view_as(relu1)) and torch.equal(out.patterns[2], want2)
    assert torch.equal(region.patterns[0], relu1)  # the input region is left as it was


@pytest.mark.parametrize("image, target, gap", [(31, 3, 1.05), (69, 5, 1.02)])
def test_neuron_flips_reach_an_exact_l1_minimum_that_sampled_regions_miss(image, target, gap):
    """Images 31 and 69 of the shipped sample on the shipped mlp-tiny: FMN's L1 point towards
    the witness's class lies in a region whose LP optimum is 6% / 2.6% above the exact minimum
    (MILP, HiGHS), and regions sampled around it (eq. 12-14) do not leave it; flipping the ReLUs
    nearest to switching reaches the exact minimum (31: one flip, then another; 69: no single
    flip helps, a pair does). Neither run goes below it."""
    from minnorm.certify import exact
    model = minnorm.models.load_shipped("mlp-tiny")
    x, y = minnorm.data.load_sample()
    x, y, t = x[image:image + 1], y[image:image + 1], torch.tensor([target])
    start = minnorm.attacks.get("fmn-l1")(model, x, t, targeted=True, steps=100, targets=None)
    kw = dict(norm=1, targeted=True, init=start.adversarials, regions=10, qp_steps=200, search_steps=2)
    plain = linear_region_attack(model, x, t, generator=torch.Generator().manual_seed(0), **kw)
    flips = linear_region_attack(model, x, t, flips=3, flip_rounds=4, generator=torch.Generator().manual_seed(0), **kw)
    # the MILP, started from the attack's point (a cutoff for its search; it proves the minimum itself)
    truth = exact(model, x, y, norm=1, time_limit=120, upper=flips.norms, adversarials=flips.adversarials)
    assert truth.status == ["exact"]
    low = float(truth.lower[0]) * (1 - 1e-4)
    assert float(plain.norms[0]) > gap * float(truth.upper[0]) and float(plain.norms[0]) >= low
    assert low <= float(flips.norms[0]) <= 1.001 * float(truth.upper[0])
    assert int(model(flips.adversarials).argmax(1)) == target
