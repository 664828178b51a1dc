"""The standard ensemble (ensemble-l1/l2/linf): cheap members first, costly ones where they disagree."""
from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch
from affine_oracle import affine_model, inputs, untargeted_minimum
from helpers import tiny_inputs, tiny_mlp, true_labels

import minnorm
from minnorm.attacks.ensemble import STAGES


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_reaches_the_affine_minimum(p):
    model = affine_model(k=4)
    x = inputs(6, edge=True)
    y = model(x).argmax(1)
    want = untargeted_minimum(model, x, y, p, (0.0, 1.0))
    res = minnorm.attacks.ensemble(model, x, y, norm=p, quick_members=True)
    assert bool(res.success.all())
    torch.testing.assert_close(res.norms, want, rtol=2e-3, atol=1e-7)
    assert bool((res.norms >= want * (1 - 1e-6)).all()), "below the exact minimum"


def test_best_of_members_within_the_total_budget():
    model, x = tiny_mlp(dtype=torch.float64), tiny_inputs(8, dtype=torch.float64)
    y = true_labels(model, x)
    res = minnorm.attacks.ensemble(model, x, y, norm=math.inf, total_passes=600)
    assert int(res.passes.max()) <= 600
    first, params = STAGES[math.inf][0][0]
    alone = minnorm.attacks.get(first)(model, x, y, **params)  # a deterministic first member
    assert bool((res.norms <= alone.norms * (1 + 1e-9)).all()), "the ensemble lost a member's adversarial"
    stages = res.info["passes_per_stage"]
    assert stages.shape == (len(STAGES[math.inf]), 8) and bool((stages[0] > 0).all())
    members = res.info["members"]
    assert members[0] == first and int(res.info["found_by"].min()) >= 0
    per_member, member_norms = res.info["passes_per_member"], res.info["member_norms"]
    assert per_member.shape == member_norms.shape == (len(members), 8)
    assert torch.equal(per_member.sum(0), stages.sum(0)) and bool((per_member[0] > 0).all())
    torch.testing.assert_close(member_norms[0], alone.norms.double())  # the first member saw the whole budget
    torch.testing.assert_close(member_norms.min(0).values, res.norms.double())


def test_costly_stage_only_where_the_cheap_ones_disagree():
    """On an affine model FMN and FAB both find the exact minimum, so stage 2 never runs."""
    model = affine_model(k=3)
    x = inputs(5)
    y = model(x).argmax(1)
    res = minnorm.attacks.ensemble(model, x, y, norm=2.0, gap=0.01, quick_members=True,
                                   stages=[[("fmn-l2", {}), ("fab-l2", {})], [("ddn", {})]])
    assert bool((res.info["passes_per_stage"][1] == 0).all())
    forced = minnorm.attacks.ensemble(model, x, y, norm=2.0, gap=0.0, quick_members=True,
                                      stages=[[("ddn", {})], [("fmn-l2", {})]])
    assert bool((forced.info["passes_per_stage"][1] > 0).all())  # one member: no second opinion, so go on


def test_per_class_member_is_the_best_of_its_targeted_runs():
    """``per_class=k`` runs the member targeted towards each of the k other classes: with shares
    that never bind, the result is the smallest of the one-by-one targeted runs."""
    model, x = tiny_mlp(dtype=torch.float64), tiny_inputs(5, dtype=torch.float64)
    y = true_labels(model, x)
    res = minnorm.attacks.ensemble(model, x, y, norm=math.inf, total_passes=10_000,
                                   stages=[[("fmn-linf", {"per_class": 3, "steps": 30, "targets": None})]])
    want = torch.full((5,), math.inf, dtype=torch.float64)
    for shift in (1, 2, 3):
        t = (y + shift) % 4
        one = minnorm.attacks.get("fmn-linf")(model, x, t, targeted=True, steps=30, targets=None)
        want = torch.minimum(want, torch.where(one.success, one.norms, torch.full_like(want, math.inf)))
    torch.testing.assert_close(res.norms, want, rtol=1e-6, atol=1e-9)
    assert int(res.passes.max()) <= 10_000


