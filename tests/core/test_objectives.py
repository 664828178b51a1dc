"""The shared classification objectives (minnorm.core.objectives) against hand-computed values
on small logit tensors (ties, targeted, two classes) and their defining invariants."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minnorm.core import (cross_entropy, cross_entropy_objective, dlr, dlr_objective, is_adversarial, logit_difference,
                          logit_margin, margin_objective, top_other_classes)

F64 = torch.float64
# row 0: label wins by 1; row 1: class 1 wins by 3; row 2: a tie between classes 0 and 1
LOGITS = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
ZEROS = torch.tensor([0, 0, 0])


def test_logit_margin_by_hand():
    assert logit_margin(LOGITS, ZEROS).tolist() == [-1.0, 3.0, 0.0]
    assert logit_margin(LOGITS, torch.tensor([2, 2, 2])).tolist() == [1.5, 2.0, 1.0]
    # targeted at class 1: z_1 - max_{j != 1} z_j
    assert logit_margin(LOGITS, torch.tensor([1, 1, 1]), targeted=True).tolist() == [-1.0, 2.0, 0.0]
    assert logit_margin(LOGITS, torch.tensor([0, 1, 2]), targeted=True).tolist() == [1.0, 2.0, -1.0]
    assert margin_objective(ZEROS, False)(LOGITS).tolist() == [-1.0, 3.0, 0.0]


def test_logit_margin_gradient_is_rival_minus_own():
    z = LOGITS[:2].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(logit_margin(z, ZEROS[:2]).sum(), z)
    assert g.tolist() == [[-1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]]


def test_cross_entropy_by_hand():
    want = [math.log(sum(math.exp(v) for v in row)) - row[0] for row in LOGITS.tolist()]
    assert cross_entropy(LOGITS, ZEROS).tolist() == pytest.approx(want, rel=1e-12)
    assert cross_entropy(LOGITS, ZEROS, targeted=True).tolist() == pytest.approx([-w for w in want], rel=1e-12)
    assert torch.equal(cross_entropy_objective(ZEROS, True)(LOGITS), cross_entropy(LOGITS, ZEROS, True))
    assert cross_entropy(LOGITS[2:], torch.tensor([1])).item() == pytest.approx(math.log(2 + math.exp(-1)))  # log(2e + 1) - 1


def test_logit_difference_by_hand():
    classes = torch.tensor([[1, 2], [2, 1], [1, 0]])
    assert logit_difference(LOGITS, ZEROS, classes).tolist() == [[-1.0, -1.5], [1.0, 3.0], [0.0, 0.0]]
    assert logit_difference(LOGITS, torch.tensor([1, 1, 2]), classes[:, :1]).tolist() == [[0.0], [-2.0], [1.0]]


def test_top_other_classes_by_hand():
    assert top_other_classes(LOGITS, ZEROS, 2).tolist() == [[1, 2], [1, 2], [1, 2]]
    assert top_other_classes(LOGITS, torch.tensor([1, 1, 1]), 9).tolist() == [[0, 2], [2, 0], [0, 2]]  # at most K - 1
    assert top_other_classes(LOGITS, torch.tensor([2, 1, 0]), 1).tolist() == [[0], [2], [1]]  # a tie never picks the label


def test_dlr_by_hand():
    # untargeted, eq. (6): -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)
    assert dlr(LOGITS, ZEROS).tolist() == pytest.approx([-(2 - 1) / (2 - 0.5), -(0 - 3) / (3 - 0), 0.0])
    # two classes: the smallest logit stands in for pi3
    assert dlr(torch.tensor([[1.0, 3.0]], dtype=F64), torch.tensor([0])).item() == pytest.approx(-(1 - 3) / (3 - 1))
    z = torch.tensor([[4.0, 3.0, 2.0, 0.0], [0.0, 5.0, 1.0, 2.0]], dtype=F64)
    # eq. (7) towards t = 2 from y = 1 (APGD-T): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    want = [-(3 - 2) / (4 - (2 + 0) / 2), -(5 - 1) / (5 - (1 + 0) / 2)]
    assert dlr(z, torch.tensor([1, 1]), targets=torch.tensor([2, 2])).tolist() == pytest.approx(want)
    # targeted mode: labels are the targets, y the strongest other class
    want = [-(4 - 2) / (4 - 1), -(5 - 2) / (5 - 0.5)]
    assert dlr(z, torch.tensor([2, 3]), targeted=True).tolist() == pytest.approx(want)
    assert torch.equal(dlr_objective(torch.tensor([2, 3]), True)(z), dlr(z, torch.tensor([2, 3]), True))


logit_rows = st.integers(2, 6).flatmap(lambda k: st.tuples(
    arrays(np.float64, (4, k), elements=st.integers(-3, 3).map(float)),  # small integers: ties are common
    arrays(np.int64, 4, elements=st.integers(0, k - 1))))


@given(logit_rows, st.booleans())
def test_margin_positive_iff_adversarial(rows, targeted):
    z, y = torch.from_numpy(rows[0]), torch.from_numpy(rows[1])
    m = logit_margin(z, y, targeted)
    adv = is_adversarial(z, y, targeted)
    assert bool((adv[m > 0]).all())  # a positive margin always fools the argmax
    assert bool((m[adv] >= 0).all())  # a fooled argmax never has a negative margin
    top2 = z.sort(1, descending=True).values[:, :2]
    strict = top2[:, 0] > top2[:, 1]  # without a tie for first place, the two agree exactly
    assert torch.equal((m > 0)[strict], adv[strict])
    # brute force over the other classes
    for i in range(len(y)):
        rival = max(float(z[i, j]) for j in range(z.shape[1]) if j != int(y[i]))
        own = float(z[i, y[i]])
        assert float(m[i]) == (own - rival if targeted else rival - own)


@given(logit_rows, st.floats(0.1, 10.0), st.floats(-5.0, 5.0))
def test_dlr_is_shift_and_scale_invariant(rows, scale, shift):
    z, y = torch.from_numpy(rows[0]), torch.from_numpy(rows[1])
    t = (y + 1) % z.shape[1]
    for targeted, targets in ((False, None), (True, None), (False, t)):
        a, b = dlr(z, y, targeted, targets), dlr(z * scale + shift, y, targeted, targets)
        # where z_pi1 = z_pi3 the 1e-12 guard sets the value, which then scales with the logits
        ok = torch.abs(a) < 1e6
        assert torch.allclose(a[ok], b[ok], rtol=1e-9, atol=1e-9)
        assert torch.equal(torch.sign(a), torch.sign(b))
