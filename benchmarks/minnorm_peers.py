"""Minimal-norm attacks side by side, per norm: minnorm's FMN, FAB/FAB-T and APGD search against
adv_lib's fmn, fab, minimal_apgd and alma and Foolbox's FMN, at equal passes per sample.

For every model and norm, each attack runs once on the same images (the first n correctly
classified of the embedded Fashion-MNIST sample) with an iteration count that makes about
``--passes`` forward+backward passes per sample. Passes are counted here, for every library
alike, by a wrapper around the model (rows forwarded + rows back-propagated through the logits,
divided by n). Every returned tensor is scored by common.score (finite, in the box, misclassified
by a fresh forward pass; else norm inf). Per image, the reference is the smallest norm any attack
found (best-known, an upper bound on the true minimum, not exact); each attack's ratio to it is
summarised by its median and 90th percentile over the images (inf where the attack failed).

    python benchmarks/minnorm_peers.py --models cnn,cnn-pgd-linf --norms linf,l2,l1 --n 200 --passes 1000
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers as peer_lib  # noqa: E402

import minnorm  # noqa: E402

NORMS = {"linf": math.inf, "l2": 2.0, "l1": 1.0}
APGD_MAX_EPS = {math.inf: 0.5, 2.0: 8.0, 1.0: 64.0}  # adv_lib minimal_apgd's upper end of the bisection


class PassCounter(nn.Module):
    """Rows forwarded and rows back-propagated through the logits (one per backward call)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.forward_rows, self.backward_rows = model, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.forward_rows += int(x.shape[0])
        if out.requires_grad:
            out.register_hook(self._count)
        return out

    def _count(self, grad: torch.Tensor) -> None:
        self.backward_rows += int(grad.shape[0])


def ours(name: str, **kw) -> Callable:
    def run(model, x, y, p):
        spec = minnorm.attacks.get(f"{name}-{_suffix(p)}")
        return spec(model, x, y, generator=torch.Generator().manual_seed(0), **kw).adversarials
    return run


def _suffix(p: float) -> str:
    return "linf" if math.isinf(p) else f"l{int(p)}"


