"""``minnorm attack``: one registered attack on a model and data set, through ``minnorm.evaluate``.

There is one pipeline: this command is an evaluation with a single attack (same batches, same
seeds, same convention: only correctly classified samples are attacked), plus the adversarials
and a short summary saved next to the evaluation's reports.
"""
from __future__ import annotations

import argparse

import torch

from . import _common as c


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "attack", help="run one attack, save adversarials and the per-sample table",
        description="Run one registered attack on the correctly classified samples of a data set (an evaluation "
                    "with one attack: `minnorm evaluate --attacks NAME` gives the same numbers). With --out, writes "
                    "the evaluation's reports plus adversarials.pt (or .safetensors: adversarials, labels, indices, "
                    "targets when targeted) and attack.json.",
        epilog="examples:\n  minnorm attack --attack ddn --model cnn --data sample --n 100 --out out/\n"
               "  minnorm attack --attack pgd-linf --eps 8/255 --param steps=40 --model pkg.mod:factory "
               "--weights w.safetensors\n  minnorm attack --list\n  minnorm attack --describe ddn",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the registered attacks and exit")
    p.add_argument("--describe", metavar="NAME", help="print an attack's parameters, defaults and paper, and exit")
    p.add_argument("--measure", action="store_true", help="with --describe: count passes per sample at the "
                                                             "defaults (not only at the quick settings)")
    p.add_argument("--attack", metavar="NAME", help="registered attack name (see --list)")
    p.add_argument("--eps", type=c.radius, help="radius (8/255 accepted) for a fixed-epsilon attack; for a "
                                                 "minimal-norm attack, also report robust accuracy at this radius")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", default=[],
                   help="attack hyper-parameter as a Python literal, e.g. steps=200 (repeatable)")
    p.add_argument("--model", default="cnn", help="shipped model name, pkg.module:factory, or the .json that "
                                                   "minnorm train --export wrote (default: cnn)")
    p.add_argument("--weights", help="weights to load into the model (.safetensors or .pt)")
    c.add_model_args(p)
    p.add_argument("--data", default="sample",
                   help="sample, fashion-mnist, fashion-mnist:train, a dataset path, or a .pt/.safetensors "
                        "file with x and y (default: sample)")
    p.add_argument("--n", "--samples", dest="n", type=c.positive_int, help="use the first N samples (default: all)")
    p.add_argument("--correct-only", action="store_true",
                   help="keep only samples the model classifies correctly before taking the first N")
    p.add_argument("--targeted", action="store_true", help="targeted attack (targets from --target-mode)")
    p.add_argument("--target-mode", choices=["random", "least-likely", "all"],
                   help="how targets are chosen (implies --targeted): a random other class (seeded by --seed), the "
                        "least likely clean class, or every other class in turn (default: random)")
    p.add_argument("--target", type=int, metavar="CLASS", help="targeted attack towards this class (samples of "
                                                               "that class are left out of every number)")
    p.add_argument("--budget", type=c.positive_int, help="forward+backward passes allowed per sample (a hard cap)")
    p.add_argument("--out", help="output folder (default: print only)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--format", choices=["pt", "safetensors"], default="pt", help="adversarials file format")
    c.add_run_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(c.format_table(c.REGISTRY_HEADERS, c.registry_rows()))
        return 0
    if args.describe is not None:
        print(describe(c.get_attack(args.describe), args.measure))
        return 0
    if args.measure:
        raise ValueError("--measure counts passes for --describe NAME; give the attack with --describe")
    if not args.attack:
        raise ValueError("--attack NAME is required (see minnorm attack --list)")
    c.check_out(args.out)  # before anything runs
    spec = c.get_attack(args.attack)
    params = c.parse_params(args.param)
    if "eps" in params:
        raise ValueError("give the radius with --eps, not --param eps=...")
    if args.target is not None and args.target_mode is not None:
        raise ValueError("--target CLASS and --target-mode exclude each other: a fixed class or a way to choose one")
    if args.target is not None or args.target_mode is not None:
        args.targeted = True
    args.target_mode = args.target_mode or "random"
    if args.targeted and not spec.targeted:
        raise ValueError(f"{spec.name} does not support targeted attacks")
    spec.check_params(params)
    eps = args.eps
    if eps is None and args.quick and not spec.minimal:
        eps = spec.quick.get("eps")
    if not spec.minimal and eps is None:
        raise ValueError(f"{spec.name} is a fixed-epsilon attack: give --eps (e.g. --eps {spec.quick.get('eps', 0.5)})")

    from .. import evaluation

    device = c.resolve_device(args.device)
    model = c.model_from_args(args, device)
    x, y = c.load_data(args.data)
    x, y = c.fit_data(model, c.reshape_inputs(x, args.input_shape), y, device, args.data)
    x, y = _select(model, x, y, args, device)
    ev = evaluation.evaluate(
        model, (x, y), {spec.name: params}, spec.norm, batch_size=args.batch_size, seed=args.seed,
        budget=args.budget, epsilons=None if spec.minimal else [eps], grid=[eps] if eps is not None else None,
        out=args.out, overwrite=args.overwrite, device=device, quick=args.quick, keep_tensors=True,
        targets=(args.target if args.target is not None else args.target_mode) if args.targeted else None,
        describe={"model": {"name": args.model, "weights": args.weights},
                  "data": {"name": args.data, "first": args.n, "correct_only": args.correct_only}})
    _print(ev, spec, eps, args)
    if args.out:
        _save(ev, spec, args, model, device)
    return 0


