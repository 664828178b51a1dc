"""Report files of an evaluation: JSON, CSV, Markdown, PNG plots and one self-contained HTML page.

All of them are computed from the per-sample table, so ``minnorm report DIR`` rebuilds them from
the saved batches alone (without the model).
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import ALL
from .plots import examples_plot, norm_histograms, robust_accuracy_plot
from .results import sample_columns
from .store import OutputFolder, RunStore, json_text

SUMMARY_FIELDS = ["attack", "mode", "samples", "success_rate", "mean_norm", "median_norm", "relative_mean",
                  "relative_worst", "area_gap", "passes_per_sample", "seconds_per_sample", "over_budget"]


def clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def results_dict(ev) -> dict[str, Any]:
    return clean({"config": ev.config, "environments": ev.environments, "samples": ev.samples,
                  "clean_accuracy": ev.clean_accuracy, "grid": ev.grid, "summary": ev.summary,
                  "warnings": ev.warnings, "per_sample": ev.per_sample()})


def write_reports(ev, folder: Path) -> dict[str, Path]:
    """Write every report into ``folder``, all or nothing: the files are made in a private
    staging folder inside it and moved into place only once all of them exist, never through a
    symbolic link (see :class:`~.store.OutputFolder`), while the folder is locked."""
    folder = Path(folder)
    out = OutputFolder(folder)
    names = {"json": "results.json", "samples_csv": "samples.csv", "summary_csv": "summary.csv",
             "markdown": "summary.md", "html": "report.html"}
    with out.lock(), out.staging() as stage:
        (stage / "plots").mkdir()
        (stage / names["json"]).write_text(json_text(results_dict(ev)))
        _write_csv(stage / names["samples_csv"], sample_columns(ev.plans, "target" in ev.table),
                   [list(r.values()) for r in ev.per_sample()])
        head, rows = summary_rows(ev)
        _write_csv(stage / names["summary_csv"], head, rows)
        figures = {"robust_accuracy": robust_accuracy_plot(ev, stage / "plots" / "robust_accuracy.png"),
                   "norm_histograms": norm_histograms(ev, stage / "plots" / "norm_histograms.png")}
        ex = examples_plot(load_examples(ev), ev.attack_names[:4], stage / "plots" / "examples.png",
                           tuple(ev.config["bounds"]))
        if ex is not None:
            figures["examples"] = ex
        (stage / names["markdown"]).write_text(markdown(ev, {k: f"plots/{p.name}" for k, p in figures.items()}))
        (stage / names["html"]).write_text(html_page(ev, figures))
        out.commit(stage)
        if ex is None:  # an examples figure of an earlier run would no longer match
            out.remove(["plots/examples.png"])
    paths = {k: folder / v for k, v in names.items()}
    paths.update({f"plot_{k}": folder / "plots" / p.name for k, p in figures.items()})
    return paths


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([_cell(v) for v in row])


def _cell(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _eps_points(grid: list[float], count: int = 6) -> list[int]:
    """Indices of at most ``count`` radii spread over the grid, for tables."""
    if len(grid) <= count:
        return list(range(len(grid)))
    return sorted({round(i * (len(grid) - 1) / (count - 1)) for i in range(count)})


def summary_rows(ev) -> tuple[list[str], list[list[Any]]]:
    head = SUMMARY_FIELDS + [f"robust_accuracy@{e:g}" for e in ev.grid]
    rows = [[r[k] for k in SUMMARY_FIELDS] + list(r["robust_accuracy"]) for r in ev.summary]
    return head, rows


def _f(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.4g}"


def table_cells(ev) -> tuple[list[str], list[list[str]]]:
    """The summary table as text cells, shared by the Markdown, the HTML and the console."""
    pts = _eps_points(ev.grid)
    head = ["attack", "mode", "success", "mean norm", "median norm", "rel. mean", "rel. worst", "area gap",
            "passes/sample", "over budget", "s/sample"] + [f"RA@{ev.grid[i]:.3g}" for i in pts]
    rows = []
    for r in ev.summary:
        rows.append([r["attack"], r["mode"], _f(r["success_rate"], True), _f(r["mean_norm"]), _f(r["median_norm"]),
                     _f(r["relative_mean"]), _f(r["relative_worst"]), _f(r["area_gap"], True),
                     f"{r['passes_per_sample']:.1f}" if math.isfinite(r["passes_per_sample"]) else "-",
                     str(r["over_budget"]), _f(r["seconds_per_sample"])] + [_f(r["robust_accuracy"][i], True) for i in pts])
    return head, rows


def settings_lines(ev) -> list[str]:
    c = ev.config
    model = c["model"].get("name") or c["model"]["class"]
    data = c["data"].get("name") or "tensors"
    env = ev.environments[0] if ev.environments else {}
    lines = [f"model: {model} ({c['model']['fingerprint']})", f"data: {data}, {ev.samples} samples, "
             f"clean accuracy {_f(ev.clean_accuracy, True)}", f"norm: {c['norm']}, seed {c['seed']}, batch size "
             f"{c['batch_size']}, budget {c['budget'] or 'none'}",
             "attacks: " + "; ".join(_attack_line(p) for p in c["attacks"]),
             f"software: minnorm {env.get('minnorm')}, torch {env.get('torch')}, python {env.get('python')} "
             f"on {env.get('hostname')} ({env.get('platform')})"]
    return lines


def _attack_line(p: dict[str, Any]) -> str:
    eps = f", eps {','.join(f'{e:g}' for e in p['epsilons'])}" if p["epsilons"] else ""
    top = f", search up to {p['search_max']:.4g}" if p.get("search_max") is not None else ""
    return f"{p['name']} ({p['mode']}{eps}{top}) {json.dumps(p['params'], default=str)}"


def markdown(ev, figures: dict[str, str]) -> str:
    head, rows = table_cells(ev)
    out = ["# Robustness evaluation", ""] + [f"- {line}" for line in settings_lines(ev)] + [""]
    out += ["## Summary", "", "Success and norms are over the correctly classified samples; robust accuracy (RA) "
            "is over all samples; the area gap is the mean distance to the best-of-all curve.", ""]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "## Sanity checks", ""]
    out += [f"- **{w['check']}**: {w['message']}" for w in ev.warnings] or ["- no warnings"]
    out += [""]
    for key, rel in figures.items():
        out += [f"![{key}]({rel})", ""]
    return "\n".join(out)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def html_page(ev, figures: dict[str, Path]) -> str:
    e = html.escape
    head, rows = table_cells(ev)
    table = ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>" +
             "".join("<tr" + (' class="all"' if r[0] == ALL else "") + ">" + "".join(f"<td>{e(c)}</td>" for c in r)
                     + "</tr>" for r in rows) + "</table>")
    warn = ("<ul class='warn'>" + "".join(f"<li><b>{e(w['check'])}</b>: {e(w['message'])}</li>" for w in ev.warnings)
            + "</ul>") if ev.warnings else "<p class='ok'>No warnings.</p>"
    captions = {"robust_accuracy": "Robust accuracy versus epsilon (best-of-all in black)",
                "norm_histograms": "Per-sample norms found by each attack",
                "examples": "Examples: clean image, then each attack's adversarial and perturbation |dx|"}
    imgs = "".join(f"<figure><img alt='{e(k)}' src='{_data_uri(p)}'><figcaption>{e(captions[k])}</figcaption>"
                   "</figure>" for k, p in figures.items())
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}tr.all{font-weight:bold}"
             ".warn li{color:#a00}.ok{color:#070}img{max-width:100%}figure{margin:1em 0}")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>minnorm evaluation</title>"
            f"<style>{style}</style></head><body><h1>Robustness evaluation</h1><ul>"
            + "".join(f"<li>{e(line)}</li>" for line in settings_lines(ev)) + "</ul><h2>Summary</h2>"
            + table + "<h2>Sanity checks</h2>" + warn + "<h2>Figures</h2>" + imgs + "</body></html>\n")


def load_examples(ev, attacks: list[str] | None = None) -> list[dict[str, Any]]:
    """Up to ``config['examples']`` samples the ensemble broke, with inputs and adversarials from
    the saved batch tensors (none when the run kept no tensors)."""
    want = int(ev.config.get("examples", 6))
    if ev.folder is None or want <= 0:
        return []
    store = RunStore(ev.folder)
    attacks = attacks or ev.attack_names[:4]
    pos = {int(i): k for k, i in enumerate(ev.table["index"])}
    out = []
    for b in sorted(store.done()):
        tensors = store.load_tensors(b)
        if tensors is None:
            continue
        for j, i in enumerate(tensors["index"].tolist()):
            k = pos[i]
            if not ev.table["best_success"][k]:
                continue
            out.append({"index": i, "label": int(ev.table["label"][k]), "input": tensors["inputs"][j].double().numpy(),
                        "adv": {a: tensors[f"adv/{a}"][j].double().numpy() for a in attacks},
                        "norm": {a: float(ev.table[f"{a}.norm"][k]) for a in attacks}})
            if len(out) >= want:
                return out
    return out
