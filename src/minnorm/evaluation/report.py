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
from typing import Any, Iterator

import numpy as np
import torch

from ..core import radius_text
from ..data.classes import class_label, class_names
from .metrics import ALL, robust_accuracy
from .plots import examples_plot, norm_histograms, robust_accuracy_plot, run_title
from .results import sample_columns
from .store import OutputFolder, RunStore, json_text

# Batch-tensor key of the class the model gives each attack's adversarial (``adv_pred/ddn``: int64,
# one per attacked sample, rows as ``inputs``); the report shows adversarial classes and the
# confusion matrix only when every attack has it.
ADV_PRED = "adv_pred/"

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
                  "warnings": ev.warnings, "exact_ratios": ev.exact_ratios(), "per_sample": ev.per_sample()})


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
        _write_csv(stage / names["samples_csv"], sample_columns(ev.plans, "target" in ev.table, ev.certified),
                   [list(r.values()) for r in ev.per_sample()])
        head, rows = summary_rows(ev)
        _write_csv(stage / names["summary_csv"], head, rows)
        figures = {"robust_accuracy": robust_accuracy_plot(ev, stage / "plots" / "robust_accuracy.png"),
                   "norm_histograms": norm_histograms(ev, stage / "plots" / "norm_histograms.png")}
        examples, preds = scan_saved(ev)
        ex = examples_plot(examples, ev.attack_names[:4], stage / "plots" / "examples.png",
                           tuple(ev.config["bounds"]), run_title(ev), class_names(ev.config.get("data")))
        if ex is not None:
            figures["examples"] = ex
        (stage / names["markdown"]).write_text(markdown(ev, {k: f"plots/{p.name}" for k, p in figures.items()}, preds))
        (stage / names["html"]).write_text(html_page(ev, figures, preds))
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
    """The summary table as text cells, shared by the Markdown, the HTML and the console. The
    robust-accuracy columns are at the radii the user asked about (``eps``), else spread over
    the grid."""
    asked = ev.config.get("eps")
    radii = asked or [ev.grid[i] for i in _eps_points(ev.grid)]
    head = ["attack", "mode", "success", "mean norm", "median norm", "rel. mean", "rel. worst", "area gap",
            "passes/sample", "over budget", "s/sample"] + [f"RA@{radius_text(e) if asked else f'{e:.3g}'}"
                                                           for e in radii]
    rows = []
    for r in ev.summary:
        name = None if r["attack"] == ALL else r["attack"]
        rows.append([r["attack"], r["mode"], _f(r["success_rate"], True), _f(r["mean_norm"]), _f(r["median_norm"]),
                     _f(r["relative_mean"]), _f(r["relative_worst"]), _f(r["area_gap"], True),
                     f"{r['passes_per_sample']:.1f}" if math.isfinite(r["passes_per_sample"]) else "-",
                     str(r["over_budget"]), _f(r["seconds_per_sample"])]
                    + [_f(ev.robust_accuracy(e, name), True) if _answers(ev, name, e) else "not run" for e in radii])
    return head, rows


def _answers(ev, name: str | None, eps: float) -> bool:
    """Whether the attack ``name`` (None: best of all) measured robustness at ``eps``: a minimal-norm
    attack or an epsilon search does at every radius, a fixed-epsilon one only where it ran (its
    robust accuracy elsewhere would count the samples it never tried at that radius as robust)."""
    plan = next((a for a in ev.config["attacks"] if a["name"] == name), None)
    if plan is None or plan["mode"] != "fixed":
        return True
    return any(math.isclose(eps, e, rel_tol=1e-9, abs_tol=1e-12) for e in plan["epsilons"])


