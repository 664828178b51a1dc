"""The attack registry (minnorm.core.registry)."""
from __future__ import annotations

import math

import pytest

import minnorm
from minnorm.core import AttackSpec, available, get, register, specs
from minnorm.core import registry as registry_module


@pytest.fixture
def scratch_name():
    """A registry name that is removed again afterwards, so no other test sees it."""
    name = "test-scratch-attack"
    yield name
    registry_module._REGISTRY.pop(name, None)


def _fn(model, inputs, labels, *, scale: float = 1.0, **kwargs):
    """A stand-in attack function.

    More text."""
    return {"scale": scale, **kwargs}


def test_get_known_and_unknown():
    spec = get("fgsm")
    assert isinstance(spec, AttackSpec) and spec.name == "fgsm" and math.isinf(spec.norm)
    assert minnorm.attacks.get("fgsm") is spec
    with pytest.raises(ValueError, match=r"unknown attack 'nope'; available: .*fgsm"):
        get("nope")


def test_available_and_specs_are_sorted_and_consistent():
    names = available()
    assert names == sorted(names) and "fgsm" in names
    assert [s.name for s in specs()] == names
    assert minnorm.attacks.available() == names


def test_register_and_call(scratch_name):
    spec = register(scratch_name, _fn, norm=2, minimal=True, targeted=False, paper="none",
                    defaults={"scale": 2.0, "extra": 1}, quick={"scale": 0.5})
    assert get(scratch_name) is spec and scratch_name in available()
    assert spec.norm == 2.0 and spec.norm_name == "l2" and spec.description == "A stand-in attack function."
    assert spec(None, None, None) == {"scale": 2.0, "extra": 1}
    assert spec(None, None, None, scale=3.0) == {"scale": 3.0, "extra": 1}, "call arguments beat defaults"


def test_duplicate_registration_refused(scratch_name):
    first = register(scratch_name, _fn, norm=1, minimal=False, targeted=True, paper="none")
    with pytest.raises(ValueError, match="already registered"):
        register(scratch_name, _fn, norm=2, minimal=True, targeted=False, paper="other")
    assert get(scratch_name) is first
    with pytest.raises(ValueError, match="already registered"):
        register("fgsm", _fn, norm=2, minimal=True, targeted=False, paper="x")
    assert get("fgsm").fn is not _fn


def test_norm_names():
    base = dict(fn=_fn, minimal=True, targeted=True, paper="p")
    assert AttackSpec("a", norm=math.inf, **base).norm_name == "linf"
    assert AttackSpec("a", norm=1.0, **base).norm_name == "l1"
    assert AttackSpec("a", norm=1.5, **base).norm_name == "l1.5"


def test_specs_are_immutable():
    with pytest.raises(AttributeError):
        get("fgsm").norm = 2.0
