"""Reported passes equal what the model really saw (issue 11 item 4), for every registered attack.

Each attack runs with its ``quick`` settings on the tiny MLP behind a :class:`PassRecorder`
(tests/pass_recorder.py), which tallies per sample the forward rows, the backward sweeps and the
JVP calls the model really saw, on four well separated images (one misclassified from the start),
untargeted and targeted, and under a pass budget.

What a sample is charged is what it costs alone (DESIGN invariant 3: a batch gives the counts of
its samples one by one). So:

- alone, reported forward passes equal the rows the model saw, and reported backward passes the
  backward sweeps through its graphs plus its JVPs (a batched per-class gradient of ``k`` classes
  is ``k`` sweeps, a Hessian-vector product one more sweep);
- in a batch, reported forward passes equal the rows seen per sample; a backward sweep also runs
  over the rows of samples left out of the objective (say DeepFool's samples that just finished),
  which cost nothing alone and are not charged, so per sample the reported backward passes lie
  between the sweeps that carried a nonzero gradient to its rows and all sweeps over its rows;
  where they are not all sweeps, the sample is run alone and must match exactly;
- under a budget no sample is charged more than the budget; a sample that did not hit it is
  counted as above; one that hit it may have been run past it (a pass is computed before it is
  known not to fit, and is then not credited): it is flagged ``over_budget`` and its reported
  passes are at most those seen.

The evaluation's own prediction pass per batch happens outside attacks and is not checked here.
"""
from __future__ import annotations

import pytest
import torch
from helpers import separated_inputs, target_labels, tiny_mlp, true_labels
from pass_recorder import PassLog, PassRecorder
from test_contract import settings

import minnorm
from minnorm.core import AttackResult, AttackSpec, call_with_budget, per_objective_gradients, start_attack

SPECS = minnorm.attacks.specs()
CASES = [(s, t) for s in SPECS for t in (False, True) if s.targeted or not t]
CASE_IDS = [f"{s.name}-{'targeted' if t else 'untargeted'}" for s, t in CASES]
WRONG = 1  # the sample whose label is wrong: misclassified from the start


def model_and_batch(targeted: bool):
    model = tiny_mlp(dtype=torch.float64)
    x = separated_inputs(4)
    y = target_labels(model, x) if targeted else true_labels(model, x, wrong=(WRONG,))
    return model, x, y


def recorded_run(spec: AttackSpec, model, x: torch.Tensor, y: torch.Tensor, targeted: bool,
                 budget: int | None = None) -> tuple[AttackResult, PassLog]:
    rec = PassRecorder(model, x)
    gen = torch.Generator().manual_seed(0)
    res = call_with_budget(spec, rec, x, y, budget=budget, targeted=targeted, generator=gen, **settings(spec))
    return res, rec.log


def check_attributed(log: PassLog) -> None:
    assert log.stray_forward == 0 and log.stray_backward == 0, (
        f"{log.stray_forward} forward and {log.stray_backward} backward rows lie too far from every input to "
        "tell whose they are")


def check_alone(spec: AttackSpec, model, x: torch.Tensor, y: torch.Tensor, targeted: bool, i: int) -> None:
    """Sample ``i`` alone: reported passes equal exactly what the model saw."""
    res, log = recorded_run(spec, model, x[i:i + 1], y[i:i + 1], targeted)
    fwd, bwd = int(res.forward_passes[0]), int(res.backward_passes[0])
    assert fwd == int(log.forward[0]), f"sample {i} alone: reported {fwd} forward passes, the model saw {int(log.forward[0])}"
    seen = int(log.backward_seen[0] + log.jvp[0])
    assert bwd == seen, (f"sample {i} alone: reported {bwd} backward passes, the model saw {int(log.backward_seen[0])} "
                         f"backward sweeps and {int(log.jvp[0])} JVPs")


def check_backward_bounds(res: AttackResult, log: PassLog, rows: torch.Tensor) -> None:
    """On ``rows``: sweeps with a gradient <= reported backward passes <= all sweeps (+ JVPs, in total)."""
    bwd = res.backward_passes.cpu()
    low, high = log.backward_live[rows], log.backward_seen[rows]
    assert bool((bwd[rows] >= low).all()), (f"reported backward passes {bwd.tolist()}, but gradients "
                                            f"reached {log.backward_live.tolist()}")
    if log.jvp_rows == 0:
        assert bool((bwd[rows] <= high).all()), (f"reported backward passes {bwd.tolist()}, the model "
                                                 f"swept {log.backward_seen.tolist()}")
    else:  # the tangents of JVP calls belong to no input: compare totals
        assert int(bwd[rows].sum()) <= int(high.sum()) + log.jvp_rows, "more backward passes reported than done"


