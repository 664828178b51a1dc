"""CountedModel: per-sample pass accounting and budgets (minnorm.core.counting)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from minnorm.core import CountedModel, PassBudgetExceeded


def linear_model() -> nn.Module:
    model = nn.Linear(3, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]]))
    return model


def test_counts_per_index():
    counted = CountedModel(linear_model(), 4)
    x = torch.rand(4, 3, dtype=torch.float64)
    counted(x)
    counted(x[[0, 2]], torch.tensor([0, 2]))
    counted.count_backward(torch.tensor([3]))
    assert counted.forward_passes.tolist() == [2, 1, 2, 1]
    assert counted.backward_passes.tolist() == [0, 0, 0, 1]
    counted.count_backward()
    assert counted.backward_passes.tolist() == [1, 1, 1, 2]
    assert counted.forward_passes.dtype == torch.long


def test_empty_index_counts_nothing():
    counted = CountedModel(linear_model(), 3)
    counted(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    assert counted.forward_passes.tolist() == [0, 0, 0]


def test_value_and_grad():
    model = linear_model()
    counted = CountedModel(model, 3)
    x = torch.rand(3, 3, dtype=torch.float64)
    with torch.no_grad():  # the attack may call it inside no_grad: gradients must still flow
        logits, values, grad = counted.value_and_grad(x[1:], lambda z: z[:, 0] - z[:, 1], torch.tensor([1, 2]))
    w = model.weight.detach()
    torch.testing.assert_close(logits, x[1:] @ w.T)
    torch.testing.assert_close(values, logits[:, 0] - logits[:, 1])
    torch.testing.assert_close(grad, (w[0] - w[1]).expand(2, 3))
    assert not (logits.requires_grad or values.requires_grad or grad.requires_grad)
    assert counted.forward_passes.tolist() == [0, 1, 1] and counted.backward_passes.tolist() == [0, 1, 1]
    assert model.weight.grad is None, "value_and_grad must not touch parameter gradients"
    assert not x.requires_grad


def test_value_and_grad_is_per_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    counted = CountedModel(model, 5)
    x = torch.randn(5, 4, dtype=torch.float64)
    objective = lambda z: z.logsumexp(1) - z[:, 0]  # noqa: E731
    _, values, grad = counted.value_and_grad(x, objective)
    for i in range(5):
        _, v, g = counted.value_and_grad(x[i:i + 1], objective, torch.tensor([i]))
        torch.testing.assert_close(v, values[i:i + 1])
        torch.testing.assert_close(g, grad[i:i + 1])
    assert counted.forward_passes.tolist() == [2] * 5


def test_budget_credits_passes_up_to_the_reserved_final_check():
    counted = CountedModel(linear_model(), 2, budget=4)  # 3 search passes, 1 kept for the final check
    x = torch.rand(2, 3, dtype=torch.float64)
    counted(x)
    counted.count_backward()
    counted(x[:1], torch.tensor([0]))  # sample 0 now at its search limit of 3: still credited
    assert counted.exhausted.tolist() == [False, False]
    counted.count_backward(torch.tensor([0]))  # one too many: not charged, sample 0 exhausted
    assert counted.exhausted.tolist() == [True, False]
    assert counted.forward_passes.tolist() == [2, 1] and counted.backward_passes.tolist() == [1, 1]
    counted(x)  # sample 1 reaches 3; sample 0 stays uncharged
    assert counted.forward_passes.tolist() == [2, 2]
    counted(x)  # now both are exhausted ...
    with pytest.raises(PassBudgetExceeded, match="budget"):
        counted(x)  # ... so the next call stops the attack
    counted.verify(x)  # the final check is always charged
    assert (counted.forward_passes + counted.backward_passes).tolist() == [4, 4]
    assert issubclass(PassBudgetExceeded, RuntimeError)


def test_repeated_rows_are_charged_per_occurrence():
    counted = CountedModel(linear_model(), 3)
    counted(torch.rand(4, 3, dtype=torch.float64), torch.tensor([0, 0, 2, 0]))
    counted.charge(torch.tensor([1, 1]), forward=2, backward=1)
    assert counted.forward_passes.tolist() == [3, 4, 1] and counted.backward_passes.tolist() == [0, 2, 0]


def test_per_sample_budgets():
    counted = CountedModel(linear_model(), 3, budget=torch.tensor([2, 3, 1]))
    x = torch.rand(3, 3, dtype=torch.float64)
    counted(x)
    counted(x)
    assert counted.forward_passes.tolist() == [1, 2, 0] and counted.exhausted.tolist() == [True, False, True]


def test_no_budget_never_raises():
    counted = CountedModel(linear_model(), 1)
    for _ in range(50):
        counted(torch.rand(1, 3, dtype=torch.float64))
    assert counted.forward_passes.tolist() == [50]


def test_jvp_and_vjp_match_the_jacobian_and_are_charged_per_row():
    """Products against the explicit Jacobian of a small nonlinear model; a JVP is one backward
    pass, a VJP one forward and one backward pass, charged per occurrence of each row."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    counted = CountedModel(model, 3)
    x = torch.rand(3, 3, dtype=torch.float64)
    jac = torch.stack([torch.autograd.functional.jacobian(model, x[i]) for i in range(3)])  # [3, 2, 3]
    v = torch.randn(3, 3, dtype=torch.float64)
    u = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(counted.jvp(x, v), torch.einsum("bij,bj->bi", jac, v))
    assert counted.backward_passes.tolist() == [1, 1, 1] and counted.forward_passes.tolist() == [0, 0, 0]
    rows = torch.tensor([2, 0, 2])
    out = counted.vjp(x[rows], u, rows)
    torch.testing.assert_close(out, torch.einsum("bij,bi->bj", jac[rows], u))
    assert not out.requires_grad
    assert counted.forward_passes.tolist() == [1, 0, 2] and counted.backward_passes.tolist() == [2, 1, 3]


def test_products_respect_the_budget():
    counted = CountedModel(linear_model(), 2, budget=3)  # 2 passes for the search, 1 reserved
    x = torch.rand(2, 3, dtype=torch.float64)
    counted.vjp(x, torch.ones(2, 2, dtype=torch.float64))
    assert counted.over_budget().tolist() == [False, False]
    counted.jvp(x, x)
    assert counted.over_budget().tolist() == [True, True]
    with pytest.raises(PassBudgetExceeded):
        counted.jvp(x, x)
