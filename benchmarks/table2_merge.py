"""The seed's Table 2 with a long linear-region run merged in: the other attacks' per-image norms
from a ``linear_region_tables.py --save`` JSON, and the linear-region attack's from a
``--progress`` file of a run with more regions on the same images (``--only "ours (lra-l2)"``).

    python benchmarks/table2_merge.py out/table2-pgd-linf-02-final.json benchmarks/out/table2-500.jsonl

Prints the robust-accuracy table at the saved radii (bold: the lowest of the row), the median
norm of every minimal-norm column over the correctly classified images, and the images on
which each linear-region column is at or below the best of the other attacks.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def _long_run(path: Path, label: str, n: int) -> tuple[torch.Tensor, float, dict]:
    chunks, settings = {}, None
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["label"] == label:
            chunks[row["start"]], settings = (row["norms"], row["seconds"]), row["settings"]
    norms = [v for s in sorted(chunks) for v in chunks[s][0]]
    if len(norms) != n:
        raise SystemExit(f"{path}: {len(norms)} of {n} images done; let the run finish (rerun its command)")
    return torch.tensor(norms, dtype=torch.float64), sum(c[1] for c in chunks.values()), settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("saved")
    ap.add_argument("progress")
    ap.add_argument("--label", default="ours (lra-l2)")
    args = ap.parse_args()
    data = json.loads(Path(args.saved).read_text())
    correct = torch.tensor(data["correct"])
    norms = {k: torch.tensor(v, dtype=torch.float64) for k, v in data["norms"].items()}
    long, seconds, settings = _long_run(Path(args.progress), args.label, len(correct))
    name = f"{args.label}, {settings['regions']} regions"
    norms[name] = long
    acc = {k: v for k, v in data["robust_accuracy"].items() if k.startswith("PGD")}
    acc.update({k: [float((correct & (v > e)).double().mean()) for e in data["eps"]] for k, v in norms.items()})
    cols = list(acc)
    print("| eps | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for i, e in enumerate(data["eps"]):
        low = min(round(acc[c][i], 4) for c in cols)  # the PGD rows were saved in float32
        print(f"| {e:g} | " + " | ".join(f"**{acc[c][i]:.2f}**" if round(acc[c][i], 4) == low else f"{acc[c][i]:.2f}"
                                         for c in cols) + " |")
    print(f"\n{name}: {seconds:.0f} s for {len(correct)} images (chunks of {settings['chunk']}, one thread)")
    others = torch.stack([v for k, v in norms.items() if not k.startswith("ours")]).amin(0)
    for k, v in norms.items():
        med = float(v[correct].median())
        line = f"- {k}: median L2 {med:.4f}" if math.isfinite(med) else f"- {k}: median inf"
        if k.startswith("ours"):
            line += f"; <= the best other attack on {int((v <= others * (1 + 1e-6))[correct].sum())}/{int(correct.sum())}"
        print(line)


if __name__ == "__main__":
    main()
