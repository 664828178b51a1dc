"""Two evaluation runs side by side: settings that differ, summaries on a common grid, curves."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .metrics import ALL
from .results import Evaluation
from .store import _differences


def common_grid(a: Evaluation, b: Evaluation, points: int = 21) -> list[float]:
    top = max(a.grid[-1], b.grid[-1]) or 1.0
    return [top * i / (points - 1) for i in range(points)]


def load_pair(first: str | Path, second: str | Path, grid: list[float] | None = None) -> tuple[Evaluation, Evaluation]:
    a, b = Evaluation.load(first), Evaluation.load(second)
    if a.config.get("norm") != b.config.get("norm"):
        raise ValueError(f"{first} is in the {a.config.get('norm')} norm and {second} in {b.config.get('norm')}: "
                         "radii of different norms do not share an axis; compare runs of one norm")
    grid = grid or common_grid(a, b)
    return Evaluation.load(first, grid), Evaluation.load(second, grid)


def setting_differences(a: Evaluation, b: Evaluation) -> list[str]:
    keep = ("model", "data", "attacks", "norm", "seed", "batch_size", "budget", "search_steps", "bounds")
    return _differences({k: a.config.get(k) for k in keep}, {k: b.config.get(k) for k in keep})


def side_by_side(a: Evaluation, b: Evaluation, labels: tuple[str, str] = ("A", "B")) -> tuple[list[str], list[list[str]]]:
    """One row per attack present in either run: success, median norm, area gap, robust accuracy
    at a few radii of the shared grid, each as ``A / B``."""
    names = list(dict.fromkeys(a.attack_names + b.attack_names)) + [ALL]
    rows_a = {r["attack"]: r for r in a.summary}
    rows_b = {r["attack"]: r for r in b.summary}
    picks = sorted({round(i * (len(a.grid) - 1) / 4) for i in range(5)})
    head = ["attack", f"success {labels[0]}/{labels[1]}", f"median norm {labels[0]}/{labels[1]}",
            f"area gap {labels[0]}/{labels[1]}"] + [f"RA@{a.grid[i]:.3g}" for i in picks]

    def pair(key: str, pct: bool, index: int | None = None) -> str:
        vals = []
        for rows in (rows_a, rows_b):
            r = rows.get(name)
            v = None if r is None else (r[key][index] if index is not None else r[key])
            vals.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else
                        (f"{100 * v:.1f}%" if pct else f"{v:.4g}"))
        return " / ".join(vals)

    rows = []
    for name in names:
        rows.append([name, pair("success_rate", True), pair("median_norm", False), pair("area_gap", True)]
                    + [pair("robust_accuracy", True, i) for i in picks])
    return head, rows


def compare_plot(a: Evaluation, b: Evaluation, labels: tuple[str, str], path: Path) -> Path:
    from .plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for ev, label, style in ((a, labels[0], "-"), (b, labels[1], "--")):
        for i, row in enumerate(ev.summary):
            best = row["attack"] == ALL
            ax.plot(ev.grid, [100 * v for v in row["robust_accuracy"]], ls=style, color="black" if best else f"C{i}",
                    lw=2.5 if best else 1.2, label=f"{label}: {row['attack']}")
    ax.set_xlabel("epsilon")
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def compare_markdown(a: Evaluation, b: Evaluation, labels: tuple[str, str], plot: str | None) -> str:
    head, rows = side_by_side(a, b, labels)
    diff = setting_differences(a, b)
    out = [f"# Comparison: {labels[0]} vs {labels[1]}", "",
           f"- {labels[0]}: {a.folder} ({a.samples} samples, clean accuracy {100 * a.clean_accuracy:.1f}%)",
           f"- {labels[1]}: {b.folder} ({b.samples} samples, clean accuracy {100 * b.clean_accuracy:.1f}%)", "",
           "## Settings that differ", ""] + ([f"- {d}" for d in diff] or ["- none"]) + ["", "## Summary", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    for label, ev in ((labels[0], a), (labels[1], b)):
        out += [f"- {label} warning [{w['check']}]: {w['message']}" for w in ev.warnings]
    if plot:
        out += ["", f"![robust accuracy]({plot})"]
    return "\n".join(out) + "\n"


def compare(first: str | Path, second: str | Path, out: str | Path | None = None,
            labels: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    a, b = load_pair(first, second)
    result: dict[str, Any] = {"a": a, "b": b}
    if out is not None:
        from .store import OutputFolder

        folder = OutputFolder(out)  # both files or neither, never through a symbolic link
        with folder.lock(), folder.staging() as stage:
            compare_plot(a, b, labels, stage / "compare.png")
            (stage / "compare.md").write_text(compare_markdown(a, b, labels, "compare.png"))
            folder.commit(stage)
        result["paths"] = [folder.path / "compare.md", folder.path / "compare.png"]
    return result
