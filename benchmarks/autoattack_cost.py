"""Cost of the standard ensemble (one minimal-norm run answers every eps) against AutoAttack at
one eps (torchattacks' AutoAttack, version "standard": APGD-CE, APGD-T, FAB-T, Square), measured
side by side in one process on the same images, one thread.

    python benchmarks/autoattack_cost.py --model cnn --n 20 --eps 0.03,0.1
    python benchmarks/autoattack_cost.py --n 8 --eps 0.01 --stages '[[["tr-linf", {}], ["fmn-linf", {}]]]'

For each eps: AutoAttack's wall time per image and robust accuracy, next to the robust accuracy
the ensemble's norms give at that eps (``norm > eps``) and the ensemble's own time per image, and
what the standard preset gives when the eps is asked for (``evaluate --eps``: the ensemble and
APGD-CE at that eps, ``apgd-at-eps-linf``).
torchattacks is a peer installed for this comparison only (``.venv/bin/pip install --no-deps
torchattacks``); nothing of it is used by minnorm.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import minnorm
from minnorm.data import load_sample
from minnorm.models import load_shipped


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--eps", default="0.03,0.1")
    ap.add_argument("--stages", default=None, help="JSON stages for the ensemble instead of its defaults")
    args = ap.parse_args()
    import torchattacks
    torch.set_num_threads(1)
    model = load_shipped(args.model)
    x, y = load_sample()
    with torch.no_grad():
        keep = (model(x[:4 * args.n]).argmax(1) == y[:4 * args.n]).nonzero().flatten()[:args.n]
    x, y = x[keep], y[keep]
    t = time.perf_counter()
    extra = {} if args.stages is None else {"stages": json.loads(args.stages)}
    res = minnorm.attacks.get("ensemble-linf")(model, x, y, generator=torch.Generator().manual_seed(0), **extra)
    ens_s = (time.perf_counter() - t) / len(y)
    norms = torch.where(res.success, res.norms.double(), torch.full_like(res.norms.double(), float("inf")))
    print(f"model {args.model}, {len(y)} correctly classified images of the embedded sample, 1 thread, torchattacks "
          f"{torchattacks.__version__}")
    print(f"ensemble-linf: {ens_s:.3f} s/image, {float(res.passes.double().mean()):.0f} passes/image, "
          f"median norm {float(norms.median()):.4f}")
    print("| eps | AutoAttack s/image | ensemble-linf s/image (every eps) | ratio | + APGD-CE at eps (the preset with "
          "--eps) s/image | ratio | robust acc. AutoAttack / ensemble / preset |\n|---|---|---|---|---|---|---|")
    total, checks = 0.0, 0.0
    for eps in (float(v) for v in args.eps.split(",")):
        aa = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
        t = time.perf_counter()
        adv = aa(x, y)
        aa_s = (time.perf_counter() - t) / len(y)
        total += aa_s
        with torch.no_grad():
            ok = (model(adv).argmax(1) == y) | ((adv - x).flatten(1).abs().amax(1) > eps + 1e-6)
        t = time.perf_counter()
        check = minnorm.attacks.get("apgd-at-eps-linf")(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
        check_s = (time.perf_counter() - t) / len(y)
        checks += check_s
        preset = (norms > eps) & ~check.success
        print(f"| {eps:g} | {aa_s:.3f} | {ens_s:.3f} | {ens_s / aa_s:.2f} | {ens_s + check_s:.3f} | "
              f"{(ens_s + check_s) / aa_s:.2f} | {100 * float(ok.float().mean()):.1f}% / "
              f"{100 * float((norms > eps).float().mean()):.1f}% / {100 * float(preset.float().mean()):.1f}% |", flush=True)
    print(f"AutoAttack at all {len(args.eps.split(','))} eps: {total:.3f} s/image; the ensemble's one run: "
          f"{ens_s:.3f} s/image (ratio {ens_s / total:.2f}); with APGD-CE at every eps: {ens_s + checks:.3f} "
          f"(ratio {(ens_s + checks) / total:.2f})")

if __name__ == "__main__":
    main()
