"""The evaluation of the DDN paper (Rony et al., CVPR 2019) redone on minnorm's Fashion-MNIST CNNs.

* ``untargeted`` (Table 1): success, mean and median L2, gradients per image and run time of
  C&W, DeepFool and DDN at 100 / 300 / 1000 steps on the standard CNN ``cnn``.
* ``targeted`` (Tables 2-4): every image attacked towards each of its 9 other classes; the
  average over all targets, the least likely class (lowest clean logit) and, as the paper's
  text defines it, the worst target per image.
* ``defense`` (Tables 5/6): each attack, the best-of-all "All" row (smallest adversarial per
  image over the attacks) and the accuracy left at L2 budgets, per model.

Images come from the embedded sample (the first 1000 Fashion-MNIST test images), so the run
needs no download. Every attack result is cached per (model weights, images, attack, settings)
in ``--cache``; a re-run with the same settings only prints. C&W's learning rate and constant
for the short budgets (4x25, 1x100) are picked, as in the paper, by a grid search for the best
median L2, here on separate tuning images (the ones after the evaluation images).

    nice python benchmarks/ddn_tables.py --tables untargeted,targeted --markdown out/ddn-tables.md
    nice python benchmarks/ddn_tables.py --tables defense --models cnn,cnn-pgd-l2,cnn-ddn
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch

import minnorm
from minnorm.data import load_sample
from minnorm.models import WEIGHTS_DIR, SmallCNN, load_shipped, load_weights

# a sub-grid of the paper's (lr 0.01 ... 1, c 0.001 ... 1000), to fit a 2-core CPU box
CW_GRID = {"learning_rate": (0.01, 0.1, 0.5, 1.0), "initial_const": (0.1, 1.0, 10.0, 100.0)}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Runner:
    """Runs registered attacks on one model and caches per-image outcomes on disk."""

    def __init__(self, model_name: str, cache: Path, seed: int = 0):
        # NAME is a shipped model; LABEL=PATH a SmallCNN weight file or training checkpoint
        self.name, _, path = model_name.partition("=")
        if path:
            weights = Path(path)
            self.model = load_weights(SmallCNN(), weights).eval()
        else:
            weights = Path(WEIGHTS_DIR) / f"{model_name}.safetensors"
            self.model = load_shipped(model_name).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        self.cache_path, self.seed = cache, seed
        self.cache = json.loads(cache.read_text()) if cache.exists() else {}

    def run(self, attack: str, x: torch.Tensor, y: torch.Tensor, label: str, *, targeted: bool = False,
            **kwargs) -> dict:
        """Outcome of ``attack`` on (x, y): per-image success and norm, mean backward passes
        (gradients) per image, wall seconds."""
        images = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:12]
        key = json.dumps([self.name, self.digest, images, attack, targeted, sorted(kwargs.items())])
        if key not in self.cache:
            log(f"  {self.name}: {label} on {len(y)} images ...")
            gen = torch.Generator().manual_seed(self.seed)
            start = time.perf_counter()
            res = minnorm.attacks.get(attack)(self.model, x, y, targeted=targeted, generator=gen, **kwargs)
            seconds = time.perf_counter() - start
            self.cache[key] = {"success": res.success.tolist(), "norms": res.norms.tolist(),
                               "grads": float(res.backward_passes.float().mean()), "seconds": seconds}
            log(f"    {seconds:.1f} s, success {res.success.float().mean():.1%}")
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.cache))
            tmp.replace(self.cache_path)
        out = dict(self.cache[key])
        out["success"] = torch.tensor(out["success"], dtype=torch.bool)
        out["norms"] = torch.tensor(out["norms"], dtype=torch.float64)
        return out


def first_correct(model: torch.nn.Module, n: int, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``skip .. skip + n`` among the sample images the model classifies correctly."""
    x, y = load_sample()
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep][skip:skip + n], y[keep][skip:skip + n]
    if len(y) < n:
        raise SystemExit(f"only {len(y)} correctly classified images available after skipping {skip}")
    return x.contiguous(), y.contiguous()


def median_with_failures(norms: torch.Tensor) -> float:
    """Median norm with failures as inf, i.e. the median of the per-image worst case."""
    return float(norms.median()) if len(norms) else math.nan


def mean_success(norms: torch.Tensor) -> float:
    ok = torch.isfinite(norms)
    return float(norms[ok].mean()) if bool(ok.any()) else math.inf


def fmt(v: float, digits: int = 4) -> str:
    return "inf" if math.isinf(v) else ("-" if math.isnan(v) else f"{v:.{digits}f}")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def cw_kwargs(searches: int, iterations: int, learning_rate: float, initial_const: float) -> dict:
    return {"binary_search_steps": searches, "max_iterations": iterations, "learning_rate": learning_rate,
            "initial_const": initial_const}