def settings_lines(ev) -> list[str]:
    c = ev.config
    model = c["model"].get("name") or c["model"]["class"]
    data = c["data"].get("name") or "tensors"
    env = ev.environments[0] if ev.environments else {}
    left = f" ({c['left_out']} more left out: their target is their label)" if c.get("left_out") else ""
    lines = [f"model: {model} ({c['model']['fingerprint']})", f"data: {data}, {ev.samples} samples{left}, "
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


GLOSSARY = [
    ("best-of-all (All)", "per sample, the smallest adversarial any attack found; the All row and the black "
     "curve. Its robust accuracy is an upper bound on the model's true robust accuracy (a stronger attack can "
     "only lower it)."),
    ("robust accuracy (RA@eps)", "the fraction of all samples that are classified correctly and not broken within "
     "eps (a norm <= eps * (1 + 1e-4) + 1e-6: the one tolerance rule); RA@0 is the clean accuracy. \"not run\": "
     "a fixed-epsilon attack that did not run at that radius says nothing there."),
    ("success", "broken samples over attacked ones (the correctly classified samples)."),
    ("median norm", "the median norm of the adversarials found, over the broken samples."),
    ("rel. worst", "relative worst: the largest relative perturbation ||dx|| / ||x|| over the broken samples "
     "(rel. mean: their mean); the most visible change the attack needed."),
    ("area gap", "the mean vertical distance between an attack's robust-accuracy curve and the best-of-all curve "
     "over the grid (trapezoid area divided by the grid's span), in points of accuracy: 0 for an attack as strong "
     "as all of them together, 5% when it overstates robust accuracy by 5 points on average."),
    ("passes/sample", "forward plus backward passes per attacked sample (All: all attacks together)."),
    ("over budget", "samples that reached the pass budget (--budget, per sample and attack); each keeps the best "
     "adversarial found within the budget, so a high count means the attack may be stronger with more passes."),
    ("spread of the attacks", "the light purple band of the robust-accuracy figure: between the strongest and the weakest "
     "attack's curve at each radius. Where it is wide, the choice of attack changes the number."),
]


CERTIFIED_TERMS = [
    ("certified (lower bound)", "the fraction of all samples proven robust at eps by --certify (a certified radius, "
     "or an exact minimal norm, above eps): the green dashed curve."),
    ("bracket", "the green band between the certified curve and the best-of-all curve: the true robust accuracy lies "
     "in it. Where it is narrow, the number is settled."),
]


def glossary(ev=None) -> list[tuple[str, str]]:
    """The terms of the report (with the certification terms when ``ev`` ran certification)."""
    return GLOSSARY + (CERTIFIED_TERMS if getattr(ev, "certified", False) else [])


def glossary_markdown(ev=None) -> list[str]:
    return ["## Glossary", ""] + [f"- **{term}**: {text}" for term, text in glossary(ev)] + [""]


def glossary_html(ev=None) -> str:
    e = html.escape
    return ("<h2>Glossary</h2><dl class='glossary'>"
            + "".join(f"<dt>{e(term)}</dt><dd>{e(text)}</dd>" for term, text in glossary(ev)) + "</dl>")


# --------------------------------------------------------------------------- saved tensors

def saved_tensors(ev) -> Iterator[dict[str, torch.Tensor]]:
    """The inputs and adversarials the run kept: ``ev.tensors`` (``keep_tensors``) when present,
    else each saved batch's tensors, in batch order (nothing when the run kept none)."""
    if ev.tensors and "index" in ev.tensors:
        yield ev.tensors
        return
    if ev.folder is None:
        return
    store = RunStore(ev.folder)
    for b in sorted(store.done()):
        tensors = store.load_tensors(b)
        if tensors is not None:
            yield tensors


def _has_predictions(ev, tensors: dict[str, torch.Tensor] | None) -> bool:
    if all(f"{a}.adv_pred" in ev.table for a in ev.attack_names):
        return True
    return tensors is not None and all(f"{ADV_PRED}{a}" in tensors for a in ev.attack_names)


def scan_saved(ev, attacks: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]:
    """Up to ``config['examples']`` samples the ensemble broke (inputs, adversarials of
    ``attacks``, their norms and, when saved, the class the model gives each adversarial), and
    per attack the adversarials' predicted classes for every sample (``-1`` where none; ``None``
    unless the run saved them for every attack: ``adv_pred/NAME`` in the batch tensors or a
    ``NAME.adv_pred`` column)."""
    want = max(0, int(ev.config.get("examples", 6)))
    attacks = attacks if attacks is not None else ev.attack_names[:4]
    pos = {int(i): k for k, i in enumerate(ev.table["index"])}
    examples: list[dict[str, Any]] = []
    preds: dict[str, np.ndarray] | None = None
    if all(f"{a}.adv_pred" in ev.table for a in ev.attack_names):
        preds = {a: np.asarray(ev.table[f"{a}.adv_pred"], dtype=np.int64) for a in ev.attack_names}
    from_tensors = None
    for tensors in saved_tensors(ev):
        if from_tensors is None:
            from_tensors = preds is None and _has_predictions(ev, tensors)
            if from_tensors:
                preds = {a: np.full(ev.samples, -1, dtype=np.int64) for a in ev.attack_names}
        rows = [pos[i] for i in tensors["index"].tolist()]
        if from_tensors:
            for a in ev.attack_names:
                preds[a][rows] = tensors[f"{ADV_PRED}{a}"].long().numpy()
        for j, k in enumerate(rows):
            if len(examples) < want and ev.table["best_success"][k]:
                examples.append(_example(ev, tensors, j, k, attacks, preds))
        if len(examples) >= want and not from_tensors:
            break
    for ex in examples:  # predictions of later batches are known only now
        if preds is not None:
            ex["adv_pred"] = {a: int(preds[a][ex["row"]]) for a in attacks if preds[a][ex["row"]] >= 0}
    return examples, preds


def _example(ev, tensors, j: int, k: int, attacks: list[str], preds) -> dict[str, Any]:
    return {"index": int(ev.table["index"][k]), "row": k, "label": int(ev.table["label"][k]),
            "input": tensors["inputs"][j].double().numpy(),
            "adv": {a: tensors[f"adv/{a}"][j].double().numpy() for a in attacks},
            "norm": {a: float(ev.table[f"{a}.norm"][k]) for a in attacks}}


def load_examples(ev, attacks: list[str] | None = None) -> list[dict[str, Any]]:
    """Up to ``config['examples']`` samples the ensemble broke, with inputs and adversarials from
    the saved batch tensors (none when the run kept no tensors)."""
    if int(ev.config.get("examples", 6)) <= 0:
        return []
    return scan_saved(ev, attacks)[0]


# --------------------------------------------------------------------------- per class

def per_class_radii(ev) -> list[float]:
    """The radii of the per-class table: those the user asked about, else three spread over the grid."""
    asked = ev.config.get("eps")
    if asked:
        return [float(e) for e in asked]
    pts = _eps_points(ev.grid, 5)
    return [ev.grid[i] for i in (pts[1:-1] if len(pts) > 2 else pts)]


def per_class(ev) -> tuple[list[str], list[list[str]]]:
    """Per true class: samples, clean accuracy, best-of-all robust accuracy at a few radii (the
    one tolerance rule) and the best-of-all median norm over the broken samples."""
    names = class_names(ev.config.get("data"))
    radii = per_class_radii(ev)
    head = ["class", "samples", "clean accuracy"] + [f"RA@{e:.3g}" for e in radii] + ["median norm"]
    label, correct, best = ev.table["label"], ev.table["correct"], ev.table["best_norm"]
    rows = []
    for k in sorted(set(label.tolist())):
        m = label == k
        ra = robust_accuracy(best[m], correct[m], radii)
        broken = best[m & correct & np.isfinite(best)]
        rows.append([class_label(k, names), str(int(m.sum())), _f(float(correct[m].mean()), True)]
                    + [_f(v, True) for v in ra] + [_f(float(np.median(broken)) if len(broken) else math.nan)])
    return head, rows


def confusion(ev, preds: dict[str, np.ndarray]) -> tuple[list[int], np.ndarray]:
    """Clean-to-adversarial confusion matrix over the correctly classified samples: row = true
    (= clean) class, column = the class the model gives the best-of-all adversarial; a sample no
    attack broke stays on the diagonal. Returns the classes and the counts."""
    correct = ev.table["correct"]
    label = ev.table["label"]
    adv = label.copy()
    for a in ev.attack_names:
        won = correct & (ev.table["best_attack"] == a) & (preds[a] >= 0)
        adv[won] = preds[a][won]
    names = class_names(ev.config.get("data"))
    top = max(int(label.max(initial=0)), int(adv.max(initial=0)), len(names) - 1 if names else 0)
    classes = list(range(top + 1))
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, (label[correct], adv[correct]), 1)
    return classes, counts


