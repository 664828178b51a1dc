"""docs/building-an-attack.md: the example attack runs as written and obeys the whole contract."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import affine_inputs, affine_minimum, affine_model, true_labels
from test_contract import (attack, batch, check_batch_equals_single, check_best_seen, check_determinism,
                           check_no_mutation, check_outputs, check_pass_counts, check_refuses_train_mode)
from test_pass_count import check_batch, model_and_batch, recorded_run

from minnorm.core import registry

PAGE = Path(__file__).resolve().parents[1] / "docs" / "building-an-attack.md"
CODE = re.search(r"<!-- example: boundary-walk -->\n```python\n(.*?)```", PAGE.read_text(), re.S).group(1)


@pytest.fixture(scope="module")
def spec():
    """The page's code, executed as written; its registration removed again afterwards."""
    assert "boundary-walk" not in registry.available()
    namespace: dict = {}
    exec(compile(CODE, str(PAGE), "exec"), namespace)  # noqa: S102 (our own documentation)
    yield registry.get("boundary-walk")
    del registry._REGISTRY["boundary-walk"]


def test_the_example_is_short():
    body = CODE[CODE.index("def boundary_walk"):CODE.index("register(")].strip().splitlines()
    assert len(body) <= 40, f"the example attack is {len(body)} lines"


@pytest.mark.parametrize("edge", [False, True])
def test_example_finds_the_exact_minimum_of_an_affine_model(spec, edge):
    model = affine_model(d=20, k=4)
    x = affine_inputs(8, d=20, edge=edge)
    y = true_labels(model, x)
    res = spec(model, x, y, generator=torch.Generator().manual_seed(0))
    exact = affine_minimum(model, x, y, 2.0, (0.0, 1.0))
    assert bool(res.success.all())
    assert bool((res.norms >= exact * (1 - 1e-9)).all()), "below the exact minimum: a bug"
    assert bool((res.norms <= exact * (1 + 1e-3)).all()), f"{(res.norms / exact).max():.5f}x the exact minimum"


def test_example_obeys_the_contract(spec):
    model, x, y = batch(torch.float32)
    check_outputs(spec, model, x, y, attack(spec, model, x, y))
    for frozen in (False, True):
        check_no_mutation(spec, frozen)
    check_refuses_train_mode(spec)
    check_batch_equals_single(spec)
    check_determinism(spec)
    check_pass_counts(spec, attack(spec, *batch()))
    for index in range(2):
        check_best_seen(spec, index, False)


def test_example_reports_the_passes_the_model_saw(spec):
    model, x, y = model_and_batch(False)
    check_batch(spec, model, x, y, False)
    res, _ = recorded_run(spec, model, x, y, False, budget=7)
    assert int(res.passes.max()) <= 7
