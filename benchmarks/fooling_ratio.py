"""Fooling ratio versus eps (linf), Figure 2 of Balda, Behboodi and Mathar (2018), on the shipped
models: Alg. 1, Alg. 1-5, Alg. 1-10, Alg. 2, FGSM, DeepFool, PGD and random noise.

    python benchmarks/fooling_ratio.py                         # both models, print the tables
    python benchmarks/fooling_ratio.py --update docs/convex.md # also refresh the doc's table and plots

The fooling ratio is the share of correctly classified images that the attack misclassifies
(the paper's definition, from DeepFool). Fixed-eps attacks run once per eps; DeepFool, a
minimal-norm attack, runs once and fools an image at every eps >= its perturbation's norm.
Random noise draws one vertex of the eps cube per image (the paper's +-eps Bernoulli noise).
All attacks come from the registry.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import minnorm
from minnorm.data import load_sample
from minnorm.models import load_shipped

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- fooling-ratio:start -->", "<!-- fooling-ratio:end -->"
# (label, registry name, settings); the paper's Figure 2 legend order
METHODS = [
    ("DeepFool", "deepfool-linf", {}),
    ("Alg1-10", "alg1n-linf", {"steps": 10}),
    ("Alg1-5", "alg1n-linf", {"steps": 5}),
    ("Alg1", "alg1-linf", {}),
    ("Alg2", "alg2-linf", {}),
    ("FGSM", "fgsm", {}),
    ("PGD", "pgd-linf", {"steps": 20}),
    ("random", "noise-linf", {}),
]
EPS = {"mlp": [0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1], "cnn": [0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05]}


def correct_images(model, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_sample()
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return x[keep][:n], y[keep][:n]


def run_model(name: str, n: int, eps_list: list[float], batch_size: int) -> dict:
    model = load_shipped(name)
    x, y = correct_images(model, n)
    rows = {}
    for label, attack, settings in METHODS:
        spec = minnorm.attacks.get(attack)
        started = time.perf_counter()
        ratios, passes = [], 0.0
        if spec.minimal:
            norms, cost = _batched(spec, model, x, y, batch_size, settings)
            ratios = [float((norms <= e).double().mean()) for e in eps_list]
            passes = cost
        else:
            for e in eps_list:
                norms, cost = _batched(spec, model, x, y, batch_size, {**settings, "eps": e})
                ratios.append(float(torch.isfinite(norms).double().mean()))
                passes += cost / len(eps_list)
        rows[label] = {"ratios": ratios, "passes": passes, "seconds": time.perf_counter() - started}
        print(f"  {name} {label:9s} " + " ".join(f"{100 * r:5.1f}" for r in ratios)
              + f"   {passes:6.1f} passes/image  {rows[label]['seconds']:.1f} s", flush=True)
    return {"model": name, "n": len(y), "eps": eps_list, "rows": rows}


def _batched(spec, model, x, y, batch_size: int, settings: dict) -> tuple[torch.Tensor, float]:
    gen = torch.Generator().manual_seed(0)
    norms, cost = [], 0
    for i in range(0, len(x), batch_size):
        res = spec(model, x[i:i + batch_size], y[i:i + batch_size], generator=gen, **settings)
        norms.append(res.norms)
        cost += int((res.forward_passes + res.backward_passes).sum())
    return torch.cat(norms), cost / len(x)


def markdown(result: dict) -> str:
    eps = result["eps"]
    head = "| method | " + " | ".join(f"eps = {e:g}" for e in eps) + " | passes / image |"
    lines = [head, "|---|" + "---:|" * (len(eps) + 1)]
    for label, row in result["rows"].items():
        cells = " | ".join(f"{100 * r:.1f}" for r in row["ratios"])
        lines.append(f"| {label} | {cells} | {row['passes']:.1f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    styles = {"DeepFool": "k-o", "Alg1-10": "C0-s", "Alg1-5": "C1-s", "Alg1": "C2-^", "Alg2": "C3-v",
              "FGSM": "C4-d", "PGD": "C5-x", "random": "C7--"}
    for label, row in result["rows"].items():
        ax.plot(result["eps"], [100 * r for r in row["ratios"]], styles[label], label=label, ms=4, lw=1.2)
    ax.set_xlabel("eps (linf)")
    ax.set_ylabel("fooling ratio (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"shipped {result['model']} (Fashion-MNIST), {result['n']} images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--n", type=int, default=300, help="correctly classified images per model (default 300)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--update", type=Path, metavar="FILE", help="rewrite the tables between the markers in FILE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    results = []
    for name in args.models.split(","):
        print(f"{name}: fooling ratio (%) at eps = {EPS[name]}", flush=True)
        result = run_model(name, args.n, EPS[name], args.batch_size)
        plot(result, args.figures / f"fooling-ratio-{name}.png")
        results.append(result)
    minutes = (time.perf_counter() - started) / 60
    blocks = [f"**{r['model']}** ({r['n']} correctly classified images of the embedded Fashion-MNIST sample; "
              f"fooling ratio in %)\n\n{markdown(r)}\n\n![fooling ratio, {r['model']}](figures/fooling-ratio-{r['model']}.png)"
              for r in results]
    text = "\n\n".join(blocks) + (f"\n\n_{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, one thread on "
                                  f"{platform.machine()}, {minutes:.1f} min in all "
                                  f"(`python benchmarks/fooling_ratio.py --n {args.n} --update docs/convex.md`)._")
    print("\n" + text)
    if args.update:
        doc = args.update.read_text()
        head, start, rest = doc.partition(START)
        _, end, tail = rest.partition(END)
        if not (start and end):
            raise SystemExit(f"{args.update}: markers {START} ... {END} not found")
        args.update.write_text(f"{head}{START}\n{text}\n{END}{tail}")
        print(f"updated {args.update}")


if __name__ == "__main__":
    main()
