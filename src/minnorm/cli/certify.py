"""``minnorm certify``: per-sample brackets ``certified <= minimal norm <= attack`` (exact where solved)."""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math

import torch

from . import _common as c

CSV_COLUMNS = ["index", "label", "status", "lower", "upper", "gap", "seconds"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "certify", help="exact minimal perturbations (MILP) and certified lower bounds per sample",
        description="Bracket every sample's minimal adversarial norm: a certified lower bound (linear "
                    "bound propagation) and an attack's upper bound, closed to the exact value by a "
                    "mixed-integer solver where it finishes within --time-limit. Piecewise-linear models "
                    "only (Linear, Conv, ReLU, LeakyReLU, MaxPool, AvgPool, eval BatchNorm, Normalize, "
                    "residual adds). Writes certify-NORM.csv and certify-NORM.json (NORM: linf, l2 or l1, "
                    "however --norm is spelled) to --out.",
        epilog="examples:\n  minnorm certify --model mlp-tiny --data sample --n 20 --norm linf\n"
               "  minnorm certify --model cnn --n 10 --norm l2 --mode lower --out out/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp-tiny", help="shipped model name or pkg.module:factory (default: mlp-tiny)")
    p.add_argument("--weights", help="weights to load into the model (.safetensors or .pt)")
    p.add_argument("--data", default="sample", help="sample, fashion-mnist, a dataset path or tensor file (default: sample)")
    p.add_argument("--n", type=c.positive_int, default=20, help="the first N samples (default: 20)")
    p.add_argument("--norm", default="linf", help="linf, l2 or l1 (default: linf)")
    p.add_argument("--mode", choices=["exact", "lower"], default="exact",
                   help="exact: solve for the minimum (default); lower: certified radius only (fast)")
    p.add_argument("--time-limit", type=float, default=120.0,
                   help="solver seconds per sample, finite and > 0 (default: 120)")
    p.add_argument("--attack", action="append", metavar="NAME",
                   help="minimal-norm attack(s) for the upper bound (default: tr-linf, ddn or convex-min-l1)")
    p.add_argument("--solver", choices=["auto", "scip", "highs"], default="auto", help="MIP solver (default: auto = SCIP)")
    p.add_argument("--out", help="folder for certify-NORM.csv/.json (e.g. an evaluation's --out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import certify
    from ..core import norm_name, parse_norm

    p = parse_norm(args.norm)
    args.norm = norm_name(p)  # one spelling in file names, JSON and output: linf, l2, l1
    certify.check_time_limit(args.time_limit, "--time-limit")
    c.check_out(args.out)  # before anything runs
    model = c.load_model(args.model, args.weights, "cpu")
    certify.build_graph(model)  # refuse a model it cannot encode before reading data or attacking
    x, y = c.load_data(args.data, model)
    x, y = x[:args.n], y[:args.n]
    with _open_out(args.out) if args.out else contextlib.nullcontext() as folder:
        if args.mode == "exact":
            res = certify.exact(model, x, y, norm=p, time_limit=args.time_limit, attack=args.attack,
                                solver=args.solver, progress=not args.no_progress)
        else:
            res = certify.lower_bound(model, x, y, norm=p, attack=args.attack)
        rows = _rows(res, y)
        print(c.format_table(CSV_COLUMNS, [[r[k] if not isinstance(r[k], float) else c.fmt(r[k])
                                            for k in CSV_COLUMNS] for r in rows]))
        print(_summary(res, args))
        if folder is not None:
            _write(folder, args, res, rows)
    return 0


def _open_out(path: str):
    """The ``--out`` folder, created and locked before the solver runs: a folder that cannot be
    made (``/sys/foo``) or that another minnorm process holds is refused before, not after, it."""
    from ..evaluation.store import OutputFolder

    try:
        return OutputFolder(path).lock()
    except OSError as err:
        raise ValueError(f"cannot create --out {path}: {err.strerror or err}") from None


def _rows(res, y: torch.Tensor) -> list[dict]:
    out = []
    for i in range(len(res)):
        lo, up = float(res.lower[i]), float(res.upper[i])
        out.append({"index": i, "label": int(y[i]), "status": res.status[i], "lower": lo, "upper": up,
                    "gap": up / lo if lo > 0 and math.isfinite(up) else math.inf, "seconds": float(res.seconds[i])})
    return out


def _summary(res, args) -> str:
    counts = {s: res.status.count(s) for s in dict.fromkeys(res.status)}
    what = ", ".join(f"{v} {k}" for k, v in counts.items())
    return (f"{args.model} {args.norm}: {len(res)} samples: {what}; {float(res.seconds.sum()):.1f} s in total. "
            "lower = certified (or proven) lower bound, upper = norm of a witness re-checked by the model.")


def _strict(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def _clean(obj):
    """Strict JSON values: non-finite floats become null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return _strict(float(obj)) if isinstance(obj, float) else obj


def _write(folder, args, res, rows) -> None:
    """Both files or neither, never through a symbolic link (see ``OutputFolder``)."""
    from ..evaluation.store import json_text

    name = f"certify-{args.norm}"
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    doc = {"command": "certify", "model": args.model, "weights": args.weights, "data": args.data, "n": args.n,
           "norm": args.norm, "mode": args.mode, "time_limit": args.time_limit, "attack": args.attack,
           "solver": args.solver, "info": _clean({k: v for k, v in res.info.items() if isinstance(v, (str, list))}),
           "samples": [{k: _strict(v) for k, v in r.items()} for r in rows]}
    with folder.staging() as stage:
        (stage / f"{name}.csv").write_text(buf.getvalue())
        (stage / f"{name}.json").write_text(json_text(doc))
        folder.commit(stage)
    print(f"wrote {folder.path / name}.csv and {folder.path / name}.json")
