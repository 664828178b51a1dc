"""core.gradients: several objectives' gradients per sample, every method against autograd one by one and
against the loop (on the shipped mlp and cnn), the chunking rule, and the passes the attacks charge."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import minnorm.attacks
import minnorm.data
import minnorm.models
from minnorm.core import per_objective_gradients
from minnorm.core import gradients
from minnorm.core.gradients import METHODS, gradient_method, objectives_per_call


@pytest.mark.parametrize("method", METHODS)
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


def _shipped(name):
    model = minnorm.models.load_shipped(name)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("batch", [1, 3, 40])
def test_every_method_equals_the_loop_on_shipped_models(name, batch, monkeypatch):
    """DeepFool's nine logit differences: every method (auto at three chunk sizes) gives the loop's
    gradients to 1e-6 of their scale, on the rows kept and only those."""
    model = _shipped(name)
    x = minnorm.data.load_sample()[0][:batch + 1]
    label = torch.arange(batch + 1) % 10
    cand = torch.stack([(label + k) % 10 for k in range(1, 10)], 1)

    def grads(method):
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        rows = torch.arange(1, batch + 1)  # row 0 is left out, as a sample that just finished
        values = logits[rows].gather(1, cand[rows]) - logits[rows].gather(1, label[rows, None])
        return per_objective_gradients(values, xg, rows, method=method)

    want = grads("loop")
    assert want.shape == (batch, 9, *x.shape[1:]) and want.abs().max() > 0
    for rows_per_call in (4, 20, 72, 1000):  # auto with chunks of 1, some, or all nine objectives
        monkeypatch.setattr(gradients, "AUTO_ROWS", rows_per_call)
        for method in ("vmap", "auto"):
            got = grads(method)
            assert float((got - want).abs().max()) <= 1e-6 * float(want.abs().max()), (method, rows_per_call)


@pytest.mark.parametrize("rows,objectives,want", [
    (1, 9, 9), (8, 9, 9), (9, 9, 5), (16, 9, 3), (24, 9, 3), (25, 9, 2), (36, 9, 2), (37, 9, 1), (100, 9, 1),
    (0, 9, 9), (1, 1, 1), (1, 100, 50), (5, 2, 2),
])
def test_auto_keeps_calls_within_auto_rows_and_even(rows, objectives, want):
    assert gradients.AUTO_ROWS == 72
    got = objectives_per_call("auto", rows, objectives)
    assert got == want
    calls = -(-objectives // got)
    assert got * max(rows, 1) <= 72 or got == 1  # within the row limit unless one objective alone is over it
    assert -(-objectives // (got - 1 or 1)) > calls or got == 1  # no smaller chunk needs as few calls
    assert objectives_per_call("loop", rows, objectives) == 1
    assert objectives_per_call("vmap", rows, objectives) == objectives


def test_gradient_method_sets_the_default_in_its_block_only(monkeypatch):
    x = torch.rand(2, 3, requires_grad=True)
    seen = []
    real = gradients.objectives_per_call
    monkeypatch.setattr(gradients, "objectives_per_call", lambda method, *a: seen.append(method) or real(method, *a))

    def call(**kwargs):
        values = torch.stack([x.sum(1), (x ** 2).sum(1)], 1)
        return per_objective_gradients(values, x, **kwargs)

    want = call(method="loop")
    with gradient_method("vmap"):
        torch.testing.assert_close(call(), want)
        with gradient_method("loop"):
            call()
        call()
    call()
    assert seen == ["loop", "vmap", "loop", "vmap", "auto"]
    with pytest.raises(ValueError, match="method"):
        with gradient_method("magic"):
            pass
    call()
    assert seen[-1] == "auto"


def test_unknown_method():
    x = torch.rand(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="method"):
        per_objective_gradients(torch.stack([x.sum(1), x.prod(1)], 1), x, method="magic")


@pytest.mark.parametrize("attack,kwargs", [
    ("deepfool-l2", {"max_iterations": 5}),
    ("deepfool-linf", {"max_iterations": 5}),
    ("convex-min-l2", {"max_iterations": 5, "class_choice": "linearised"}),
    ("alg1n-l2", {"eps": 1.0, "steps": 3}),
])
def test_attacks_charge_and_find_the_same_with_every_method(attack, kwargs):
    """The method changes how the backward calls are grouped, not what the model is charged: the
    same passes per sample, the same success, norms within 1e-5 relative (shipped cnn)."""
    model = _shipped("cnn")
    x, y = minnorm.data.load_sample()
    x, y = x[:6], y[:6]
    spec = minnorm.attacks.get(attack)
    results = {}
    for method in METHODS:
        with gradient_method(method):
            results[method] = spec.fn(model, x, y, **{**spec.defaults, **kwargs})
    base = results["loop"]
    assert int(base.backward_passes.sum()) > 0
    for method, res in results.items():
        assert torch.equal(res.forward_passes, base.forward_passes), method
        assert torch.equal(res.backward_passes, base.backward_passes), method
        assert torch.equal(res.success, base.success), method
        torch.testing.assert_close(res.norms, base.norms, rtol=1e-5, atol=0.0)
