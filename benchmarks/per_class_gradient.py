"""Per-class gradients (core.per_objective_gradients): loop vs batched methods, side by side in one run.

Two tables. ``attacks``: the attacks that differentiate several objectives per sample (DeepFool's
logit differences, the convex attacks' linearised margin), each run with every method in turn,
interleaved (loop, vmap, auto, loop, vmap, auto, ...) for ``--rounds`` rounds on the same images;
per-image milliseconds are medians over the rounds, ratios are against the loop in the same run,
and every method's norms, success flags and pass counts are compared with the loop's. Batch 1
runs the first ``--single`` images one at a time. ``gradient``: the gradient call alone on a
fixed batch (DeepFool's 9 logit differences), including a method the attacks cannot use as they
are: the input replicated 9 times, one forward of 9 B rows and one backward (``replicate``; it
charges 9 forward passes per sample instead of 1).

Not a test: timings depend on the machine and its load (hence the interleaving and medians).

    python benchmarks/per_class_gradient.py --models cnn,mlp --batches 1,16,100 --rounds 5 --markdown
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import correct_images, load_model, machine_info, markdown_table, text_table, today  # noqa: E402

import minnorm  # noqa: E402
from minnorm.core import gradients  # noqa: E402
from minnorm.core.gradients import gradient_method, per_objective_gradients  # noqa: E402

ATTACKS = {  # name: (registry name, overrides); the objectives per sample in the comment
    "deepfool-l2": ("deepfool-l2", {}),  # 9
    "deepfool-linf": ("deepfool-linf", {}),  # 9
    "convex-min-l2": ("convex-min-l2", {}),  # 1 (class_choice="active"): every method is the loop
    "convex-min-l2 linearised": ("convex-min-l2", {"class_choice": "linearised"}),  # 9 (its "fooling" role)
    "alg1n-l2": ("alg1n-l2", {"eps": 1.0}),  # 9 per step, 10 steps
}


def _batches(x: torch.Tensor, y: torch.Tensor, batch: int, single: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if batch == 1:
        return [(x[i:i + 1], y[i:i + 1]) for i in range(min(single, len(x)))]
    return [(x[:batch], y[:batch])]


def _run(fn, model, batches, kwargs, method: str) -> tuple[float, list]:
    """Seconds per image and the results of one pass over the batches with ``method``."""
    results, n = [], sum(len(b[0]) for b in batches)
    with gradient_method(method):
        start = time.perf_counter()
        for x, y in batches:
            results.append(fn(model, x, y, generator=torch.Generator().manual_seed(0), **kwargs))
        return (time.perf_counter() - start) / n, results


def _compare(base: list, other: list) -> tuple[float, bool]:
    """Max relative norm difference (finite norms) and whether success and passes all agree."""
    worst, same = 0.0, True
    for a, b in zip(base, other):
        same &= bool(torch.equal(a.success, b.success) and torch.equal(a.forward_passes, b.forward_passes)
                     and torch.equal(a.backward_passes, b.backward_passes))
        fin = torch.isfinite(a.norms) & torch.isfinite(b.norms)
        same &= bool(torch.equal(torch.isfinite(a.norms), torch.isfinite(b.norms)))
        if fin.any():
            rel = (a.norms[fin] - b.norms[fin]).abs() / a.norms[fin].abs().clamp_min(1e-12)
            worst = max(worst, float(rel.max()))
    return worst, same


def attack_rows(model_name: str, model, x, y, args) -> list[list[str]]:
    rows = []
    for label, (reg, over) in ATTACKS.items():
        spec = minnorm.attacks.get(reg)
        kwargs = {**spec.defaults, **over}
        for batch in args.batches:
            batches = _batches(x, y, batch, args.single)
            times = {m: [] for m in args.methods}
            results = {}
            for _ in range(args.rounds):
                for m in args.methods:
                    t, results[m] = _run(spec.fn, model, batches, kwargs, m)
                    times[m].append(t)
            base = statistics.median(times["loop"])
            for m in args.methods:
                med = statistics.median(times[m])
                worst, same = _compare(results["loop"], results[m])
                rows.append([model_name, label, str(batch), m, f"{med * 1e3:.2f}", f"{med / base:.2f}",
                             f"{worst:.1e}", "yes" if same else "NO"])
            print(text_table(HEADER, rows[-len(args.methods):]), flush=True)
    return rows


def _replicate(model, x: torch.Tensor, cand: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(b): the input repeated once per objective, one forward of m * B rows, one backward of the
    sum of each copy's own objective; the attack's own B-row forward still comes first."""
    b, m = cand.shape
    with torch.no_grad():
        model(x)
    xr = x.detach().repeat_interleave(m, 0).requires_grad_(True)
    logits = model(xr)
    objective = logits.gather(1, cand.reshape(-1, 1)) - logits.gather(1, label.repeat_interleave(m)[:, None])
    (g,) = torch.autograd.grad(objective.sum(), xr)
    return g.view(b, m, *x.shape[1:])


