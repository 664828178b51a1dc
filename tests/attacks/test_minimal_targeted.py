"""FMN, FAB and APGD on affine models, scored against exact minima: the box-constrained distance
to one hyperplane (two classes), and, targeted, the minimal L1/Linf distance to the target's
polytope, an LP (HiGHS through scipy)."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import affine_inputs, affine_minimum, affine_model, targeted_minimum_lp

from minnorm.attacks import apgd, fab, fmn

# (attack, steps, the median ratio each reaches)
CASES = [(fmn, 300, 1.01), (fab, 50, 1.03), (apgd, 300, 1.02)]


@pytest.mark.parametrize("p", [1.0, math.inf])
@pytest.mark.parametrize("attack,steps,median", CASES, ids=[c[0].__name__ for c in CASES])
def test_targeted_affine_against_highs(attack, steps, median, p):
    model = affine_model(k=4, seed=3)
    x = affine_inputs(8, edge=True)
    t = (model(x).argmax(1) + 1) % 4
    ref = targeted_minimum_lp(model, x, t, p, (0.0, 1.0))
    res = attack(model, x, t, norm=p, targeted=True, steps=steps)
    assert torch.equal(model(res.adversarials).argmax(1), t)
    ratio = res.norms / ref
    assert bool((ratio >= 1 - 1e-7).all()), "below the LP minimum"
    assert float(ratio.max()) < 1.05 and float(ratio.median()) < median


# (attack, relative tolerance per norm): l1-APGD's sparse steps converge more slowly onto the l1 ball's vertex
BINARY = [(fmn, {1.0: 1e-3, 2.0: 1e-3, math.inf: 1e-3}), (apgd, {1.0: 2e-2, 2.0: 3e-3, math.inf: 3e-3})]


@pytest.mark.parametrize("edge", [False, True], ids=["interior", "box-binds"])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("attack,rtol", BINARY, ids=[c[0].__name__ for c in BINARY])
def test_binary_affine_reaches_the_exact_minimum(attack, rtol, p, edge):
    """Two classes: the minimum is the box-constrained distance to one hyperplane."""
    model = affine_model(k=2, seed=1)
    x = affine_inputs(10, edge=edge)
    y = model(x).argmax(1)
    bounds = (0.0, 1.0) if edge else (-50.0, 50.0)
    ref = affine_minimum(model, x, y, p, bounds if edge else None)
    res = attack(model, x, y, norm=p, steps=300, bounds=bounds)
    assert bool(res.success.all())
    assert bool((res.norms >= ref * (1 - 1e-9)).all()), "below the exact minimum: the oracle or the scoring is wrong"
    torch.testing.assert_close(res.norms, ref, rtol=rtol[p], atol=0)
