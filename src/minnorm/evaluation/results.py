"""The result of an evaluation: settings, the per-sample table, summaries and checks.

Batches are stored as JSON records (see :mod:`.store`); :func:`build_table` joins them, in global
batch order, into one column table (numpy arrays) that every report is computed from. Norms are
``inf`` for an attacked sample no attack broke and ``nan`` for a sample that was not attacked
(misclassified from the start).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .metrics import ALL, default_grid, robust_accuracy, sanity_checks, summarize
from ..core import parse_norm, radius_text
from .plan import check_grid, norm_name


def batch_record(batch: int, index: torch.Tensor, labels: torch.Tensor, clean_pred: torch.Tensor,
                 outcomes: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready record of one batch; ``outcomes`` maps attack name to :class:`~.execute.Outcome`."""
    def floats(t: torch.Tensor) -> list[float | None]:
        return [float(v) if math.isfinite(v) else None for v in t.double().tolist()]

    attacks = {}
    for name, o in outcomes.items():
        attacks[name] = {"norm": floats(o.norms), "relative": floats(o.relative), "passes": o.passes.tolist(),
                         "over_budget": o.over_budget.tolist(), "seconds": o.seconds,
                         "success_at": {f"{e:g}": hit.tolist() for e, hit in o.success_at.items()}}
    return {"batch": batch, "index": index.tolist(), "label": labels.tolist(), "clean_pred": clean_pred.tolist(),
            "attacks": attacks}


