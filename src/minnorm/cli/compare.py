"""``minnorm compare RUN RUN ...``: a leaderboard of evaluation runs, per norm."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="leaderboard of `minnorm evaluate --out` runs: robust accuracy at eps, per norm",
        description="Rank evaluation runs (models, defences, attack settings) by robust accuracy at one radius "
                    "per norm (best of all attacks, an upper bound), with clean accuracy, median norm, passes per "
                    "sample, over-budget and warning counts; then, per norm, each attack of each run side by side "
                    "on a shared epsilon grid, and the settings that differ. Runs of different norms are never "
                    "put in one table or on one axis. A folder of an `evaluate --norms l2,linf` run counts as one "
                    "run per norm. With --out, also write compare.md, compare.csv, compare.html (self-contained) "
                    "and compare.png (overlaid curves, one colour per run, one panel per norm).",
        epilog="examples:\n  minnorm compare out/cnn out/resnet out/mlp --eps 0.5 --out out/cmp\n"
               "  minnorm compare out/a out/b --labels plain,adv-trained --eps l2=0.5,linf=8/255",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="output folders of minnorm evaluate")
    p.add_argument("--labels", metavar="A,B,...", help="names of the runs, one per RUN (default: the folder names)")
    p.add_argument("--eps", metavar="EPS", help="radius of the leaderboard: 0.5 or 8/255 when all runs share a norm, "
                                                "else per norm: l2=0.5,linf=8/255 (default: the radius a run was "
                                                "evaluated at, else the runs' median best-of-all norm)")
    p.add_argument("--out", help="folder for compare.md, compare.csv, compare.html and compare.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.compare import compare, differences_by_norm, eps_text, leaderboard_cells, side_by_side
    from ..evaluation.plots import norm_label
    from ._common import format_table

    labels = None if args.labels is None else [s.strip() for s in args.labels.split(",")]
    res = compare(args.runs, args.out, labels, args.eps)
    for label, ev in res.runs:
        print(f"{label}: {ev.folder} ({norm_label(ev.config['norm'])}, "
              f"{ev.samples} samples, clean accuracy {100 * ev.clean_accuracy:.1f}%, "
              f"{len(ev.warnings)} warning(s))")
    for d in differences_by_norm(res):
        print(f"differs: {d}")
    for norm, runs in res.groups.items():
        print(f"\n{norm}: robust accuracy at eps = {eps_text(res.eps[norm])} ({res.eps_origin[norm]}), best of all "
              "attacks (an upper bound)")
        print(format_table(*leaderboard_cells(res.rows, norm)))
        if len(runs) > 1:
            print(f"\n{norm}: attack by attack")
            print(format_table(*side_by_side([ev for _, ev in runs], [label for label, _ in runs], res.eps[norm])))
    if args.out:
        print(f"\nwrote {args.out}/: compare.md compare.csv compare.html compare.png")
    return 0
