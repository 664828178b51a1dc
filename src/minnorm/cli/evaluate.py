"""``minnorm evaluate``: several registered attacks over a data set, with every report."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from . import _common as c


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="robustness evaluation: attacks over a data set, resumable, with reports",
        description="Run registered attacks on the correctly classified samples of a data set, batch by "
                    "batch. With --out, each batch is saved as it finishes (an interrupted run resumes "
                    "when started again with the same settings) and results.json, samples.csv, summary.csv, "
                    "summary.md, plots/*.png and report.html are written at the end. Under "
                    "`torchrun --nproc_per_node K -m minnorm evaluate ...` the batches are shared among K "
                    "processes and merged into the result of a single process.",
        epilog="examples:\n  minnorm evaluate --model cnn --data sample --n 100 --attacks ddn,tr-l2,deepfool-l2 "
               "--out out/\n  minnorm evaluate --attacks fgsm,pgd-linf,tr-linf --norm inf --epsilons 0.05,0.1,0.2 "
               "--out out/\n  minnorm evaluate --attacks pgd-l2,ddn --eps-search --param pgd-l2.steps=20 --out out/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attacks", metavar="A,B,...", help="registered attack names (minnorm attack --list); with "
                                                       "--norms, of any of them (default there: a preset per norm)")
    p.add_argument("--norm", help="norm of the evaluation: 1, 2 or inf (default: the first attack's); not with --norms")
    p.add_argument("--preset", choices=["standard"], help="standard: the standard ensemble of the norm "
                                                          "(ensemble-NORM: cheap attacks first, costly ones where "
                                                          "they disagree, 2000 passes per sample) and, with --eps, "
                                                          "APGD-CE at those radii (apgd-at-eps-NORM); the default "
                                                          "when no attack is named")
    p.add_argument("--norms", metavar="N,N", help="several norms in one run, e.g. l2,linf: one evaluation per norm "
                                                  "in OUT/<norm>/ and one report with a section per norm")
    p.add_argument("--param", action="append", metavar="ATTACK.KEY=VALUE", default=[],
                   help="attack hyper-parameter as a Python literal, e.g. ddn.steps=200; the ATTACK. prefix may "
                        "be left out when only one attack is given (repeatable)")
    p.add_argument("--model", default="cnn", help="shipped model name, pkg.module:factory, or the .json that "
                                                   "minnorm train --export wrote (default: cnn)")
    p.add_argument("--weights", help="weights to load into the model (.safetensors or .pt)")
    c.add_model_args(p)
    p.add_argument("--data", default="sample",
                   help="sample, fashion-mnist, cifar10, a dataset path, or a .pt/.safetensors file with x and y "
                        "(default: sample)")
    p.add_argument("--n", "--samples", dest="n", type=c.positive_int,
                   help="evaluate the first N samples (default: all); under torchrun write --samples N")
    p.add_argument("--eps", help="radii to report robust accuracy at (headline line and table columns), e.g. "
                                 "8/255 or 0.5,1.0; with --norms per norm: linf=8/255,l2=0.5; fixed-epsilon "
                                 "attacks run there unless --epsilons is given")
    p.add_argument("--targets", help="targeted evaluation: a class index, random, least-likely or all "
                                     "(every other class; a sample's norm is its smallest over them)")
    p.add_argument("--certify", nargs="?", const="bound", choices=["bound", "exact"],
                   help="bracket each sample: certified radius by bound propagation (bound, the default) and, with "
                        "exact, the exact minimal norm where a MIP solver proves it (piecewise-linear models)")
    p.add_argument("--certify-time-limit", type=c.seconds, default=120.0,
                   help="seconds per sample for --certify exact (default: 120)")
    p.add_argument("--epsilons", help="radii to run fixed-epsilon attacks at, increasing: 0.1,0.3 or start:stop:count")
    p.add_argument("--eps-search", action="store_true",
                   help="turn fixed-epsilon attacks into minimal-norm estimates by a per-sample bisection")
    p.add_argument("--search-steps", type=c.positive_int, help="bisection steps of --eps-search (default: 10)")
    p.add_argument("--search-max", type=c.radius, help="upper end of the bisection (default: the box diameter)")
    p.add_argument("--grid", help="epsilon grid of the robust accuracy curves, increasing: 0,0.5,1 or 0:2:21 "
                                  "(default: 21 radii up to the largest best-of-all norm)")
    _add_output_args(p)
    c.add_run_args(p)
    p.set_defaults(func=run)


def _add_output_args(p) -> None:
    """Budget, output folder, report and sanity-check options."""
    p.add_argument("--budget", type=c.positive_int, help="forward+backward passes allowed per sample and attack")
    p.add_argument("--out", help="output folder (saved batches, reports); default: print only")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--examples", type=int, default=6, help="example images in the report (default: 6)")
    p.add_argument("--no-adversarials", action="store_true",
                   help="do not keep inputs and adversarials with the batches (no example figure)")
    p.add_argument("--sanity-margin", type=float, default=0.1,
                   help="robust-accuracy margin by which a fixed-epsilon attack beating every minimal-norm "
                        "attack is flagged (default: 0.1)")


def attack_params(items: list[str], names: list[str]) -> dict[str, dict]:
    """``ddn.steps=50`` -> ``{"ddn": {"steps": 50}}``; a bare key needs a single attack."""
    per: dict[str, dict] = {n: {} for n in names}
    for item in items:
        key, sep, value = item.partition("=")
        attack, dot, name = key.strip().partition(".")
        if not dot:
            if len(names) != 1:
                raise ValueError(f"--param {item!r}: say which attack it is for, e.g. {names[0]}.{key.strip()}=...")
            attack, name = names[0], attack
        if name.strip() == "eps":
            raise ValueError(f"--param {item!r}: give the radii of fixed-epsilon attacks with --epsilons (or --eps) "
                             "and the upper end of --eps-search with --search-max, not --param eps")
        if attack not in per:
            raise ValueError(f"--param {item!r}: {attack!r} is not one of --attacks ({', '.join(names)})")
        per[attack].update(c.parse_params([f"{name}{sep}{value}"]))
    return per


def load_model_checked(args, device: torch.device) -> torch.nn.Module:
    try:
        return c.model_from_args(args, device)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # a factory or a weights file that does not fit: say which
        what = f"--weights {args.weights} into --model {args.model}" if args.weights else f"--model {args.model}"
        raise ValueError(f"could not load {what}: {type(err).__name__}: {err}. Check that the weights were saved "
                         "from this architecture and that the factory builds it without arguments") from None


def load_data_checked(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    looks_like_path = os.sep in spec or spec.startswith(".") or Path(spec).suffix != ""
    if looks_like_path and ":" not in spec and not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"--data: no such file or folder: {spec}; give an existing path, or one of "
                                "sample, fashion-mnist, cifar10")
    return c.load_data(spec)


def attack_names(args: argparse.Namespace) -> list[str]:
    """The attacks named by --attacks or --preset, checked (with --norm/--norms) before any loading."""
    from ..evaluation.norms import split_attacks

    unused = [flag for flag, value in (("--search-steps", args.search_steps), ("--search-max", args.search_max))
              if value is not None]
    if unused and not args.eps_search:
        verb = "sets" if len(unused) == 1 else "set"
        raise ValueError(f"{' and '.join(unused)} {verb} the bisection of --eps-search; add --eps-search")
    if args.norms is not None and args.norm is not None:
        raise ValueError("--norm and --norms exclude each other: list every norm of the run in --norms, e.g. "
                         "--norms l2,linf")
    if not args.attacks and not args.norms:
        if not args.norm:
            raise ValueError("name the attacks (--attacks ddn,tr-l2), or a norm (--norm inf: its standard ensemble), "
                             "or several (--norms l2,linf)")
        args.preset = "standard"
    if args.preset and args.attacks:
        raise ValueError("--preset and --attacks exclude each other")
    if args.preset and not args.norms:
        (preset,) = split_attacks([args.norm or "inf"], None, norms_with_radii(args)).values()
        args.attacks = ",".join(preset)
    names = [a.strip() for a in (args.attacks or "").split(",") if a.strip()]
    if args.attacks is not None and not names:
        raise ValueError(f"--attacks {args.attacks!r} names no attack; give registered names, e.g. ddn,tr-l2 "
                         "(minnorm attack --list)")
    specs = [c.get_attack(n) for n in names]  # unknown names fail here
    if args.norms is not None:
        per_norm = split_attacks(norm_list(args.norms), names or None, norms_with_radii(args))
        specs = [c.get_attack(n) for group in per_norm.values() for n in group]
    note_unused_radii(args, specs)
    return names


def norms_with_radii(args: argparse.Namespace) -> set[str]:
    """The norms --eps gives radii for (the preset adds APGD at those radii), none when searching."""
    from ..core import parse_norm
    from ..evaluation.plan import norm_name

    if not args.eps or args.eps_search:
        return set()
    if args.norms is None:
        return {norm_name(parse_norm(args.norm or "inf"))}
    return {norm_name(parse_norm(norm)) for norm in parse_eps(args.eps, per_norm=True)}


def norm_list(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def note_unused_radii(args: argparse.Namespace, specs) -> None:
    """A note on stderr when the options of fixed-epsilon attacks meet only minimal-norm ones."""
    given = [name for name, value in (("--epsilons", args.epsilons), ("--eps-search", args.eps_search),
                                      ("--search-max", args.search_max)) if value not in (None, False)]
    if given and all(s.minimal for s in specs) and int(os.environ.get("RANK", "0")) == 0:
        print(f"note: {', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to fixed-epsilon attacks only; "
              f"{', '.join(s.name for s in specs)} {'is' if len(specs) == 1 else 'are'} minimal-norm, so "
              f"{'it is' if len(given) == 1 else 'they are'} not used", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from .. import evaluation
    from ..evaluation.plan import parse_grid

    c.check_out(args.out)  # before anything runs
    names = attack_names(args)
    params = attack_params(args.param, names)
    epsilons = parse_grid(args.epsilons, "--epsilons") if args.epsilons else None
    eps = parse_eps(args.eps, bool(args.norms))
    targets = None if args.targets is None else (int(args.targets) if args.targets.isdigit() else args.targets)
    grid = parse_grid(args.grid, "--grid") if args.grid else None
    device = c.resolve_device(args.device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per torchrun rank
    x, y = load_data_checked(args.data)
    if args.n is not None:
        x, y = x[:args.n], y[:args.n]
    model = load_model_checked(args, device)
    x, y = c.fit_data(model, c.reshape_inputs(x, args.input_shape), y, device, args.data)
    shared = dict(batch_size=args.batch_size, seed=args.seed, budget=args.budget, epsilons=epsilons,
                  eps_search=args.eps_search, search_steps=args.search_steps or 10, search_max=args.search_max, grid=grid,
                  overwrite=args.overwrite, device=device, save_adversarials=not args.no_adversarials,
                  examples=args.examples, sanity_margin=args.sanity_margin, quick=args.quick, targets=targets,
                  certify=args.certify, certify_time_limit=args.certify_time_limit,
                  describe={"model": {"name": args.model, "weights": args.weights},
                            "data": {"name": args.data, "first": args.n}})
    if args.norms is not None:
        results = evaluation.evaluate_norms(model, (x, y), norm_list(args.norms), params if names else None,
                                            eps=eps, out=args.out, **shared)
    else:
        norm = args.norm if args.norm is not None else c.get_attack(names[0]).norm
        results = {"": evaluation.evaluate(model, (x, y), params, norm, out=args.out, eps=eps, **shared)}
    if int(os.environ.get("RANK", "0")) == 0:
        for norm, ev in results.items():
            if norm:
                print(f"\n== {norm} ==")
            print_evaluation(ev)
        if args.out:
            print(f"wrote {args.out}/: results.json samples.csv summary.csv summary.md plots/ report.html"
                  + (" (one folder per norm, report.html over all)" if args.norms else ""))
    return 0


def parse_eps(text: str | None, per_norm: bool):
    """``8/255,0.1`` (one norm) or ``linf=8/255,l2=0.5`` (with --norms)."""
    from ..evaluation.plan import parse_grid

    if not text:
        return None
    if not per_norm:
        if "=" in text:
            raise ValueError("--eps NORM=RADIUS needs --norms; with one norm give the radii alone, e.g. --eps 8/255")
        return parse_grid(text, "--eps")
    out: dict[str, list[float]] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        norm, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--eps with --norms: give NORM=RADIUS items, e.g. linf=8/255,l2=0.5; got {item!r}")
        out.setdefault(norm.strip(), []).append(value.strip())
    return {n: parse_grid(",".join(v), f"--eps {n}") for n, v in out.items()}


def print_evaluation(ev) -> None:
    from ..evaluation.report import settings_lines, table_cells

    for line in settings_lines(ev):
        print(line)
    print(c.format_table(*table_cells(ev)))
    for line in ev.headlines():
        print(line)
    ratios = ev.exact_ratios()
    if ratios:
        n = next(iter(ratios.values()))["samples"]
        print(f"norm / exact minimum on the {n} samples a solver proved (median, p90, worst, share within 1.001):")
        for a, r in ratios.items():
            print(f"  {a:<14} {r['median']:.4f}  {r['p90']:.4f}  {r['worst']:.4f}  {100 * r['within_1.001']:.0f}%")
    for w in ev.warnings:
        print(f"WARNING [{w['check']}]: {w['message']}")
