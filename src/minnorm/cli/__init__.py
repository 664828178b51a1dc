"""The ``minnorm`` command. Thin: it parses, calls the library, prints.

Each module in this package is one sub-command and exposes ``add_parser(subparsers)``, which
adds its parser and sets ``func`` (called with the parsed namespace, returns an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


# Errors that mean "what you gave me is wrong or cannot be used" (bad options, unreadable or
# hostile files, an output folder that cannot be written): one line and exit code 2. Readers
# turn what their libraries raise (unpickling, gzip, safetensors errors) into ValueError; any
# other exception is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, TypeError, KeyError, OSError)


def one_line(err: BaseException) -> str:
    """The exception's message on one line (its type when it has none)."""
    lines = [s.strip() for s in str(err).splitlines() if s.strip()]
    return "; ".join(lines) if lines else type(err).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minnorm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits with 2 on a bad option, after one usage line
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except INPUT_ERRORS as err:
        print(f"minnorm {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minnorm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
