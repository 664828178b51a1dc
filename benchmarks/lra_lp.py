"""lra-linf / lra-l1 against minnorm's other Linf / L1 minimal-norm attacks on one shipped model.

Runs, on the first ``--n`` correctly classified images of the embedded Fashion-MNIST sample, each
attack once (one batch, 1 thread, process CPU time) and prints per attack: success, median norm,
the per-image ratio to the smallest norm any attack found (median and p90), on how many images it
is at that best (within 1e-6 relative), passes per sample and CPU seconds. The lra rows are run
from DeepFool's start (the registry default) and from the strongest other attack's start
(``init=``), with the settings given. Not a test.

    python benchmarks/lra_lp.py --model cnn --n 50 --norm linf --regions 20 --qp-steps 100
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import minnorm
from minnorm.models import load_shipped

from common import correct_images

OTHERS = {"linf": ["deepfool-linf", "fmn-linf", "tr-linf"], "l1": ["fmn-l1", "convex-min-l1"]}
START = {"linf": "tr-linf", "l1": "fmn-l1"}


def run(name: str, model, x, y, **kw):
    spec = minnorm.attacks.get(name)
    t = time.process_time()
    res = spec(model, x, y, generator=torch.Generator().manual_seed(0), **kw)
    return res, time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--norm", default="linf", choices=["linf", "l1"])
    ap.add_argument("--regions", type=int, default=20)
    ap.add_argument("--qp-steps", type=int, default=100)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_shipped(args.model).eval()
    x, y, _ = correct_images(model, args.n)
    lra = f"lra-{args.norm}"
    kw = dict(regions=args.regions, qp_steps=args.qp_steps, classes=args.classes)
    rows = {}
    for name in OTHERS[args.norm]:
        rows[name] = run(name, model, x, y)
        print(f"{name} done, {rows[name][1]:.0f} CPU s", flush=True)
    rows[f"{lra}, DeepFool start"] = run(lra, model, x, y, **kw)
    print("lra (deepfool start) done", flush=True)
    rows[f"{lra}, {START[args.norm]} start"] = run(lra, model, x, y, init=START[args.norm], **kw)
    norms = torch.stack([r.norms for r, _ in rows.values()])
    best = norms.amin(0)
    print(f"\nmodel `{args.model}`, {len(x)} images, norm {args.norm}, lra settings {kw}, {args.threads} thread(s), "
          f"torch {torch.__version__}\n")
    print("| attack | success | median norm | median ratio to best | p90 ratio | at best | passes/sample | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, (res, sec)), nm in zip(rows.items(), norms):
        ratio = torch.where(torch.isfinite(nm), nm / best, torch.full_like(nm, math.inf))
        at = int((nm <= best * (1 + 1e-6)).sum())
        passes = (res.forward_passes + res.backward_passes).float().mean()
        print(f"| {name} | {res.success.float().mean():.0%} | {nm.median():.4f} | {ratio.median():.4f} | "
              f"{ratio.quantile(0.9):.4f} | {at}/{len(x)} | {passes:.0f} | {sec:.0f} |")
    for name, (res, _) in rows.items():
        if name.startswith("lra"):
            solved = res.info["regions_solved"].sum().item()
            print(f"\n{name}: regions solved per image {solved / len(x):.1f}, QPs rejected by the dual bound "
                  f"{res.info['qp_pruned'].sum().item() / max(solved * args.classes, 1):.0%} of "
                  f"{solved * args.classes}, solver steps per image {res.info['qp_steps'].float().mean():.0f}")


if __name__ == "__main__":
    main()
