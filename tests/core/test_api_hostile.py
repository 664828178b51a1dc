"""Hostile but plausible calls of the Python API: a clear ValueError/TypeError naming the problem,
or a right answer; never a traceback from deep inside, never a wrong number.

Checks shared by every attack are parametrized over the registry (tiny models, ``quick`` settings).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels
from torch import nn

import minnorm
from minnorm import certify
from minnorm.data import resolve_dataset
from minnorm.models import Normalize, normalized

SPECS = minnorm.attacks.specs()
SPEC_IDS = [s.name for s in SPECS]
QUIET = dict(progress=False, quick=True)


def settings(spec, **extra):
    kw = dict(spec.quick)
    if not spec.minimal and "eps" not in kw and "eps" not in spec.defaults:
        kw["eps"] = 0.3 if math.isinf(spec.norm) else 2.0
    return {**kw, **extra}


def batch(n: int = 4):
    model = tiny_mlp()
    x = tiny_inputs(n)
    return model, x, true_labels(model, x)


class NanOffData(nn.Module):
    """NaN logits for every input farther than 1e-3 (Linf) from the clean inputs: nothing the
    attacks can reach is a real adversarial, argmax of a NaN row is class 0 all the same."""

    def __init__(self, inner: nn.Module, clean: torch.Tensor):
        super().__init__()
        self.inner, self.clean = inner, clean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        far = (x.flatten(1)[:, None] - self.clean.flatten(1)[None]).abs().amax(2).amin(1) > 1e-3
        return torch.where(far[:, None], torch.full_like(out, math.nan), out)


class Squeezing(nn.Module):
    """``forward`` ends in ``squeeze()``: right on a batch, ``[K]`` on a batch of one."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).squeeze()


# --------------------------------------------------------------------------- every attack

@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_no_success_where_the_model_gives_nan(spec):
    """Success was claimed for adversarials whose logits are NaN (argmax picks the first NaN)."""
    model, x, y = batch()
    hostile = NanOffData(model, x).eval()
    res = spec(hostile, x, y, **settings(spec))
    with torch.no_grad():
        finite = torch.isfinite(hostile(res.adversarials)).all(1)
    assert bool(finite[res.success].all()), "success reported where the model's logits are NaN"


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_a_model_that_squeezes_a_batch_of_one_is_named(spec):
    """IndexError/RuntimeError from deep inside 15 attacks once one sample was left to query."""
    model, x, y = batch()
    try:
        res = spec(Squeezing(model).eval(), x, y, **settings(spec))
    except ValueError as err:
        assert "model output must have shape [B, K]" in str(err) and "batch of 1" in str(err)
    else:  # it never asked about a single sample: then the result must be the plain model's
        with torch.no_grad():
            pred = model(res.adversarials).argmax(1)
        assert torch.equal(res.success, pred != y)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_targeted_must_be_true_or_false(spec):
    """``targeted="no"`` was truthy: a targeted run towards the true labels, all "broken" at norm 0."""
    model, x, y = batch()
    with pytest.raises(TypeError, match="targeted must be True or False"):
        spec(model, x, y, targeted="no", **settings(spec))


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_float64_inputs_on_a_float32_model_name_the_dtypes(spec):
    """torch's "mat1 and mat2 must have the same dtype" from inside the model."""
    model, x, y = batch()
    with pytest.raises(TypeError, match="inputs have dtype torch.float64 but the model's parameters have torch.float32"):
        spec(model, x.double(), y, **settings(spec))


def _float_params():
    out = []
    for spec in SPECS:
        for name, value in spec.parameters().items():
            if isinstance(value, float) and name not in spec.fixed_params:
                out.append((spec, name))
    return out


FLOAT_PARAMS = _float_params()


@pytest.mark.parametrize("value", ["abc", None, True], ids=["str", "None", "bool"])
@pytest.mark.parametrize("spec,param", FLOAT_PARAMS, ids=[f"{s.name}-{p}" for s, p in FLOAT_PARAMS])
def test_number_hyperparameter_of_the_wrong_type_is_named(spec, param, value):
    """A string or None gave "could not convert string to float" or a TypeError from a comparison,
    without the parameter's name; True ran as 1.0."""
    model, x, y = batch()
    with pytest.raises(ValueError, match=param):
        spec(model, x, y, **settings(spec, **{param: value}))


