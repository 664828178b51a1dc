"""``minnorm compare A B``: two evaluation runs side by side."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare two `minnorm evaluate --out` runs side by side",
        description="Print the settings that differ and each attack's success rate, median norm, area gap and "
                    "robust accuracy in both runs, on a shared epsilon grid. With --out, also write "
                    "compare.md and compare.png (robust accuracy curves of both runs).")
    p.add_argument("first", metavar="A", help="output folder of the first run")
    p.add_argument("second", metavar="B", help="output folder of the second run")
    p.add_argument("--labels", default="A,B", help="names of the two runs in the tables (default: A,B)")
    p.add_argument("--out", help="folder for compare.md and compare.png")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.compare import compare, setting_differences, side_by_side
    from ._common import format_table

    labels = tuple(s.strip() for s in args.labels.split(","))
    if len(labels) != 2 or not all(labels):
        raise ValueError(f"--labels expects two names separated by a comma, got {args.labels!r}")
    res = compare(args.first, args.second, args.out, labels)
    a, b = res["a"], res["b"]
    print(f"{labels[0]}: {args.first} ({a.samples} samples, clean accuracy {100 * a.clean_accuracy:.1f}%)")
    print(f"{labels[1]}: {args.second} ({b.samples} samples, clean accuracy {100 * b.clean_accuracy:.1f}%)")
    for d in setting_differences(a, b):
        print(f"differs: {d}")
    print(format_table(*side_by_side(a, b, labels)))
    if args.out:
        print(f"wrote {args.out}/compare.md, compare.png")
    return 0
