"""FMN (Pintor et al. 2021): exact minima of affine classifiers with and without the box,
targeted minima against HiGHS, best-not-last, options."""
from __future__ import annotations

import math

import pytest
import torch
from affine_oracle import affine_model, inputs, untargeted_minimum
from helpers import tiny_inputs, tiny_mlp, true_labels

from minnorm.attacks import fmn

NORMS = [1.0, 2.0, math.inf]


def test_refinement_never_hurts_and_costs_forward_passes_only():
    model = tiny_mlp(dtype=torch.float64)
    x = tiny_inputs(6, dtype=torch.float64)
    y = true_labels(model, x)
    plain = fmn(model, x, y, norm=math.inf, steps=30, refine=0)
    refined = fmn(model, x, y, norm=math.inf, steps=30, refine=8)
    assert bool((refined.norms <= plain.norms).all())
    assert torch.equal(refined.backward_passes, plain.backward_passes)
    assert torch.equal(refined.forward_passes - plain.forward_passes, torch.full_like(plain.forward_passes, 8))


def test_bad_settings():
    model = tiny_mlp()
    x = tiny_inputs(2)
    y = true_labels(model, x)
    with pytest.raises(ValueError, match="norm"):
        fmn(model, x, y, norm=3)
    with pytest.raises(ValueError, match="gamma"):
        fmn(model, x, y, gamma_init=1.5)
    with pytest.raises(ValueError, match="alpha_init"):
        fmn(model, x, y, alpha_init=0.0)


@pytest.mark.parametrize("p", NORMS)
def test_fmn_t_finds_the_class_untargeted_misses(p):
    """Multi-class affine with the box: plain FMN follows the strongest other class, which need
    not be the nearest; FMN-T over every class reaches the exact minimum."""
    model = affine_model(k=3, seed=0)
    x = inputs(12, edge=True)
    y = model(x).argmax(1)
    ref = untargeted_minimum(model, x, y, p, (0.0, 1.0))
    plain = fmn(model, x, y, norm=p, steps=300)
    over = fmn(model, x, y, norm=p, steps=600, targets=2)
    assert float((plain.norms / ref).max()) > 1.05, "this instance no longer shows the effect"
    assert bool((over.norms >= ref * (1 - 1e-9)).all())
    torch.testing.assert_close(over.norms, ref, rtol=1e-3, atol=0)