def test_polish_from_the_best_never_loses_it():
    """``from_best`` hands the best adversarial so far to the linear-region attack as its start:
    the result is at most that point's norm, and usually below it (the region LP is exact)."""
    model, x = tiny_mlp(dtype=torch.float64), tiny_inputs(6, dtype=torch.float64)
    y = true_labels(model, x)
    first = [("fmn-linf", {"steps": 15, "targets": None})]
    alone = minnorm.attacks.ensemble(model, x, y, norm=math.inf, stages=[first])
    gen = torch.Generator().manual_seed(0)
    res = minnorm.attacks.ensemble(model, x, y, norm=math.inf, generator=gen, stages=[first + [
        ("lra-linf", {"from_best": True, "search_steps": 2, "regions": 5, "qp_steps": 100})]])
    assert bool((res.norms <= alone.norms * (1 + 1e-9)).all())
    assert bool((res.norms < alone.norms * (1 - 1e-3)).any()), "the polish improved no sample"
    assert int(res.passes.max()) <= 2000 and bool((res.info["passes_per_stage"][0] > alone.passes).all())


def test_linear_region_attack_starts_from_given_points():
    """``init`` as a tensor: the given adversarials are the starts (no attack is run for them);
    a row whose start is not adversarial stays unbroken."""
    model, x = tiny_mlp(dtype=torch.float64), tiny_inputs(4, dtype=torch.float64)
    y = true_labels(model, x)
    start = minnorm.attacks.get("fmn-linf")(model, x, y, steps=20, targets=None)
    init = start.adversarials.clone()
    init[0] = x[0]  # not adversarial
    res = minnorm.attacks.get("lra-linf")(model, x, y, init=init, regions=3, qp_steps=50,
                                          generator=torch.Generator().manual_seed(0))
    assert not bool(res.success[0]) and bool(res.success[1:].all())
    assert bool((res.norms[1:] <= start.norms[1:] * (1 + 1e-9)).all())
    with pytest.raises(ValueError):
        minnorm.attacks.get("lra-linf")(model, x, y, init=init[:2])


def test_per_class_polish_starts_from_each_class_best_point(monkeypatch):
    """``per_class`` with ``from_best``: each class's run of the polish starts from the smallest
    adversarial an earlier ``per_class`` member found towards that class (here FMN's targeted
    point, with shares that never bind), not from the sample's overall best."""
    model, x = tiny_mlp(dtype=torch.float64), tiny_inputs(4, dtype=torch.float64)
    y = true_labels(model, x)
    spec = minnorm.attacks.get("lra-linf")
    seen = {}

    def spy(model, inputs, labels, **kw):
        seen["init"], seen["labels"] = kw["init"].clone(), labels.clone()
        return original(model, inputs, labels, **kw)

    module = sys.modules["minnorm.attacks.ensemble"]
    original, lookup = spec.fn, module.get
    monkeypatch.setattr(module, "get", lambda name: dataclasses.replace(spec, fn=spy) if name == "lra-linf"
                        else lookup(name))
    fmn = ("fmn-linf", {"per_class": 3, "steps": 30, "targets": None})
    res = minnorm.attacks.ensemble(model, x, y, norm=math.inf, total_passes=20_000, stages=[[fmn, (
        "lra-linf", {"from_best": True, "per_class": 2, "search_steps": 2, "regions": 2, "qp_steps": 50})]])
    assert bool(res.success.all()) and seen["init"].shape[0] == 2 * 4
    for row in range(8):
        i, t = row // 2, int(seen["labels"][row])
        assert t != int(y[i])
        one = minnorm.attacks.get("fmn-linf")(model, x[i:i + 1], torch.tensor([t]), targeted=True, steps=30,
                                             targets=None)
        assert bool(one.success[0])
        torch.testing.assert_close(seen["init"][row], one.adversarials[0])


@pytest.mark.parametrize("stages, message", [
    (5, "non-empty list"), ([], "non-empty list"), ([[]], "the stage"), ([["fmn-l1"]], "the member"),
    ([[("fmn-l2", {})]], "does not fit an l1 ensemble"), ([[("pgd-l1", {})]], "fixed-eps"),
    ([[("fmn-l1", {"stepz": 3})]], "takes no parameter 'stepz'"), ([[("fmn-l1", {"norm": 2})]], "fixes norm"),
    ([[("fmn-l1", {"steps": 3})], [("nope", {})]], "unknown attack"),
])
def test_bad_stages_raise_before_any_member_runs(stages, message):
    """A member of another norm would mix norms in the best-of choice and the printed radius."""
    model, x = tiny_mlp(dtype=torch.float64), tiny_inputs(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        minnorm.attacks.ensemble(model, x, true_labels(model, x), norm=1.0, stages=stages)
