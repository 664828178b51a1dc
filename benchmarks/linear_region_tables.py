"""The shape of Tables 1-4 of Croce, Rauber and Hein (linear-region attack) on Fashion-MNIST CNNs.

For each model: L2 robust accuracy over an epsilon grid (or the seed's Table 2 radii, --eps seed)
for PGD with 1 start, PGD with many restarts, CW-L2, DeepFool, TR-L2, DDN and the linear-region
attack (lra-l2), the "difference to the
best" summary (mean and max over the grid of each attack's robust accuracy minus the lowest
one), and the run time of each attack. Minimal-norm attacks are run once and read at every
epsilon; PGD is run once per epsilon. Prints markdown.

    python benchmarks/linear_region_tables.py --models cnn,cnn-pgd-l2,cnn-pgd-linf --images 50

The seed's Table 2 budget (500 regions, about 8 CPU-hours for 100 images of a CNN) in pieces that
survive a stop (rerun the same line to continue; finished chunks are read back):

    python benchmarks/linear_region_tables.py --models cnn-pgd-linf-02 --images 100 --eps seed \
        --regions 500 --chunk 4 --progress benchmarks/out/table2-500.jsonl [--reverse]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from minnorm.attacks import carlini_wagner_l2, ddn, deepfool, linear_region_attack, pgd, trust_region
from minnorm.data import load_fashion_mnist
from minnorm.models import SmallCNN, load_shipped, load_weights, shipped_names

EPS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
SEED_TABLE_2_EPS = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0)  # the seed's Table 2 (MNIST L2 radii)


def robust_accuracy(norms: torch.Tensor, correct: torch.Tensor, eps: float) -> float:
    """Fraction of all images that are correctly classified and have no adversarial within eps."""
    return float((correct & (norms > eps)).float().mean())


def load(name: str):
    """A shipped model by name, or a ``.safetensors`` file of SmallCNN weights (e.g. an interim
    checkpoint of scripts/train_shipped.sh robust)."""
    if name.endswith(".safetensors"):
        return load_weights(SmallCNN(), name)
    return load_shipped(name)


def run_model(name: str, x: torch.Tensor, y: torch.Tensor, reference: torch.Tensor, args) -> str:
    model = load(name).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    acc: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    minimal = {  # each called with the indices of a chunk of images
        f"CW-L2 {args.cw_steps}x9": lambda i: carlini_wagner_l2(model, x[i], y[i], max_iterations=args.cw_steps),
        "DeepFool": lambda i: deepfool(model, x[i], y[i]),
        "TR-L2": lambda i: trust_region(model, x[i], y[i], norm=2, generator=gen()),
        f"DDN-{args.ddn_steps}": lambda i: ddn(model, x[i], y[i], steps=args.ddn_steps, generator=gen()),
        "ours (lra-l2)": lambda i: linear_region_attack(
            model, x[i], y[i], regions=args.regions, qp_steps=args.qp_steps, classes=1, starts=args.starts,
            power_iterations=10, starting_points=reference, generator=gen()),
        f"ours, DDN-{args.ddn_steps} start": lambda i: linear_region_attack(
            model, x[i], y[i], regions=args.regions, qp_steps=args.qp_steps, classes=1, power_iterations=10,
            init="ddn", init_steps=args.ddn_steps, generator=gen()),
    }
    minimal = {k: v for k, v in minimal.items() if not args.only or k in args.only.split(",")}
    for label, restarts in (("PGD-1", 1), (f"PGD-{args.restarts}x", args.restarts)):
        t = time.perf_counter()
        row = []
        for eps in args.eps:
            if eps == 0:
                row.append(float(correct.float().mean()))
                continue
            res = pgd(model, x, y, eps=eps, norm=2, steps=args.pgd_steps, restarts=restarts, generator=gen())
            row.append(float((correct & ~res.success).float().mean()))
        acc[label], seconds[label] = row, time.perf_counter() - t
    norms = {}
    for label, fn in minimal.items():
        norms[label], seconds[label] = _minimal_norms(label, fn, len(y), args)
        acc[label] = [robust_accuracy(norms[label], correct, e) for e in args.eps]
    if args.save:
        Path(args.save).write_text(json.dumps({"model": name, "correct": correct.tolist(), "eps": list(args.eps),
                                               "robust_accuracy": acc, "seconds": seconds,
                                               "norms": {k: v.tolist() for k, v in norms.items()}}))
    names = list(acc)
    best = [min(acc[n][i] for n in names) for i in range(len(args.eps))]
    lines = [f"### `{Path(name).name}` ({len(x)} test images, clean accuracy {float(correct.float().mean()):.2f})", "",
             "| eps | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, e in enumerate(args.eps):
        cells = [(f"**{acc[n][i]:.2f}**" if acc[n][i] == best[i] else f"{acc[n][i]:.2f}") for n in names]
        lines.append(f"| {e:g} | " + " | ".join(cells) + " |")
    diffs = {n: [acc[n][i] - best[i] for i in range(len(args.eps))] for n in names}
    lines.append("| mean diff. to best | " + " | ".join(f"{sum(d) / len(d):.3f}" for d in diffs.values()) + " |")
    lines.append("| max diff. to best | " + " | ".join(f"{max(d):.3f}" for d in diffs.values()) + " |")
    lines.append("| run time (s) | " + " | ".join(f"{seconds[n]:.0f}" for n in names) + " |")
    return "\n".join(lines + [""] + _ours_against_others(norms, correct) + [""])


def _ours_against_others(norms: dict[str, torch.Tensor], correct: torch.Tensor) -> list[str]:
    """A line per linear-region column: its median norm against the best of the other attacks."""
    others = [v for k, v in norms.items() if not k.startswith("ours")]
    others = torch.stack(others).amin(0) if others else torch.full_like(correct, float("inf"), dtype=torch.float32)
    lines = []
    for label in (k for k in norms if k.startswith("ours")):
        ours = norms[label]
        lines.append(f"- {label}: median L2 over the correctly classified images {ours[correct].median():.4f} "
                     f"(best of CW/DeepFool/TR/DDN: {others[correct].median():.4f}); <= that best on "
                     f"{int((ours <= others * (1 + 1e-6))[correct].sum())}/{int(correct.sum())} images.")
    return lines


def _minimal_norms(label: str, attack, n: int, args) -> tuple[torch.Tensor, float]:
    """Per-image norms of one minimal-norm attack (inf where it failed) and its seconds, run over
    chunks of ``--chunk`` images (each chunk seeds its own generator). With ``--progress FILE``
    every finished chunk is appended there and a rerun with the same settings skips it: a run
    of many hours (the seed's 500 regions) survives being stopped."""
    settings = {k: v for k, v in vars(args).items() if k not in ("save", "progress", "only", "reverse")}
    key = json.loads(json.dumps({"label": label, "settings": settings}))  # as read back from the file
    size = args.chunk or n
    done: dict[int, tuple[list, float]] = {}
    starts = list(range(0, n, size))
    for start in reversed(starts) if args.reverse else starts:
        done.update(_finished_chunks(args.progress, key))  # read again: another process may share the file
        if start in done:
            continue
        t = time.perf_counter()
        res = attack(torch.arange(start, min(start + size, n)))
        norms = torch.where(res.success, res.norms, torch.full_like(res.norms, float("inf")))
        done[start] = (norms.tolist(), time.perf_counter() - t)
        if args.progress:
            with open(args.progress, "a") as f:
                f.write(json.dumps({**key, "start": start, "norms": done[start][0], "seconds": done[start][1]}) + "\n")
    norms = [v for s in sorted(done) for v in done[s][0]]
    return torch.tensor(norms, dtype=torch.float32), sum(v[1] for v in done.values())


def _finished_chunks(path: str | None, key: dict) -> dict[int, tuple[list, float]]:
    """The chunks of ``key`` (attack and settings) recorded in the progress file ``path``."""
    if not path or not Path(path).is_file():
        return {}
    done = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row["label"] == key["label"] and row["settings"] == key["settings"]:
            done[row["start"]] = (row["norms"], row["seconds"])
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="cnn,cnn-pgd-l2,cnn-pgd-linf")
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--reference", type=int, default=2000, help="training images for the starting points")
    ap.add_argument("--regions", type=int, default=10)
    ap.add_argument("--qp-steps", type=int, default=40)
    ap.add_argument("--starts", type=int, default=2)
    ap.add_argument("--pgd-steps", type=int, default=40)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--cw-steps", type=int, default=100)
    ap.add_argument("--ddn-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eps", default=None, help="comma-separated L2 radii, or 'seed' for the seed's Table 2 radii "
                    "(default: %s)" % ",".join(f"{e:g}" for e in EPS))
    ap.add_argument("--save", default=None, help="write per-image norms and the table's numbers to this JSON file")
    ap.add_argument("--chunk", type=int, default=0, help="run the minimal-norm attacks on this many images at a "
                    "time (default: all at once)")
    ap.add_argument("--progress", default=None, help="JSON-lines file of finished chunks: a rerun with the same "
                    "settings continues where the last one stopped")
    ap.add_argument("--reverse", action="store_true", help="take the chunks last first (a second process on "
                    "the same --progress file then meets the first one in the middle)")
    ap.add_argument("--only", default=None, help="comma-separated labels of the minimal-norm attacks to run "
                    "(default: all)")
    args = ap.parse_args()
    args.eps = (SEED_TABLE_2_EPS if args.eps == "seed" else
                tuple(float(e) for e in args.eps.split(",")) if args.eps else EPS)
    torch.set_num_threads(args.threads)
    x, y = load_fashion_mnist("test")
    x, y = x[:args.images], y[:args.images]
    reference = load_fashion_mnist("train")[0][:args.reference]
    available = set(shipped_names())
    print(f"Settings: {vars(args)}\n")
    for name in args.models.split(","):
        if name not in available and not name.endswith(".safetensors"):
            print(f"### `{name}`: not shipped (no weights in src/minnorm/models/weights/), skipped\n")
            continue
        print(run_model(name, x, y, reference, args), flush=True)


if __name__ == "__main__":
    main()
