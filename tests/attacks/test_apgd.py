"""The APGD minimal-norm search: checkpoints of Croce & Hein (2020), DLR invariances, exact minima
of binary affine classifiers with and without the box, targeted minima against HiGHS, APGD-T,
the per-sample stopping rule."""
from __future__ import annotations

import math

import pytest
import torch
from affine_oracle import affine_model, inputs, untargeted_minimum
from helpers import tiny_inputs, tiny_mlp, true_labels

from minnorm.attacks import apgd, apgd_at_eps
from minnorm.core.objectives import dlr_objective
from minnorm.attacks.apgd import apgd_checkpoints

NORMS = [1.0, 2.0, math.inf]


def test_checkpoints_follow_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Sec. 3.2), times n, rounded up
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1) == []


@pytest.mark.parametrize("targeted", [False, True])
def test_dlr_is_shift_and_scale_invariant(targeted):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    f = dlr_objective(y, targeted)
    torch.testing.assert_close(f(3.7 * z + 11.0), f(z))
    # positive exactly when the point is adversarial (untargeted) / on target (targeted)
    pred = z.argmax(1)
    assert torch.equal(f(z) > 0, pred == y if targeted else pred != y)


def test_apgd_t_finds_the_class_untargeted_misses():
    """Multi-class affine with the box: the margin gradient heads for the strongest other class,
    which need not be the nearest; APGD-T over every class finds the nearest one."""
    model = affine_model(k=3, seed=0)
    x = inputs(12, edge=True)
    y = model(x).argmax(1)
    ref = untargeted_minimum(model, x, y, 2.0, (0.0, 1.0))
    plain = apgd(model, x, y, norm=2, steps=300)
    over = apgd(model, x, y, norm=2, steps=600, targets=2)
    assert float((plain.norms / ref).max()) > 1.05, "this instance no longer shows the effect"
    assert float((over.norms / ref).max()) < 1.02


def test_samples_stop_when_the_bracket_closes():
    model = affine_model(k=2, seed=1)
    x = inputs(6)
    y = model(x).argmax(1)
    loose = apgd(model, x, y, norm=2, steps=400, tol=1e-2, refine=0)
    tight = apgd(model, x, y, norm=2, steps=400, tol=1e-6, refine=0)
    assert bool((loose.backward_passes < tight.backward_passes).all())
    assert bool((tight.backward_passes <= 400).all())


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_losses_break_the_tiny_model(loss):
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(6, dtype=torch.float64)
    y = true_labels(model, x)
    res = apgd(model, x, y, norm=math.inf, loss=loss, steps=100)
    assert bool(res.success.all())


def test_bad_settings():
    model = tiny_mlp()
    x = tiny_inputs(2)
    y = true_labels(model, x)
    with pytest.raises(ValueError, match="loss"):
        apgd(model, x, y, loss="hinge")
    with pytest.raises(ValueError, match="norm"):
        apgd(model, x, y, norm=3)
    with pytest.raises(ValueError, match="shrink"):
        apgd(model, x, y, shrink=1.0)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_at_eps_breaks_just_above_the_exact_minimum_and_never_below(p):
    """Two-class affine oracle in the box: the margin is linear, so APGD at 1.02x the exact minimum
    (L1: 1.05x; the sparse l1 steps along the box's faces need 1.02-1.05x here) must break every
    sample; at 0.98x no adversarial exists."""
    model = affine_model(k=2, seed=1)
    x = inputs(10, edge=True)
    y = model(x).argmax(1)
    ref = untargeted_minimum(model, x, y, p, (0.0, 1.0))
    factor = 1.05 if p == 1 else 1.02
    above = apgd_at_eps(model, x, y, eps=factor * ref, norm=p, steps=100)
    assert bool(above.success.all())
    assert bool((above.norms <= factor * ref * (1 + 1e-9)).all())
    assert bool((model(above.adversarials).argmax(1) != y).all())
    below = apgd_at_eps(model, x, y, eps=0.98 * ref, norm=p, steps=100)
    assert not bool(below.success.any())
    assert bool((below.backward_passes == 100).all())  # a sample not fooled runs every step


def test_at_eps_targets_add_apgd_t_on_the_samples_not_fooled():
    """A 3-class affine instance in Linf where the cross-entropy's ascent heads for the wrong class
    on two samples: APGD-T over both other classes breaks them; samples CE fooled cost the same."""
    model = affine_model(k=3, seed=2)
    x = inputs(12, edge=True)
    y = model(x).argmax(1)
    eps = 1.02 * untargeted_minimum(model, x, y, math.inf, (0.0, 1.0))
    ce = apgd_at_eps(model, x, y, eps=eps, norm=math.inf, steps=100)
    both = apgd_at_eps(model, x, y, eps=eps, norm=math.inf, steps=100, targets=2)
    assert not bool(ce.success.all()), "this instance no longer shows the effect"
    assert bool(both.success.all())
    assert torch.equal(both.backward_passes[ce.success], ce.backward_passes[ce.success])
    assert bool((both.backward_passes[~ce.success] > 100).all())


def test_at_eps_stops_at_the_first_adversarial_and_checks_its_settings():
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(6, dtype=torch.float64)
    y = true_labels(model, x)
    res = apgd_at_eps(model, x, y, eps=10.0, norm=math.inf, steps=50)
    assert bool(res.success.all()) and bool((res.backward_passes < 50).all())
    with pytest.raises(ValueError, match="eps"):
        apgd_at_eps(model, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="loss"):
        apgd_at_eps(model, x, y, eps=0.1, loss="hinge")
    with pytest.raises(ValueError, match="norm"):
        apgd_at_eps(model, x, y, eps=0.1, norm=3)


def test_init_starts_the_search_below_an_adversarial_start():
    """``init``: an adversarial start is the first upper bound (the result is never worse, and the
    first round runs at shrink x its norm); a start that is not adversarial is ignored."""
    model = affine_model(k=2, seed=1)
    x = inputs(8)
    y = model(x).argmax(1)
    far = apgd(model, x, y, norm=math.inf, steps=300)  # adversarial points to start from
    loose = x + 1.5 * (far.adversarials - x)
    with torch.no_grad():
        assert bool((model(loose.clamp(0, 1)).argmax(1) != y).all())
    res = apgd(model, x, y, norm=math.inf, steps=20, init=loose, refine=0)
    cold = apgd(model, x, y, norm=math.inf, steps=20, refine=0)
    start_norms = (loose.clamp(0, 1) - x).flatten(1).abs().amax(1)
    assert bool(res.success.all()) and bool((res.norms <= start_norms * 0.97 * (1 + 1e-9)).all())
    assert bool((res.forward_passes == cold.forward_passes + 1).all())  # the start's one forward pass
    ignored = apgd(model, x, y, norm=math.inf, steps=20, init=x.clone(), refine=0)
    torch.testing.assert_close(ignored.norms, cold.norms)
    with pytest.raises(ValueError, match="init must be a tensor of the inputs' shape"):
        apgd(model, x, y, init=x[:2])
