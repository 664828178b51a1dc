"""FAB and FAB-T (Croce & Hein 2020): exact minima of multi-class affine classifiers with and
without the box, targeted minima against HiGHS, pass accounting, restarts."""
from __future__ import annotations

import math

import pytest
import torch
from affine_oracle import affine_model, inputs, untargeted_minimum
from helpers import tiny_inputs, tiny_mlp, true_labels

from minnorm.attacks import fab

NORMS = [1.0, 2.0, math.inf]


@pytest.mark.parametrize("edge", [False, True], ids=["interior", "box-binds"])
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("k", [2, 4])
def test_affine_reaches_the_exact_minimum(k, p, edge):
    """Untargeted, k classes: the minimum over the k - 1 halfspaces within the box. FAB linearises
    every class, so it finds the right one; refinement removes the eta overshoot."""
    model = affine_model(k=k, seed=2)
    x = inputs(10, edge=edge)
    y = model(x).argmax(1)
    bounds = (0.0, 1.0) if edge else (-50.0, 50.0)
    ref = untargeted_minimum(model, x, y, p, bounds if edge else None)
    res = fab(model, x, y, norm=p, steps=30, bounds=bounds)
    assert bool(res.success.all())
    assert bool((res.norms >= ref * (1 - 1e-9)).all())
    torch.testing.assert_close(res.norms, ref, rtol=2e-3, atol=0)


@pytest.mark.parametrize("p", NORMS)
def test_fab_t_over_all_classes_matches_untargeted_fab_on_affine(p):
    model = affine_model(k=4, seed=2)
    x = inputs(10, edge=True)
    y = model(x).argmax(1)
    ref = untargeted_minimum(model, x, y, p, (0.0, 1.0))
    res = fab(model, x, y, norm=p, steps=30, targets=3)
    torch.testing.assert_close(res.norms, ref, rtol=2e-3, atol=0)


def test_pass_accounting():
    """Per iteration: one forward, K - 1 backward passes where the point is not adversarial, one
    more forward where it was (the backward step moves it); plus clean, last and final passes."""
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(6, dtype=torch.float64)
    y = true_labels(model, x, wrong=(1,))
    steps = 12
    res = fab(model, x, y, norm=2, steps=steps, refine=0)
    others = torch.tensor([i != 1 for i in range(6)])
    bwd, fwd = res.backward_passes[others], res.forward_passes[others]
    assert bool((bwd == 3 * steps).all()), "every iteration linearises the 3 other classes once"
    extra = fwd - (1 + steps + 1 + 1)  # beyond clean, one per iteration, the last point, the final check
    assert bool((extra >= 1).all()) and bool((extra <= steps).all()), "one extra forward per adversarial iterate"
    assert int(res.forward_passes[1]) == 2 and int(res.backward_passes[1]) == 0
    t = fab(model, x, y, norm=2, steps=steps, targets=2, refine=0)
    assert bool((t.backward_passes[others] <= 2 * steps).all()), "FAB-T: one backward pass per iteration and target"


def test_restarts_are_seeded_and_never_worse():
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(6, dtype=torch.float64)
    y = true_labels(model, x)
    one = fab(model, x, y, norm=math.inf, steps=10)
    g = torch.Generator().manual_seed(5)
    three = fab(model, x, y, norm=math.inf, steps=10, restarts=3, generator=g)
    again = fab(model, x, y, norm=math.inf, steps=10, restarts=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(three.adversarials, again.adversarials)
    assert bool((three.norms <= one.norms * (1 + 1e-9)).all())


def test_bad_settings():
    model = tiny_mlp()
    x = tiny_inputs(2)
    y = true_labels(model, x)
    with pytest.raises(ValueError, match="norm"):
        fab(model, x, y, norm=3)
    with pytest.raises(ValueError, match="beta"):
        fab(model, x, y, beta=1.5)
    with pytest.raises(ValueError, match="targets"):
        fab(model, x, y, targets=0)
