"""What the standard preset's APGD check adds at the radii asked for, per norm.

    python benchmarks/radius_check.py --model cnn-pgd-linf --norm l2 --eps 1,1.5,2 --n 64
    python benchmarks/radius_check.py --model cnn --norm l1 --n 64     # radii: the norms' quartiles

``minnorm evaluate --eps EPS`` with the standard preset runs the norm's ensemble (one minimal-norm
run for every radius) and APGD-CE at each EPS (``apgd-at-eps-NORM``). Per radius: robust accuracy
from the ensemble's norms alone, from APGD-CE alone, and from both (the preset's number); the
images APGD-CE breaks that the ensemble called robust, with the ensemble's norm over the radius;
and the check's wall time next to the ensemble's. Images: the first ``n`` correctly classified of
the embedded Fashion-MNIST sample; one thread; seeded 0.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import minnorm
from minnorm.core import broken_within

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def timed(attack, *args, **kwargs):
    start = time.perf_counter()
    res = attack(*args, generator=torch.Generator().manual_seed(0), **kwargs)
    return res, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn-pgd-linf")
    ap.add_argument("--norm", default="linf", choices=["linf", "l2", "l1"])
    ap.add_argument("--eps", help="radii, e.g. 0.1,0.15 (default: the quartiles of the ensemble's norms, 3 digits)")
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = minnorm.models.load_shipped(args.model)
    x, y, what = common.correct_images(model, args.n)
    ens, ens_s = timed(minnorm.attacks.get(f"ensemble-{args.norm}"), model, x, y)
    norms = torch.where(ens.success, ens.norms.double(), torch.full_like(ens.norms.double(), float("inf")))
    print(f"{args.model}, {args.norm}, {what}; ensemble {ens_s / len(x):.3f} s/image, "
          f"{ens.passes.double().mean():.0f} passes/image\n")
    if args.eps:
        radii = [float(v) for v in args.eps.split(",")]
    else:
        radii = [float(f"{float(q):.3g}") for q in norms[torch.isfinite(norms)].quantile(torch.tensor(
            [0.25, 0.5, 0.75], dtype=torch.float64))]
    rows = []
    for eps in radii:
        check, check_s = timed(minnorm.attacks.get(f"apgd-at-eps-{args.norm}"), model, x, y, eps=eps)
        by_ensemble = broken_within(norms, eps)
        added = check.success & ~by_ensemble
        over = ", ".join(f"{float(norms[i]) / eps:.4f}" for i in added.nonzero().flatten().tolist()) or "-"
        rows.append([f"{eps:g}", f"{100 * (1 - by_ensemble.double().mean()):.1f}%",
                     f"{100 * (1 - check.success.double().mean()):.1f}%",
                     f"{100 * (1 - (by_ensemble | check.success).double().mean()):.1f}%",
                     f"{int(added.sum())} ({over})", f"{int((by_ensemble & ~check.success).sum())}",
                     f"{check_s / len(x):.3f} ({check_s / ens_s:.2f}x)"])
    print(common.markdown_table(["eps", "robust acc. ensemble", "APGD-CE", "both (preset)",
                                 "added by APGD-CE (ensemble norm / eps)", "missed by APGD-CE",
                                 "APGD-CE s/image (x ensemble)"], rows))


if __name__ == "__main__":
    main()