def tune_cw(runner: Runner, tune: tuple[torch.Tensor, torch.Tensor], searches: int, iterations: int) -> dict:
    """The paper's grid search for short C&W budgets (Sec. 4): best median L2 on the tuning images."""
    best, best_median = None, math.inf
    for lr in CW_GRID["learning_rate"]:
        for c in CW_GRID["initial_const"]:
            kw = cw_kwargs(searches, iterations, lr, c)
            out = runner.run("cw-l2", *tune, f"C&W {searches}x{iterations} tuning lr={lr} c={c}", **kw)
            med = median_with_failures(out["norms"])
            if med < best_median:
                best, best_median = kw, med
    return best


def attack_list(args, runner: Runner, tune) -> list[tuple[str, str, dict]]:
    """(row label, registry name, kwargs) of the untargeted rows of Table 1."""
    rows = []
    for searches, iterations in ((4, 25), (1, 100)):
        kw = tune_cw(runner, tune, searches, iterations)
        rows.append((f"C&W {searches}x{iterations} (lr {kw['learning_rate']:g}, c {kw['initial_const']:g})",
                     "cw-l2", kw))
    rows.append(strong_cw(args))
    rows.append((f"DeepFool {args.deepfool_steps}", "deepfool-l2", {"max_iterations": args.deepfool_steps}))
    rows += [(f"DDN {k}", "ddn", {"steps": k}) for k in args.ddn_steps]
    return rows


def strong_cw(args) -> tuple[str, str, dict]:
    s, k = args.cw_strong
    return (f"C&W {s}x{k} (lr {args.cw_strong_lr:g}, c 0.01)", "cw-l2",
            cw_kwargs(s, k, args.cw_strong_lr, 0.01))


def untargeted(args) -> str:
    runner = Runner("cnn", args.cache, args.seed)
    x, y = first_correct(runner.model, args.n)
    tune = first_correct(runner.model, args.tune_n, skip=args.n)
    rows = []
    for label, attack, kw in attack_list(args, runner, tune):
        out = runner.run(attack, x, y, label, **kw)
        rows.append([label, f"{out['success'].float().mean():.1%}", fmt(mean_success(out["norms"])),
                     fmt(median_with_failures(out["norms"])), f"{out['grads']:.0f}", f"{out['seconds']:.1f}"])
    head = (f"Untargeted (Table 1 style), model `cnn` (sha256 {runner.digest}), first {len(y)} correctly "
            f"classified sample images; mean L2 over successes, median L2 with failures as inf; "
            f"grads = backward passes per image; wall seconds for the batch of {len(y)}.")
    return head + "\n\n" + table(["attack", "success", "mean L2", "median L2", "grads", "seconds"], rows)


def targeted(args) -> str:
    runner = Runner("cnn", args.cache, args.seed)
    x, y = first_correct(runner.model, args.targeted_n)
    tune = first_correct(runner.model, args.tune_n, skip=args.n)
    with torch.no_grad():
        logits = runner.model(x)
    k = logits.shape[1]
    # 9 attacks per image: image i towards (y_i + j) mod k, j = 1 .. k-1, all in one batch
    shifts = torch.arange(1, k)
    targets = ((y[None, :] + shifts[:, None]) % k).reshape(-1)
    xs = x.repeat(k - 1, 1, 1, 1)
    least = logits.argmin(1)
    rows = []
    specs = [r for r in attack_list(args, runner, tune) if r[1] != "deepfool-l2"]
    for label, attack, kw in specs:
        out = runner.run(attack, xs, targets, label, targeted=True, **kw)
        norms = out["norms"].view(k - 1, len(y))
        row_of_least = (targets.view(k - 1, len(y)) == least[None, :]).float().argmax(0)
        ll = norms[row_of_least, torch.arange(len(y))]
        worst = norms.max(0).values
        rows.append([label, f"{torch.isfinite(norms).float().mean():.1%}", fmt(mean_success(norms.flatten())),
                     f"{torch.isfinite(ll).float().mean():.1%}", fmt(mean_success(ll)),
                     f"{torch.isfinite(worst).float().mean():.1%}", fmt(mean_success(worst)),
                     f"{out['seconds']:.1f}"])
    head = (f"Targeted (Tables 2-4 style), model `cnn`, first {len(y)} correctly classified sample images, "
            f"each attacked towards all {k - 1} other classes ({len(targets)} attacks per row). Average: over "
            "all attacks; least likely: the target with the lowest clean logit; worst: per image the largest "
            "norm over its targets (a failure counts as worst). Mean L2 over successes.")
    return head + "\n\n" + table(["attack", "avg success", "avg mean L2", "least-likely success",
                                  "least-likely mean L2", "worst success", "worst mean L2", "seconds"], rows)


