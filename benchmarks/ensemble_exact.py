"""The standard ensemble and its members against exact minimal norms on the shipped `mlp-tiny`.

    python benchmarks/ensemble_exact.py --norm linf --n 100
    python benchmarks/ensemble_exact.py --norm linf --attacks ensemble-linf 'fmn-linf:{"targets": 9}'

Reference: the exact minima of ``minnorm.certify.exact`` cached in ``benchmarks/exact-mlp-tiny.json``
(per norm: status, lower, upper and the best attack norm of ``benchmarks/certify_physical_limit.py``,
for L2 of ``benchmarks/certify_incremental.py --to-cache``, on the first 100 Fashion-MNIST test
images; L2: 72 exact). Only images proven ``exact`` there are scored. Where the cache has
fewer images than ``--n`` or an image is a bracket, the reference is the
best-known norm over every attack of this run and the cache's attacks, and the table says how many
images are scored against which. One thread; every attack with ``generator`` seeded 0 and its
registry defaults unless given ``name:{json params}``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import minnorm
import minnorm.data

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CACHE = Path(__file__).parent / "exact-mlp-tiny.json"  # from benchmarks/out/certify-mlp-tiny-*-final.json
DEFAULT = {"linf": ["ensemble-linf", "lra-linf", "fmn-linf", "apgd-linf", "fab-linf", "tr-linf", "deepfool-linf"],
           "l1": ["ensemble-l1", "lra-l1", "fmn-l1", "apgd-l1", "fab-l1", "convex-min-l1"],
           "l2": ["ensemble-l2", "lra-l2", "fmn-l2", "apgd-l2", "fab-l2", "ddn", "tr-l2", "deepfool-l2"]}


def reference(norm: str, n: int) -> tuple[list[float], list[str], list[float]]:
    """Exact minima (``inf`` where not proven), statuses and the certify run's best attack norm
    for the first ``n`` images, from :data:`CACHE`."""
    data = json.loads(CACHE.read_text()).get(norm, {"status": [], "upper": [], "best_attack": []})
    pad = lambda v, fill: (list(v) + [fill] * n)[:n]  # noqa: E731
    status = pad(data["status"], "none")
    exact = [float(u) if s == "exact" else math.inf for s, u in zip(status, pad(data["upper"], None))]
    cached = [math.inf if v is None else float(v) for v in pad(data["best_attack"], None)]
    return exact, status, cached


def row(label: str, ratio: torch.Tensor, success: float, passes: float, seconds: float) -> str:
    r = ratio[torch.isfinite(ratio)]
    q = (float(r.median()), float(r.quantile(0.9)), float(r.max())) if len(r) else (math.nan,) * 3
    within = int((r <= 1.001).sum())
    return (f"| {label} | {q[0]:.4f} | {q[1]:.4f} | {q[2]:.4f} | {within}/{len(ratio)} | {100 * success:.0f}% | "
            f"{passes:.0f} | {seconds:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--norm", default="linf", choices=["linf", "l2", "l1"])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--attacks", nargs="*", default=None)
    ap.add_argument("--save", default=None, help="write per-image norms to this JSON")
    ap.add_argument("--known", nargs="*", default=[], help="--save files of earlier runs: their norms join the best-known")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = minnorm.models.load_shipped("mlp-tiny")
    x, y = minnorm.data.load_fashion_mnist("test")
    x, y = x[:args.n], y[:args.n]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    exact, status, cached = reference(args.norm, args.n)
    runs = {}
    for label, name, params in map(common.parse_attack_spec, args.attacks or DEFAULT[args.norm]):
        t = time.perf_counter()
        res = minnorm.attacks.get(name)(model, x, y, generator=torch.Generator().manual_seed(0), **params)
        sec = time.perf_counter() - t
        runs[label] = (res, sec)
        print(f"{label}: {sec:.1f} s", flush=True)
    norms = {k: torch.where(r.success, r.norms.double(), torch.full_like(r.norms.double(), math.inf))
             for k, (r, _) in runs.items()}
    earlier = [torch.tensor([v if v is not None else math.inf for v in vs], dtype=torch.float64)
               for f in args.known for k, vs in json.loads(Path(f).read_text()).items() if k not in ("reference", "scored")]
    best = torch.stack(list(norms.values()) + earlier + [torch.tensor(cached, dtype=torch.float64)]).min(0).values
    ex = torch.tensor(exact, dtype=torch.float64)
    below = correct & torch.isfinite(ex) & (best < ex * (1 - 1e-4) - 1e-7)  # certify's tolerance
    if bool(below.any()):
        print(f"WARNING: attacks below the exact minimum on images {below.nonzero().flatten().tolist()}")
    ref = torch.where(torch.isfinite(ex), ex, best)
    scored = correct & torch.isfinite(ref)
    n_exact = int((scored & torch.isfinite(ex)).sum())
    print(f"\nmlp-tiny, {args.norm}, first {args.n} test images: {int(correct.sum())} correctly classified, "
          f"{n_exact} scored against the exact minimum, {int(scored.sum()) - n_exact} against the best-known norm")
    print("| attack | median | p90 | worst | within 1.001 | success | passes/image | s/image |")
    print("|---|---|---|---|---|---|---|---|")
    for k, (r, sec) in runs.items():
        ratio = norms[k][scored] / ref[scored]
        passes = float(r.passes[correct].double().mean())
        print(row(k, ratio, float(r.success[correct].float().mean()), passes, sec / args.n))
    print(row("best of all", best[scored] / ref[scored], 1.0, math.nan, math.nan))
    worst = (norms[next(iter(norms))] / ref).masked_fill(~scored, 0).topk(min(8, int(scored.sum())))
    print("first attack's worst images:", [(int(i), round(float(v), 4)) for v, i in zip(*worst)])
    if args.save:
        Path(args.save).write_text(json.dumps({k: [float(v) if math.isfinite(v) else None for v in norms[k].tolist()]
                                               for k in norms} | {"reference": ref.tolist(), "scored": scored.tolist()}))


if __name__ == "__main__":
    main()
