"""lra-l2 under several solver settings on the same images and seed, against the first setting.

Each setting is a comma-separated list of keyword arguments of ``linear_region_attack`` (the empty
string: its defaults). Prints per setting the process CPU seconds, regions solved, cache hits, QPs
rejected by the dual bound, dual steps per image, the median L2 norm and, per image against the
first setting, the largest norm difference and on how many images the norm is smaller / larger.

    python benchmarks/lra_settings.py --model cnn --images 16 --regions 8 \
        "step_scale=1,qp_steps=300,power_iterations=20" "step_scale=1" ""
"""
from __future__ import annotations

import argparse
import time

import torch

from minnorm.attacks import linear_region_attack
from minnorm.models import load_shipped

from common import correct_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("settings", nargs="+")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--regions", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_shipped(args.model).eval()
    x, y, _ = correct_images(model, args.images)
    print(f"model {args.model}, {len(x)} images, {args.regions} regions, {args.threads} thread(s)")
    print("| setting | CPU s | regions solved | cache hits | QPs rejected | dual steps/image | median L2 "
          "| max abs diff to first | smaller / larger than first |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = None
    for setting in args.settings:
        kw = {k: eval(v) for k, v in (o.split("=") for o in setting.split(",") if o)}
        t = time.process_time()
        res = linear_region_attack(model, x, y, regions=args.regions, generator=torch.Generator().manual_seed(0), **kw)
        t = time.process_time() - t
        base = res if base is None else base
        diff = res.norms - base.norms
        info = res.info
        print(f"| {setting or 'defaults'} | {t:.1f} | {info['regions_solved'].sum().item()} | "
              f"{info['cache_hits'].sum().item()} | {info['qp_pruned'].sum().item()} | "
              f"{info['qp_steps'].float().mean():.0f} | {res.norms.median():.4f} | {diff.abs().max():.2e} | "
              f"{int((diff < -1e-6).sum())} / {int((diff > 1e-6).sum())} |", flush=True)


if __name__ == "__main__":
    main()
