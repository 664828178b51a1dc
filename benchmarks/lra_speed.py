"""Speed of lra-l2 against the implementation of commit 5eb55d2, side by side in one run.

The old ``linear_region.py``, ``qp.py`` and ``piecewise.py`` are extracted with ``git show`` into a
temporary package (imports rewritten to the installed minnorm, registry call dropped); both run on
the same images with the same settings and seed, alternately, ``--rounds`` times each. Prints the
regions solved per second per image of each, their ratio, and the equal-results check: the same
number of regions solved and cache hits per image, and per-image L2 norms within ``1e-4``.
Times are process CPU seconds (``time.process_time``), steadier than wall time on a shared
machine. Not a test: timings depend on the machine and its load.

    python benchmarks/lra_speed.py --model cnn --images 8 --regions 10
"""
from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from minnorm.attacks import linear_region_attack
from minnorm.models import load_shipped

from common import correct_images

OLD = "5eb55d2"


def old_attack(commit: str = OLD):
    """``linear_region_attack`` as it was at ``commit``, imported from a temporary package."""
    root = Path(tempfile.mkdtemp(prefix="lra_old_"))
    pkg = root / "lra_old"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    repo = Path(__file__).resolve().parents[1]
    for name in ("linear_region", "qp", "piecewise"):
        src = subprocess.run(["git", "show", f"{commit}:src/minnorm/attacks/{name}.py"], cwd=repo, check=True,
                             capture_output=True, text=True).stdout
        src = re.sub(r"^from \.\.(core|models\.architectures) import", r"from minnorm.\1 import", src, flags=re.M)
        src = re.sub(r"^from \.(ddn|deepfool) import", r"from minnorm.attacks.\1 import", src, flags=re.M)
        src = re.sub(r"^register\(.*", "", src, flags=re.M | re.S)
        (pkg / f"{name}.py").write_text(src)
    sys.path.insert(0, str(root))
    return importlib.import_module("lra_old.linear_region").linear_region_attack


def timed(fn, x, y, kw):
    """Result and process CPU seconds: on a shared machine CPU time is far steadier than wall time."""
    t = time.process_time()
    res = fn(x, y, **kw)
    return res, time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--regions", type=int, default=10)
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-options", default="", help="extra keyword arguments of the new attack, k=v,k=v")
    ap.add_argument("--old-options", default="", help="extra keyword arguments of the old attack, k=v,k=v")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_shipped(args.model).eval()
    x, y, _ = correct_images(model, args.images)
    kw = dict(regions=args.regions, starts=args.starts)  # everything else: each version's own defaults
    extra = {k: eval(v) for k, v in (o.split("=") for o in args.new_options.split(",") if o)}
    extra_old = {k: eval(v) for k, v in (o.split("=") for o in args.old_options.split(",") if o)}
    old = old_attack()
    fns = {"old": lambda a, b, **k: old(model, a, b, generator=torch.Generator().manual_seed(0), **k, **extra_old),
           "new": lambda a, b, **k: linear_region_attack(model, a, b, generator=torch.Generator().manual_seed(0),
                                                         **k, **extra)}
    seconds = {"old": 0.0, "new": 0.0}
    results = {}
    for r in range(args.rounds):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            results[name], t = timed(fns[name], x, y, kw)
            seconds[name] += t
    rate = {k: results[k].info["regions_solved"].sum().item() * args.rounds / seconds[k] / len(x) for k in fns}
    print(f"model {args.model}, {len(x)} images, settings {kw}, old options {extra_old}, new options {extra}, "
          f"{args.threads} thread(s), "
          f"{args.rounds} alternating rounds each")
    for k in fns:
        print(f"{k}: {seconds[k] / args.rounds:.1f} CPU s per run, regions solved per image "
              f"{results[k].info['regions_solved'].float().mean():.2f}, {rate[k]:.3f} regions/s per image")
    print(f"speed ratio new/old: {rate['new'] / rate['old']:.2f}x")
    a, b = results["old"], results["new"]
    same_regions = torch.equal(a.info["regions_solved"], b.info["regions_solved"]) and torch.equal(
        a.info["cache_hits"], b.info["cache_hits"])
    diff = (a.norms - b.norms).abs().max().item()
    print(f"equal results: same regions solved and cache hits per image {same_regions}; max |norm old - new| "
          f"{diff:.2e} ({'<=' if diff <= 1e-4 else '>'} 1e-4); median L2 old {a.norms.median():.4f} "
          f"new {b.norms.median():.4f}; new <= old on {int((b.norms <= a.norms + 1e-6).sum())}/{len(x)} images")
    ratio = (b.norms / a.norms)[a.norms > 0]
    print(f"per-image norm ratio new/old: median {ratio.median():.4f}, min {ratio.min():.4f}, max {ratio.max():.4f}; "
          f"geometric mean {ratio.log().mean().exp():.4f}")
    problems = b.info["regions_solved"].sum().item() * 2  # the default classes=2: two QPs per region
    print(f"early rejection (dual bound >= incumbent): {b.info['qp_pruned'].sum().item()} of {problems} QPs "
          f"({b.info['qp_pruned'].sum().item() / max(problems, 1):.0%}); dual steps per image "
          f"{b.info['qp_steps'].float().mean():.0f}")


if __name__ == "__main__":
    main()