MAX_CONFUSION_CLASSES = 20


def confusion_cells(ev, preds) -> tuple[list[str], list[list[str]]] | str:
    """The confusion matrix as text cells, or a note saying why there is none."""
    if preds is None:
        return NO_PREDICTIONS
    classes, counts = confusion(ev, preds)
    if len(classes) > MAX_CONFUSION_CLASSES:
        return (f"{len(classes)} classes are too many for a readable confusion matrix (at most "
                f"{MAX_CONFUSION_CLASSES}); the per-class table above has each class's robust accuracy.")
    names = class_names(ev.config.get("data"))
    head = ["true \\ adversarial"] + [class_label(k, names) for k in classes]
    return head, [[class_label(k, names)] + [str(v) for v in counts[i]] for i, k in enumerate(classes)
                  if counts[i].sum()]  # rows of the classes with correctly classified samples


# --------------------------------------------------------------------------- Markdown and HTML

def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


PER_CLASS_NOTE = ("Per true class: robust accuracy (best of all attacks) over the class's samples, median norm over "
                  "its broken samples.")
CONFUSION_NOTE = ("Correctly classified samples by true class (rows) and the class the model gives their best-of-all "
                  "adversarial (columns); the diagonal holds the samples no attack broke.")
NO_PREDICTIONS = ("The run saved no adversarial predictions (adv_pred/NAME in the batch tensors), so the confusion "
                  "matrix and the adversarials' classes are not shown.")


