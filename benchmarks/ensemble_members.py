"""What each member of a standard ensemble buys: passes spent and images improved, per member.

    python benchmarks/ensemble_members.py --model cnn-pgd-linf --norm l1 --n 32
    python benchmarks/ensemble_members.py --model mlp-tiny --norm l1 --stages '[[["fab-l1", {"targets": 9, "steps": 50}]]]'

Reads the ensemble's ``passes_per_member`` and ``member_norms``. Per member: mean passes per
image, the images where it improved the best norm of the members before it by more than 0.1%
(and those it found first), and over the improved images the median (mean of the middle two for
an even count) and the best gain (best before / best after). Images: the first ``n`` correctly
classified of the embedded Fashion-MNIST sample; one thread; seeded 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import minnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def member_table(norms: torch.Tensor, passes: torch.Tensor, names: list[str]) -> list[list[str]]:
    """Rows of (member, passes per image, improved images, median gain, best gain)."""
    rows, before = [], torch.full_like(norms[0], float("inf"))
    for k, name in enumerate(names):
        after = torch.minimum(before, norms[k])
        gain = before / after
        improved = torch.isfinite(before) & (gain > 1.001)
        first = ~torch.isfinite(before) & torch.isfinite(after)
        g = gain[improved]
        rows.append([f"{k}: {name}", f"{passes[k].double().mean():.0f}", f"{int(improved.sum())} (+{int(first.sum())} first)",
                     f"{g.quantile(0.5):.4f}" if len(g) else "-", f"{g.max():.4f}" if len(g) else "-"])
        before = after
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--norm", default="l1", choices=["linf", "l2", "l1"])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--total-passes", type=int, default=2000)
    ap.add_argument("--stages", help="JSON [[[name, {params}], ...], ...] instead of the default line-up")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = minnorm.models.load_shipped(args.model)
    x, y, what = common.correct_images(model, args.n)
    params = {"total_passes": args.total_passes}
    if args.stages:
        params["stages"] = json.loads(args.stages)
    start = time.perf_counter()
    res = minnorm.attacks.get(f"ensemble-{args.norm}")(model, x, y, generator=torch.Generator().manual_seed(0), **params)
    seconds = (time.perf_counter() - start) / len(x)
    info = res.info
    print(f"{args.model}, ensemble-{args.norm}, {what}; {seconds:.3f} s/image, "
          f"{res.passes.double().mean():.0f} passes/image, median norm {res.norms[res.success].median():.4f}\n")
    print(common.markdown_table(["member", "passes/image", "improved images", "median gain", "best gain"],
                                member_table(info["member_norms"], info["passes_per_member"], info["members"])))


if __name__ == "__main__":
    main()
