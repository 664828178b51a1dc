"""``minnorm report DIR``: rebuild every report of an evaluation from its saved batches."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="rebuild the reports of a `minnorm evaluate --out DIR` run",
        description="Recompute results.json, samples.csv, summary.csv, summary.md, plots/ and report.html "
                    "from the batches saved in DIR (no model needed). Works on an interrupted run too, "
                    "reporting the batches it has.")
    p.add_argument("folder", metavar="DIR", help="output folder of minnorm evaluate")
    p.add_argument("--grid", help="epsilon grid of the robust accuracy curves, increasing: 0,0.5,1 or 0:2:21")
    p.add_argument("--out", help="write the reports here instead of DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import Evaluation
    from ..evaluation.plan import parse_grid
    from .evaluate import print_evaluation

    grid = parse_grid(args.grid, "--grid") if args.grid else None
    ev = Evaluation.load(args.folder, grid=grid)
    target = ev.save(args.out or args.folder)
    print_evaluation(ev)
    print(f"wrote {target}/: results.json samples.csv summary.csv summary.md plots/ report.html")
    return 0
