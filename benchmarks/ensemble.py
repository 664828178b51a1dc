"""The standard ensemble vs its members on a shipped model: ratio to the best-known norm per
image (over every run here), passes and seconds per image, measured in one run. Members run
standalone without the ensemble's share of passes; the polish (``from_best``) needs the
ensemble's best point and is not run alone.

    python benchmarks/ensemble.py --model cnn --n 50 --norms inf,2
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import minnorm
from minnorm.attacks.ensemble import _OWN, STAGES
from minnorm.data import load_sample
from minnorm.models import load_shipped


def stats(ratio: torch.Tensor) -> str:
    r = ratio[torch.isfinite(ratio)]
    return f"{float(r.median()):.4f} {float(r.quantile(0.9)):.4f} {float(r.max()):.4f}" if len(r) else "- - -"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--norms", default="inf,2")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_shipped(args.model)
    x, y = load_sample()
    keep = (model(x[:4 * args.n]).argmax(1) == y[:4 * args.n]).nonzero().flatten()[:args.n]
    x, y = x[keep], y[keep]
    for p in (float(v) for v in args.norms.split(",")):
        runs = {}
        for name, params in [m for stage in STAGES[p] for m in stage if not m[1].get("from_best")]:
            params = {k: v for k, v in params.items() if k not in _OWN}  # the ensemble's own options
            t = time.perf_counter()
            res = minnorm.attacks.get(name)(model, x, y, generator=torch.Generator().manual_seed(0), **params)
            runs[name] = (res, time.perf_counter() - t)
        t = time.perf_counter()
        res = minnorm.attacks.ensemble(model, x, y, norm=p, generator=torch.Generator().manual_seed(0))
        runs["ensemble"] = (res, time.perf_counter() - t)
        best = torch.stack([r.norms.double() for r, _ in runs.values()]).min(0).values
        tag = "linf" if math.isinf(p) else f"l{p:g}"
        print(f"\n{tag}, model {args.model}, {len(y)} correctly classified images; ratio to the best-known norm")
        print("| attack | success | median | p90 | worst | passes/image | s/image |\n|---|---|---|---|---|---|---|")
        for name, (r, sec) in runs.items():
            med, p90, worst = stats(r.norms.double() / best).split()
            print(f"| {name} | {100 * r.success_rate:.1f}% | {med} | {p90} | {worst} | "
                  f"{float(r.passes.double().mean()):.0f} | {sec / len(y):.3f} |")
        stage2 = (res.info["passes_per_stage"][1:] > 0).any(0).float().mean()
        print(f"ensemble: stage 2 ran on {100 * float(stage2):.0f}% of the images")


if __name__ == "__main__":
    main()
