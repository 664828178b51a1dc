"""core.gradients: several objectives' gradients per sample, loop and vmap, against autograd one by one."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from minnorm.core import per_objective_gradients


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_matches_one_backward_per_sample_and_objective(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 5)).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    logits = model(x)
    rows = torch.tensor([0, 2, 3])
    values = logits[rows][:, 1:4] - logits[rows][:, :1]  # three objectives per kept sample
    got = per_objective_gradients(values, x, rows, method=method)
    assert got.shape == (3, 3, 1, 8, 8)
    for i, r in enumerate(rows.tolist()):
        for j in range(3):
            xi = x[r:r + 1].detach().requires_grad_(True)
            z = model(xi)[0]
            (want,) = torch.autograd.grad(z[j + 1] - z[0], xi)
            torch.testing.assert_close(got[i, j], want[0])


def test_unknown_method():
    x = torch.rand(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="method"):
        per_objective_gradients(torch.stack([x.sum(1), x.prod(1)], 1), x, method="magic")
