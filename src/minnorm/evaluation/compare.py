"""Many evaluation runs side by side: a leaderboard per norm, the attacks of each run, curves.

``minnorm compare RUN RUN ...`` reads run folders (a ``minnorm evaluate --out`` folder, or the
folder of a ``--norms l2,linf`` run, whose ``<norm>/`` subfolders are one run each) and groups
them by norm: radii of different norms never share a column or an axis. Per norm it ranks the
runs by robust accuracy at one radius (best of all attacks, ``Evaluation.robust_accuracy``:
the one tolerance rule), and lists clean accuracy, median norm, passes per sample and the
budget and sanity-check flags; per attack it shows each run's success, median norm and area
gap on a grid shared by the runs of that norm. Reports: ``compare.md``, ``compare.csv``,
``compare.html`` (self-contained) and ``compare.png`` (one panel per norm).
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core import check_radius, parse_norm
from .metrics import ALL
from .plan import norm_name
from .results import Evaluation
from .store import MANIFEST

LEADERBOARD_FIELDS = ["norm", "rank", "run", "folder", "model", "data", "samples", "eps", "clean_accuracy",
                      "robust_accuracy", "certified_robust_accuracy", "median_norm", "passes_per_sample",
                      "over_budget", "attacks", "warnings"]
GLOSSARY = [
    ("RA@eps", "robust accuracy at eps: the fraction of all samples classified correctly and not broken within eps by "
     "any attack of the run (best of all; tolerance rule of docs/evaluation.md). An upper bound on the true robust "
     "accuracy: a run with weaker attacks looks more robust than it is, so compare runs with the same attacks."),
    ("certified RA@eps", "for runs evaluated with --certify: the fraction of all samples proven robust at eps (a "
     "lower bound); the true robust accuracy lies between it and RA@eps."),
    ("median norm", "median of the best-of-all norm over the broken samples."),
    ("passes/sample", "forward plus backward passes per attacked sample, all attacks together."),
    ("over budget", "samples that reached the pass budget in some attack."),
    ("area gap", "mean distance between an attack's robust-accuracy curve and its run's best-of-all curve over the "
     "shared grid, in points of accuracy (0: as strong as all attacks together)."),
]


@dataclass
class Comparison:
    """What :func:`compare` returns: the runs grouped by norm, the radius per norm and how it
    was chosen, the leaderboard rows and the files written."""

    runs: list[tuple[str, Evaluation]]
    groups: dict[str, list[tuple[str, Evaluation]]]
    eps: dict[str, float]
    eps_origin: dict[str, str]
    rows: list[dict[str, Any]]
    paths: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- loading

def load_runs(folders: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[tuple[str, Evaluation]]:
    """``(label, evaluation)`` per run, in the order given. A folder that is no run but holds runs
    in its subfolders gives each of them: a multi-norm run (one per norm) keeps the folder's
    label, as its runs land in different norm groups; other subfolders are ``label/name``."""
    names = run_labels(folders, labels)
    runs = []
    for label, folder in zip(names, folders):
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            subs = sorted(p.parent for p in folder.glob(f"*/{MANIFEST}")) if folder.is_dir() else []
            if subs:
                found = [Evaluation.load(sub) for sub in subs]
                one_per_norm = len({norm_of(ev) for ev in found}) == len(found)
                runs += [(label if one_per_norm else f"{label}/{sub.name}", ev) for sub, ev in zip(subs, found)]
                continue
        runs.append((label, Evaluation.load(folder)))  # says what is wrong with a folder that is no run
    return runs


def run_labels(folders: Sequence[str | Path], labels: Sequence[str] | None) -> list[str]:
    """The given labels (one per folder), else the folders' names (their paths when two names
    clash)."""
    if labels is not None:
        labels = [str(s).strip() for s in labels]
        if len(labels) != len(folders) or not all(labels):
            raise ValueError(f"--labels needs one non-empty name per run: {len(folders)} run(s), got "
                             f"{','.join(labels)!r}")
        return labels
    names = [Path(f).resolve().name or str(f) for f in folders]
    if len(set(names)) != len(names):
        names = [str(f) for f in folders]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def norm_of(ev: Evaluation) -> str:
    """``l2``, ``linf``: the run's norm as a name (the key of its group)."""
    return norm_name(parse_norm(ev.config["norm"]))