def check_batch(spec: AttackSpec, model, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> None:
    res, log = recorded_run(spec, model, x, y, targeted)
    check_attributed(log)
    fwd = res.forward_passes.cpu()
    assert torch.equal(fwd, log.forward), f"reported forward passes {fwd.tolist()}, the model saw {log.forward.tolist()}"
    check_backward_bounds(res, log, torch.arange(len(res)))
    partly = (res.backward_passes.cpu() != log.backward_seen) | (log.jvp_rows > 0)
    for i in partly.nonzero().flatten().tolist():
        check_alone(spec, model, x, y, targeted, i)


@pytest.mark.parametrize("spec,targeted", CASES, ids=CASE_IDS)
def test_reported_passes_are_what_the_model_saw(spec, targeted):
    model, x, y = model_and_batch(targeted)
    check_batch(spec, model, x, y, targeted)


@pytest.mark.parametrize("budget", [5, 20])
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_reported_passes_under_a_budget(spec, budget):
    model, x, y = model_and_batch(False)
    res, log = recorded_run(spec, model, x, y, False, budget=budget)
    check_attributed(log)
    assert int(res.passes.max()) <= budget, f"passes {res.passes.tolist()} beyond the budget of {budget}"
    over = res.over_budget.cpu()
    fwd = res.forward_passes.cpu()
    assert torch.equal(fwd[~over], log.forward[~over]), (
        f"reported forward passes {fwd.tolist()}, the model saw {log.forward.tolist()}, over budget {over.tolist()}")
    assert bool((fwd[over] <= log.forward[over]).all()), f"more forward passes reported than seen: {fwd.tolist()}"
    check_backward_bounds(res, log, (~over).nonzero().flatten())
    assert bool((res.backward_passes.cpu()[over] <= log.backward_seen[over] + log.jvp_rows).all())


# ---------------------------------------------------------------- self-tests of the recorder and checks

def toy_descent(model, inputs: torch.Tensor, labels: torch.Tensor, *, targeted: bool = False, steps: int = 3,
                flaw: str = "", bounds: tuple[float, float] = (0.0, 1.0),
                generator: torch.Generator | None = None) -> AttackResult:
    """Toy L2 attack: ``steps`` signed margin-gradient steps of 0.05 on the samples not yet fooled,
    with per-class gradients (one sweep per other class); ``flaw`` plants a counting error."""
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=2, generator=generator)
    x = run.inputs.clone()
    active = ~run.is_adversarial(run.clean_logits)
    k = run.num_classes - 1
    for _ in range(steps):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        with torch.enable_grad():
            xa = x[idx].requires_grad_(True)
            z = run.model(xa, idx)
            others = z.scatter(1, run.labels[idx, None], float("-inf")).topk(k, dim=1).values
            grads = per_objective_gradients(others - z.gather(1, run.labels[idx, None]), xa)
        run.model.charge(idx, backward=k + (flaw == "phantom-backward") - (flaw == "uncounted-backward"))
        if flaw == "uncounted-forward":
            with torch.no_grad():
                run.model.model(x[idx])
        x[idx] = (x[idx] + 0.05 * grads.sum(1).sign() / 8).clamp(*bounds)
        with torch.no_grad():
            active[idx] &= ~run.is_adversarial(run.model(x[idx], idx), idx)
    return run.finish(x)


def _toy(flaw: str = "") -> AttackSpec:
    return AttackSpec(f"toy{flaw}", toy_descent, norm=2.0, minimal=True, targeted=True, paper="none",
                      defaults={"flaw": flaw}, quick={"steps": 3})


def test_checks_pass_a_correct_toy():
    for targeted in (False, True):
        check_batch(_toy(), *model_and_batch(targeted), targeted)


@pytest.mark.parametrize("flaw", ["uncounted-forward", "phantom-backward", "uncounted-backward"])
def test_checks_catch_a_miscounting_toy(flaw):
    with pytest.raises(AssertionError):
        check_batch(_toy(flaw), *model_and_batch(False), False)


def test_recorder_counts_sweeps_hvps_and_jvps():
    """Per-class gradients are one sweep per class, a double backward one more; a call with the
    offsets swapped out (the linear part of a frozen network) is a JVP per row."""
    from minnorm.attacks._piecewise import PiecewiseAffine

    model, x, _ = model_and_batch(False)
    rec = PassRecorder(model, x)
    xa = x[[0, 2]].clone().requires_grad_(True)
    z = rec(xa)
    per_objective_gradients(z[:, :3], xa)  # 3 sweeps over rows 0 and 2
    assert rec.log.forward.tolist() == [1, 0, 1, 0] and rec.log.backward_seen.tolist() == [3, 0, 3, 0]
    xb = x[[3]].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(rec(xb).logsumexp(1).sum(), xb, create_graph=True)
    torch.autograd.grad((g * g).sum(), xb)  # a Hessian-vector product
    assert rec.log.backward_seen.tolist() == [3, 0, 3, 2]
    with PiecewiseAffine(rec) as net:
        _, region = net.capture(x[:2])
        net.linear(region)(torch.randn(2, *x.shape[1:], dtype=x.dtype))
    assert rec.log.forward.tolist() == [2, 1, 1, 1] and rec.log.jvp_rows == 2
    assert rec.log.stray_forward == 0
