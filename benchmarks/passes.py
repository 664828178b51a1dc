"""Cost and strength of every registered attack on one model: success rate, median norm
(failures as inf), forward and backward passes per sample (minnorm's own per-sample counts,
so early stopping shows) and wall seconds per sample.

Each attack runs with its registered defaults (or ``--quick`` settings, or ``--param``
overrides); fixed-eps attacks get the eps given per norm by ``--eps``.

    python benchmarks/passes.py --model cnn --n 100
    python benchmarks/passes.py --attacks ddn,cw-l2 --param cw-l2:max_iterations=200 --markdown
"""
from __future__ import annotations

import argparse
import ast
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import minnorm  # noqa: E402

DEFAULT_EPS = {"l1": 10.0, "l2": 1.0, "linf": 0.1}


def parse_params(items: list[str]) -> dict[str, dict]:
    """``attack:key=value`` -> {attack: {key: value}}."""
    out: dict[str, dict] = {}
    for item in items:
        name, _, assignment = item.partition(":")
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip().isidentifier():
            raise SystemExit(f"--param expects attack:key=value, got {item!r}")
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = value.strip()
        out.setdefault(name.strip(), {})[key.strip()] = parsed
    return out


def settings(spec, quick: bool, eps: dict[str, float], params: dict[str, dict]) -> dict:
    kwargs = dict(spec.quick) if quick else {}
    if not spec.minimal:
        kwargs["eps"] = kwargs.get("eps", eps[spec.norm_name]) if quick else eps[spec.norm_name]
    kwargs.update(params.get(spec.name, {}))
    return kwargs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn", help="shipped model name, or random-cnn (default: cnn)")
    parser.add_argument("--n", type=int, default=100, help="number of images, one batch (default: 100)")
    parser.add_argument("--attacks", default="", help="comma-separated subset (default: all registered)")
    parser.add_argument("--quick", action="store_true", help="use each attack's registered quick settings")
    parser.add_argument("--param", action="append", default=[], metavar="ATTACK:KEY=VALUE")
    parser.add_argument("--eps", action="append", default=[], metavar="NORM=VALUE",
                        help=f"eps for fixed-eps attacks per norm (default: {DEFAULT_EPS})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="append a dated section to RESULTS.md")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    eps = dict(DEFAULT_EPS)
    for item in args.eps:
        key, _, value = item.partition("=")
        if key not in eps:
            raise SystemExit(f"--eps: norm must be one of {sorted(eps)}, got {key!r}")
        eps[key] = float(value)
    params = parse_params(args.param)
    names = [a.strip() for a in args.attacks.split(",") if a.strip()] or minnorm.attacks.available()
    model, model_desc = common.load_model(args.model)
    x, y, data_desc = common.correct_images(model, args.n)
    n = x.shape[0]

    header = ["attack", "norm", "settings", "success", "median norm", "forward/sample", "backward/sample",
              "ms/sample"]
    rows = []
    for name in names:
        spec = minnorm.attacks.get(name)
        kwargs = settings(spec, args.quick, eps, params)
        generator = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        try:
            res = spec(model, x, y, generator=generator, **kwargs)
        except NotImplementedError as err:
            print(f"{name}: skipped ({err})", file=sys.stderr)
            continue
        seconds = time.perf_counter() - start
        s = common.score(model, x, y, res.adversarials, spec.norm, kwargs.get("eps"))
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"
        rows.append([name, spec.norm_name, shown, f"{s.success_rate:.1%}", common.fmt_norm(s.median),
                     f"{res.forward_passes.float().mean():.1f}", f"{res.backward_passes.float().mean():.1f}",
                     f"{1000 * seconds / max(n, 1):.1f}"])
        print(common.text_table(header, rows[-1:]).splitlines()[-1], file=sys.stderr)

    print(f"{model_desc}; {data_desc}; one batch of {n}; torch threads {args.threads}\n")
    print(common.text_table(header, rows))
    if args.markdown:
        command = "python benchmarks/passes.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        section = "\n".join([
            f"## Passes and time per sample, model `{args.model}`, {common.today()}", "",
            f"- Machine: {common.machine_info(args.threads)}",
            f"- Model: {model_desc}; data: {data_desc}; one batch of {n}",
            f"- Command: `{command}`", "",
            common.markdown_table(header, rows), "",
            "Success is re-checked by a fresh forward pass; median norm counts failures as inf. "
            "Pass counts are minnorm's per-sample counters (clean and final pass included).",
        ])
        common.append_results(section, args.results)
        print(f"\nappended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