def defense(args) -> str:
    x_all, y_all = load_sample()
    x_all, y_all = x_all[:args.defense_n], y_all[:args.defense_n]
    specs = [strong_cw(args), (f"DeepFool {args.deepfool_steps}", "deepfool-l2",
                               {"max_iterations": args.deepfool_steps}),
             (f"DDN {max(args.ddn_steps)}", "ddn", {"steps": max(args.ddn_steps)})]
    specs += [(f"{name} (extra)", name, {}) for name in args.extra]
    header = ["model", "clean acc", "attack", "success", "mean L2", "median L2", "median L2, all images"]
    header += [f"acc at L2 <= {e:g}" for e in args.eps]
    rows, summary = [], {}
    for spec in args.models:
        runner = Runner(spec, args.cache, args.seed)
        name = runner.name
        with torch.no_grad():
            correct = runner.model(x_all).argmax(1) == y_all
        x, y = x_all[correct].contiguous(), y_all[correct].contiguous()
        outs = [(label, runner.run(attack, x, y, label, **kw)["norms"]) for label, attack, kw in specs]
        outs.append(("**All**", torch.stack([o for _, o in outs]).min(0).values))
        for i, (label, norms) in enumerate(outs):
            # over all n images: misclassified ones need no perturbation (norm 0)
            full = torch.zeros(len(y_all), dtype=torch.float64)
            full[correct] = norms
            row = [f"`{name}`" if i == 0 else "", f"{correct.float().mean():.1%}" if i == 0 else "", label,
                   f"{torch.isfinite(norms).float().mean():.1%}", fmt(mean_success(norms)),
                   fmt(median_with_failures(norms)), fmt(median_with_failures(full))]
            row += [f"{(full > e).float().mean():.1%}" for e in args.eps]
            rows.append(row)
            summary.setdefault(name, {})[label] = median_with_failures(full)
    head = (f"Defenses (Tables 5/6 style), first {args.defense_n} sample images per model; attack columns over the "
            "images the model classifies correctly (median with failures as inf), \"median L2, all images\" "
            "and the accuracies over all of them (a misclassified image needs norm 0). **All**: per image the "
            "smallest adversarial any attack found.")
    return head + "\n\n" + table(header, rows) + "\n\n" + json.dumps(summary, indent=1)


def training(args) -> str:
    """How the shipped models were made, from the JSON written beside their weights."""
    rows = []
    for name in args.models:
        path = Path(WEIGHTS_DIR) / f"{name.partition('=')[0]}.json"
        if not path.exists():
            rows.append([f"`{name}`", "not trained yet", "", "", "", "", ""])
            continue
        info = json.loads(path.read_text())
        per_epoch = ", ".join(f"{100 * e['test_accuracy']:.1f}" + (
            f"/{100 * e['robust_accuracy']:.1f}" if e.get("robust_accuracy") is not None else "") for e in info["log"])
        robust = info.get("robust_accuracy")
        rows.append([f"`{name}`", f"{info.get('adversary') or 'none'}"
                     + (f", max norm {info['max_norm']:g}" if info.get("max_norm") else ""), str(info["epochs"]),
                     f"{info['seconds']:.0f} s", f"**{100 * info['clean_test_accuracy']:.2f}%**",
                     "-" if robust is None else f"{100 * robust:.1f}%", per_epoch])
    head = ("Training (from the JSON beside each weight file): clean accuracy on the 10k test set; robust accuracy "
            "under the training attack at its max norm, on the first test images, as logged after the last epoch; "
            "per epoch: clean/robust %.")
    return head + "\n\n" + table(["model", "adversary", "epochs", "time", "clean accuracy", "robust (training attack)",
                                   "per epoch"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", default="untargeted,targeted,defense",
                   help="comma-separated: untargeted, targeted, defense, training (default: the first three)")
    p.add_argument("--n", type=int, default=100, help="images for the untargeted table (default: 100)")
    p.add_argument("--defense-n", type=int, default=50, help="images per model for the defense table (default: 50)")
    p.add_argument("--targeted-n", type=int, default=5, help="images for the targeted table (default: 5)")
    p.add_argument("--tune-n", type=int, default=10, help="C&W tuning images (default: 10)")
    p.add_argument("--ddn-steps", type=lambda s: [int(v) for v in s.split(",")], default=[100, 300, 1000])
    p.add_argument("--deepfool-steps", type=int, default=100)
    p.add_argument("--cw-strong", type=lambda s: tuple(int(v) for v in s.split("x")), default=(9, 200),
                   help="binary-search steps x iterations of the long C&W run (paper: 9x10000; default 9x200)")
    p.add_argument("--cw-strong-lr", type=float, default=0.05, help="its learning rate (paper: 0.01; default 0.05)")
    p.add_argument("--models", type=lambda s: s.split(","), default=["cnn", "cnn-pgd-l2", "cnn-ddn"],
                   help="shipped model names, or LABEL=PATH for SmallCNN weights or a training checkpoint")
    p.add_argument("--extra", type=lambda s: [v for v in s.split(",") if v], default=[],
                   help="further registered L2 attacks (default settings) for the defense table, e.g. tr-l2")
    p.add_argument("--eps", type=lambda s: [float(v) for v in s.split(",")], default=[0.5, 1.0, 1.5])
    p.add_argument("--cache", type=Path, default=Path("out/ddn_tables/cache.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = []
    for name in args.tables.split(","):
        fn = {"untargeted": untargeted, "targeted": targeted, "defense": defense, "training": training}.get(name)
        if fn is None:
            raise SystemExit(f"--tables: unknown table {name!r}")
        parts.append(fn(args))
        print(parts[-1] + "\n", flush=True)
    command = "python benchmarks/ddn_tables.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"Command: `{command}` (torch {torch.__version__}, {args.threads} thread)\n\n" + "\n\n".join(parts)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
