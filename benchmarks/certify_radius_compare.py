"""Certified radius: forward linear forms (``bounds.certified_radius``, the first version) against
CROWN back-substitution (``crown.certified_radius_fast``), side by side in one run.

    python benchmarks/certify_radius_compare.py --model cnn --norm linf --n 5
    python benchmarks/certify_radius_compare.py --model mlp-tiny --norm linf --n 100 \\
        --exact benchmarks/out/certify-mlp-tiny-linf.json

Per method: seconds per image (wall-clock and this process's CPU time: the machine is shared,
the load average is printed) and the tightness: certified / exact over the images an
``--exact`` JSON (benchmarks/certify_physical_limit.py) proves, else attack / certified with
the norm's default attack (``certify.default_attack``) as the upper end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

import minnorm
import minnorm.data
from minnorm import certify
from minnorm.certify.bounds import certified_radius
from minnorm.certify.crown import certified_radius_fast


def _q(v, q):
    return float(torch.tensor(v, dtype=torch.float64).quantile(q)) if v else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--norm", default="linf")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--exact", help="JSON of certify_physical_limit.py: ratios to its exact minima")
    ap.add_argument("--methods", default="backward,forward")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = minnorm.models.load_shipped(args.model)
    x, y = minnorm.data.load_fashion_mnist("test")
    x, y = x[:args.n], y[:args.n]
    p = minnorm.core.parse_norm(args.norm)
    ok = model(x).argmax(1) == y
    if args.exact:
        data = json.loads(Path(args.exact).read_text())
        best = [min([a["norms"][i] or math.inf for a in data["attacks"].values()]) for i in range(args.n)]
        high = torch.tensor(best, dtype=torch.float64)
        ref = {i: data["upper"][i] for i in range(args.n) if data["status"][i] == "exact"}
    else:
        res = minnorm.attacks.get(certify.default_attack(p))(model, x, y)
        high = torch.where(res.success, res.norms.double(), torch.full((args.n,), math.inf, dtype=torch.float64))
        ref = {i: float(high[i]) for i in range(args.n) if bool(ok[i]) and math.isfinite(float(high[i]))}
    g = certify.build_graph(model)
    x0 = x.double()
    cap = high.clamp(max=1.0 if math.isinf(p) else 28.0)
    print(f"{args.model} {args.norm}, {args.n} images, load average {os.getloadavg()}")
    for method in args.methods.split(","):
        t, c = time.perf_counter(), time.process_time()
        fn = certified_radius_fast if method == "backward" else certified_radius
        r = fn(g, x0[ok], y[ok], p, (0.0, 1.0), cap[ok])
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        full = torch.zeros(args.n, dtype=torch.float64)
        full[ok] = r
        ratio = [float(full[i]) / v if args.exact else v / max(float(full[i]), 1e-12) for i, v in ref.items()]
        what = "certified / exact" if args.exact else "attack / certified"
        print(f"{method}: {wall / int(ok.sum()):.2f} s/image wall, {cpu / int(ok.sum()):.2f} s/image CPU; {what} over "
              f"{len(ratio)}: median {_q(ratio, .5):.3f}, worst {min(ratio) if args.exact else max(ratio):.3f}; "
              f"load average now {os.getloadavg()[0]:.1f}", flush=True)
        if not args.exact:
            print("  radii", [f"{float(v):.5f}" for v in full])


if __name__ == "__main__":
    main()
