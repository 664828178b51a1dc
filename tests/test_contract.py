"""The attack contract (DESIGN.md, invariants 1-7), checked on every registered attack.

Every spec in ``minnorm.attacks.specs()`` is run with its ``quick`` settings on tiny seeded
models (see helpers.py); a fixed-epsilon spec whose ``quick`` lacks ``eps`` gets one derived
from its norm. A new attack is covered as soon as it is registered.

Each invariant is a ``check_*`` function taking a spec, so that the self-tests at the end can
show that the checks catch deliberately broken toy attacks.

Randomness (invariant 3): an attack counts as deterministic when two different generator
seeds give identical results. If they do not, the quick settings are retried with a random
start switched off (any of the parameters in ``RANDOM_OFF`` the function accepts). An attack
that stays random is compared with its one-by-one runs by success rate only.

An attack may raise NotImplementedError for an architecture it does not support (say max
pooling); those cases are skipped, but every attack must run on the plain ReLU MLP.
"""
from __future__ import annotations

import inspect
import math
import re
from typing import Any, Callable

import pytest
import torch
from helpers import (NUM_CLASSES, RecordingModel, ReshapedModel, assert_same_state, predict, state_snapshot,
                     target_labels, tiny_cnn, tiny_inputs, tiny_mlp, true_labels)

import minnorm
from minnorm.core import AttackResult, AttackSpec, broken_within, call_with_budget, lp_norm, parse_norm

SPECS = minnorm.attacks.specs()
SPEC_IDS = [s.name for s in SPECS]
MINIMAL = [s for s in SPECS if s.minimal]
RANDOM_OFF = {"random_start": False, "random_init": False, "rand_init": False}
WRONG = (1,)  # row of the test batch whose label is wrong: misclassified before any attack
DIM = 64


def default_eps(p: float, bounds: tuple[float, float] = (0.0, 1.0)) -> float:
    """A budget that breaks the tiny models: 0.1 of the box per coordinate, in lp terms."""
    width = bounds[1] - bounds[0]
    return 0.1 * width * (1.0 if math.isinf(p) else DIM ** (1.0 / p))


def accepts(fn: Callable, name: str, explicit: bool = False) -> bool:
    params = inspect.signature(fn).parameters
    if name in params:
        return True
    return not explicit and any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values())


def settings(spec: AttackSpec, bounds: tuple[float, float] = (0.0, 1.0), **extra: Any) -> dict[str, Any]:
    kw = dict(spec.quick)
    if not spec.minimal and "eps" not in kw and "eps" not in spec.defaults:
        kw["eps"] = default_eps(spec.norm, bounds)
    kw.update(extra)
    return kw


def attack(spec: AttackSpec, model, x: torch.Tensor, y: torch.Tensor, *, targeted: bool = False,
           bounds: tuple[float, float] = (0.0, 1.0), seed: int | None = 0, **extra: Any) -> AttackResult:
    gen = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    kw = settings(spec, bounds, **extra)
    return spec(model, x, y, targeted=targeted, bounds=bounds, generator=gen, **kw)


def batch(dtype: torch.dtype = torch.float64, n: int = 6, model=None, bounds=(0.0, 1.0)):
    """(model, x, y): the MLP, ``n`` inputs, true labels except at the rows ``WRONG``."""
    model = tiny_mlp(dtype=dtype) if model is None else model
    lo, hi = bounds
    x = tiny_inputs(n, dtype=dtype) * (hi - lo) + lo
    y = true_labels(model, x, wrong=tuple(i for i in WRONG if i < n))
    return model, x, y


def identical(a: AttackResult, b: AttackResult) -> bool:
    return all(torch.equal(u, v) for u, v in ((a.adversarials, b.adversarials), (a.success, b.success),
                                               (a.norms, b.norms), (a.forward_passes, b.forward_passes),
                                               (a.backward_passes, b.backward_passes)))


_DETERMINISTIC: dict[str, dict[str, Any] | None] = {}