def markdown(ev, figures: dict[str, str], preds: dict[str, np.ndarray] | None = None) -> str:
    head, rows = table_cells(ev)
    out = ["# Robustness evaluation", ""] + [f"- {line}" for line in settings_lines(ev)] + [""]
    out += ["## Summary", "", "Success and norms are over the correctly classified samples; robust accuracy (RA) "
            "is over all samples; the area gap is the mean distance to the best-of-all curve (see the glossary).", ""]
    out += _md_table(head, rows)
    out += ["", "## Sanity checks", ""]
    out += [f"- **{w['check']}**: {w['message']}" for w in ev.warnings] or ["- no warnings"]
    out += ["", "## Per class", "", PER_CLASS_NOTE, ""] + _md_table(*per_class(ev)) + [""]
    conf = confusion_cells(ev, preds)
    out += ["## Clean to adversarial class", ""]
    out += ([conf] if isinstance(conf, str) else [CONFUSION_NOTE, ""] + _md_table(*conf)) + [""]
    out += glossary_markdown(ev)
    for key, rel in figures.items():
        out += [f"![{key}]({rel})", ""]
    return "\n".join(out)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def html_table(head: list[str], rows: list[list[str]], cls: str = "", bold_first: str | None = None) -> str:
    e = html.escape
    return (f"<table class='{cls}'><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr" + (" class='all'" if r[0] == bold_first else "") + ">"
                      + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def _confusion_html(ev, preds) -> str:
    conf = confusion_cells(ev, preds)
    if isinstance(conf, str):
        return f"<p class='note'>{html.escape(conf)}</p>"
    head, rows = conf
    body = []
    for r in rows:
        k = head.index(r[0]) - 1  # the row's class, as a column
        cells = "".join(f"<td class='{'diag' if j == k else ('hit' if v != '0' else '')}'>{v}</td>"
                        for j, v in enumerate(r[1:]))
        body.append(f"<tr><th>{html.escape(r[0])}</th>{cells}</tr>")
    return (f"<p>{html.escape(CONFUSION_NOTE)}</p><table class='confusion'><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(body) + "</table>")


CAPTIONS = {"robust_accuracy": "Robust accuracy versus epsilon: each attack with its own colour, line style and "
                               "markers; the best of all attacks in thin black, drawn behind them; the light purple band "
                               "spans the attacks' curves.",
            "norm_histograms": "Per-sample norms found by each attack",
            "examples": "Examples: clean image (index, true class), then each attack's adversarial (with the class "
                        "the model gives it, when saved) and its perturbation |dx|, all on one colour scale."}
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px;"
         "margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}tr.all{font-weight:bold}"
         ".warn li{color:#a00}.ok{color:#070}img{max-width:100%}figure{margin:1em 0}"
         "table.confusion td.diag{background:#e8f0e8}table.confusion td.hit{background:#f6d8d8}"
         "dl.glossary dt{font-weight:bold;margin-top:0.4em}dl.glossary dd{margin-left:1.5em}.note{color:#555}")


def html_sections(ev, figures: dict[str, Path], preds: dict[str, np.ndarray] | None = None) -> str:
    """The body of the report of one evaluation (one norm): settings, summary, checks, per-class
    table, confusion matrix, glossary and figures; :func:`html_page` wraps it in a page."""
    e = html.escape
    head, rows = table_cells(ev)
    warn = ("<ul class='warn'>" + "".join(f"<li><b>{e(w['check'])}</b>: {e(w['message'])}</li>" for w in ev.warnings)
            + "</ul>") if ev.warnings else "<p class='ok'>No warnings.</p>"
    imgs = "".join(f"<figure><img alt='{e(k)}' src='{_data_uri(p)}'><figcaption>{e(CAPTIONS[k])}</figcaption>"
                   "</figure>" for k, p in figures.items())
    return ("<ul>" + "".join(f"<li>{e(line)}</li>" for line in settings_lines(ev)) + "</ul><h2>Summary</h2>"
            + html_table(head, rows, "summary", ALL) + "<h2>Sanity checks</h2>" + warn
            + f"<h2>Per class</h2><p>{e(PER_CLASS_NOTE)}</p>" + html_table(*per_class(ev), "per-class")
            + "<h2>Clean to adversarial class</h2>" + _confusion_html(ev, preds) + "<h2>Figures</h2>" + imgs
            + glossary_html(ev))


def html_page(ev, figures: dict[str, Path], preds: dict[str, np.ndarray] | None = None) -> str:
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>minnorm evaluation</title>"
            f"<style>{STYLE}</style></head><body><h1>Robustness evaluation</h1>"
            + html_sections(ev, figures, preds) + "</body></html>\n")