@pytest.mark.parametrize("name", ["tr-l2", "tr-linf"])
def test_trust_region_order_true_is_refused(name):
    model, x, y = batch()
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        minnorm.attacks.get(name)(model, x, y, order=True, steps=2)


@pytest.mark.parametrize("name", ["lra-l1", "lra-l2", "lra-linf"])
def test_linear_region_attack_in_half_precision_is_refused(name):
    """float32 constants met float16 weights deep inside: "mat1 and mat2 must have the same dtype"."""
    model, x, y = batch()
    with pytest.raises(TypeError, match="float32 or float64"):
        minnorm.attacks.get(name)(model.half(), x.half(), y)


# --------------------------------------------------------------------------- results and evaluate

def test_bool_radius_and_bool_norm_are_refused():
    model, x, y = batch()
    res = minnorm.attacks.get("ddn")(model, x, y, steps=5)
    with pytest.raises(ValueError, match="eps must be a number"):
        res.robust_accuracy(True)  # was robust accuracy at radius 1.0
    for norm in (True, None):  # True ran the evaluation in l1; None: float()'s TypeError
        with pytest.raises(ValueError, match="a norm is l1, l2, linf"):
            minnorm.evaluate(model, (x, y), ["ddn"], norm=norm, **QUIET)


def test_evaluate_takes_one_epsilon_like_one_eps():
    """``epsilons=0.1``: "'float' object is not iterable" although ``eps=0.1`` works."""
    model, x, y = batch(6)
    one = minnorm.evaluate(model, (x, y), ["pgd-l2"], epsilons=0.5, **QUIET)
    listed = minnorm.evaluate(model, (x, y), ["pgd-l2"], epsilons=[0.5], **QUIET)
    assert one.robust_accuracy(0.5) == listed.robust_accuracy(0.5)


@pytest.mark.parametrize("option,value,error,needle", [
    ("bounds", "01", TypeError, "bounds must be a pair"),  # unpacked as (0.0, 1.0)
    ("bounds", (0,), TypeError, "bounds must be a pair"),  # "not enough values to unpack"
    ("bounds", (0, math.inf), ValueError, "^bounds must be finite"),  # was blamed on the attack ("ddn: bounds ...")
    ("seed", 1.5, ValueError, "seed must be an integer"),
    ("seed", "a", ValueError, "seed must be an integer"),
    ("sanity_margin", "a", ValueError, "sanity_margin must be >= 0"),
])
def test_evaluate_settings_are_checked(option, value, error, needle):
    model, x, y = batch()
    with pytest.raises(error, match=needle):
        minnorm.evaluate(model, (x, y), ["ddn"], **{option: value}, **QUIET)


def test_evaluate_data_errors_say_what_is_wrong():
    model, x, y = batch()
    with pytest.raises(TypeError, match=r"pair \(inputs, labels\) of tensors, got \(ndarray, ndarray\)"):
        minnorm.evaluate(model, (x.numpy(), y.numpy()), ["ddn"], **QUIET)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=2)
    with pytest.raises(TypeError, match="each batch of the DataLoader must be a pair"):  # "not enough values to unpack"
        minnorm.evaluate(model, loader, ["ddn"], **QUIET)
    with pytest.raises(TypeError, match="inputs have dtype torch.float64"):
        minnorm.evaluate(model, (x.double(), y), ["ddn"], **QUIET)


def test_evaluation_row_of_an_unknown_attack():
    model, x, y = batch()
    ev = minnorm.evaluate(model, (x, y), ["ddn"], **QUIET)
    with pytest.raises(ValueError, match="no attack 'nope'"):  # StopIteration
        ev.row("nope")


def test_evaluate_norms_takes_comma_separated_names():
    """``"l2"`` was iterated letter by letter: "a norm is ... got 'l'"."""
    model, x, y = batch()
    runs = minnorm.evaluate_norms(model, (x, y), "l2,linf", attacks="ddn,fmn-linf", **QUIET)
    assert list(runs) == ["l2", "linf"]
    with pytest.raises(TypeError, match="eps must map a norm to its radii"):  # AttributeError: 'list' ... 'items'
        minnorm.evaluate_norms(model, (x, y), ["l2"], attacks=["ddn"], eps=[0.5], **QUIET)


