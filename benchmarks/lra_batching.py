"""Batched vs one-by-one speed of the linear-region attack (lra-l2), side by side in one run.

Attacks ``--images`` test images of Fashion-MNIST at once and ``--single`` of the same images one
at a time, with equal settings (same number of regions, QP steps, classes), and prints the
per-image time of each and their ratio. Not a test: timings depend on the machine and its load.

    python benchmarks/lra_batching.py --model mlp --images 100 --single 10
"""
from __future__ import annotations

import argparse
import time

import torch

from minnorm.attacks import linear_region_attack
from minnorm.data import load_fashion_mnist
from minnorm.models import load_shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--single", type=int, default=10, help="how many of the images to also run one by one")
    ap.add_argument("--regions", type=int, default=5)
    ap.add_argument("--qp-steps", type=int, default=100)
    ap.add_argument("--classes", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_shipped(args.model).eval()
    x, y = load_fashion_mnist("test")
    with torch.no_grad():
        ok = model(x[:4 * args.images]).argmax(1) == y[:4 * args.images]
    x, y = x[:4 * args.images][ok][:args.images], y[:4 * args.images][ok][:args.images]
    kw = dict(regions=args.regions, qp_steps=args.qp_steps, classes=args.classes, retries=0)

    t = time.perf_counter()
    whole = linear_region_attack(model, x, y, **kw)
    batched = (time.perf_counter() - t) / len(x)
    t = time.perf_counter()
    single = [linear_region_attack(model, x[i:i + 1], y[i:i + 1], **kw) for i in range(args.single)]
    alone = (time.perf_counter() - t) / args.single

    solved_b = whole.info["regions_solved"][:args.single].float().mean().item()
    solved_s = sum(int(r.info["regions_solved"][0]) for r in single) / args.single
    print(f"model {args.model}, {len(x)} images batched, {args.single} one by one, settings {kw}, "
          f"{args.threads} thread(s)")
    print(f"batched:    {batched:.3f} s/image  (regions solved per image {solved_b:.2f})")
    print(f"one by one: {alone:.3f} s/image  (regions solved per image {solved_s:.2f})")
    print(f"speed-up per image: {alone / batched:.1f}x")
    med_b = whole.norms[:args.single].median().item()
    med_s = torch.cat([r.norms for r in single]).median().item()
    print(f"median L2 of the first {args.single}: batched {med_b:.4f}, one by one {med_s:.4f}")


if __name__ == "__main__":
    main()
