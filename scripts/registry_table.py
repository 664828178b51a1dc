"""Print the attack registry as a markdown table, or refresh it in README.md.

    python scripts/registry_table.py                    # print
    python scripts/registry_table.py --update README.md # rewrite between the registry markers
"""
from __future__ import annotations

import argparse
from pathlib import Path

from minnorm.attacks import specs

START, END = "<!-- registry:start -->", "<!-- registry:end -->"


def registry_markdown() -> str:
    lines = ["| attack | norm | kind | targeted | paper | what it does |", "|---|---|---|---|---|---|"]
    for s in specs():
        kind = "minimal norm" if s.minimal else "fixed eps"
        lines.append(f"| `{s.name}` | {s.norm_name} | {kind} | {'yes' if s.targeted else 'no'} | {s.paper} "
                     f"| {s.description} |")
    return "\n".join(lines)


def update(path: Path) -> None:
    text = path.read_text()
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not (start and end):
        raise SystemExit(f"{path}: markers {START} ... {END} not found")
    path.write_text(f"{head}{START}\n{registry_markdown()}\n{END}{tail}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--update", type=Path, metavar="FILE", help="rewrite the table inside FILE's markers")
    args = parser.parse_args()
    if args.update:
        update(args.update)
    else:
        print(registry_markdown())
