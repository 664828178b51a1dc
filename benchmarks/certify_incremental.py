"""Exact minima one image at a time, each result appended to a JSON-lines file as soon as it is
known (for long L2 runs on a shared machine: a run stopped early keeps every finished image).

    nohup python benchmarks/certify_incremental.py --model mlp-tiny --norm l2 --n 100 --time-limit 300 &
    python benchmarks/certify_incremental.py --summary benchmarks/out/certify-inc-mlp-tiny-l2.jsonl
    python benchmarks/certify_incremental.py --to-cache benchmarks/out/certify-inc-mlp-tiny-l2.jsonl

The cutoff per image is the best of ``--attacks`` (run once on all N images, batched, registry
defaults); their norms are written in the file's first line. Wall-clock seconds per image on a
shared 2-core machine, one torch thread; the summary counts the images proven within the limit.
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


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def run(args) -> None:
    torch.set_num_threads(1)
    model = minnorm.models.load_shipped(args.model)
    x, y = minnorm.data.load_fashion_mnist("test")
    x, y = x[:args.n], y[:args.n]
    p = minnorm.core.parse_norm(args.norm)
    out = Path(args.out or f"benchmarks/out/certify-inc-{args.model}-{args.norm}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    best, advs, attacks = torch.full((len(y),), math.inf, dtype=torch.float64), x.clone(), {}
    for name in args.attacks.split(","):
        t = time.perf_counter()
        res = minnorm.attacks.get(name)(model, x, y)
        norms = torch.where(res.success, res.norms.double(), torch.full_like(best, math.inf))
        attacks[name] = {"norms": [_finite(float(v)) for v in norms], "seconds": time.perf_counter() - t}
        better = norms < best
        best, advs[better] = torch.where(better, norms, best), res.adversarials[better]
    if not args.start:  # a new file; --start K appends images K.. to an earlier run's file
        with out.open("w") as f:
            f.write(json.dumps({"model": args.model, "norm": args.norm, "n": len(y), "time_limit": args.time_limit,
                                "attacks": attacks, "load_average": os.getloadavg()}, allow_nan=False) + "\n")
    for i in range(args.start, len(y)):
        t = time.perf_counter()
        ex = certify.exact(model, x[i:i + 1], y[i:i + 1], norm=p, time_limit=args.time_limit,
                           upper=best[i:i + 1], adversarials=advs[i:i + 1])
        row = {"index": i, "status": ex.status[0], "lower": float(ex.lower[0]), "upper": _finite(float(ex.upper[0])),
               "proven_lower": float(ex.info["proven_lower"][0]), "seconds": time.perf_counter() - t,
               "load_average": os.getloadavg()[0]}
        with out.open("a") as f:
            f.write(json.dumps(row, allow_nan=False) + "\n")
        print(row, flush=True)


def summary(path: str) -> str:
    lines = [json.loads(s) for s in Path(path).read_text().splitlines()]
    head, rows = lines[0], lines[1:]
    proven = [r for r in rows if r["status"] in ("exact", "misclassified")]
    secs = sorted(r["seconds"] for r in rows if r["status"] != "misclassified")
    med = secs[len(secs) // 2] if secs else math.nan
    return (f"{head['model']} {head['norm']}: {len(proven)}/{len(rows)} images done proven within "
            f"{head['time_limit']:g} s ({sum(r['status'] == 'exact' for r in rows)} exact, "
            f"{sum(r['status'] == 'misclassified' for r in rows)} misclassified, "
            f"{sum(r['status'] == 'bracket' for r in rows)} brackets); {sum(r['seconds'] for r in rows):.0f} s in total, "
            f"median {med:.1f} s, max {max(secs, default=math.nan):.1f} s per correctly classified image")


def to_cache(path: str, cache: Path) -> str:
    """Write a finished run (every image of its ``n``) into the exact-minimum cache that
    benchmarks/ensemble_exact.py reads, as that norm's entry (status, proven lower bound,
    upper = the verified minimum where exact, best attack norm)."""
    lines = [json.loads(s) for s in Path(path).read_text().splitlines()]
    head, rows = lines[0], {r["index"]: r for r in lines[1:]}
    missing = [i for i in range(head["n"]) if i not in rows]
    if missing:
        raise SystemExit(f"{path}: images {missing[:5]}... not done yet; continue it with --start")
    best = [min((a["norms"][i] if a["norms"][i] is not None else math.inf) for a in head["attacks"].values())
            for i in range(head["n"])]
    order = [rows[i] for i in range(head["n"])]
    data = json.loads(cache.read_text())
    data[head["norm"]] = {"n": head["n"], "status": [r["status"] for r in order],
                          "lower": [r["proven_lower"] for r in order], "upper": [r["upper"] for r in order],
                          "best_attack": [_finite(v) for v in best]}
    data["source"] += (f" {head['norm']}: benchmarks/certify_incremental.py, {head['n']} images, "
                       f"time limit {head['time_limit']:g} s.")
    cache.write_text(json.dumps(data) + "\n")
    return f"{cache}: {head['norm']} now has {head['n']} images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mlp-tiny")
    ap.add_argument("--norm", default="l2")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--attacks", default="ddn,fmn-l2,apgd-l2,deepfool-l2")
    ap.add_argument("--out")
    ap.add_argument("--start", type=int, default=0, help="continue an earlier run's file from this image on")
    ap.add_argument("--summary")
    ap.add_argument("--to-cache", help="a finished run's file: write it into benchmarks/exact-mlp-tiny.json")
    args = ap.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    if args.to_cache:
        print(to_cache(args.to_cache, Path(__file__).parent / "exact-mlp-tiny.json"))
        return
    run(args)


if __name__ == "__main__":
    main()
