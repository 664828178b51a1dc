"""FMN, FAB and APGD, targeted, on an affine model: the minimal L1/Linf distance to the target's
polytope is an LP (HiGHS through scipy), so each attack is scored against the exact value."""
from __future__ import annotations

import math

import pytest
import torch
from affine_oracle import affine_model, inputs, targeted_minimum_lp

from minnorm.attacks import apgd, fab, fmn

# (attack, steps, the median ratio each reaches)
CASES = [(fmn, 300, 1.01), (fab, 50, 1.03), (apgd, 300, 1.02)]


@pytest.mark.parametrize("p", [1.0, math.inf])
@pytest.mark.parametrize("attack,steps,median", CASES, ids=[c[0].__name__ for c in CASES])
def test_targeted_affine_against_highs(attack, steps, median, p):
    model = affine_model(k=4, seed=3)
    x = inputs(8, edge=True)
    t = (model(x).argmax(1) + 1) % 4
    ref = targeted_minimum_lp(model, x, t, p, (0.0, 1.0))
    res = attack(model, x, t, norm=p, targeted=True, steps=steps)
    assert torch.equal(model(res.adversarials).argmax(1), t)
    ratio = res.norms / ref
    assert bool((ratio >= 1 - 1e-7).all()), "below the LP minimum"
    assert float(ratio.max()) < 1.05 and float(ratio.median()) < median
