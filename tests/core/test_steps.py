"""PGD's ascent step (minnorm.core.steps) by hand, and its directions against their definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minnorm.core import (ascent_direction, box_blocked, holder_direction, l1_coordinates, lp_norm, pgd_step,
                          sparse_l1_direction)

F64 = torch.float64
BOX = (0.0, 1.0)


def test_box_blocked_by_hand():
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.5]])
    d = torch.tensor([[-1.0, 1.0, 1.0, -1.0, -1.0]])
    assert box_blocked(x, d, BOX).tolist() == [[True, False, True, False, False]]


def test_sparse_l1_direction_by_hand():
    grad = torch.tensor([[5.0, -4.0, 3.0, 0.5]])
    x = torch.tensor([[1.0, 0.5, 0.5, 0.5]])  # the largest |g| points out of the box: skipped
    assert sparse_l1_direction(grad, x, BOX, 2).tolist() == [[0.0, -0.5, 0.5, 0.0]]
    assert sparse_l1_direction(grad, x, BOX, 1).tolist() == [[0.0, -1.0, 0.0, 0.0]]
    stuck = torch.tensor([[1.0, 0.0, 1.0, 1.0]])  # every coordinate blocked: no move
    assert sparse_l1_direction(grad, stuck, BOX, 2).tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_l1_coordinates():
    assert l1_coordinates(0.99, 784) == 8  # SLIDE's 99th percentile of an MNIST image
    assert l1_coordinates(0.99, 100) == 1  # (1 - 0.99) * 100 is 1.0000000000000009 in floats
    assert l1_coordinates(0.0, 5) == 5 and l1_coordinates(0.9999, 10) == 1
    with pytest.raises(ValueError, match="l1_sparsity"):
        l1_coordinates(1.0, 10)


@given(arrays(np.float64, (3, 6), elements=st.floats(-10, 10, allow_subnormal=False)),
       arrays(np.float64, (3, 6), elements=st.sampled_from([0.0, 0.3, 0.7, 1.0])))
def test_ascent_direction_is_the_steepest_feasible_one(g, x):
    g, x = torch.from_numpy(g), torch.from_numpy(x)
    assert torch.equal(ascent_direction(g, math.inf, x, BOX), g.sign())
    assert torch.equal(ascent_direction(g, 2, x, BOX), holder_direction(g, 2))
    d = ascent_direction(g, 1, x, BOX, l1_k=1)
    free = g.masked_fill(box_blocked(x, g, BOX), 0)
    moved = d.abs().sum(1) > 0
    assert torch.equal(moved, free.abs().amax(1) > 0)
    # on the coordinates the box lets move, it is the exact l1 steepest-ascent direction
    assert torch.allclose((g * d).sum(1), free.abs().amax(1))
    assert not bool(box_blocked(x, d, BOX).any())
    with pytest.raises(NotImplementedError):
        ascent_direction(g, 3, x, BOX)


def test_pgd_step_by_hand():
    x0 = torch.full((1, 4), 0.5, dtype=F64)
    g = torch.tensor([[1.0, -2.0, 0.0, 3.0]], dtype=F64)
    x = x0 + torch.tensor([[0.08, 0.0, 0.0, 0.0]], dtype=F64)
    # linf: x + 0.05 sign(g), then back into the 0.1 cube around x0
    step = pgd_step(x, x0, g, math.inf, 0.1, 0.05, BOX)
    assert torch.allclose(step - x0, torch.tensor([[0.1, -0.05, 0.0, 0.05]], dtype=F64))
    # l2 with a ball too small for the step: rescaled onto its sphere
    step = pgd_step(x0, x0, g, 2, torch.tensor([0.1], dtype=F64), torch.tensor([1.0], dtype=F64), BOX)
    assert torch.allclose(step - x0, 0.1 * g / g.norm())
    # l1 with k = 2 from the box's upper face on coordinate 3: the step goes to coordinates 1 and 0
    xf = torch.tensor([[0.5, 0.5, 0.5, 1.0]], dtype=F64)
    step = pgd_step(xf, xf, g, 1, 10.0, 0.2, BOX, l1_k=2)
    assert torch.allclose(step - xf, torch.tensor([[0.1, -0.1, 0.0, 0.0]], dtype=F64))
    assert float(lp_norm(step - xf, 1)) == pytest.approx(0.2)