def deterministic_settings(spec: AttackSpec) -> dict[str, Any] | None:
    """Extra settings under which the attack ignores its generator, or None if there are none."""
    if spec.name not in _DETERMINISTIC:
        model, x, y = batch()
        found = None
        tries = [{}] + [{k: v} for k, v in RANDOM_OFF.items() if accepts(spec.fn, k, explicit=True)]
        for extra in tries:
            if identical(attack(spec, model, x, y, seed=1, **extra), attack(spec, model, x, y, seed=2, **extra)):
                found = extra
                break
        _DETERMINISTIC[spec.name] = found
    return _DETERMINISTIC[spec.name]


def run_or_skip(fn: Callable[[], AttackResult], what: str) -> AttackResult:
    try:
        return fn()
    except NotImplementedError as e:
        pytest.skip(f"{what} not supported: {e}")


# ---------------------------------------------------------------- the checks, one per invariant

def check_metadata(spec: AttackSpec) -> None:
    assert isinstance(spec.paper, str) and spec.paper.strip(), "spec has no paper"
    assert parse_norm(spec.norm) == spec.norm
    assert isinstance(spec.minimal, bool) and isinstance(spec.targeted, bool)
    assert isinstance(spec.quick, dict), "spec has no quick settings dict"
    assert inspect.getdoc(spec.fn), f"{spec.fn.__name__} has no docstring"
    for name in ("targeted", "bounds", "generator"):
        assert accepts(spec.fn, name), f"{spec.fn.__name__} takes no {name!r} argument"
    if not spec.minimal:
        assert accepts(spec.fn, "eps"), "fixed-epsilon attack takes no 'eps' argument"


