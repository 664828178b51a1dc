"""``minnorm attack``: run one registered attack on a model and data set, save what it found."""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch

from ..core import relative_perturbation
from ..evaluation.store import write_json
from . import _common as c

CSV_COLUMNS = ["index", "label", "target", "clean_prediction", "adversarial_prediction", "success", "norm",
               "forward_passes", "backward_passes"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "attack", help="run one attack, save adversarials and a per-sample CSV",
        description="Run one registered attack on a model and data set. Writes adversarials "
                    "(.pt or .safetensors: adversarials, labels, indices), samples.csv and "
                    "summary.json to --out, and prints a summary.",
        epilog="examples:\n  minnorm attack --attack ddn --model cnn --data sample --n 100 --out out/\n"
               "  minnorm attack --attack pgd-linf --eps 0.1 --param steps=40 --model pkg.mod:factory "
               "--weights w.safetensors\n  minnorm attack --list",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the registered attacks and exit")
    p.add_argument("--attack", metavar="NAME", help="registered attack name (see --list)")
    p.add_argument("--eps", type=float, help="radius for a fixed-epsilon attack; for a minimal-norm attack, "
                                             "also report the success rate within this radius")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", default=[],
                   help="attack hyper-parameter as a Python literal, e.g. steps=200 (repeatable)")
    p.add_argument("--model", default="cnn", help="shipped model name or pkg.module:factory (default: cnn)")
    p.add_argument("--weights", help="weights to load into the model (.safetensors or .pt)")
    p.add_argument("--data", default="sample",
                   help="sample, fashion-mnist, fashion-mnist:train, a dataset path, or a .pt/.safetensors "
                        "file with x and y (default: sample)")
    p.add_argument("--n", type=c.positive_int, help="attack the first N samples (default: all)")
    p.add_argument("--correct-only", action="store_true",
                   help="keep only samples the model classifies correctly before taking the first N")
    p.add_argument("--targeted", action="store_true", help="targeted attack (targets from --target-mode)")
    p.add_argument("--target-mode", choices=["random", "least-likely"], default="random",
                   help="how targets are chosen (default: random, seeded by --seed)")
    p.add_argument("--out", help="output folder (default: print only)")
    p.add_argument("--format", choices=["pt", "safetensors"], default="pt", help="adversarials file format")
    c.add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(c.format_table(c.REGISTRY_HEADERS, c.registry_rows()))
        return 0
    if not args.attack:
        raise ValueError("--attack NAME is required (see minnorm attack --list)")
    c.check_out(args.out)  # before anything runs
    spec = c.get_attack(args.attack)
    params = c.parse_params(args.param)
    eps = params.get("eps", args.eps)
    if eps is None and args.quick and not spec.minimal:
        eps = spec.quick.get("eps")
    if not spec.minimal:
        if eps is None:
            raise ValueError(f"{spec.name} is a fixed-epsilon attack: give --eps (e.g. --eps "
                             f"{spec.quick.get('eps', 0.5)})")
        params["eps"] = eps
    elif "eps" in params:
        raise ValueError(f"{spec.name} is a minimal-norm attack and takes no eps parameter; "
                         "--eps reports its success rate within that radius instead")
    if args.targeted:
        if not spec.targeted:
            raise ValueError(f"{spec.name} does not support targeted attacks")
        params["targeted"] = True
    kwargs = c.attack_kwargs(spec, params, quick=args.quick)

    device = c.resolve_device(args.device)
    model = c.load_model(args.model, args.weights, device)
    x, y = c.load_data(args.data, model, device)
    if not args.correct_only:  # no need to classify the whole data set
        x, y = x[:args.n], y[:args.n]
    index = torch.arange(len(y))
    logits = c.predict(model, x, args.batch_size, device)
    clean_pred = logits.argmax(dim=1) if len(y) else y
    clean_accuracy = float((clean_pred == y).float().mean()) if len(y) else math.nan
    classified = len(y)
    if args.correct_only:
        index = index[clean_pred == y][:args.n]
    x, y, clean_pred, logits = x[index], y[index], clean_pred[index], logits[index]
    targets = c.pick_targets(logits, y, args.target_mode, args.seed) if args.targeted else None

    result = c.run_batches(spec, model, x, targets if args.targeted else y, kwargs,
                           batch_size=args.batch_size, device=device, seed=args.seed)
    adv_pred = c.predict(model, result.adversarials, args.batch_size, device).argmax(dim=1) if len(y) else y

    summary = c.Summary(spec.name, spec.norm_name, None if spec.minimal else eps, result)
    mode = f" (targeted, {args.target_mode})" if args.targeted else ""
    print(f"model {args.model}, data {args.data}: clean accuracy {100 * clean_accuracy:.1f}% "
          f"of {classified}, {len(y)} samples attacked{mode}")
    print(c.format_table(c.SUMMARY_HEADERS, [summary.row()]))
    relative = relative_stats(x, y, clean_pred, result, spec.norm)
    print(f"relative perturbation ||dx||/||x|| ({spec.norm_name}, {relative['relative_samples']} successful "
          f"samples classified correctly): mean {c.fmt(relative['relative_mean'])}, worst "
          f"{c.fmt(relative['relative_worst'])}; time per image {1000 * relative['seconds_per_image']:.2f} ms")
    within = None
    if spec.minimal and eps is not None:
        within = float((result.success & (result.norms <= eps)).float().mean()) if len(y) else math.nan
        print(f"success within {spec.norm_name} <= {eps:g}: {100 * within:.1f}%")

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"adversarials": result.adversarials.contiguous(), "labels": y.contiguous(),
                   "indices": index.contiguous()}
        if targets is not None:
            tensors["targets"] = targets.contiguous()
        if args.format == "safetensors":
            from safetensors.torch import save_file
            save_file(tensors, str(out / "adversarials.safetensors"))
        else:
            torch.save(tensors, out / "adversarials.pt")
        write_csv(out / "samples.csv", index, y, targets, clean_pred, adv_pred, result)
        info = {"command": "attack", "attack": spec.name, "model": args.model, "weights": args.weights,
                "data": args.data, "samples": len(y), "clean_accuracy": clean_accuracy, "clean_accuracy_of": classified,
                "targeted": args.targeted,
                "target_mode": args.target_mode if args.targeted else None, "seed": args.seed,
                "parameters": {**spec.defaults, **kwargs},
                "summary": {**summary.stats(), **relative},
                "success_within_eps": within}
        write_json(out / "summary.json", info)
        print(f"wrote {out}/adversarials.{args.format}, samples.csv, summary.json")
    return 0


def relative_stats(x: torch.Tensor, labels: torch.Tensor, clean_pred: torch.Tensor, result, p: float) -> dict:
    """The Trust Region paper's metrics (Yao et al., eq. (4)): relative perturbation
    ||adv - x||_p / ||x||_p, mean and worst case over the samples the model classified correctly
    and the attack broke (misclassified inputs would count as 0), and wall time per image."""
    keep = result.success & (clean_pred == labels)
    rel = relative_perturbation(result.adversarials[keep].double(), x[keep].double(), p)
    return {"relative_samples": int(keep.sum()),
            "relative_mean": float(rel.mean()) if len(rel) else math.nan,
            "relative_worst": float(rel.max()) if len(rel) else math.nan,
            "seconds_per_image": result.seconds / max(len(labels), 1)}


def write_csv(path: Path, index: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None,
              clean_pred: torch.Tensor, adv_pred: torch.Tensor, result) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for i in range(len(labels)):
            writer.writerow([int(index[i]), int(labels[i]), "" if targets is None else int(targets[i]),
                             int(clean_pred[i]), int(adv_pred[i]), int(result.success[i]),
                             f"{float(result.norms[i]):.8g}", int(result.forward_passes[i]),
                             int(result.backward_passes[i])])
