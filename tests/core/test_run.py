"""start_attack / AttackRun.finish / AttackResult (minnorm.core.run, minnorm.core.result)."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

from minnorm.core import AttackResult, is_adversarial, make_generator, rand_like, start_attack


def setup(n: int = 4, dtype: torch.dtype = torch.float32):
    model = tiny_mlp(dtype=dtype)
    x = tiny_inputs(n, dtype=dtype)
    return model, x, true_labels(model, x)


def test_start_attack():
    model, x, y = setup()
    run = start_attack(model, x, y, targeted=False, bounds=(0, 1), norm="l2")
    assert run.num_classes == 4 and run.norm == 2.0 and run.bounds == (0.0, 1.0) and run.batch_size == 4
    torch.testing.assert_close(run.clean_logits, model(x).detach())
    assert run.model.forward_passes.tolist() == [1] * 4 and run.model.backward_passes.tolist() == [0] * 4
    assert isinstance(run.generator, torch.Generator)
    assert not run.is_adversarial(run.clean_logits).any()


def test_start_attack_empty_batch_runs_no_model():
    def model(x):
        raise AssertionError("no model call on an empty batch")

    _, x, y = setup()
    run = start_attack(model, x[:0], y[:0], targeted=True, bounds=(0, 1), norm=math.inf)
    res = run.finish(x[:0].clone())
    assert res.adversarials.shape == (0, 1, 8, 8) and res.success.shape == (0,) and res.norms.shape == (0,)
    assert math.isnan(res.success_rate) and math.isnan(res.median_norm()) and len(res) == 0


def test_start_attack_rejects():
    model, x, y = setup()
    with pytest.raises(TypeError, match="callable"):
        start_attack("model", x, y, targeted=False, bounds=(0, 1), norm=2)
    with pytest.raises(TypeError, match="torch.Generator"):
        start_attack(model, x, y, targeted=False, bounds=(0, 1), norm=2, generator=0)
    with pytest.raises(ValueError, match="out of range"):
        start_attack(model, x, y + 4, targeted=False, bounds=(0, 1), norm=2)
    with pytest.raises(ValueError, match="norm p"):
        start_attack(model, x, y, targeted=False, bounds=(0, 1), norm=0.5)


def test_finish_enforces_the_output_invariants():
    model, x, y = setup(dtype=torch.float64)
    run = start_attack(model, x, y, targeted=False, bounds=(0, 1), norm=2)
    far = x.clone()
    far[0] = 1 - x[0]  # some far point, adversarial or not: finish decides
    far[1] = 5.0  # outside the box: must be clipped
    far[2, 0, 0, 0] = math.nan  # non-finite rows fall back to the clean input
    res = run.finish(far)
    assert bool((res.adversarials >= 0).all() and (res.adversarials <= 1).all())
    assert torch.equal(res.success, model(res.adversarials).argmax(1) != y)
    assert not bool(res.success[2]) and not bool(res.success[3])
    for i in range(4):
        if res.success[i]:
            assert float(res.norms[i]) == pytest.approx(float((res.adversarials[i] - x[i]).norm()))
        else:
            assert torch.equal(res.adversarials[i], x[i]) and math.isinf(float(res.norms[i]))
    assert run.model.forward_passes.tolist() == [2] * 4, "finish runs exactly one final forward pass"
    with pytest.raises(RuntimeError, match="shape"):
        run.finish(x[:2])


def test_is_adversarial():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 2])
    assert is_adversarial(logits, labels, targeted=False).tolist() == [False, True]
    assert is_adversarial(logits, labels, targeted=True).tolist() == [True, False]


def test_generators_and_rand_like_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    g = make_generator(None, torch.device("cpu"))
    a = rand_like(torch.zeros(2, 3, dtype=torch.float64), g)
    b = rand_like(torch.zeros(2, 3), make_generator(None, torch.device("cpu")), normal=True)
    assert torch.equal(state, torch.get_rng_state())
    assert a.dtype == torch.float64 and b.dtype == torch.float32 and bool(((a >= 0) & (a < 1)).all())
    again = rand_like(torch.zeros(2, 3, dtype=torch.float64), make_generator(None, torch.device("cpu")))
    assert torch.equal(a, again), "the default generator is seeded, so runs repeat"
    mine = torch.Generator().manual_seed(5)
    assert make_generator(mine, torch.device("cpu")) is mine


def test_attack_result_helpers():
    res = AttackResult(torch.zeros(3, 2), torch.tensor([True, False, True]), torch.tensor([0.5, math.inf, 0.1]),
                       torch.ones(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0.01, {"k": 1})
    assert len(res) == 3
    assert res.success_rate == pytest.approx(2 / 3)
    assert res.median_norm() == pytest.approx(0.5)
    moved = res.to("cpu")
    assert moved.info == {"k": 1} and moved.info is not res.info and torch.equal(moved.norms, res.norms)
