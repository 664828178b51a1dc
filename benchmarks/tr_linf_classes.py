"""tr-linf over several attack classes and restarts (issue 13 item 3) against minnorm's other Linf attacks.

Runs, on the first ``--n`` correctly classified images of the embedded Fashion-MNIST sample, each
attack once (one batch, 1 thread, process CPU time, generator seeded 0): tr-linf with its registry
defaults (one class, 10 refinement steps), tr-linf with ``classes=k`` / ``restarts=r`` (and
``refine_steps``) for every ``--variants`` entry,
and fmn-linf, fab-linf and apgd-linf with their registry defaults. Each returned point is judged
again here (benchmarks/common.score: inside the box, misclassified by a fresh pass). Prints per
attack: success, median norm, the per-image ratio to the smallest norm any attack found (median,
p90, worst), on how many images it is at that best (within 1e-6 relative), passes (forward +
backward) per sample and CPU seconds; ``--markdown`` prints the table for RESULTS.md. Not a test.

    python benchmarks/tr_linf_classes.py --model cnn --n 100 --markdown
"""
from __future__ import annotations

import argparse
import time

import torch

import minnorm
from common import correct_images, load_model, markdown_table, score, text_table

PEERS = ["fmn-linf", "fab-linf", "apgd-linf"]


def run(name: str, model, x, y, **kw):
    """One attack on the whole batch: its judged norms, passes per sample and CPU seconds."""
    spec = minnorm.attacks.get(name)
    t = time.process_time()
    res = spec(model, x, y, generator=torch.Generator().manual_seed(0), **kw)
    seconds = time.process_time() - t
    with torch.no_grad():
        s = score(model, x, y, res.adversarials, spec.norm)
    return s.norms, (res.forward_passes + res.backward_passes).double(), seconds


def row(label: str, norms: torch.Tensor, passes: torch.Tensor, seconds: float, best: torch.Tensor) -> list[str]:
    ok = torch.isfinite(norms)
    ratio = norms / best
    at_best = int((ratio <= 1 + 1e-6).sum())
    q = ratio.quantile(torch.tensor([0.5, 0.9], dtype=ratio.dtype)).tolist() if bool(ok.all()) else [float("inf")] * 2
    return [label, f"{100 * float(ok.double().mean()):.0f}%", f"{float(norms[ok].median()):.5f}", f"{q[0]:.4f}",
            f"{q[1]:.4f}", f"{float(ratio.max()):.4f}", f"{at_best}/{len(norms)}", f"{float(passes.mean()):.0f}",
            f"{seconds:.0f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--variants", nargs="*", default=["3x1", "5x1", "1x3", "3x3", "3x1:40", "3x3:40", "3x7:40"],
                    help="classes x restarts[:refine_steps] of the extra tr-linf runs, e.g. 3x1 5x3 3x3:40")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, desc = load_model(args.model)
    x, y, what = correct_images(model, args.n)
    runs = {"tr-linf (1 class)": run("tr-linf", model, x, y)}
    for v in args.variants:
        shape, _, refine = v.partition(":")
        k, r = (int(t) for t in shape.split("x"))
        kw = {"classes": k, "restarts": r} | ({"refine_steps": int(refine)} if refine else {})
        runs["tr-linf, " + ", ".join(f"{a}={b}" for a, b in kw.items())] = run("tr-linf", model, x, y, **kw)
    for name in PEERS:
        runs[name] = run(name, model, x, y)
    best = torch.stack([n for n, _, _ in runs.values()]).amin(0)
    header = ["attack", "success", "median norm", "median ratio to best", "p90 ratio", "worst ratio", "at best",
              "passes/sample", "CPU s"]
    rows = [row(label, *r, best) for label, r in runs.items()]
    print(f"{desc}, {what}")
    print(markdown_table(header, rows) if args.markdown else text_table(header, rows))


if __name__ == "__main__":
    main()