def _differences(model, x: torch.Tensor, cand: torch.Tensor, label: torch.Tensor, method: str) -> torch.Tensor:
    xg = x.detach().requires_grad_(True)
    logits = model(xg)
    values = logits.gather(1, cand) - logits.gather(1, label[:, None])
    return per_objective_gradients(values, xg, method=method)


def _gradient_call(model, x: torch.Tensor, cand: torch.Tensor, label: torch.Tensor, method: str) -> torch.Tensor:
    if method == "replicate":
        return _replicate(model, x, cand, label)
    return _differences(model, x, cand, label, method)


def gradient_rows(model_name: str, model, x, y, args) -> list[list[str]]:
    rows, methods = [], [*args.methods, "replicate"]
    for batch in args.batches:
        xb, yb = x[:batch], y[:batch]
        cand = torch.stack([(yb + k) % 10 for k in range(1, 10)], 1)
        want = _gradient_call(model, xb, cand, yb, "loop")
        reps = max(2, 200 // batch)
        times = {m: [] for m in methods}
        for _ in range(args.rounds):
            for m in methods:
                start = time.perf_counter()
                for _ in range(reps):
                    _gradient_call(model, xb, cand, yb, m)
                times[m].append((time.perf_counter() - start) / reps / batch)
        base = statistics.median(times["loop"])
        for m in methods:
            got = _gradient_call(model, xb, cand, yb, m)
            diff = float((got - want).abs().max() / want.abs().max())
            med = statistics.median(times[m])
            rows.append([model_name, "gradient call", str(batch), m, f"{med * 1e3:.3f}", f"{med / base:.2f}",
                         f"{diff:.1e}", "-"])
        print(text_table(HEADER, rows[-len(methods):]), flush=True)
    return rows


HEADER = ["model", "attack / call", "batch", "method", "ms per image", "ratio vs loop",
          "max rel. diff (norms / gradients)", "same success and passes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--batches", default="1,16,100")
    ap.add_argument("--methods", default="loop,vmap,auto")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--single", type=int, default=16, help="images run one at a time for batch 1")
    ap.add_argument("--only", choices=["attacks", "gradient"], help="one table only")
    ap.add_argument("--auto-rows", type=int, help=f"override core.gradients.AUTO_ROWS ({gradients.AUTO_ROWS})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--markdown", action="store_true", help="print the tables as markdown at the end")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.methods = args.methods.split(",")
    if "loop" not in args.methods:
        args.methods.insert(0, "loop")
    if args.auto_rows is not None:
        gradients.AUTO_ROWS = args.auto_rows
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        model, desc = load_model(name)
        x, y, _ = correct_images(model, max(args.batches + [args.single]))
        print(f"{name}: {desc}", flush=True)
        if args.only != "gradient":
            rows += attack_rows(name, model, x, y, args)
        if args.only != "attacks":
            rows += gradient_rows(name, model, x, y, args)
    print(f"\n{today()}, {machine_info(args.threads)}; {args.rounds} interleaved rounds, medians; "
          f"AUTO_ROWS = {gradients.AUTO_ROWS}")
    print(markdown_table(HEADER, rows) if args.markdown else text_table(HEADER, rows))


if __name__ == "__main__":
    main()