def group_by_norm(runs: list[tuple[str, Evaluation]]) -> dict[str, list[tuple[str, Evaluation]]]:
    """The runs of each norm; labels must differ within a norm (a label may name one run per
    norm, e.g. the same model evaluated in L2 and in Linf)."""
    groups: dict[str, list[tuple[str, Evaluation]]] = {}
    for label, ev in runs:
        groups.setdefault(norm_of(ev), []).append((label, ev))
    for norm, part in groups.items():
        labels = [label for label, _ in part]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"--labels must differ between runs of one norm: {', '.join(twice)} names two {norm} "
                             "runs")
    return groups


# --------------------------------------------------------------------------- radii

def parse_eps(text: str | float | None, norms: Sequence[str]) -> dict[str, float]:
    """``--eps``: ``0.5`` or ``8/255`` (when every run is in one norm) or ``l2=0.5,linf=8/255``.
    A single radius for runs of several norms is refused: a radius means nothing across norms."""
    if text is None or text == "":
        return {}
    if not isinstance(text, str):
        text = f"{text!r}"
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if len(parts) == 1 and "=" not in parts[0]:
        if len(norms) != 1:
            raise ValueError(f"--eps {text} is one radius, but the runs are in {' and '.join(norms)}: radii of "
                             "different norms are not comparable; give one per norm, e.g. "
                             f"--eps {','.join(f'{n}=...' for n in norms)}")
        return {norms[0]: check_radius(parts[0], "--eps")}
    out = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--eps {text!r}: write NORM=RADIUS for each norm, e.g. l2=0.5,linf=8/255")
        norm = norm_name(parse_norm(key.strip()))
        if norm not in norms:
            raise ValueError(f"--eps gives a radius for {norm}, but no run is in {norm} (runs: {', '.join(norms)})")
        if norm in out:
            raise ValueError(f"--eps {text!r} gives {norm} twice; give one radius per norm")
        out[norm] = check_radius(value, f"--eps {norm}")
    return out


def default_eps(runs: list[tuple[str, Evaluation]]) -> tuple[float, str]:
    """The radius of a norm group when ``--eps`` does not give one: the first radius a run was
    evaluated at (``evaluate --eps``), else the median over the runs of their best-of-all median
    norm, rounded to two significant digits. Returns it and a note saying which."""
    for label, ev in runs:
        asked = ev.config.get("eps")
        if asked:
            return float(asked[0]), f"the radius {label} was evaluated at"
    medians = [ev.row(ALL)["median_norm"] for _, ev in runs]
    medians = [m for m in medians if isinstance(m, float) and math.isfinite(m) and m > 0]
    if not medians:
        return 0.0, "no run broke any sample"
    m = float(np.median(medians))
    return float(f"{m:.2g}"), "--eps not given: the runs' median best-of-all norm, rounded"


# --------------------------------------------------------------------------- tables

def _f(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.4g}"


def _describe_run(ev: Evaluation) -> tuple[str, str]:
    from .plots import _data_name, _model_name

    return _model_name(ev), _data_name(ev)


def leaderboard(groups: dict[str, list[tuple[str, Evaluation]]], eps: dict[str, float]) -> list[dict[str, Any]]:
    """One row per run, grouped by norm, ranked by robust accuracy at the norm's radius (higher
    first; ties: larger median norm first, then the order given)."""
    rows = []
    for norm, runs in groups.items():
        part = []
        for order, (label, ev) in enumerate(runs):
            model, data = _describe_run(ev)
            best = ev.row(ALL)
            part.append({"norm": norm, "run": label, "folder": str(ev.folder), "model": model, "data": data,
                         "samples": ev.samples, "eps": eps[norm], "clean_accuracy": ev.clean_accuracy,
                         "robust_accuracy": ev.robust_accuracy(eps[norm]),
                         "certified_robust_accuracy": (ev.certified_robust_accuracy(eps[norm])
                                                       if getattr(ev, "certified", False) else math.nan),
                         "median_norm": best["median_norm"],
                         "passes_per_sample": best["passes_per_sample"], "over_budget": best["over_budget"],
                         "attacks": ",".join(ev.attack_names), "warnings": len(ev.warnings), "_order": order})
        part.sort(key=lambda r: (-_num(r["robust_accuracy"]), -_num(r["median_norm"]), r["_order"]))
        for rank, row in enumerate(part, 1):
            row["rank"] = rank
            del row["_order"]
        rows += part
    return rows


