"""Adversarially trained models compared by their minimal L2 norms, with bootstrap error bars.

Issue 15 item 3 (the DDN paper's training claim, Sec. 5 / Tables 5-6): each model is attacked on
the same first N Fashion-MNIST test images by the standard L2 ensemble (``ensemble-l2``, the best
of DDN, TR-L2, FMN, APGD and FAB per image) and, per image, the smallest perturbation it found is
kept (0 for an image the model already misclassifies). The table gives clean accuracy, the median
minimal norm and the robust accuracy at the DDN paper's radius 1.5 and at 0.5 and 1.0, and for
each pair of models the paired bootstrap 95% interval of the difference (images resampled).

    python benchmarks/training_compare.py --models out/a.safetensors,out/b.safetensors --images 200
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import minnorm
from minnorm.data import load_fashion_mnist
from minnorm.models import SmallCNN, load_shipped, load_weights

RADII = (0.5, 1.0, 1.5)


def load(name: str) -> torch.nn.Module:
    model = load_weights(SmallCNN(), name) if name.endswith(".safetensors") else load_shipped(name)
    return model.eval()


def minimal_norms(model, x: torch.Tensor, y: torch.Tensor, attack: str, batch: int) -> torch.Tensor:
    """Per image: 0 if misclassified, else the attack's norm (inf where it failed)."""
    spec = minnorm.attacks.get(attack)
    out = []
    for i in range(0, len(x), batch):
        res = spec(model, x[i:i + batch], y[i:i + batch], generator=torch.Generator().manual_seed(i))
        out.append(res.norms)
        print(f"  {i + len(res.norms)}/{len(x)} images", flush=True)
    return torch.cat(out).double()


def stats(norms: torch.Tensor) -> dict[str, float]:
    row = {"clean": float((norms > 0).double().mean()), "median": float(norms.median())}
    row.update({f"acc@{r:g}": float((norms > r).double().mean()) for r in RADII})
    return row


def bootstrap(a: torch.Tensor, b: torch.Tensor, rounds: int = 2000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Paired bootstrap 95% intervals of stats(a) - stats(b) over resampled images."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(a), (rounds, len(a)), generator=g)
    diffs: dict[str, list[float]] = {}
    for row in idx:
        sa, sb = stats(a[row]), stats(b[row])
        for k in sa:
            diffs.setdefault(k, []).append(sa[k] - sb[k])
    return {k: (float(torch.tensor(v).quantile(0.025)), float(torch.tensor(v).quantile(0.975))) for k, v in diffs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", required=True, help="comma-separated shipped names or .safetensors files")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--attack", default="ensemble-l2")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--save", help="JSON file for the per-image norms")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = load_fashion_mnist("test")
    x, y = x[:args.images], y[:args.images]
    names = args.models.split(",")
    norms, seconds = {}, {}
    for name in names:
        print(f"{name}:", flush=True)
        t = time.perf_counter()
        norms[name] = minimal_norms(load(name), x, y, args.attack, args.batch)
        seconds[name] = time.perf_counter() - t
    if args.save:
        Path(args.save).write_text(json.dumps({"attack": args.attack, "images": args.images, "seconds": seconds,
                                               "norms": {k: v.tolist() for k, v in norms.items()}}))
    keys = list(stats(norms[names[0]]))
    print(f"\n{args.attack} on the first {args.images} test images\n")
    print("| model | " + " | ".join(keys) + " | attack s |")
    print("|---|" + "---|" * (len(keys) + 1))
    for name in names:
        s = stats(norms[name])
        print(f"| `{Path(name).stem}` | " + " | ".join(f"{s[k]:.3f}" for k in keys) + f" | {seconds[name]:.0f} |")
    print("\nPaired bootstrap 95% intervals of the differences (2000 resamplings of the images):\n")
    print("| pair | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ci = bootstrap(norms[a], norms[b])
            d = {k: stats(norms[a])[k] - stats(norms[b])[k] for k in keys}
            print(f"| `{Path(a).stem}` - `{Path(b).stem}` | "
                  + " | ".join(f"{d[k]:+.3f} [{ci[k][0]:+.3f}, {ci[k][1]:+.3f}]" for k in keys) + " |")


if __name__ == "__main__":
    main()
