"""Accuracy of lra-l2's region QPs per solver setting, on the very QP instances the attack solves.

The attack runs with its defaults; every batch of region QPs it hands to ``solve_qp`` is also
solved, inside the same linear regions, with each setting of ``--settings`` (``step_scale/steps/power_iterations``)
and with a reference (``--ref-steps`` steps, no early rejection). Per setting it prints: how many
QPs the dual bound rejected (and whether the same ones as the first setting), the relative gap
``1 - sqrt(2 q) / sqrt(2 q_ref)`` of the dual bound to the reference on the QPs not rejected
(median, p90, max), the dual steps over all QPs, and how often the stop test would have fired.
The first setting ``1/300/20`` is the solver of commit 5eb55d2 (step ``1 / (1.1 L)``, 300 steps,
20 power iterations).

    python benchmarks/lra_qp.py --model cnn --images 8 --regions 3
"""
from __future__ import annotations

import argparse

import torch

import minnorm.attacks.linear_region as lra
from minnorm.models import load_shipped

from common import correct_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--regions", type=int, default=3)
    ap.add_argument("--settings", default="1/300/20,8/100/8,8/120/8,8/150/8")
    ap.add_argument("--ref-steps", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_shipped(args.model).eval()
    x, y, _ = correct_images(model, args.images)
    settings = [tuple(float(v) for v in s.split("/")) for s in args.settings.split(",")]
    stats = {s: {"gap": [], "pruned": [], "steps": []} for s in settings}
    solve = lra.solve_qp

    def hooked(op, b, lower, upper, **kw):
        sol = solve(op, b, lower, upper, **kw)
        kw = {k: v for k, v in kw.items() if k not in ("steps", "step_scale", "power_iterations")}
        ref = solve(op, b, lower, upper, **{**kw, "bound": None}, steps=args.ref_steps, step_scale=4.0,
                    power_iterations=20)
        ref_bound = (2 * ref.dual).clamp_min(0).sqrt()
        for s in settings:
            other = solve(op, b, lower, upper, **kw, step_scale=s[0], steps=int(s[1]), power_iterations=int(s[2]))
            bound = (2 * other.dual).clamp_min(0).sqrt()
            stats[s]["gap"].append((1 - bound / ref_bound)[~other.pruned])
            stats[s]["pruned"].append(other.pruned)
            stats[s]["steps"].append(other.iterations)
        return sol

    lra.solve_qp = hooked
    try:
        lra.linear_region_attack(model, x, y, regions=args.regions, generator=torch.Generator().manual_seed(0))
    finally:
        lra.solve_qp = solve
    print(f"model {args.model}, {len(x)} images, {args.regions} regions (attack defaults), reference "
          f"{args.ref_steps} steps at step_scale 4 without early rejection")
    first = torch.cat(stats[settings[0]]["pruned"])
    print("| step_scale / steps / power iterations | QPs | rejected by the dual bound | same as the first "
          "| dual gap to reference: median | p90 | max | dual steps, all QPs |")
    print("|---|---|---|---|---|---|---|---|")
    for s in settings:
        gap, pruned = torch.cat(stats[s]["gap"]), torch.cat(stats[s]["pruned"])
        steps = torch.cat(stats[s]["steps"]).sum().item()
        print(f"| {s[0]:g} / {s[1]:g} / {s[2]:g} | {pruned.numel()} | {int(pruned.sum())} | {bool(torch.equal(pruned, first))} "
              f"| {gap.median():.1e} | {gap.quantile(0.9):.1e} | {gap.max():.1e} | {steps} |")


if __name__ == "__main__":
    main()
