"""The shapes of the Trust Region paper's Tables 1, 2 and 5 (Yao et al. 2019), on Fashion-MNIST.

Table 1: DeepFool vs CW vs TR Non-Adap vs TR Adap, L2 and Linf: relative perturbation
rho_p = ||dx||_p / ||x||_p (eq. (4)), mean / worst over the correctly classified images, and
time per image; on the standard and on adversarially trained CNNs. Linf has no CW; the paper's
FGSM column is replaced by the strongest Linf references we have (a PGD bisection on eps and a
long TR run), so that "the best Linf result any attack finds" is in the table.
Table 2: the same for the hardest class (Section 4.1); the DeepFool column is DeepFool's step
towards that class (TR with an unbounded radius and no refinement: exactly DeepFool's update on
one class pair).
Table 5: accuracy (%) after t = 1..10 iterations at a fixed radius, first vs second order, on
SiLU networks (scripts/train_shipped.sh silu).

    python benchmarks/trust_region_tables.py                         # all tables, markdown
    python benchmarks/trust_region_tables.py --tables 5 --n-smooth 500

Missing shipped models are skipped with a note. One CPU thread; times are wall clock on a
shared machine, so compare them within one table only.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import minnorm  # noqa: E402
from minnorm.attacks.trust_region import trust_region  # noqa: E402
from minnorm.core import lp_norm, relative_perturbation  # noqa: E402

# fixed "TR Non-Adap" radii, in [0, 1] pixel units: about a fifth of a typical minimal norm
NON_ADAPTIVE = {2.0: 0.05, math.inf: 0.003}


def rho(res, x: torch.Tensor, p: float) -> tuple[float, float]:
    """Mean and worst relative perturbation over the images; a failure counts as inf."""
    r = torch.where(res.success, relative_perturbation(res.adversarials, x, p), torch.full_like(res.norms, math.inf))
    return float(r.mean()), float(r.max())


def pct(v: float) -> str:
    return "inf" if math.isinf(v) else f"{100 * v:.2f}%"


def run(name: str, fn, x, y, p: float, rows: list, norms: dict) -> None:
    t = time.perf_counter()
    res = fn(x, y)
    sec = time.perf_counter() - t
    mean, worst = rho(res, x, p)
    norms[name] = res.norms
    passes = float((res.forward_passes + res.backward_passes).double().mean())
    rows.append([name, f"{100 * res.success_rate:.1f}%", f"{pct(mean)} / {pct(worst)}",
                 common.fmt_norm(float(res.norms.median())), f"{passes:.0f}", f"{1000 * sec / len(x):.1f}"])
    print(f"  {name}: done in {sec:.1f} s", file=sys.stderr, flush=True)


def pgd_bisection(model, x, y, upper: torch.Tensor, rounds: int, steps: int):
    """Per-sample bisection of PGD-Linf's eps on [0, upper]: the smallest eps at which PGD (``steps``
    steps, no random start) succeeds, and the adversarial found there."""
    spec = minnorm.attacks.get("pgd-linf")
    lo, hi = torch.zeros_like(upper), upper.clone()
    best = x.clone()
    fwd = torch.zeros(len(x), dtype=torch.long)
    bwd = torch.zeros_like(fwd)
    start = time.perf_counter()
    for _ in range(rounds):
        mid = (lo + hi) / 2
        res = spec(model, x, y, eps=mid, steps=steps, step_size=mid / 8, random_start=False)
        fwd, bwd = fwd + res.forward_passes, bwd + res.backward_passes
        ok = res.success
        best[ok] = res.adversarials[ok]
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
    with torch.no_grad():
        success = model(best).argmax(1) != y
    norms = torch.where(success, lp_norm(best - x, math.inf), torch.full_like(upper, math.inf))
    return minnorm.core.AttackResult(best, success, norms, fwd, bwd, time.perf_counter() - start)


def table_1_2(model_name: str, n: int, cw_iterations: int, out: list[str]) -> None:
    try:
        model, desc = common.load_model(model_name)
    except (ValueError, FileNotFoundError, KeyError) as err:
        out.append(f"\n_model `{model_name}` not available: {err}_\n")
        return
    x, y, data_desc = common.correct_images(model, n)
    header = ["attack", "success", "rho mean / worst", "median norm", "passes/image", "ms/image"]
    for p, label in ((2.0, "L2"), (math.inf, "Linf")):
        print(f"{model_name} {label}", file=sys.stderr, flush=True)
        rows: list = []
        norms: dict = {}
        df = minnorm.attacks.get("deepfool-l2" if p == 2 else "deepfool-linf")
        run("DeepFool", lambda a, b, df=df: df(model, a, b), x, y, p, rows, norms)
        if p == 2:
            cw = minnorm.attacks.get("cw-l2")
            run(f"CW-L2 9x{cw_iterations}", lambda a, b, cw=cw: cw(model, a, b, binary_search_steps=9,
                                                              max_iterations=cw_iterations), x, y, p, rows, norms)
        run("TR Non-Adap", lambda a, b, p=p: trust_region(model, a, b, norm=p, adaptive=False, radius=NON_ADAPTIVE[p]),
            x, y, p, rows, norms)
        spec = minnorm.attacks.get("tr-l2" if p == 2 else "tr-linf")
        run("TR Adap (defaults)", lambda a, b, spec=spec: spec(model, a, b), x, y, p, rows, norms)
        run("TR Adap, no refinement", lambda a, b, spec=spec: spec(model, a, b, refine_steps=0, line_search=0), x, y, p, rows,
            norms)
        if math.isinf(p):
            run("TR Adap, refine_steps=100", lambda a, b, spec=spec: spec(model, a, b, refine_steps=100, line_search=10),
                x, y, p, rows, norms)
            upper = torch.where(torch.isfinite(norms["DeepFool"]), norms["DeepFool"] * 1.5,
                                torch.ones_like(norms["DeepFool"]))
            run("PGD bisection (10 x 50 steps)", lambda a, b, upper=upper: pgd_bisection(model, a, b, upper, 10, 50),
                x, y, p, rows, norms)
        stacked = torch.stack(list(norms.values()))
        best = stacked.min(0).values
        rows.append(["per-image best of the above", "", "", common.fmt_norm(float(best.median())), "", ""])
        out += [f"\n**Table 1 shape, {label}, `{model_name}`** ({desc}; {data_desc})\n",
                common.markdown_table(header, rows)]

    for p, label in ((2.0, "L2"), (math.inf, "Linf")):
        print(f"{model_name} hardest {label}", file=sys.stderr, flush=True)
        rows, norms = [], {}
        run("DeepFool to the hardest class",
            lambda a, b, p=p: trust_region(model, a, b, norm=p, target_mode="hardest", adaptive=False, radius=1e6,
                                      refine_steps=0, line_search=0), x, y, p, rows, norms)
        run("TR Non-Adap, hardest", lambda a, b, p=p: trust_region(model, a, b, norm=p, target_mode="hardest",
                                                               adaptive=False, radius=NON_ADAPTIVE[p]),
            x, y, p, rows, norms)
        run("TR Adap, hardest", lambda a, b, p=p: trust_region(model, a, b, norm=p, target_mode="hardest"),
            x, y, p, rows, norms)
        run("TR Adap, best class (for reference)", lambda a, b, p=p: trust_region(model, a, b, norm=p), x, y, p, rows, norms)
        out += [f"\n**Table 2 shape (hardest class), {label}, `{model_name}`**\n", common.markdown_table(header, rows)]


def table_5(model_name: str, n: int, radius: float, out: list[str]) -> None:
    try:
        model, desc = common.load_model(model_name)
    except (ValueError, FileNotFoundError, KeyError) as err:
        out.append(f"\n_model `{model_name}` not available: {err}_\n")
        return
    from minnorm.data import load_sample
    x, y = load_sample()
    x, y = x[:n], y[:n]
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    header = ["order", *[f"t={t}" for t in range(1, 11)], "bw passes/image", "ms/image"]
    rows = []
    for order in (1, 2):
        print(f"{model_name} order {order}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        # fixed radius, no refinement: each sample stops at its first crossing, so the step count
        # at which it crossed gives the accuracy after every t <= 10 from one run
        res = trust_region(model, x, y, order=order, steps=10, refine_steps=0, line_search=0, adaptive=False,
                           radius=radius, lanczos_steps=10)
        sec = time.perf_counter() - t0
        fooled_at = torch.where(res.success, res.info["search_steps"], torch.full_like(res.info["search_steps"], 99))
        acc = [100 * float((fooled_at > t).float().mean()) for t in range(1, 11)]
        rows.append([f"TR {'first' if order == 1 else 'second'}", *[f"{a:.1f}" for a in acc],
                     f"{float(res.backward_passes.double().mean()):.1f}", f"{1000 * sec / n:.1f}"])
        if order == 2:
            rows[-1][0] += f" (Hessian vanished on {int(res.info['hessian_vanished'].sum())}/{n})"
    out += [f"\n**Table 5 shape, `{model_name}`** ({desc}; first {n} images of the embedded test sample, clean "
            f"accuracy {100 * clean:.1f}%; L2 radius fixed at {radius:g}; accuracy % after t iterations)\n",
            common.markdown_table(header, rows)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default="1,5", help="1 (= Tables 1 and 2) and/or 5 (default: 1,5)")
    parser.add_argument("--models", default="cnn,cnn-pgd-linf", help="shipped models for Tables 1/2")
    parser.add_argument("--smooth", default="mlp-silu,cnn-silu", help="shipped SiLU models for Table 5")
    parser.add_argument("--n", type=int, default=100, help="images for Tables 1/2 (default: 100)")
    parser.add_argument("--n-smooth", type=int, default=200, help="images for Table 5 (default: 200)")
    parser.add_argument("--radii", default="0.2,0.4", help="Table 5's fixed L2 radii (default: 0.2,0.4)")
    parser.add_argument("--cw-iterations", type=int, default=1000, help="CW iterations per binary step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tables = set(args.tables.split(","))
    out = [f"Machine: {common.machine_info(args.threads)}; `python benchmarks/trust_region_tables.py "
           + " ".join(argv if argv is not None else sys.argv[1:]) + "`"]
    if "1" in tables:
        for name in args.models.split(","):
            table_1_2(name, args.n, args.cw_iterations, out)
    if "5" in tables:
        for name in args.smooth.split(","):
            for radius in args.radii.split(","):
                table_5(name, args.n_smooth, float(radius), out)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
