"""Input checks (minnorm.core.validation): the right error type with a message naming the problem."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minnorm.core import check_bounds, check_inputs, check_int, check_logits, check_positive

X = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2])


def test_valid_inputs_pass():
    assert check_inputs(X, Y, (0, 1)) == (0.0, 1.0)
    assert check_inputs(X[:0], Y[:0], (0, 1)) == (0.0, 1.0)
    assert check_inputs(X * 3 - 1, Y, (-1, 2)) == (-1.0, 2.0)
    assert check_inputs(X.double(), Y.int(), (0, 1)) == (0.0, 1.0)
    check_inputs(X + 1e-7, Y, (0, 1))  # float noise at the box's edge is tolerated
    check_inputs(X.clone().requires_grad_(True), Y, (0, 1))


def _nan():
    x = X.clone()
    x[0, 0, 1, 1] = math.nan
    return x


def _inf():
    x = X.clone()
    x[2, 0, 0, 0] = -math.inf
    return x


@pytest.mark.parametrize("inputs,labels,error,pattern", [
    (X.numpy(), Y, TypeError, "inputs must be a torch.Tensor"),
    (X, [0, 1, 2], TypeError, "labels must be a torch.Tensor"),
    (X, np.array([0, 1, 2]), TypeError, "labels must be a torch.Tensor"),
    ((X * 255).long(), Y, TypeError, "floating point"),
    (X.flatten(), Y, ValueError, "at least 2 dims"),
    (X, Y[:, None], ValueError, "labels must be 1-D"),
    (X, Y.float(), TypeError, "integer"),
    (X, Y.bool(), TypeError, "integer"),
    (X, Y[:2], ValueError, "batch size mismatch: 3 inputs but 2 labels"),
    (X + 0.5, Y, ValueError, "outside the box"),
    (X - 0.5, Y, ValueError, "outside the box"),
    (_nan(), Y, ValueError, "NaN or inf"),
    (_inf(), Y, ValueError, "NaN or inf"),
    (X, torch.tensor([0, -1, 2]), ValueError, "labels must be >= 0"),
])
def test_check_inputs_errors(inputs, labels, error, pattern):
    with pytest.raises(error, match=pattern):
        check_inputs(inputs, labels, (0, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_check_inputs_device_mismatch():
    with pytest.raises(ValueError, match="on cpu but labels on cuda"):
        check_inputs(X, Y.cuda(), (0, 1))


@pytest.mark.parametrize("bounds,error", [((1, 0), ValueError), ((0, 0), ValueError), ((0, math.inf), ValueError),
                                          ((math.nan, 1), ValueError), ((0,), TypeError), (None, TypeError),
                                          (("a", 1), TypeError), ((0, 1, 2), TypeError)])
def test_check_bounds_errors(bounds, error):
    with pytest.raises(error, match="bounds"):
        check_bounds(bounds)


def test_check_bounds_accepts_pairs():
    assert check_bounds([0, 255]) == (0.0, 255.0)
    assert check_bounds((torch.tensor(-1.0), 1)) == (-1.0, 1.0)


def test_check_logits():
    assert check_logits(torch.zeros(3, 4), 3, Y) == 4
    cases = [
        (torch.zeros(3), ValueError, r"\[B, K\] = \[3, K\], got \(3,\)"),
        (torch.zeros(3, 4, 1), ValueError, r"shape \[B, K\]"),
        (torch.zeros(2, 4), ValueError, r"shape \[B, K\]"),
        (torch.zeros(3, 1), ValueError, "at least 2 classes"),
        (torch.tensor([[0.0, math.nan]] * 3), ValueError, "NaN or inf logits"),
        ([[0.0, 1.0]] * 3, TypeError, "tensor of logits"),
    ]
    for logits, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            check_logits(logits, 3)
    with pytest.raises(ValueError, match="label 2 at index 2 is out of range"):
        check_logits(torch.zeros(3, 2), 3, Y)


def test_check_positive():
    assert check_positive("eps", 0.5) == 0.5
    assert check_positive("eps", 0, allow_zero=True) == 0.0
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="eps must be > 0"):
            check_positive("eps", bad)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        check_positive("gamma", -0.1, allow_zero=True)


def test_check_int():
    assert check_int("steps", 3) == 3 and check_int("steps", 2.0) == 2
    assert check_int("restarts", 0, minimum=0) == 0
    for bad in (0, -3, 2.5, True, float("inf"), float("-inf"), float("nan"), "5", None):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):  # inf: OverflowError before
            check_int("steps", bad)
    assert check_int("steps", 2 ** 62) == 2 ** 62
    with pytest.raises(ValueError, match="at most 2\\*\\*62"):  # int64 arithmetic would overflow later
        check_int("steps", 10 ** 23)
