"""minnorm attacks side by side on one shipped model, each with its own settings, scored per image
against the best of the rows (best-known, not exact).

    python benchmarks/side_by_side.py --model cnn --n 32 \
        'fmn-t3=fmn-l1:{"targets": 3, "steps": 1000}' 'fab-t3=fab-l1:{"targets": 3, "steps": 222}' ensemble-l1

Each argument is ``[label=]name[:{json params}]``. Images: the first ``n`` correctly classified of
the first 300 Fashion-MNIST test images (``apt-get install dataset-fashion-mnist``). One thread;
every attack seeded 0. Per row: seconds and passes per image, median / p90 / worst of the ratio to
the per-image best, and the images where the row is within 0.1% of it.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

import minnorm
import minnorm.data

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("attacks", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = minnorm.models.load_shipped(args.model)
    x, y = minnorm.data.load_fashion_mnist("test")
    x, y = x[:300], y[:300]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][:args.n], y[ok][:args.n]
    rows = {}
    for label, name, params in map(common.parse_attack_spec, args.attacks):
        start = time.perf_counter()
        res = minnorm.attacks.get(name)(model, x, y, generator=torch.Generator().manual_seed(0), **params)
        seconds = (time.perf_counter() - start) / len(x)
        norms = torch.where(res.success, res.norms.double(), torch.tensor(math.inf, dtype=torch.float64))
        rows[label] = (norms, seconds, float(res.passes.double().mean()))
        print(f"{label}: {seconds:.3f} s/image", flush=True)
    best = torch.stack([r[0] for r in rows.values()]).min(0).values
    print(f"\n{args.model}, {len(x)} images\n\n| attack | median | p90 | worst | best on | passes | s/image |\n"
          "|---|---|---|---|---|---|---|")
    for label, (norms, seconds, passes) in rows.items():
        ratio = norms / best
        print(f"| {label} | {ratio.median():.4f} | {ratio.quantile(0.9):.4f} | {ratio.max():.4f} | "
              f"{int((ratio <= 1.001).sum())}/{len(x)} | {passes:.0f} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