def attacks(p: float, passes: int, k: int) -> dict[str, tuple[Callable, str]]:
    """Name -> (run(model, x, y, p), budget note); iteration counts from the cost per iteration."""
    half = passes // 2
    fab_steps = max(passes // (k + 1), 1)  # 1 forward + (K - 1) backward + ~1 extra forward when adversarial
    t = min(3, k - 1)
    out = {
        "minnorm fmn-t3": (ours("fmn", steps=half, targets=t), f"targets={t}, steps={half} in all"),
        "minnorm fab": (ours("fab", steps=fab_steps), f"steps={fab_steps}"),
        "minnorm fab-t3": (ours("fab", steps=passes // (3 * t), targets=t), f"targets={t}, steps={passes // (3 * t)} each"),
        "minnorm apgd-t3": (ours("apgd", steps=half, targets=t), f"targets={t}, steps={half} in all"),
    }
    if p != 1.0:  # the trust region over several classes and restarts (it stops early: under the budget)
        out["minnorm tr-c3r3"] = (ours("tr", classes=3, restarts=3), "classes=3, restarts=3")
        out["minnorm tr-c5r4"] = (ours("tr", classes=5, restarts=4), "classes=5, restarts=4")
        out["minnorm tr-c9r2"] = (ours("tr", classes=9, restarts=2), "classes=9, restarts=2")
        if passes >= 2000:  # ~1,730 passes per sample on mlp-tiny
            out["minnorm tr-c9r4"] = (ours("tr", classes=9, restarts=4), "classes=9, restarts=4")
    out["minnorm ensemble"] = (ours("ensemble", total_passes=passes), f"total_passes={passes}")
    if k > 2:  # every other class targeted, the budget split between them
        out["minnorm fmn-t9"] = (ours("fmn", steps=half, targets=k - 1), f"targets={k - 1}, steps={half} in all")
    if p == 2.0:
        out["minnorm ddn"] = (lambda m, x, y, p: minnorm.attacks.get("ddn")(
            m, x, y, steps=half, generator=torch.Generator().manual_seed(0)).adversarials, f"steps={half}")
    out["adv_lib fmn"] = (lambda m, x, y, p: _adv_lib("fast_minimum_norm.fmn")(m, x, y, norm=p, steps=half),
                          f"steps={half}")
    fab_iter = max(passes // (k + 2), 1)
    out["adv_lib fab"] = (lambda m, x, y, p: _adv_lib("fast_adaptive_boundary.fab")(m, x, y, norm=p, n_iter=fab_iter),
                          f"n_iter={fab_iter}")
    out["adv_lib minimal_apgd"] = (
        lambda m, x, y, p: _adv_lib("auto_pgd.minimal_apgd")(m, x, y, norm=p, max_eps=APGD_MAX_EPS[p],
                                                            binary_search_steps=10, n_iter=max(half // 10, 1)),
        f"10 bisection steps x n_iter={max(half // 10, 1)}, max_eps={APGD_MAX_EPS[p]:g}")
    if not math.isinf(p):
        out["adv_lib alma"] = (lambda m, x, y, p: _adv_lib("augmented_lagrangian.alma")(
            m, x, y, distance=f"l{int(p)}", num_steps=half), f"num_steps={half}")
    fb = {math.inf: "LInfFMNAttack", 2.0: "L2FMNAttack", 1.0: "L1FMNAttack"}[p]
    out[f"foolbox {fb}"] = (lambda m, x, y, p: _foolbox_fmn(fb, m, x, y, half), f"steps={half}")
    return out


def _adv_lib(path: str) -> Callable:
    peer_lib.use_stubs()
    import importlib
    module, _, name = f"adv_lib.attacks.{path}".rpartition(".")
    return getattr(importlib.import_module(module), name)


def _foolbox_fmn(name: str, model, x, y, steps: int) -> torch.Tensor:
    import foolbox
    fmodel = foolbox.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    _, clipped, _ = getattr(foolbox.attacks, name)(steps=steps)(fmodel, x, y, epsilons=None)
    return clipped


def run_one(fn: Callable, model: nn.Module, x, y, p: float) -> dict:
    counter = PassCounter(model).eval()
    torch.manual_seed(0)  # peers with random starts draw from the global RNG
    start = time.perf_counter()
    try:
        adv = fn(counter, x, y, p)
        error = None
    except Exception as e:  # a peer that breaks is reported, not fatal
        traceback.print_exc()
        adv, error = x.clone(), f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    s = common.score(model, x, y, adv, p)
    n = x.shape[0]
    return {"norms": s.norms.tolist(), "success": s.success_rate, "outside_box": s.outside_box,
            "passes": (counter.forward_rows + counter.backward_rows) / n, "forward": counter.forward_rows / n,
            "seconds": seconds, "error": error}


def summarise(results: dict[str, dict]) -> dict[str, dict]:
    norms = torch.tensor([r["norms"] for r in results.values()], dtype=torch.float64)
    best = norms.min(0).values
    for r in results.values():
        r["median_ratio"], r["p90_ratio"], r["wins"] = _ratio_stats(torch.tensor(r["norms"], dtype=torch.float64), best)
    return results


def table(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for name, r in sorted(results.items(), key=lambda kv: (kv[1]["p90_ratio"], kv[1]["median_ratio"])):
        rows.append([name, r["note"], f"{100 * r['success']:.1f}%", f"{r['median_ratio']:.4f}", f"{r['p90_ratio']:.4f}",
                     str(r["wins"]), f"{r['passes']:.0f}", f"{r['seconds']:.1f}" + (" ERROR" if r["error"] else "")])
    return rows


def head_to_head(results: dict[str, dict]) -> list[list[str]]:
    """Each minnorm attack alone against the peers: per image the reference is the smallest norm
    of the peers and that attack (not minnorm's other attacks); the attack's median / p90 / wins,
    and under the same reference the best peer by p90 and by median."""
    peers = {k: torch.tensor(r["norms"], dtype=torch.float64) for k, r in results.items() if not k.startswith("minnorm")}
    if not peers:
        return []
    rows = []
    for name, r in results.items():
        if not name.startswith("minnorm"):
            continue
        mine = torch.tensor(r["norms"], dtype=torch.float64)
        ref = torch.minimum(torch.stack(list(peers.values())).min(0).values, mine)
        stats = {k: _ratio_stats(v, ref) for k, v in {name: mine, **peers}.items()}
        by_p90 = min(peers, key=lambda k, st=stats: (st[k][1], st[k][0]))
        by_median = min(peers, key=lambda k, st=stats: (st[k][0], st[k][1]))
        rows.append([name, f"{stats[name][0]:.4f}", f"{stats[name][1]:.4f}", f"{stats[name][2]}/{len(mine)}",
                     *(f"{k} {stats[k][0]:.4f} / {stats[k][1]:.4f}" for k in (by_p90, by_median))])
    return sorted(rows, key=lambda row: (float(row[2]), float(row[1])))


def _ratio_stats(norms: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, int]:
    """Median, 90th percentile (the order statistic) and images within 0.1% of ``ref`` of the
    ratios ``norms / ref`` (1 where ``ref`` is 0, inf where the attack failed)."""
    ratio = torch.where(ref == 0, torch.ones_like(norms), norms / ref)
    median = float(ratio.quantile(0.5)) if bool(torch.isfinite(ratio).all()) else float(ratio.median())
    p90 = float(torch.sort(ratio).values[min(len(ratio) - 1, math.ceil(0.9 * len(ratio)) - 1)])
    return median, p90, int((ratio <= 1 + 1e-3).sum())


HEAD_TO_HEAD = ["minnorm attack", "median ratio", "p90 ratio", "best (0.1%)", "best peer by p90: median / p90",
                "best peer by median: median / p90"]
HEADER = ["attack", "budget", "success", "median ratio", "p90 ratio", "best (0.1%)", "passes/sample", "seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cnn,cnn-pgd-linf")
    parser.add_argument("--norms", default="linf,l2,l1")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--passes", type=int, default=1000)
    parser.add_argument("--only", default="", help="comma-separated attack names to run (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument("--merge", type=Path, default=None,
                        help="a --json file of an earlier run on the same images: its attacks join the table "
                             "(and the best-known reference) without running again")
    parser.add_argument("--head-to-head", action="store_true",
                        help="also a table per model and norm of each minnorm attack alone against the peers")
    args = parser.parse_args(argv)
    earlier = json.loads(args.merge.read_text())["results"] if args.merge else {}
    torch.set_num_threads(args.threads)
    out: dict[str, dict] = {}
    for model_name in args.models.split(","):
        model, desc = common.load_model(model_name)
        x, y, _ = common.correct_images(model, args.n)
        k = int(model(x[:1]).shape[1])
        for norm_name in args.norms.split(","):
            p = NORMS[norm_name]
            key = f"{model_name}/{norm_name}"
            results = dict(earlier.get(key, {}))
            if results and len(next(iter(results.values()))["norms"]) != x.shape[0]:
                raise SystemExit(f"--merge: {key} there has another number of images than --n {args.n}")
            for name, (fn, note) in attacks(p, args.passes, k).items():
                if args.only and name not in args.only.split(","):
                    continue
                results[name] = {**run_one(fn, model, x, y, p), "note": note}
                print(f"{model_name} {norm_name} {name}: {results[name]['success']:.3f} "
                      f"{results[name]['passes']:.0f} passes {results[name]['seconds']:.1f}s", file=sys.stderr, flush=True)
            summarise(results)
            out[key] = results
            print(f"\n### {key}: {desc}, {x.shape[0]} images, ~{args.passes} passes/sample\n")
            print(common.markdown_table(HEADER, table(results)), flush=True)
            if args.head_to_head:
                print(f"\n{key}, each minnorm attack alone against the peers (reference: the smallest norm of "
                      "the peers and that attack)\n")
                print(common.markdown_table(HEAD_TO_HEAD, head_to_head(results)), flush=True)
            if args.json:
                args.json.write_text(json.dumps({"machine": common.machine_info(args.threads), "date": common.today(),
                                                 "n": int(x.shape[0]), "passes": args.passes, "results": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