def build_table(records: list[dict[str, Any]], plans: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    records = sorted(records, key=lambda r: r["batch"])
    cat = (lambda key: np.concatenate([np.asarray(r[key], dtype=np.int64) for r in records])
           if records else np.zeros(0, dtype=np.int64))
    table: dict[str, np.ndarray] = {"index": cat("index"), "label": cat("label"), "clean_pred": cat("clean_pred")}
    correct = table["label"] == table["clean_pred"]
    table["correct"] = correct
    if records and all("target" in r for r in records):
        table["target"] = cat("target")
    n = len(correct)
    for p in plans:
        a = p["name"]
        cols = {"norm": np.full(n, np.nan), "relative": np.full(n, np.nan), "passes": np.zeros(n, dtype=np.int64),
                "over_budget": np.zeros(n, dtype=bool), "seconds": np.zeros(n)}
        hits = {f"{e:g}": np.zeros(n, dtype=bool) for e in p.get("epsilons", [])}
        for r, rows in _attacked_rows(records):
            got = r["attacks"][a]
            cols["norm"][rows] = [np.inf if v is None else v for v in got["norm"]]
            cols["relative"][rows] = [np.nan if v is None else v for v in got["relative"]]
            cols["passes"][rows] = got["passes"]
            cols["over_budget"][rows] = got["over_budget"]
            cols["seconds"][rows] = got["seconds"] / len(rows)
            for e, hit in got["success_at"].items():
                hits[e][rows] = hit
        for key, col in cols.items():
            table[f"{a}.{key}"] = col
        table[f"{a}.success"] = np.isfinite(cols["norm"])
        for e, col in hits.items():
            table[f"{a}.success@{e}"] = col
    _best_of_all(table, [p["name"] for p in plans], correct)
    if records and any("certify" in r for r in records):
        _certify_columns(table, records)
    return table


def _attacked_rows(records: list[dict[str, Any]]):
    """Per batch record (in order), the global table rows of the samples it attacked (if any)."""
    start = 0
    for r in records:
        attacked = r["attacked"] if "attacked" in r else np.asarray(r["label"]) == np.asarray(r["clean_pred"])
        rows = start + np.flatnonzero(np.asarray(attacked, dtype=bool))
        start += len(r["index"])
        if len(rows):
            yield r, rows


def _certify_columns(table: dict[str, np.ndarray], records: list[dict[str, Any]]) -> None:
    """``certified_radius`` (a proven lower bound on the minimal norm), ``exact_norm`` (where a
    solver proved it; nan elsewhere), ``certify_status`` and ``certify_seconds`` per sample."""
    n = len(table["index"])
    lower, exact = np.full(n, np.nan), np.full(n, np.nan)
    status, seconds = np.full(n, "", dtype=object), np.zeros(n)
    for r, rows in _attacked_rows(records):
        got = r.get("certify")
        if got is None:
            continue
        lower[rows] = [np.inf if v is None else v for v in got["lower"]]
        ex = [np.inf if u is None else u for u in got["upper"]]
        exact[rows] = np.where(np.asarray(got["status"]) == "exact", ex, np.nan)
        status[rows] = got["status"]
        seconds[rows] = got["seconds"]
    table["certified_radius"], table["exact_norm"] = lower, exact
    table["certify_status"], table["certify_seconds"] = status, seconds


def _best_of_all(table: dict[str, np.ndarray], names: list[str], correct: np.ndarray) -> None:
    n = len(correct)
    best = np.where(correct, np.inf, np.nan)
    which = np.full(n, "", dtype=object)
    rel = np.full(n, np.nan)
    for a in names:  # strict < keeps the first attack listed on ties
        better = table[f"{a}.norm"] < best
        best = np.where(better, table[f"{a}.norm"], best)
        rel = np.where(better, table[f"{a}.relative"], rel)
        which[better] = a
    table["best_norm"], table["best_attack"], table["best_relative"] = best, which, rel
    table["best_success"] = np.isfinite(best)
    table["best_passes"] = sum((table[f"{a}.passes"] for a in names), np.zeros(n, dtype=np.int64))
    table["best_seconds"] = sum((table[f"{a}.seconds"] for a in names), np.zeros(n))
    table["best_over_budget"] = np.zeros(n, dtype=bool)
    for a in names:
        table["best_over_budget"] |= table[f"{a}.over_budget"]


def sample_columns(plans: list[dict[str, Any]], targeted: bool = False, certified: bool = False) -> list[str]:
    """Columns of the per-sample table, in report order."""
    cols = ["index", "label", "clean_pred", "correct"] + (["target"] if targeted else [])
    for p in plans:
        a = p["name"]
        cols += [f"{a}.norm", f"{a}.success", f"{a}.relative", f"{a}.passes", f"{a}.over_budget", f"{a}.seconds"]
        cols += [f"{a}.success@{e:g}" for e in p.get("epsilons", [])]
    return cols + ["best_norm", "best_attack", "best_relative", "best_passes", "best_seconds"] + (
        ["certified_radius", "exact_norm", "certify_status", "certify_seconds"] if certified else [])


@dataclass
class Evaluation:
    """What :func:`minnorm.evaluate` returns and ``minnorm report`` rebuilds from a run folder."""

    config: dict[str, Any]
    environments: list[dict[str, Any]]
    table: dict[str, np.ndarray]
    folder: Path | None = None
    grid: list[float] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # with keep_tensors: index, inputs, adv/NAME

    def __post_init__(self):
        self.grid = check_grid(self.config.get("grid")) or default_grid(self.table)
        margin = self.config.get("sanity_margin", 0.1)
        self.summary = summarize(self.table, self.plans, self.grid)
        self.warnings = sanity_checks(self.table, self.plans, self.summary, self.grid, margin)

    @property
    def plans(self) -> list[dict[str, Any]]:
        return self.config["attacks"]

    @property
    def attack_names(self) -> list[str]:
        return [p["name"] for p in self.plans]

    @property
    def samples(self) -> int:
        return len(self.table["index"])

    @property
    def clean_accuracy(self) -> float:
        return float(self.table["correct"].mean()) if self.samples else math.nan

    def robust_accuracy(self, eps: float, attack: str | None = None) -> float:
        """Robust accuracy at ``eps`` over all samples: correctly classified and not broken within
        ``eps`` (tolerance rule of :mod:`minnorm.core.radius`) by ``attack``, or by any attack when
        None (the best of all). An upper bound on the true robust accuracy."""
        from ..core.radius import check_radius

        eps = check_radius(eps)
        if attack is not None and attack not in self.attack_names:
            raise ValueError(f"no attack {attack!r} in this evaluation; it ran {', '.join(self.attack_names)}")
        norms = self.table["best_norm" if attack in (None, ALL) else f"{attack}.norm"]
        return robust_accuracy(norms, self.table["correct"], [eps])[0]

    @property
    def certified(self) -> bool:
        return "certified_radius" in self.table

    def certified_robust_accuracy(self, eps: float) -> float:
        """A proven lower bound on robust accuracy at ``eps``: correctly classified samples whose
        certified radius exceeds ``eps`` (or whose exact minimal norm does)."""
        from ..core.radius import check_radius

        if not self.certified:
            raise ValueError("this evaluation ran no certification (certify='bound' or 'exact', --certify)")
        eps = check_radius(eps)
        with np.errstate(invalid="ignore"):
            safe = (self.table["certified_radius"] > eps) | (self.table["exact_norm"] > eps)
        return float((self.table["correct"] & safe).sum()) / self.samples if self.samples else math.nan

    def exact_ratios(self) -> dict[str, dict[str, float]]:
        """Per attack (and All): its norm over the exact minimum, on the samples a solver proved
        (median, p90, worst, share within 1.001, count). Empty without exact values."""
        if not self.certified:
            return {}
        exact = self.table["exact_norm"]
        keep = self.table["correct"] & np.isfinite(exact) & (exact > 0)
        out = {}
        for a in self.attack_names + [ALL]:
            norms = self.table["best_norm" if a == ALL else f"{a}.norm"][keep]
            if not len(norms):
                continue
            ratio = norms / exact[keep]
            out[a] = {"median": float(np.median(ratio)), "p90": float(np.percentile(ratio, 90)),
                      "worst": float(ratio.max()), "within_1.001": float((ratio <= 1.001).mean()),
                      "samples": int(len(ratio))}
        return out

    def headlines(self) -> list[str]:
        """One line per radius the user asked about (``eps``): the best of all attacks' robust
        accuracy there, said to be an upper bound."""
        n = len(self.attack_names)
        norm = norm_name(parse_norm(self.config["norm"]))
        lines = []
        for e in self.config.get("eps") or []:
            cert = (f"; certified lower bound {100 * self.certified_robust_accuracy(e):.1f}%" if self.certified
                    else "")
            lines.append(f"robust accuracy at {norm} {radius_text(e)}: {100 * self.robust_accuracy(e):.1f}% "
                         f"(best of {n} attack{'s' if n > 1 else ''}, an upper bound{cert}; clean accuracy "
                         f"{100 * self.clean_accuracy:.1f}% of {self.samples})")
        return lines

    def row(self, attack: str = ALL) -> dict[str, Any]:
        """The summary row of ``attack`` (or of the best of all, ``ALL``)."""
        for r in self.summary:
            if r["attack"] == attack:
                return r
        raise ValueError(f"no attack {attack!r} in this evaluation; its rows: {', '.join(r['attack'] for r in self.summary)}")

    def per_sample(self) -> list[dict[str, Any]]:
        """The per-sample table as rows (plain Python values; inf/nan as floats)."""
        cols = sample_columns(self.plans, "target" in self.table, self.certified)
        return [{c: _plain(self.table[c][i]) for c in cols} for i in range(self.samples)]

    def to_pandas(self, what: str = "summary"):
        """The summary (one row per attack and All, robust accuracy per grid radius as columns)
        or the per-sample table (``what="samples"``) as a pandas DataFrame (``pip install
        minnorm[notebook]``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install 'minnorm[notebook]' (or pandas)") from None
        if what == "samples":
            return pd.DataFrame(self.per_sample())
        if what != "summary":
            raise ValueError(f"what must be 'summary' or 'samples', got {what!r}")
        rows = []
        for r in self.summary:
            flat = {k: v for k, v in r.items() if k not in ("robust_accuracy", "success_at")}
            flat.update({f"robust_accuracy@{e:g}": v for e, v in zip(self.grid, r["robust_accuracy"])})
            rows.append(flat)
        return pd.DataFrame(rows).set_index("attack")

    def __repr__(self) -> str:
        best = self.row()
        return (f"Evaluation({norm_name(parse_norm(self.config['norm']))} norm, {self.samples} samples, clean accuracy "
                f"{100 * self.clean_accuracy:.1f}%, attacks {', '.join(self.attack_names)}; best-of-all median norm "
                f"{best['median_norm']:.4g}, success {100 * best['success_rate']:.1f}%)")

    def _repr_html_(self) -> str:
        """For notebooks: the headline lines, the summary table and the robust-accuracy curve."""
        import base64
        import html
        import tempfile

        from .plots import robust_accuracy_plot
        from .report import table_cells

        head, rows = table_cells(self)
        cell = lambda tag, v: f"<{tag}>{html.escape(str(v))}</{tag}>"  # noqa: E731
        table = ("<table><tr>" + "".join(cell("th", h) for h in head) + "</tr>"
                 + "".join("<tr>" + "".join(cell("td", v) for v in r) + "</tr>" for r in rows) + "</table>")
        with tempfile.TemporaryDirectory() as tmp:
            png = robust_accuracy_plot(self, Path(tmp) / "ra.png").read_bytes()
        img = f"<img alt='robust accuracy' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        lines = "".join(f"<p><b>{html.escape(h)}</b></p>" for h in self.headlines())
        return f"<div><p>{html.escape(repr(self))}</p>{lines}{table}{img}</div>"

    def save(self, folder: str | Path | None = None) -> Path:
        """Write every report (JSON, CSV, Markdown, PNG plots, HTML) into ``folder``."""
        from .report import write_reports

        target = Path(folder) if folder is not None else self.folder
        if target is None:
            raise ValueError("save(folder): this evaluation has no output folder; name one")
        write_reports(self, target)
        return target

    @classmethod
    def load(cls, folder: str | Path, grid: list[float] | None = None) -> "Evaluation":
        """Rebuild from a run folder (finished or not: an interrupted run reports what it has)."""
        from .store import RunStore

        store = RunStore(folder)
        manifest = store.manifest()
        if manifest is None:
            raise FileNotFoundError(f"{folder} is not an evaluation run folder (no run.json); "
                                    "give the --out folder of `minnorm evaluate`")
        config = dict(manifest["config"])
        if grid is not None:
            config["grid"] = check_grid(grid)
        table = build_table(store.load_batches(), config["attacks"])
        return cls(config, manifest["environments"], table, Path(folder))


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v
