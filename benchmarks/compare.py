"""Side by side: a minnorm attack against the same method in adv_lib, Foolbox 3 and torchattacks.

Same model (eval mode), same images (the first n correctly classified of the embedded sample),
same budget (translated into each library's parameter names by peers.py), one batch each.
Every returned tensor is scored here, not by its library: finite, inside the box, within eps
for fixed-eps attacks, and misclassified by a fresh forward pass; anything else is a failure
with norm inf (Foolbox's convention), so medians include failures. Wall time is the median of
``--repeats`` runs, interleaved and in rotating order so that load from other processes hits
every library alike.

    python benchmarks/compare.py --attack deepfool-l2 --model cnn --n 200
    python benchmarks/compare.py --attack cw-l2 --budget binary_search_steps=5 --budget steps=200 --markdown
"""
from __future__ import annotations

import argparse
import ast
import math
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peers as peer_lib  # noqa: E402

import minnorm  # noqa: E402


@dataclass
class Entry:
    name: str
    call: object  # () -> adversarial tensor
    times: list[float] = field(default_factory=list)
    adversarials: torch.Tensor | None = None
    rows: int = 0  # rows forwarded through the model in the first run
    error: str | None = None
    note: str = ""
    passes: str = ""


def parse_budget(items: list[str], method: peer_lib.Method) -> dict:
    budget = dict(method.budget)
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in budget:
                raise SystemExit(f"--budget: expected key=value with key in {sorted(budget)}, got {part!r}")
            try:
                budget[key] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                budget[key] = value.strip()
    return budget


def build_entries(method: peer_lib.Method, model, x, y, budget: dict, libraries: list[str], seed: int) -> list[Entry]:
    spec = minnorm.attacks.get(method.attack)
    kwargs = method.minnorm_kwargs(spec.fn, budget)
    entries = []

    def run_minnorm():
        res = spec(model, x, y, generator=torch.Generator(device=x.device).manual_seed(seed), **kwargs)
        entries[0].passes = (f"{res.forward_passes.float().mean():.1f} forward + "
                             f"{res.backward_passes.float().mean():.1f} backward passes per sample")
        return res.adversarials

    entries.append(Entry("minnorm " + method.attack, run_minnorm,
                         note="minnorm: " + ", ".join(f"{k}={v}" for k, v in kwargs.items())))
    for peer in method.peers:
        if peer.library not in libraries:
            continue
        if not peer.available:
            print(f"skipping {peer.library}: not installed (run benchmarks/install_peers.sh)", file=sys.stderr)
            continue

        def run_peer(peer=peer):
            torch.manual_seed(seed)  # peers draw random starts from the global RNG
            return peer.run(model, x.clone(), y.clone(), budget)

        entries.append(Entry(f"{peer.library} {peer.label}", run_peer, note=peer.note))
    return entries


def run_interleaved(entries: list[Entry], repeats: int, counter: common.RowCounter) -> None:
    for r in range(repeats):
        k = r % len(entries)
        for entry in entries[k:] + entries[:k]:
            if entry.error:
                continue
            counter.rows = 0
            start = time.perf_counter()
            try:
                adv = entry.call()
            except Exception as err:  # a peer that crashes is reported, not fatal
                entry.error = f"{type(err).__name__}: {err}"
                traceback.print_exc()
                continue
            entry.times.append(time.perf_counter() - start)
            if entry.adversarials is None:
                entry.adversarials, entry.rows = adv.detach().clone(), counter.rows


def constant_successes(adv: torch.Tensor, score: common.Score) -> int:
    flat = adv.flatten(1)
    return int((score.success & (flat.amax(1) == flat.amin(1)).to(score.success.device)).sum())