def _num(v: Any) -> float:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def eps_text(eps: float) -> str:
    from ..core import radius_text

    return radius_text(eps)


def leaderboard_cells(rows: list[dict[str, Any]], norm: str) -> tuple[list[str], list[list[str]]]:
    part = [r for r in rows if r["norm"] == norm]
    eps = part[0]["eps"] if part else 0.0
    certified = any(not math.isnan(r["certified_robust_accuracy"]) for r in part)
    head = ["#", "run", "model", "data", "samples", "clean accuracy", f"RA@{eps_text(eps)}"]
    head += [f"certified RA@{eps_text(eps)}"] if certified else []
    head += ["median norm", "passes/sample", "over budget", "warnings"]
    rows = []
    for r in part:
        cert = [_f(r["certified_robust_accuracy"], True)] if certified else []
        rows.append([str(r["rank"]), r["run"], r["model"], r["data"], str(r["samples"]), _f(r["clean_accuracy"], True),
                     _f(r["robust_accuracy"], True)] + cert
                    + [_f(r["median_norm"]), "-" if not math.isfinite(r["passes_per_sample"])
                       else f"{r['passes_per_sample']:.1f}", str(r["over_budget"]), str(r["warnings"])])
    return head, rows


def common_grid(evs: Sequence[Evaluation], points: int = 21) -> list[float]:
    """``points`` radii from 0 to the largest grid end of the runs (one norm)."""
    top = max(ev.grid[-1] for ev in evs) or 1.0
    return [top * i / (points - 1) for i in range(points)]


def on_grid(ev: Evaluation, grid: list[float]) -> Evaluation:
    """The same run with its summary (robust accuracy, area gaps) on ``grid``."""
    return Evaluation({**ev.config, "grid": grid}, ev.environments, ev.table, ev.folder)


def side_by_side(evs: Sequence[Evaluation], labels: Sequence[str],
                 eps: float | None = None) -> tuple[list[str], list[list[str]]]:
    """One row per attack present in any run (one norm) and ``All``: success, median norm, area
    gap, robust accuracy at ``eps`` and at a few radii of a grid shared by the runs, each cell
    ``x / y / ...`` in the order of ``labels``."""
    if len({norm_of(ev) for ev in evs}) > 1:
        raise ValueError("a side-by-side table of attacks is for runs of one norm; these are in "
                         + " and ".join(sorted({norm_of(ev) for ev in evs})))
    grid = common_grid(evs)
    evs = [on_grid(ev, grid) for ev in evs]
    names = list(dict.fromkeys(a for ev in evs for a in ev.attack_names)) + [ALL]
    rows = [{r["attack"]: r for r in ev.summary} for ev in evs]
    picks = sorted({round(i * (len(grid) - 1) / 4) for i in range(5)})
    who = "/".join(labels)
    head = ["attack", f"success {who}", f"median norm {who}", f"area gap {who}"]
    head += [f"RA@{eps_text(eps)}"] if eps is not None else []
    head += [f"RA@{grid[i]:.3g}" for i in picks]

    def cell(name: str, get) -> str:
        return " / ".join(get(ev, r[name]) if name in r else "-" for ev, r in zip(evs, rows))

    out = []
    for name in names:
        line = [name, cell(name, lambda ev, r: _f(r["success_rate"], True)),
                cell(name, lambda ev, r: _f(r["median_norm"])), cell(name, lambda ev, r: _f(r["area_gap"], True))]
        if eps is not None:
            line.append(cell(name, lambda ev, r: _f(ev.robust_accuracy(eps, None if r["attack"] == ALL
                                                                           else r["attack"]), True)))
        line += [cell(name, lambda ev, r, i=i: _f(r["robust_accuracy"][i], True)) for i in picks]
        out.append(line)
    return head, out


def load_pair(first: str | Path, second: str | Path, grid: list[float] | None = None) -> tuple[Evaluation, Evaluation]:
    """Two runs of one norm on a shared grid (refuses runs of two norms)."""
    a, b = Evaluation.load(first), Evaluation.load(second)
    if a.config.get("norm") != b.config.get("norm"):
        raise ValueError(f"{first} is in the {a.config.get('norm')} norm and {second} in {b.config.get('norm')}: "
                         "radii of different norms do not share an axis; compare runs of one norm")
    grid = grid or common_grid([a, b])
    return on_grid(a, grid), on_grid(b, grid)