# --------------------------------------------------------------------------- certify

def test_certify_empty_batch():
    """IndexError: index 0 is out of bounds."""
    model, x, y = batch()
    res = certify.lower_bound(model, x[:0], y[:0])
    assert len(res) == 0 and res.lower.shape == (0,)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(upper=torch.full((4,), -1.0)), "upper must hold norms >= 0"),  # a 1e-12 "certified radius"
    (dict(upper=torch.full((4,), math.nan)), "upper must hold norms >= 0"),
    (dict(upper=torch.ones(4), adversarials=torch.zeros(3, 1, 8, 8)), "adversarials must have the inputs' shape"),
    (dict(rounds=0), "rounds must be an integer >= 1"),  # every radius 0
    (dict(rel_tol=math.nan), "rel_tol must be > 0"),  # every radius 0
])
def test_certify_refuses_bad_arguments(kwargs, needle):
    model, x, y = batch()
    with pytest.raises(ValueError, match=needle):
        certify.lower_bound(model, x, y, **kwargs)


def test_certify_names_model_output_and_dtype_problems():
    model, x, y = batch()
    with pytest.raises(ValueError, match="model output must have shape"):  # IndexError: tuple index out of range
        certify.lower_bound(nn.Sequential(model, nn.Flatten(0)).eval(), x[:1], y[:1])  # [1, K] -> [K]
    with pytest.raises(TypeError, match="inputs have dtype torch.float64"):
        certify.lower_bound(model, x.double(), y)
    with pytest.raises(ValueError, match="time_limit must be > 0"):  # True ran with a 1 s limit
        certify.exact(model, x[:1], y[:1], time_limit=True)


# --------------------------------------------------------------------------- models and data

def test_normalize_with_one_channel_keeps_flat_rows_flat():
    """A [1, 1, 1] buffer turned [B, D] rows into [1, B, D]: an MLP on flat rows broke."""
    model = nn.Sequential(nn.Linear(64, 4)).eval()
    x = tiny_inputs(3).flatten(1)
    out = normalized(model, 0.5, 0.25)(x)
    torch.testing.assert_close(out, model((x - 0.5) / 0.25))


def test_normalize_refuses_what_would_broadcast_or_poison():
    x = tiny_inputs(2)
    with pytest.raises(ValueError, match="Normalize has 3 channels"):  # grayscale silently became 3 channels
        Normalize((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))(x)
    for mean, std, needle in ((math.nan, 0.2, "mean must be finite"), (0.5, math.inf, "std must be > 0 and finite")):
        with pytest.raises(ValueError, match=needle):
            Normalize(mean, std)
    with pytest.raises(TypeError, match="mean and std must be numbers"):
        Normalize("abc", 0.2)


def test_resolve_dataset_takes_a_path_object(tmp_path):
    """``Path`` objects: AttributeError: 'PosixPath' object has no attribute 'partition'."""
    x = tiny_inputs(3)
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=np.array([0, 1, 2]))
    xs, ys = resolve_dataset(tmp_path / "d.npz")
    assert torch.equal(xs, x) and ys.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="no such file"):
        resolve_dataset(Path(tmp_path / "missing.npz"))
    with pytest.raises(TypeError, match="a dataset is a name or a path"):
        resolve_dataset(None)


@pytest.mark.parametrize("size", [math.nan, math.inf, "4", 0, 2.5, True])
def test_batches_names_a_bad_batch_size(size):
    """``batch_size=nan`` / ``inf``: "cannot convert float NaN to integer" / an OverflowError,
    without the name (the other values were refused already and stay so)."""
    from minnorm.data import batches
    x = tiny_inputs(4)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        next(batches(x, torch.zeros(4, dtype=torch.long), size))
    assert [len(b) for b, _ in batches(x, torch.zeros(4, dtype=torch.long), 3.0)] == [3, 1]
