"""The standard ensemble per norm: the minimal-norm counterpart of AutoAttack.

Cheap attacks run on every sample first; the costly ones run only where the cheap ones leave a
doubt: no adversarial found, or the two best norms disagreeing by more than ``gap`` (a sign
that neither reached the boundary's nearest point). Per sample the smallest adversarial of all
members is returned. Every member runs under the sample's remaining share of one total pass
budget (2,000 by default, AttackBench's), so the ensemble never charges more than that; a sample
whose member ran out of its share is flagged ``over_budget`` (the member may have computed a pass
it could not credit, see :mod:`minnorm.core.counting`).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..core import AttackResult, call_with_budget, check_int, check_positive, get, register, start_attack

__all__ = ["ensemble"]

# (attack, parameters) per stage, chosen by benchmarks/ensemble.py on the shipped cnn (benchmarks/RESULTS.md).
STAGES: dict[float, list[list[tuple[str, dict[str, Any]]]]] = {
    math.inf: [[("tr-linf", {}), ("fmn-linf", {"steps": 200, "targets": None})],
               [("apgd-linf", {"steps": 200, "targets": None}), ("fab-linf", {"steps": 100})]],
    2.0: [[("ddn", {}), ("tr-l2", {}), ("fmn-l2", {"steps": 200, "targets": None})],
          [("apgd-l2", {"steps": 200, "targets": None}), ("fab-l2", {"steps": 100})]],
    1.0: [[("fmn-l1", {"steps": 200, "targets": None}), ("fab-l1", {"steps": 100})],
          [("apgd-l1", {"steps": 200, "targets": None}), ("convex-min-l1", {})]],
}


def ensemble(model, inputs: torch.Tensor, labels: torch.Tensor, *, norm: float | str = math.inf,
             total_passes: int = 2000, gap: float = 0.01, stages: list[list[tuple[str, dict[str, Any]]]] | None = None,
             quick_members: bool = False, targeted: bool = False, bounds: tuple[float, float] = (0.0, 1.0),
             generator: torch.Generator | None = None) -> AttackResult:
    """The members of ``stages`` (default :data:`STAGES` of the norm) in order; a stage after the
    first runs only on samples without two adversarials so far (no second opinion) or whose two
    smallest norms differ by more than ``gap`` (relative). At most ``total_passes`` per sample in all (each member gets
    what is left; the final check is included). ``quick_members`` runs each member with its
    registered quick settings (for smoke tests). ``info``: ``passes_per_stage`` ``[stages, B]``,
    ``found_by`` (member index per sample, -1 where none) and ``members``."""
    total_passes = check_int("total_passes", total_passes, minimum=2)
    gap = check_positive("gap", gap, allow_zero=True)
    run = start_attack(model, inputs, labels, targeted=targeted, bounds=bounds, norm=norm, generator=generator)
    stages = STAGES.get(run.norm) if stages is None else stages
    if not stages:
        raise NotImplementedError(f"no default ensemble for the l{run.norm:g} norm; pass stages=[[(name, params)]]")
    if run.targeted:  # members without a targeted mode sit out
        stages = [[m for m in stage if get(m[0]).targeted] for stage in stages]
    members = [m for stage in stages for m in stage]
    n = run.batch_size
    per_stage = torch.zeros(len(stages), n, dtype=torch.long, device=inputs.device)
    found_by = torch.full((n,), -1, dtype=torch.long, device=inputs.device)
    if n == 0:
        return run.finish(inputs.clone(), info={"passes_per_stage": per_stage, "found_by": found_by})
    norms = torch.full((len(members), n), math.inf, dtype=torch.float64, device=inputs.device)
    over = torch.zeros(n, dtype=torch.bool, device=inputs.device)  # a member ran out of its share
    best = run.inputs.clone()
    todo = ~run.is_adversarial(run.clean_logits)
    cap = torch.tensor(total_passes - 1, device=inputs.device)
    limit = cap if run.model.limit is None else torch.minimum(run.model.limit, cap)
    k = 0
    for s, stage in enumerate(stages):
        if s > 0:
            todo &= _doubtful(norms[:k], gap)
        for name, params in stage:
            spent = run.model.forward_passes + run.model.backward_passes
            rows = (todo & (limit - spent >= 2)).nonzero().flatten()
            if len(rows):
                res = _member(run, name, {**params, **(get(name).quick if quick_members else {})}, rows,
                              (limit - spent)[rows])
                run.model.charge(rows, forward=res.forward_passes, backward=res.backward_passes)
                over[rows] |= res.over_budget
                per_stage[s, rows] += res.passes
                so_far = norms[:k, rows].min(dim=0).values if k else torch.full_like(norms[0, rows], math.inf)
                norms[k, rows] = res.norms.double()
                better = res.success & (res.norms.double() < so_far)
                best[rows[better]] = res.adversarials[better]
                found_by[rows[better]] = k
            k += 1
    out = run.finish(best, info={"passes_per_stage": per_stage, "found_by": found_by,
                                 "members": [m[0] for m in members]})
    # A member stopped at its share may have run a pass past it that it could not credit: the
    # sample is over budget (not hidden), though its adversarial is the member's within the share.
    out.over_budget = over if out.over_budget is None else out.over_budget | over
    return out


def _member(run, name: str, params: dict[str, Any], rows: torch.Tensor, left: torch.Tensor) -> AttackResult:
    """One member on the samples ``rows``, capped at the passes each has left."""
    spec = get(name)
    return call_with_budget(spec, run.model.model, run.inputs[rows], run.labels[rows], budget=left,
                            targeted=run.targeted, bounds=run.bounds, generator=run.generator, **params)


def _doubtful(norms: torch.Tensor, gap: float) -> torch.Tensor:
    """Samples without two adversarials yet (no second opinion), or whose two smallest norms
    differ by more than ``gap``."""
    if norms.shape[0] < 2:
        return torch.ones(norms.shape[1], dtype=torch.bool, device=norms.device)
    two = norms.topk(2, dim=0, largest=False).values
    return ~torch.isfinite(two[1]) | (two[1] > two[0] * (1 + gap))


for _p, _tag in ((math.inf, "linf"), (2.0, "l2"), (1.0, "l1")):
    register(f"ensemble-{_tag}", ensemble, norm=_p, minimal=True, targeted=True,
             paper="minnorm standard ensemble (members: FMN, FAB, APGD, TR, DeepFool/DDN; see their papers)",
             description=f"cheap attacks first, costly ones where they disagree; best of all, 2000 passes ({_tag})",
             defaults={"norm": _p}, quick={"total_passes": 2000, "quick_members": True})