SETTINGS = ("model", "data", "attacks", "norm", "seed", "batch_size", "budget", "search_steps", "bounds", "targets")


def _setting_text(key: str, value: Any) -> str:
    if key == "model" and isinstance(value, dict):
        return f"{value.get('name') or value.get('class')} ({str(value.get('fingerprint', ''))[:12]})"
    if key == "data" and isinstance(value, dict):
        return f"{value.get('name') or 'tensors'}, {value.get('samples')} samples ({str(value.get('fingerprint', ''))[:12]})"
    if key == "attacks" and isinstance(value, list):
        return ", ".join(p["name"] + (json.dumps(p["params"], sort_keys=True, default=str) if p.get("params") else "")
                         + (f" eps {','.join(f'{e:g}' for e in p['epsilons'])}" if p.get("epsilons") else "")
                         for p in value)
    return json.dumps(value, sort_keys=True, default=str)


def setting_differences(runs: Sequence[tuple[str, Evaluation]]) -> list[str]:
    """``key: a=...; b=...`` for each setting that is not the same in every run (attacks: their
    names, or, when the names agree, the parameters of those that differ)."""
    out = []
    for key in SETTINGS:
        texts = [(label, _setting_text(key, ev.config.get(key))) for label, ev in runs]
        if len({t for _, t in texts}) < 2:
            continue
        if key == "attacks":
            texts = _attack_differences(runs)
        out.append(f"{key}: " + "; ".join(f"{label}={t}" for label, t in texts))
    return out


def _attack_differences(runs: Sequence[tuple[str, Evaluation]]) -> list[tuple[str, str]]:
    names = [(label, ",".join(ev.attack_names)) for label, ev in runs]
    if len({t for _, t in names}) > 1:
        return names
    plans = [ev.plans for _, ev in runs]
    differ = [i for i in range(len(plans[0])) if len({_setting_text("attacks", [p[i]]) for p in plans}) > 1]
    return [(label, _setting_text("attacks", [ev.plans[i] for i in differ])) for label, ev in runs]


def differences_by_norm(res: "Comparison") -> list[str]:
    """:func:`setting_differences` within each norm group (across norms the attacks differ anyway),
    prefixed ``[l2]`` when there are several groups."""
    out = []
    for norm, runs in res.groups.items():
        prefix = f"[{norm}] " if len(res.groups) > 1 else ""
        out += [prefix + d for d in setting_differences(runs)]
    return out


# --------------------------------------------------------------------------- reports

