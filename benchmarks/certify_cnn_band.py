"""Certified-vs-attack band on a shipped network too large for exact solves (default: ``cnn``):
per image, the certified radius (``minnorm.certify.lower_bound``) against the best registered
minimal-norm attack of that norm, and the certification time per image.

    python benchmarks/certify_cnn_band.py --model cnn --norm linf --n 5

Prints a markdown table and writes a strict JSON. Wall-clock on a shared 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import minnorm
import minnorm.data
from minnorm import certify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--norm", default="linf")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--attacks", default="", help="comma-separated (default: tr-linf / ddn / convex-min-l1)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = minnorm.models.load_shipped(args.model)
    x, y = minnorm.data.load_fashion_mnist("test")
    x, y = x[:args.n], y[:args.n]
    p = minnorm.core.parse_norm(args.norm)
    names = args.attacks.split(",") if args.attacks else [certify.default_attack(p)]
    best, advs = torch.full((len(y),), math.inf, dtype=torch.float64), x.clone()
    for name in names:
        res = minnorm.attacks.get(name)(model, x, y)
        norms = torch.where(res.success, res.norms.double(), torch.full_like(best, math.inf))
        better = norms < best
        best, advs[better] = torch.where(better, norms, best), res.adversarials[better]
    rows, secs = [], []
    for i in range(len(y)):
        t = time.perf_counter()
        r = certify.lower_bound(model, x[i:i + 1], y[i:i + 1], norm=p, upper=best[i:i + 1], adversarials=advs[i:i + 1])
        secs.append(time.perf_counter() - t)
        rows.append({"index": i, "status": r.status[0], "certified": float(r.lower[0]),
                     "attack": float(r.upper[0]) if math.isfinite(float(r.upper[0])) else None, "seconds": secs[-1]})
        print(rows[-1], flush=True)
    print(f"| image | certified | attack ({'+'.join(names)}) | attack / certified | seconds |\n|---|---|---|---|---|")
    for r in rows:
        ratio = r["attack"] / r["certified"] if r["attack"] and r["certified"] > 0 else math.inf
        print(f"| {r['index']} | {r['certified']:.5f} | {r['attack'] or math.inf:.5f} | {ratio:.1f} | {r['seconds']:.1f} |")
    out = Path(args.out or f"benchmarks/out/certify-band-{args.model}-{args.norm}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "norm": args.norm, "attacks": names, "rows": rows,
                               "note": "wall-clock on a shared 2-core machine"}, indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