def _select(model, x, y, args, device):
    if args.correct_only:
        pred = c.predict(model, x, args.batch_size, device).argmax(dim=1)
        keep = (pred == y).nonzero().flatten()[:args.n]
        return x[keep], y[keep]
    return x[:args.n], y[:args.n]


def _print(ev, spec, eps, args) -> None:
    from .evaluate import print_evaluation

    print_evaluation(ev)
    if eps is not None:
        ra = ev.robust_accuracy(eps, spec.name)
        print(f"robust accuracy at {spec.norm_name} {c.fmt(eps)}: {100 * ra:.1f}% of {ev.samples} samples "
              f"(clean {100 * ev.clean_accuracy:.1f}%; {spec.name} alone, an upper bound)")


def _save(ev, spec, args, model, device) -> None:
    from ..evaluation.store import OutputFolder, torch_bytes

    t = ev.tensors
    adv = t.get(f"adv/{spec.name}", torch.zeros(0))
    tensors = {"adversarials": adv.contiguous(), "indices": t.get("index", torch.zeros(0, dtype=torch.long))}
    pos = {int(i): k for k, i in enumerate(ev.table["index"])}
    rows = [pos[int(i)] for i in tensors["indices"]]
    tensors["labels"] = torch.as_tensor(ev.table["label"][rows], dtype=torch.long)
    if "target" in ev.table:
        tensors["targets"] = torch.as_tensor(ev.table["target"][rows], dtype=torch.long)
    with torch.no_grad():
        tensors["predictions"] = c.predict(model, adv, args.batch_size, device).argmax(dim=1) if len(adv) else \
            torch.zeros(0, dtype=torch.long)
    with OutputFolder(args.out).lock() as out:  # locked: the files go into the folder's manifest
        if args.format == "safetensors":
            from safetensors.torch import save

            out.write_bytes("adversarials.safetensors", save({k: v.contiguous() for k, v in tensors.items()}))
        else:
            out.write_bytes("adversarials.pt", torch_bytes(tensors))
        out.write_json("attack.json", {"command": "attack", "attack": spec.name, "norm": spec.norm_name,
                                       "parameters": ev.plans[0]["params"], "eps": args.eps,
                                       "targeted": args.targeted, "summary": ev.row(spec.name),
                                       "clean_accuracy": ev.clean_accuracy, "samples": ev.samples})
    print(f"wrote {args.out}/: adversarials.{args.format}, attack.json and the evaluation reports")


def describe(spec, measure: bool = False) -> str:
    """An attack's card: kind, norm, paper, every parameter with its default, quick settings."""
    params = spec.parameters()
    width = max([len(k) for k in params] + [4])
    lines = [f"{spec.name}: {spec.description}", f"  paper: {spec.paper}",
             f"  norm: {spec.norm_name}; {'minimal norm' if spec.minimal else 'fixed eps (needs --eps)'}; "
             f"targeted: {'yes' if spec.targeted else 'no'}", "  parameters (defaults):"]
    lines += [f"    {k.ljust(width)}  {v!r}{'  (fixed by this entry)' if k in spec.fixed_params else ''}"
              for k, v in params.items()]
    if spec.quick:
        lines.append(f"  quick settings (--quick): {spec.quick}")
    lines.append("  " + _measured_passes(spec, measure))
    lines.append(f"  function: {spec.fn.__module__}.{spec.fn.__name__}")
    return "\n".join(lines)


def _measured_passes(spec, at_defaults: bool) -> str:
    """Passes per sample measured on 2 images of the shipped mlp: at the quick settings, and at
    the defaults when asked (a guide for --budget; the defaults of some attacks take minutes)."""
    import math

    from ..data import load_sample
    from ..models import load_shipped

    x, y = load_sample()
    eps = {} if spec.minimal else {"eps": 0.03 if math.isinf(spec.norm) else 0.5 if spec.norm == 2 else 5.0}
    model = load_shipped("mlp")
    parts = []
    for label, kw in [("quick settings", spec.quick)] + ([("defaults", {})] if at_defaults else []):
        p = spec(model, x[:2], y[:2], **{**eps, **kw}).passes.double()
        parts.append(f"{label}: median {float(p.median()):.0f}, max {float(p.max()):.0f}")
    more = "" if at_defaults else " (--measure adds the defaults)"
    return f"passes per sample on 2 images of the shipped mlp, {'; '.join(parts)}{more}; --budget caps them"
