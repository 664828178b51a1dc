"""``minnorm robustness``: Table I of Balda et al. (rho-hat-1, rho-hat-2, DeepFool's eps for a
99% fooling ratio) for a model and data set."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..evaluation.store import check_out_file, write_json
from . import _common as c


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "robustness", help="robustness measures of Balda et al. (Table I): rho-hat-1, rho-hat-2, eps at 99%%",
        description="Measure a classifier's robustness as in Table I of Balda, Behboodi and Mathar (2018): "
                    "rho-hat-1 (mean relative minimal perturbation found by DeepFool), rho-hat-2 (mean "
                    "first-order lower bound of their Proposition 1) and the smallest eps at which DeepFool "
                    "fools more than --rate of the correctly classified samples.",
        epilog="examples:\n  minnorm robustness --model mlp --data sample --n 500\n"
               "  minnorm robustness --model cnn --norm 2 --json out/robustness.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn", help="shipped model name or pkg.module:factory (default: cnn)")
    p.add_argument("--weights", help="weights to load into the model (.safetensors or .pt)")
    p.add_argument("--data", default="sample", help="sample, fashion-mnist, a dataset path or a .pt/.safetensors "
                                                     "file with x and y (default: sample)")
    p.add_argument("--n", type=c.positive_int, help="use the first N samples (default: all)")
    p.add_argument("--norm", default="inf", help="lp norm: inf (as in the paper), 2 or 1 (default: inf)")
    p.add_argument("--rate", type=float, default=0.99, help="fooling ratio for the eps column (default: 0.99)")
    p.add_argument("--attack", help="registered minimal-norm attack for rho-hat-1 and eps (default: DeepFool, "
                                    "or for l1 the convex-min form with DeepFool's class choice)")
    p.add_argument("--scores", choices=["logits", "probabilities"], default="logits",
                   help="f in the Prop. 1 bound (default: logits, as in the authors' code)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    c.add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core import parse_norm
    from ..evaluation.robustness import robustness_measures

    norm = parse_norm(args.norm)
    if args.json:
        check_out_file(args.json, "--json")
    device = c.resolve_device(args.device)
    model = c.load_model(args.model, args.weights, device)
    x, y = c.load_data(args.data, model, device)
    x, y = x[:args.n].to(device), y[:args.n].to(device)
    report = robustness_measures(model, x, y, norm=norm, rate=args.rate, attack=args.attack, scores=args.scores,
                                 batch_size=args.batch_size, seed=args.seed)
    s = report.summary()
    tag = "linf" if math.isinf(norm) else f"l{norm:g}"
    print(f"model {args.model}, data {args.data}: test error {100 * s['test_error']:.1f}% of {len(y)}, "
          f"{s['samples']} correctly classified samples measured ({tag})")
    rows = [[f"rho-hat-1: mean ||r||/||x|| ({s['attack']})", c.fmt(s["rho1"])],
            ["rho-hat-2: mean Prop. 1 bound", c.fmt(s["rho2"])],
            [f"eps fooled > {100 * args.rate:g}% ({s['attack']})", c.fmt(s["eps_99"])],
            ["attack below the bound", f"{100 * s['attack_below_bound']:.1f}%"]]
    print(c.format_table(["measure", "value"], rows))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        info = {"command": "robustness", "model": args.model, "weights": args.weights, "data": args.data, **s}
        write_json(out, info)
        print(f"wrote {out}")
    return 0