def compare_markdown(res: Comparison, plot: str | None = None) -> str:
    out = ["# Comparison: " + ", ".join(dict.fromkeys(label for label, _ in res.runs)), ""]
    out += [f"- {label} ({norm_of(ev)}): {ev.folder} ({ev.samples} samples, clean accuracy {_f(ev.clean_accuracy, True)})"
            for label, ev in res.runs]
    out += ["", "## Settings that differ", ""] + ([f"- {d}" for d in differences_by_norm(res)] or ["- none"])
    for norm, runs in res.groups.items():
        head, rows = leaderboard_cells(res.rows, norm)
        out += ["", f"## {norm}: leaderboard at eps = {eps_text(res.eps[norm])} ({res.eps_origin[norm]})", ""]
        out += _md_table(head, rows)
        if len(runs) > 1:
            out += ["", f"### {norm}: attack by attack", ""]
            out += _md_table(*side_by_side([ev for _, ev in runs], [label for label, _ in runs], res.eps[norm]))
    warns = [f"- {label} ({norm_of(ev)}) [{w['check']}]: {w['message']}" for label, ev in res.runs for w in ev.warnings]
    out += ["", "## Sanity checks", ""] + (warns or ["- no warnings"])
    out += ["", "## Glossary", ""] + [f"- **{t}**: {d}" for t, d in GLOSSARY]
    if plot:
        out += ["", f"![robust accuracy]({plot})"]
    return "\n".join(out) + "\n"


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def compare_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LEADERBOARD_FIELDS)
    for r in rows:
        writer.writerow(["" if isinstance(r[k], float) and math.isnan(r[k]) else
                         (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in LEADERBOARD_FIELDS])
    return buf.getvalue()


def compare_html(res: Comparison, plot: Path | None) -> str:
    from .report import STYLE, _data_uri, html_table

    e = html.escape
    parts = ["<ul>"] + [f"<li>{e(label)} ({e(norm_of(ev))}): {e(str(ev.folder))} ({ev.samples} samples, clean accuracy "
                        f"{e(_f(ev.clean_accuracy, True))})</li>" for label, ev in res.runs] + ["</ul>"]
    diff = differences_by_norm(res)
    parts.append("<h2>Settings that differ</h2><ul>" + "".join(f"<li>{e(d)}</li>" for d in diff or ["none"]) + "</ul>")
    for norm, runs in res.groups.items():
        parts.append(f"<section class='norm' id='{e(norm)}'><h2>{e(norm)}: leaderboard at eps = "
                     f"{e(eps_text(res.eps[norm]))}</h2><p class='note'>{e(res.eps_origin[norm])}</p>"
                     + html_table(*leaderboard_cells(res.rows, norm), "leaderboard"))
        if len(runs) > 1:
            parts.append(f"<h3>{e(norm)}: attack by attack</h3>" + html_table(
                *side_by_side([ev for _, ev in runs], [label for label, _ in runs], res.eps[norm]), "attacks", ALL))
        parts.append("</section>")
    warns = [f"<li><b>{e(label)}</b> ({e(norm_of(ev))}) [{e(w['check'])}]: {e(w['message'])}</li>"
             for label, ev in res.runs for w in ev.warnings]
    parts.append("<h2>Sanity checks</h2>" + (f"<ul class='warn'>{''.join(warns)}</ul>" if warns
                                                else "<p class='ok'>No warnings.</p>"))
    if plot is not None:
        parts.append(f"<h2>Robust accuracy</h2><figure><img alt='compare' src='{_data_uri(plot)}'><figcaption>Best-of-all "
                     "robust accuracy of each run (one colour per run), one panel per norm; the dotted line marks "
                     "the leaderboard's radius.</figcaption></figure>")
    parts.append("<h2>Glossary</h2><dl class='glossary'>" + "".join(f"<dt>{e(t)}</dt><dd>{e(d)}</dd>"
                                                                    for t, d in GLOSSARY) + "</dl>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>minnorm comparison</title>"
            f"<style>{STYLE}</style></head><body><h1>Comparison</h1>" + "".join(parts) + "</body></html>\n")


def compare(folders: Sequence[str | Path], out: str | Path | None = None, labels: Sequence[str] | None = None,
            eps: str | float | None = None) -> Comparison:
    """Load the runs, choose the radius per norm (``eps``: see :func:`parse_eps`), rank them;
    with ``out``, write compare.md, compare.csv, compare.html and compare.png there (all or
    none, never through a symbolic link)."""
    if isinstance(folders, (str, Path)):
        raise TypeError("compare(folders, ...): give a list of run folders")
    runs = load_runs(folders, labels)
    groups = group_by_norm(runs)
    chosen = parse_eps(eps, list(groups))
    eps_map, origin = {}, {}
    for norm, part in groups.items():
        if norm in chosen:
            eps_map[norm], origin[norm] = chosen[norm], "given with --eps"
        else:
            eps_map[norm], origin[norm] = default_eps(part)
    res = Comparison(runs, groups, eps_map, origin, leaderboard(groups, eps_map))
    if out is not None:
        res.paths = write_compare(res, out)
    return res


def write_compare(res: Comparison, out: str | Path) -> list[Path]:
    from .plots import leaderboard_plot
    from .store import OutputFolder

    folder = OutputFolder(out)  # every file or none, never through a symbolic link
    with folder.lock(), folder.staging() as stage:
        plot = leaderboard_plot(list(res.groups.items()), res.eps, stage / "compare.png")
        (stage / "compare.md").write_text(compare_markdown(res, "compare.png"))
        (stage / "compare.csv").write_text(compare_csv(res.rows))
        (stage / "compare.html").write_text(compare_html(res, plot))
        folder.commit(stage)
    return [folder.path / name for name in ("compare.md", "compare.csv", "compare.html", "compare.png")]
