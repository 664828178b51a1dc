"""The physical limit of minimal-norm attacks: every registered minimal-norm attack of one norm
against the exact minimum (``minnorm.certify.exact``) and the certified radius
(``minnorm.certify.lower_bound``) on the first N Fashion-MNIST test images of a shipped model.

    python benchmarks/certify_physical_limit.py --model mlp-tiny --norm linf --n 100 --time-limit 120
    python benchmarks/certify_physical_limit.py --summary benchmarks/out/certify-mlp-tiny-linf.json

Writes a strict JSON with every per-image number (attack norms, exact brackets, statuses,
certified radii, seconds) and prints the markdown table of docs/certify.md: each attack's ratio
to the exact minimum (median, p90, worst, share within 1.001) over the images proven exact and
correctly classified, the best-of-all row, how many were proven, and the times. Attacks run
with their registry defaults. Timings are wall-clock on a shared 2-core machine.
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


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def run(args) -> dict:
    torch.set_num_threads(1)
    model = minnorm.models.load_shipped(args.model)
    x, y = minnorm.data.load_fashion_mnist("test")
    x, y = x[:args.n], y[:args.n]
    p = minnorm.core.parse_norm(args.norm)
    specs = [s for s in minnorm.attacks.specs() if s.minimal and s.norm == p]
    attacks, best, advs = {}, torch.full((len(y),), math.inf, dtype=torch.float64), x.clone()
    for spec in specs:
        t = time.perf_counter()
        res = spec(model, x, y)
        norms = torch.where(res.success, res.norms.double(), torch.full_like(best, math.inf))
        attacks[spec.name] = {"norms": [_finite(float(v)) for v in norms], "seconds": time.perf_counter() - t}
        better = norms < best
        best, advs[better] = torch.where(better, norms, best), res.adversarials[better]
        print(f"{spec.name}: {attacks[spec.name]['seconds']:.1f} s", flush=True)
    t = time.perf_counter()
    cert = certify.lower_bound(model, x, y, norm=p, upper=best, adversarials=advs)
    cert_s = time.perf_counter() - t
    print(f"certified radius: {cert_s:.1f} s", flush=True)
    t = time.perf_counter()
    ex = certify.exact(model, x, y, norm=p, time_limit=args.time_limit, upper=best, adversarials=advs, progress=True)
    exact_s = time.perf_counter() - t
    return {"model": args.model, "norm": args.norm, "n": len(y), "time_limit": args.time_limit,
            "attacks": attacks, "certified": [float(v) for v in cert.lower], "certified_seconds": cert_s,
            "lower": [float(v) for v in ex.lower], "upper": [_finite(float(v)) for v in ex.upper],
            "status": ex.status, "seconds": [float(v) for v in ex.seconds], "exact_seconds": exact_s,
            "torch_threads": 1, "note": "wall-clock on a shared 2-core machine (other jobs running)"}


def _quantile(v: list[float], q: float) -> float:
    return float(torch.tensor(v, dtype=torch.float64).quantile(q)) if v else math.nan


def summary(data: dict) -> str:
    """The markdown table: attack / exact ratios over the images proven exact."""
    keep = [i for i, s in enumerate(data["status"]) if s == "exact"]
    rows = ["| attack | median | p90 | worst | within 1.001 | time (s) |", "|---|---|---|---|---|---|"]
    best = [math.inf] * data["n"]
    for name, a in data["attacks"].items():
        r = [(a["norms"][i] or math.inf) / data["upper"][i] for i in keep]
        best = [min(b, a["norms"][i] or math.inf) for i, b in enumerate(best)]
        rows.append(f"| {name} | {_quantile(r, .5):.4f} | {_quantile(r, .9):.4f} | {max(r, default=math.nan):.4f} | "
                    f"{sum(v <= 1.001 for v in r)}/{len(r)} | {a['seconds']:.1f} |")
    r = [best[i] / data["upper"][i] for i in keep]
    rows.append(f"| best of all | {_quantile(r, .5):.4f} | {_quantile(r, .9):.4f} | {max(r, default=math.nan):.4f} | "
                f"{sum(v <= 1.001 for v in r)}/{len(r)} | |")
    cr = [data["certified"][i] / data["upper"][i] for i in keep]
    proven = sum(s in ("exact", "misclassified") for s in data["status"])
    within = sum(s == "exact" for s in data["status"])
    secs = [s for s, st in zip(data["seconds"], data["status"]) if st != "misclassified"]
    rows.append("")
    rows.append(f"{data['model']} {data['norm']}: {proven}/{data['n']} proven within {data['time_limit']:g} s "
                f"({within} exact, {data['n'] - proven} brackets, {data['n'] - within - (data['n'] - proven)} "
                f"misclassified); exact-solve time {data['exact_seconds']:.0f} s in total, median "
                f"{_quantile(secs, .5):.1f} s, max {max(secs, default=math.nan):.1f} s per image; certified radius / "
                f"exact: median {_quantile(cr, .5):.3f}, min {min(cr, default=math.nan):.3f} "
                f"({data['certified_seconds']:.1f} s for all images)")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mlp-tiny")
    ap.add_argument("--norm", default="linf")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--out", help="JSON file (default: benchmarks/out/certify-MODEL-NORM.json)")
    ap.add_argument("--summary", help="print the table of an existing JSON and exit")
    args = ap.parse_args()
    if args.summary:
        print(summary(json.loads(Path(args.summary).read_text())))
        return
    data = run(args)
    out = Path(args.out or f"benchmarks/out/certify-{args.model}-{args.norm}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    print(summary(data))


if __name__ == "__main__":
    main()