def head_to_head(mine: common.Score, theirs: common.Score, name: str) -> str:
    """Per-sample view behind the medians: where both found an adversarial, who is smaller."""
    both = mine.success & theirs.success
    a, b = mine.norms[both], theirs.norms[both]
    tol = 1e-3 * b  # 0.1% counts as a tie
    return (f"vs {name}: both succeed on {int(both.sum())}; minnorm smaller on {int((a < b - tol).sum())}, "
            f"tied (0.1%) on {int(((a - b).abs() <= tol).sum())}, larger on {int((a > b + tol).sum())}; "
            f"only minnorm succeeds on {int((mine.success & ~theirs.success).sum())}, "
            f"only the peer on {int((theirs.success & ~mine.success).sum())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", required=True, choices=sorted(peer_lib.METHODS))
    parser.add_argument("--model", default="cnn", help="shipped model name, or random-cnn (default: cnn)")
    parser.add_argument("--n", type=int, default=200, help="number of images (default: 200)")
    parser.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                        help="override the method's budget (repeatable or comma-separated)")
    parser.add_argument("--peers", default=",".join(peer_lib.LIBRARIES), help="libraries to compare with")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per library (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="append a dated section to RESULTS.md")
    parser.add_argument("--results", type=Path, default=common.RESULTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    method = peer_lib.METHODS[args.attack]
    budget = parse_budget(args.budget, method)
    model, model_desc = common.load_model(args.model)
    x, y, data_desc = common.correct_images(model, args.n)
    counter = common.RowCounter(model).eval()
    entries = build_entries(method, counter, x, y, budget, args.peers.split(","), args.seed)
    run_interleaved(entries, max(1, args.repeats), counter)

    eps = budget["eps"] if method.fixed_eps else None
    scores = {e.name: common.score(model, x, y, e.adversarials, method.norm, eps)
              for e in entries if e.adversarials is not None}
    times = {e.name: statistics.median(e.times) for e in entries if e.times}
    ours = entries[0]
    if ours.error:
        print(f"minnorm failed: {ours.error}", file=sys.stderr)
        return 1
    mine, t_mine = scores[ours.name], times[ours.name]
    header = ["pair", "success minnorm", "success peer", "median norm minnorm", "median norm peer",
              "norm ratio", "time minnorm (s)", "time peer (s)", "time ratio", "fwd/sample minnorm", "fwd/sample peer"]
    n = max(x.shape[0], 1)
    rows = []
    for e in entries[1:]:
        if e.error:
            rows.append([f"vs {e.name}", f"{mine.success_rate:.1%}", "error", common.fmt_norm(mine.median),
                         "-", "-", f"{t_mine:.2f}", "-", "-", f"{ours.rows / n:.1f}", "-"])
            continue
        s, t = scores[e.name], times[e.name]
        rows.append([f"vs {e.name}", f"{mine.success_rate:.1%}", f"{s.success_rate:.1%}", common.fmt_norm(mine.median),
                     common.fmt_norm(s.median), common.fmt_ratio(mine.median, s.median, 3), f"{t_mine:.2f}", f"{t:.2f}",
                     common.fmt_ratio(t_mine, t), f"{ours.rows / n:.1f}", f"{e.rows / n:.1f}"])
    norm_name = "linf" if math.isinf(method.norm) else f"l{method.norm:g}"
    budget_text = ", ".join(f"{k}={v}" for k, v in budget.items())
    notes = [e.note for e in entries if e.note]
    notes += [f"{e.name}: {s.outside_box} returned points outside the box, {s.over_eps} beyond eps (failures)"
              for e in entries if (s := scores.get(e.name)) and (s.outside_box or s.over_eps)]
    notes += [f"{e.name}: {k} successes are constant images (a library's fallback output, e.g. Foolbox CW "
              "returns zeros where it found nothing, that the model happens to misclassify)"
              for e in entries if e.name in scores and (k := constant_successes(e.adversarials, scores[e.name]))]
    notes += [f"{e.name} raised {e.error}" for e in entries if e.error]
    notes += [head_to_head(mine, scores[e.name], e.name) for e in entries[1:] if e.name in scores]
    if ours.passes:
        notes.append(f"minnorm used {ours.passes}")

    print(f"{method.name} ({norm_name}) on {model_desc}; {data_desc}; budget: {budget_text}")
    print(f"wall time: median of {args.repeats} interleaved runs, {x.shape[0]} images in one batch, "
          f"torch threads {args.threads}; fwd/sample: rows the model forwarded / images\n")
    print(common.text_table(header, rows))
    for note in notes:
        print("  - " + note)

    if args.markdown:
        versions = ", ".join(f"{lib} {peer_lib.library_version(lib) or 'not installed'}" for lib in peer_lib.LIBRARIES)
        command = "python benchmarks/compare.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        section = "\n".join([
            f"## {method.name} vs peers, model `{args.model}`, {common.today()}", "",
            f"- Machine: {common.machine_info(args.threads)}",
            f"- Peers: {versions}",
            f"- Model: {model_desc}; data: {data_desc}",
            f"- Budget ({norm_name}): {budget_text}",
            f"- Wall time: median of {args.repeats} interleaved runs, one batch of {x.shape[0]}; "
            "fwd/sample: rows the model forwarded per image (all calls, clean and final passes included)",
            f"- Command: `{command}`", "",
            common.markdown_table(header, rows), "",
            *[f"- {n}" for n in notes],
        ])
        common.append_results(section, args.results)
        print(f"\nappended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