def check_outputs(spec: AttackSpec, model, x: torch.Tensor, y: torch.Tensor, res: AttackResult, *,
                  targeted: bool = False, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
    """Invariant 2 plus the result's types, shapes, dtypes and devices."""
    b = x.shape[0]
    assert isinstance(res, AttackResult)
    adv = res.adversarials
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device
    assert res.success.shape == (b,) and res.success.dtype == torch.bool and res.success.device == x.device
    assert res.norms.shape == (b,) and res.norms.is_floating_point() and res.norms.device == x.device
    for counts in (res.forward_passes, res.backward_passes):
        assert counts.shape == (b,) and not counts.is_floating_point() and counts.dtype != torch.bool
    assert isinstance(res.seconds, float) and res.seconds >= 0 and isinstance(res.info, dict)
    if b == 0:
        return
    assert not adv.requires_grad
    assert bool((adv >= bounds[0]).all() and (adv <= bounds[1]).all()), "adversarial outside the box"
    with torch.no_grad():
        pred = model(adv).argmax(1)
    fresh = pred == y if targeted else pred != y
    assert torch.equal(res.success, fresh), "success differs from a fresh forward pass on the adversarials"
    fail = ~res.success
    assert torch.equal(adv[fail], x[fail]), "a failed sample does not return the clean input"
    assert bool(torch.isinf(res.norms[fail]).all()), "a failed sample has a finite norm"
    ok = res.success
    assert bool(torch.isfinite(res.norms[ok]).all()), "a successful sample has a non-finite norm"
    measured = lp_norm((adv - x)[ok], spec.norm).to(res.norms.dtype)
    torch.testing.assert_close(res.norms[ok], measured, rtol=1e-5, atol=1e-6)
    eps = settings(spec, bounds).get("eps", spec.defaults.get("eps"))
    if not spec.minimal and isinstance(eps, (int, float)):
        assert bool(broken_within(res.norms[ok], eps).all()), f"perturbation beyond eps = {eps}"


def check_no_mutation(spec: AttackSpec, frozen: bool) -> None:
    """Invariant 1: inputs, labels, parameters, requires_grad, .grad and train/eval mode."""
    model, x, y = batch(torch.float32)
    if frozen:
        model[1].requires_grad_(False)
        model[3].weight.grad = torch.ones_like(model[3].weight)
        x = x.clone().requires_grad_(True)
    x0, y0, before = x.detach().clone(), y.clone(), state_snapshot(model)
    attack(spec, model, x, y)
    assert torch.equal(x.detach(), x0), "inputs were modified"
    assert x.requires_grad == frozen and x.grad is None, "requires_grad or .grad of the inputs changed"
    assert torch.equal(y, y0) and y.dtype == y0.dtype, "labels were modified"
    assert_same_state(before, state_snapshot(model))


def check_refuses_train_mode(spec: AttackSpec) -> None:
    """A model in training mode is refused before any pass (BatchNorm statistics would change,
    Dropout would make the success flags random), and nothing is changed."""
    model, x, y = batch(torch.float32)
    model.train()
    before = state_snapshot(model)
    with pytest.raises(ValueError, match="training mode"):
        attack(spec, model, x, y)
    assert_same_state(before, state_snapshot(model))


def check_batch_equals_single(spec: AttackSpec, n: int = 4) -> None:
    """Invariant 3: a batch gives its samples' one-by-one results (float64, to tolerance)."""
    model, x, y = batch(torch.float64, n)
    extra = deterministic_settings(spec)
    if extra is None:
        # random attack: batch and one-by-one draw different noise; compare success rates only
        whole = attack(spec, model, x, y)
        single = [attack(spec, model, x[i:i + 1], y[i:i + 1], seed=10 + i) for i in range(n)]
        rate = sum(int(r.success.sum()) for r in single) / n
        assert abs(whole.success_rate - rate) <= 0.5, "batch and one-by-one success rates differ a lot"
        return
    whole = attack(spec, model, x, y, **extra)
    for i in range(n):
        one = attack(spec, model, x[i:i + 1], y[i:i + 1], **extra)
        assert bool(one.success[0] == whole.success[i]), f"sample {i}: success differs alone and in a batch"
        torch.testing.assert_close(one.adversarials[0], whole.adversarials[i], rtol=0, atol=1e-6,
                                   msg=lambda m, i=i: f"sample {i}: adversarial differs alone and in a batch\n{m}")
        assert int(one.forward_passes[0]) == int(whole.forward_passes[i]), f"sample {i}: forward passes differ"
        assert int(one.backward_passes[0]) == int(whole.backward_passes[i]), f"sample {i}: backward passes differ"


def check_pass_counts(spec: AttackSpec, res: AttackResult) -> None:
    """Invariant 3: per-sample counts; a sample misclassified from the start stops at once."""
    fwd, bwd = res.forward_passes, res.backward_passes
    assert bool((fwd >= 1).all()), "every sample costs at least the clean forward pass"
    assert bool((bwd >= 0).all())
    others = torch.tensor([i not in WRONG for i in range(len(res))])
    for i in WRONG:
        assert int(fwd[i]) <= int(fwd[others].min()), "a misclassified sample costs more forward passes"
        assert int(bwd[i]) <= int(bwd[others].min()), "a misclassified sample costs more backward passes"
        if spec.minimal:
            # a minimal-norm attack has nothing to search for: it is done after the clean pass
            total = fwd + bwd
            assert int(total[i]) < int(total[others].max()), "a misclassified sample costs as much as a search"


def check_determinism(spec: AttackSpec) -> None:
    """Invariant 4: same seed, same result; the global RNG is never touched."""
    model, x, y = batch(torch.float32)
    state = torch.get_rng_state()
    a = attack(spec, model, x, y, seed=3)
    b = attack(spec, model, x, y, seed=3)
    assert identical(a, b), "same generator seed, different results"
    c = attack(spec, model, x, y, seed=None)
    d = attack(spec, model, x, y, seed=None)
    assert identical(c, d), "generator=None is not reproducible"
    assert torch.equal(state, torch.get_rng_state()), "the global RNG state changed"


def check_best_seen(spec: AttackSpec, index: int, targeted: bool) -> None:
    """Invariant 7 on single samples: every point the attack sent to the model is recorded, and
    the returned norm must not exceed that of any adversarial point it saw inside the box."""
    model, x, y = batch(torch.float64)
    if targeted:
        y = target_labels(model, x)
    x, y = x[index:index + 1], y[index:index + 1]
    rec = RecordingModel(model)
    res = attack(spec, rec, x, y, targeted=targeted)
    seen = [(q, z.argmax(-1)) for q, z in rec.queries
            if q.shape[1:] == x.shape[1:] and z.shape == (q.shape[0], NUM_CLASSES)]
    assert bool(torch.isfinite(res.norms[res.success]).all())
    if not seen:
        return
    pts = torch.cat([q[0] for q in seen])
    pred = torch.cat([q[1] for q in seen])
    adv = (pred == y[0]) if targeted else (pred != y[0])
    inside = ((pts >= 0) & (pts <= 1)).flatten(1).all(1)
    cand = pts[adv & inside]
    if cand.shape[0] == 0:
        return
    best = float(lp_norm(cand - x, spec.norm).min())
    assert bool(res.success[0]), "the attack saw an adversarial point but reports failure"
    got = float(res.norms[0])
    assert got <= best * (1 + 1e-6) + 1e-9, f"returned norm {got:.6g} but saw an adversarial of norm {best:.6g}"


# ---------------------------------------------------------------- the tests over all specs

@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_metadata(spec):
    check_metadata(spec)


@pytest.mark.parametrize("case", ["mlp", "cnn", "mlp-box(-1,2)"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_outputs(spec, case):
    bounds = (-1.0, 2.0) if "box" in case else (0.0, 1.0)
    model = tiny_cnn(dtype=torch.float64) if case == "cnn" else None
    model, x, y = batch(torch.float64, model=model, bounds=bounds)
    if case == "cnn":
        res = run_or_skip(lambda: attack(spec, model, x, y, bounds=bounds), "the CNN")
    else:
        res = attack(spec, model, x, y, bounds=bounds)
    check_outputs(spec, model, x, y, res, bounds=bounds)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_quick_settings_break_the_tiny_model(spec):
    """Every gradient-based attack breaks all six samples of the tiny MLP with its quick settings
    (their minimal L2 norms are 0.05-0.3, inside every default eps); a gradient-free one (random
    noise) at least the misclassified sample, at norm 0."""
    model, x, y = batch(torch.float32)
    res = attack(spec, model, x, y)
    if int(res.backward_passes.sum()) == 0:
        assert bool(res.success[list(WRONG)].all()) and float(res.norms[list(WRONG)].max()) == 0.0
    else:
        assert bool(res.success.all()), f"quick settings leave samples {(~res.success).nonzero().flatten().tolist()} unbroken"


@pytest.mark.parametrize("frozen", [False, True], ids=["plain", "frozen"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_no_mutation(spec, frozen):
    check_no_mutation(spec, frozen)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_refuses_train_mode(spec):
    check_refuses_train_mode(spec)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_batch_equals_one_by_one(spec):
    check_batch_equals_single(spec)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_pass_counts(spec):
    model, x, y = batch(torch.float32)
    check_pass_counts(spec, attack(spec, model, x, y))


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_determinism(spec):
    check_determinism(spec)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_float64_and_batch_sizes(spec):
    for dtype in (torch.float32, torch.float64):
        model, x, y = batch(dtype)
        for n in (1, 0):
            check_outputs(spec, model, x[:n], y[:n], attack(spec, model, x[:n], y[:n]))
    if spec.targeted:
        check_outputs(spec, model, x[:0], y[:0], attack(spec, model, x[:0], y[:0], targeted=True), targeted=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_cuda(spec):
    model, x, y = batch(torch.float32)
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    check_outputs(spec, model, x, y, attack(spec, model, x, y))
    gen = torch.Generator(device="cuda").manual_seed(0)  # a generator on the inputs' device works too
    check_outputs(spec, model, x, y, spec(model, x, y, generator=gen, **settings(spec)))


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_targeted(spec):
    model, x, y = batch(torch.float32)
    t = target_labels(model, x)
    if not spec.targeted:
        with pytest.raises(NotImplementedError):
            attack(spec, model, x, t, targeted=True)
        return
    res = attack(spec, model, x, t, targeted=True)
    check_outputs(spec, model, x, t, res, targeted=True)
    assert torch.equal(predict(model, res.adversarials)[res.success], t[res.success]), "success off target"


def _bad_inputs(model, x, y):
    # (name, model, inputs, labels, expected message pattern)
    yield "above-box", model, x + 1.5, y, r"box"
    yield "below-box", model, x - 1.5, y, r"box"
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    yield "nan", model, nan, y, r"nan"
    inf = x.clone()
    inf[1, 0, 2, 3] = float("inf")
    yield "inf", model, inf, y, r"inf"
    yield "label>=K", model, x, torch.full_like(y, NUM_CLASSES), r"label|range|class"
    yield "label<0", model, x, y - 10, r"label"
    yield "label-2d", model, x, y[:, None], r"label|shape"
    yield "label-float", model, x, y.float(), r"label|integer|dtype"
    yield "batch-mismatch", model, x, y[:-1], r"batch|size|mismatch|shape"
    yield "output-[B]", ReshapedModel(model, "1d"), x, y, r"output|shape|logits"
    yield "output-[B,K,1]", ReshapedModel(model, "3d"), x, y, r"output|shape|logits"
    yield "output-wrong-B", ReshapedModel(model, "batch"), x, y, r"output|shape|logits"
    yield "numpy-inputs", model, x.numpy(), y, r"tensor"
    yield "list-labels", model, x, y.tolist(), r"tensor"
    yield "1d-inputs", model, x.flatten(), y, r"shape|dim|batch|mismatch"


BAD_CASES = [c[0] for c in _bad_inputs(*batch(torch.float32))]


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_bad_input(spec, case):
    _, model, x, y, pattern = next(c for c in _bad_inputs(*batch(torch.float32)) if c[0] == case)
    with pytest.raises((ValueError, TypeError)) as err:
        attack(spec, model, x, y)
    assert re.search(pattern, str(err.value), re.IGNORECASE), f"unclear message: {err.value}"


def _numeric_params() -> list[tuple[AttackSpec, str]]:
    out = []
    for spec in SPECS:
        for k, v in settings(spec).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append((spec, k))
    return out


@pytest.mark.parametrize("spec,param", _numeric_params(), ids=[f"{s.name}-{k}" for s, k in _numeric_params()])
def test_bad_hyperparameter(spec, param):
    model, x, y = batch(torch.float32)
    value = -1 if isinstance(settings(spec)[param], int) else -1.0
    with pytest.raises(ValueError, match=param):
        attack(spec, model, x, y, **{param: value})


@pytest.mark.parametrize("targeted", [False, True], ids=["untargeted", "targeted"])
@pytest.mark.parametrize("index", [0, WRONG[0]], ids=["correct", "misclassified"])
@pytest.mark.parametrize("spec", MINIMAL, ids=[s.name for s in MINIMAL])
def test_minimal_returns_best_seen(spec, index, targeted):
    if targeted and not spec.targeted:
        pytest.skip("untargeted only")
    check_best_seen(spec, index, targeted)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8], ids=["int32", "int16", "uint8"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_any_integer_label_dtype(spec, dtype):
    model, x, y = batch(torch.float32)
    ref = attack(spec, model, x, y)
    res = attack(spec, model, x, y.to(dtype))
    assert identical(ref, res), f"labels of dtype {dtype} give another result than int64"


FIXED = [s for s in SPECS if not s.minimal]


@pytest.mark.parametrize("spec", FIXED, ids=[s.name for s in FIXED])
def test_fixed_eps_robust_accuracy_at_own_radius(spec):
    """Issue 10 item 1: at the radius it was run at, a fixed-eps attack's robust accuracy is one
    minus its success rate (float32 norms come back a hair above eps)."""
    model, x, y = batch(torch.float32, n=12)
    radii = [default_eps(spec.norm)] + ([0.1, 8 / 255] if math.isinf(spec.norm) else [0.5, 1.0])
    for eps in radii:
        res = attack(spec, model, x, y, eps=eps)
        assert res.robust_accuracy(eps) == pytest.approx(1 - res.success_rate), f"eps={eps}"
        assert bool(res.broken_within(eps)[res.success].all())


@pytest.mark.parametrize("budget", [2, 7, 20])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_budget_is_a_hard_cap(spec, budget):
    """Issue 10 item 3: no sample spends more than its budget; an exhausted sample keeps an
    adversarial it found within the budget (success is re-checked on the returned tensor)."""
    model, x, y = batch(torch.float32)
    kw = settings(spec)
    gen = torch.Generator().manual_seed(0)
    res = run_or_skip(lambda: call_with_budget(spec, model, x, y, budget=budget, generator=gen, **kw), "budget")
    check_outputs(spec, model, x, y, res)
    assert int(res.passes.max()) <= budget, f"passes {res.passes.tolist()} beyond the budget of {budget}"
    assert res.over_budget is not None and res.over_budget.dtype == torch.bool


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_budget_that_is_not_reached_changes_nothing(spec):
    model, x, y = batch(torch.float32)
    free = attack(spec, model, x, y)
    run = lambda m, xs, ys: attack(spec, m, xs, ys)  # noqa: E731
    capped = run_or_skip(lambda: call_with_budget(run, model, x, y, budget=int(free.passes.max())), "budget")
    assert identical(free, capped) and not bool(capped.over_budget.any())


# ---------------------------------------------------------------- self-tests of the checks

def toy_line_search(model, inputs: torch.Tensor, labels: torch.Tensor, *, targeted: bool = False, steps: int = 12,
                    flaw: str = "", bounds: tuple[float, float] = (0.0, 1.0),
                    generator: torch.Generator | None = None) -> AttackResult:
    """Toy minimal L2 attack: growing steps along the normalised cross-entropy gradient, keeping
    the first (smallest) adversarial. ``flaw`` plants one contract violation for the self-tests."""
    from minnorm.core import cross_entropy_objective
    from minnorm.core import scale_to_norm, start_attack

    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=2, generator=generator)
    if run.batch_size == 0:
        return run.finish(inputs.clone())
    x = run.inputs
    if flaw == "mutate":
        inputs.mul_(0.999)
    keep_going = flaw in ("last", "no-early-stop")
    best = x.clone()
    done = run.is_adversarial(run.clean_logits)
    todo = torch.arange(run.batch_size) if flaw == "no-early-stop" else (~done).nonzero().squeeze(1)
    _, _, grad = run.model.value_and_grad(x[todo], cross_entropy_objective(run.labels[todo], targeted), todo)
    if flaw == "global-rng":
        grad = grad + 1e-3 * torch.randn_like(grad)
    radius = torch.full((todo.shape[0],), 0.02, dtype=x.dtype)
    if flaw == "batch-wide":
        radius = radius * lp_norm(grad, 2).mean() / lp_norm(grad, 2)
    for _ in range(steps):
        sub = torch.ones_like(todo, dtype=torch.bool) if keep_going else ~done[todo]
        if not bool(sub.any()):
            break
        idx = todo[sub]
        cand = (x[idx] + scale_to_norm(grad[sub], 2, radius[sub])).clamp(*bounds)
        with torch.no_grad():
            hit = run.is_adversarial(run.model(cand, idx), idx)
        keep = hit if flaw == "last" else hit & ~done[idx]
        best[idx[keep]] = cand[keep]
        done[idx[hit]] = True
        radius = radius * 1.5
    return run.finish(best)


def _toy(flaw: str = "") -> AttackSpec:
    return AttackSpec(f"toy{flaw}", toy_line_search, norm=2.0, minimal=True, targeted=True, paper="none",
                      defaults={"flaw": flaw}, quick={"steps": 12})


def test_checks_pass_a_correct_attack():
    spec = _toy()
    check_metadata(spec)
    model, x, y = batch()
    check_outputs(spec, model, x, y, attack(spec, model, x, y))
    check_no_mutation(spec, True)
    check_batch_equals_single(spec)
    check_pass_counts(spec, attack(spec, *batch(torch.float32)))
    check_determinism(spec)
    check_best_seen(spec, 0, False)
    check_best_seen(spec, WRONG[0], True)


@pytest.mark.parametrize("flaw,check", [
    ("mutate", lambda s: check_no_mutation(s, False)),
    ("global-rng", check_determinism),
    ("batch-wide", check_batch_equals_single),
    ("no-early-stop", lambda s: check_pass_counts(s, attack(s, *batch(torch.float32)))),
    ("last", lambda s: check_best_seen(s, 0, False)),
])
def test_checks_catch_a_flawed_attack(flaw, check):
    with pytest.raises(AssertionError):
        check(_toy(flaw))
