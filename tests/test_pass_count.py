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
  passes are at most those seen. The same holds without a budget for the ensemble, whose members
  run under shares of its total.

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
    """Sample ``i`` alone: reported passes equal exactly what the model saw (at most, if it ran out
    of a budget: the ensemble's members run under shares of its total)."""
    res, log = recorded_run(spec, model, x[i:i + 1], y[i:i + 1], targeted)
    fwd, bwd, over = int(res.forward_passes[0]), int(res.backward_passes[0]), bool(res.over_budget[0])
    seen_fwd, seen_bwd = int(log.forward[0]), int(log.backward_seen[0] + log.jvp[0])
    what = (f"sample {i} alone{' (over budget)' if over else ''}: reported {fwd} forward and {bwd} backward "
            f"passes, the model saw {seen_fwd} forward rows, {int(log.backward_seen[0])} backward sweeps and "
            f"{int(log.jvp[0])} JVPs")
    assert (fwd <= seen_fwd and bwd <= seen_bwd) if over else (fwd == seen_fwd and bwd == seen_bwd), what


def check_counts(res: AttackResult, log: PassLog) -> list[int]:
    """Per sample in a batch: forward passes as seen; sweeps with a gradient <= backward passes <= all
    sweeps (+ JVPs, in total); samples over budget at most what was seen. Returns the samples whose
    backward passes are not all the sweeps seen (to be checked alone)."""
    check_attributed(log)
    fwd, bwd = res.forward_passes.cpu(), res.backward_passes.cpu()
    over = res.over_budget.cpu()
    shown = f"reported {fwd.tolist()} / {bwd.tolist()}, seen {log.forward.tolist()} / {log.backward_seen.tolist()}"
    assert torch.equal(fwd[~over], log.forward[~over]), f"forward passes: {shown}, over budget {over.tolist()}"
    assert bool((bwd[~over] >= log.backward_live[~over]).all()), (
        f"backward passes: {shown}, but gradients reached {log.backward_live.tolist()}")
    if log.jvp_rows == 0:
        assert bool((bwd[~over] <= log.backward_seen[~over]).all()), f"backward passes: {shown}"
    else:  # the tangents of JVP calls belong to no input: compare totals
        assert int(bwd[~over].sum()) <= int(log.backward_seen[~over].sum()) + log.jvp_rows, f"backward: {shown}"
    assert bool((fwd[over] <= log.forward[over]).all() and (bwd[over] <= log.backward_seen[over] + log.jvp_rows).all())
    return (((bwd != log.backward_seen) | (log.jvp_rows > 0)) & ~over).nonzero().flatten().tolist()


def check_batch(spec: AttackSpec, model, x: torch.Tensor, y: torch.Tensor, targeted: bool) -> None:
    """The batch, then alone the first and the last of the samples :func:`check_counts` leaves open
    (all of them where JVPs are involved: two alone keep the test short)."""
    res, log = recorded_run(spec, model, x, y, targeted)
    open_rows = check_counts(res, log)
    for i in sorted(set(open_rows[:1] + open_rows[-1:])):
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
    assert int(res.passes.max()) <= budget, f"passes {res.passes.tolist()} beyond the budget of {budget}"
    check_counts(res, log)


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


@pytest.mark.parametrize("method", ["loop", "vmap"])
def test_recorder_counts_sweeps_hvps_and_jvps(method):
    """Per-class gradients are one sweep per class (looped or vectorised), a double backward one
    more; a call with the offsets swapped out (the linear part of a frozen network) is a JVP per row."""
    from minnorm.attacks._piecewise import PiecewiseAffine

    model, x, _ = model_and_batch(False)
    rec = PassRecorder(model, x)
    xa = x[[0, 2]].clone().requires_grad_(True)
    z = rec(xa)
    values = z[:, :3] * torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=z.dtype)
    per_objective_gradients(values, xa, method=method)  # 3 sweeps over rows 0 and 2, one with row 0 left out
    assert rec.log.forward.tolist() == [1, 0, 1, 0] and rec.log.backward_seen.tolist() == [3, 0, 3, 0]
    assert rec.log.backward_live.tolist() == [2, 0, 3, 0]
    xb = x[[3]].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(rec(xb).logsumexp(1).sum(), xb, create_graph=True)
    torch.autograd.grad((g * g).sum(), xb)  # a Hessian-vector product
    assert rec.log.backward_seen.tolist() == [3, 0, 3, 2]
    with PiecewiseAffine(rec) as net:
        _, region = net.capture(x[:2])
        net.linear(region)(torch.randn(2, *x.shape[1:], dtype=x.dtype))
    assert rec.log.forward.tolist() == [2, 1, 1, 1] and rec.log.jvp_rows == 2
    assert rec.log.stray_forward == 0
