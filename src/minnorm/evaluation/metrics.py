"""Numbers read off per-sample norms: robust accuracy curves, summaries, sanity checks.

A sample broken by an adversarial of norm r is not robust at any radius eps >= r, so a single run
of a minimal-norm attack answers every epsilon (Foolbox's convention); robust accuracy counts the
correctly classified samples no attack broke within eps, over all samples. "Within eps" follows
the one tolerance rule of :mod:`minnorm.core.radius`. The best-of-all ("All") norm of a sample is
the smallest norm any attack found.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..core.radius import broken_within

ALL = "All"


def robust_accuracy(norms: np.ndarray, correct: np.ndarray, grid: Sequence[float]) -> list[float]:
    """Fraction of all samples that are correct and not broken within each radius of ``grid``."""
    n = len(correct)
    if n == 0:
        return [math.nan] * len(grid)
    return [float((correct & ~broken_within(norms, eps)).sum()) / n for eps in grid]


def area_gap(curve: Sequence[float], best: Sequence[float], grid: Sequence[float]) -> float:
    """Mean vertical gap between an attack's robust accuracy curve and the best-of-all curve
    over the grid (trapezoid area divided by the grid's span; the single gap for one radius).
    Zero when the attack matches the ensemble; in accuracy units, so 0.05 is 5 points."""
    diff = np.asarray(curve, dtype=float) - np.asarray(best, dtype=float)
    if len(grid) == 1:
        return float(diff[0])
    span = grid[-1] - grid[0]
    area = float(np.sum((diff[1:] + diff[:-1]) / 2 * np.diff(np.asarray(grid, dtype=float))))
    return area / span if span > 0 else float(diff.mean())


def default_grid(table: dict[str, np.ndarray], points: int = 21) -> list[float]:
    """0 to the largest finite best-of-all norm, ``points`` radii."""
    norms = table["best_norm"]
    finite = norms[np.isfinite(norms)]
    top = float(finite.max()) if len(finite) else 1.0
    top = top if top > 0 else 1.0
    return [top * i / (points - 1) for i in range(points)]


def _stats(values: np.ndarray) -> tuple[float, float]:
    return (float(values.mean()), float(np.median(values))) if len(values) else (math.nan, math.nan)


def summarize(table: dict[str, np.ndarray], plans: list[dict[str, Any]], grid: Sequence[float]) -> list[dict[str, Any]]:
    """One row per attack and the ``All`` row (see the module docstring for the definitions)."""
    correct = table["correct"]
    attacked = int(correct.sum())
    rows = []
    curves = {}
    for plan in plans + [{"name": ALL, "mode": "best-of-all", "epsilons": []}]:
        a = plan["name"]
        prefix = "best" if a == ALL else a
        norms = table[f"{prefix}_norm" if a == ALL else f"{a}.norm"]
        success = np.isfinite(norms) & correct
        ok = norms[success]
        rel = table["best_relative" if a == ALL else f"{a}.relative"][success]
        passes = table["best_passes" if a == ALL else f"{a}.passes"][correct]
        seconds = table["best_seconds" if a == ALL else f"{a}.seconds"][correct]
        mean, median = _stats(ok)
        curves[a] = robust_accuracy(norms, correct, grid)
        row = {"attack": a, "mode": plan["mode"], "samples": attacked,
               "success_rate": float(success.sum()) / attacked if attacked else math.nan,
               "mean_norm": mean, "median_norm": median,
               "relative_mean": float(rel.mean()) if len(rel) else math.nan,
               "relative_worst": float(rel.max()) if len(rel) else math.nan,
               "robust_accuracy": curves[a],
               "passes_per_sample": float(passes.mean()) if attacked else math.nan,
               "seconds_per_sample": float(seconds.sum()) / attacked if attacked else math.nan,
               "over_budget": int(table["best_over_budget" if a == ALL else f"{a}.over_budget"][correct].sum())}
        if plan["mode"] == "fixed":
            row["success_at"] = {f"{e:g}": float(table[f"{a}.success@{e:g}"][correct].sum()) / attacked
                                 if attacked else math.nan for e in plan["epsilons"]}
        rows.append(row)
    for row in rows:
        row["area_gap"] = area_gap(curves[row["attack"]], curves[ALL], grid)
    return rows


def sanity_checks(table: dict[str, np.ndarray], plans: list[dict[str, Any]], summary: list[dict[str, Any]],
                  grid: Sequence[float], margin: float = 0.1) -> list[dict[str, str]]:
    """Signs of a suspicious evaluation (the kind gradient masking produces), as messages."""
    warnings = []
    correct = table["correct"]
    rows = {r["attack"]: r for r in summary}
    unbounded = [p["name"] for p in plans if p["mode"] in ("minimal", "search")]
    if unbounded and correct.any():
        unbroken = correct & ~np.isfinite(table["best_norm"])
        left = int(unbroken.sum())
        starved = int((unbroken & table["best_over_budget"]).sum())
        if starved:
            warnings.append({"check": "budget", "message":
                             f"{starved} correctly classified sample(s) were never broken and ran out of the pass "
                             "budget: the budget, not the model, may be why; raise --budget to tell."})
        if left > starved:
            warnings.append({"check": "unbounded-success", "message":
                             f"best-of-all success is {100 * rows[ALL]['success_rate']:.1f}%, below 100% at "
                             f"unbounded norm: {left - starved} correctly classified sample(s) were never broken "
                             "within their budget. An unbounded attack should break every sample; suspect "
                             "gradient masking or too few iterations."})
    for p in plans:
        if p["mode"] != "fixed" or len(p["epsilons"]) < 2:
            continue
        hits = np.stack([table[f"{p['name']}.success@{e:g}"] & correct for e in p["epsilons"]])
        lost = int((hits[:-1] & ~hits[1:]).any(axis=0).sum())
        rates = hits.sum(axis=1)
        if lost or np.any(np.diff(rates) < 0):
            warnings.append({"check": "monotone", "message":
                             f"{p['name']}: robust accuracy is not monotone in epsilon: {lost} sample(s) broken "
                             "at a radius but not at a larger one (a stronger attack must not do worse; "
                             "suspect gradient masking or randomness in the attack)."})
    for a, row in rows.items():
        curve = row["robust_accuracy"]
        if any(b > c + 1e-12 for c, b in zip(curve, curve[1:])):
            warnings.append({"check": "monotone", "message": f"{a}: robust accuracy increases with epsilon"})
    minimal = [p["name"] for p in plans if p["mode"] == "minimal"]
    for p in plans:
        if p["mode"] == "minimal" or not minimal:
            continue
        kind = "epsilon search" if p["mode"] == "search" else "fixed epsilon"
        fixed = rows[p["name"]]["robust_accuracy"]
        best_minimal = np.min([rows[m]["robust_accuracy"] for m in minimal], axis=0)
        gaps = best_minimal - np.asarray(fixed)
        worst = int(np.argmax(gaps))
        if gaps[worst] > margin:
            warnings.append({"check": "fixed-beats-minimal", "message":
                             f"{p['name']} ({kind}) beats every minimal-norm attack by "
                             f"{100 * gaps[worst]:.1f} points of robust accuracy at eps={grid[worst]:g} "
                             f"({100 * fixed[worst]:.1f}% vs {100 * best_minimal[worst]:.1f}%): the minimal-norm "
                             "attacks are probably too weak here (masked gradients, too few steps)."})
    return warnings
