"""Both norms in one run: one evaluation per norm, in ``OUT/<norm>/``, and one report over them.

Attacks are given as names of any norms (each goes to the evaluation of its registry norm) or
left out, in which case each norm gets its default ensemble (``PRESETS``). Every other setting
is shared; the radii of interest are per norm (``{"linf": [8/255], "l2": [0.5]}``).
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

from ..core import parse_norm
from .plan import norm_name
from .results import Evaluation

# The standard ensemble per norm (minnorm.attacks.ensemble): the default when no attack is named.
PRESETS = {"l2": ["ensemble-l2"], "linf": ["ensemble-linf"], "l1": ["ensemble-l1"]}
# ... and, where radii are asked for (eps), APGD-CE at each of them: a minimal-norm search ends
# within ~0.5% above the boundary, so a sample whose minimum lies just below eps could count as
# robust there; a fixed-eps attack at eps has that margin (benchmarks/RESULTS.md, ninth session).
RADIUS_CHECKS = {"l2": "apgd-at-eps-l2", "linf": "apgd-at-eps-linf", "l1": "apgd-at-eps-l1"}


def preset(norm: str, radii: bool = False) -> list[str]:
    """The standard attacks of ``norm``: its ensemble, with ``radii`` also APGD-CE at the radii."""
    return PRESETS[norm] + ([RADIUS_CHECKS[norm]] if radii else [])


def split_attacks(norms: Sequence[float | str], attacks: Sequence[str] | None,
                  radii: Collection[str] = ()) -> dict[str, list[str]]:
    """``{norm name: attack names}``: the attacks of each norm, or its preset (with the radius
    check for the norms in ``radii``, those with radii of interest)."""
    from ..core import registry

    wanted = [norm_name(parse_norm(n)) for n in norms]
    if not wanted:
        raise ValueError("no norm given: name at least one, e.g. l2,linf")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"norms are listed twice: {list(norms)}")
    if attacks is None:
        missing = [n for n in wanted if n not in PRESETS]
        if missing:
            raise ValueError(f"--preset standard has an ensemble for the norms {', '.join(PRESETS)}, not "
                             f"{', '.join(missing)}; name the attacks with --attacks")
        return {n: [a for a in preset(n, n in radii) if a in registry.available()] for n in wanted}
    per: dict[str, list[str]] = {n: [] for n in wanted}
    for name in attacks:
        norm = registry.get(name).norm_name
        if norm not in per:
            raise ValueError(f"attack {name!r} works in {norm}, which is not among the norms {', '.join(wanted)}")
        per[norm].append(name)
    empty = [n for n, a in per.items() if not a]
    if empty:
        raise ValueError(f"no attack given for {', '.join(empty)}; add one (e.g. {PRESETS.get(empty[0], ['?'])[0]})")
    return per


def evaluate_norms(model, data, norms: Sequence[float | str], attacks: Sequence[str] | Mapping[str, Any] | None = None,
                   *, eps: Mapping[str, Sequence[float]] | None = None, out: str | os.PathLike | None = None,
                   **kwargs: Any) -> dict[str, Evaluation]:
    """One :func:`~minnorm.evaluate` per norm (same data, model, seed and settings); with ``out``
    each is saved in ``out/<norm>`` and ``out/report.html`` / ``out/summary.md`` show them all.
    ``attacks`` may map names to parameters; ``eps`` maps a norm name to its radii."""
    from .run import evaluate

    norms, attacks = _names(norms), _names(attacks)
    params = dict(attacks) if isinstance(attacks, Mapping) else {a: {} for a in attacks or []}
    if eps is not None and not isinstance(eps, Mapping):
        raise TypeError(f"eps must map a norm to its radii, e.g. {{'linf': [8/255], 'l2': [0.5]}}, got {eps!r}")
    eps = {norm_name(parse_norm(k)): v for k, v in (eps or {}).items()}
    radii = set() if kwargs.get("eps_search") else {k for k, v in eps.items() if v is not None}
    plan = split_attacks(norms, list(params) if attacks is not None else None, radii)
    unknown = set(eps) - set(plan)
    if unknown:
        raise ValueError(f"--eps is given for {', '.join(sorted(unknown))}, which is not among the norms")
    results = {}
    for norm, names in plan.items():
        folder = None if out is None else Path(out) / norm
        results[norm] = evaluate(model, data, {a: params.get(a, {}) for a in names}, norm, eps=eps.get(norm),
                                 out=folder, **kwargs)
    if out is not None:
        write_overview(results, Path(out))
    return results


def _names(items):
    """``"l2,linf"`` as ``["l2", "linf"]`` (as ``evaluate`` takes ``"ddn,tr-l2"``); anything else as it is."""
    return [part.strip() for part in items.split(",")] if isinstance(items, str) else items


def write_overview(results: dict[str, Evaluation], folder: Path) -> None:
    """``report.html`` and ``summary.md`` over the per-norm runs: a section per norm."""
    from .report import _data_uri, table_cells
    from .store import OutputFolder

    md, page = ["# Robustness evaluation, one section per norm", ""], []
    for norm, ev in results.items():
        head, rows = table_cells(ev)
        md += [f"## {norm}", "", *[f"- {h}" for h in ev.headlines()], "",
               "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        md += ["| " + " | ".join(r) + " |" for r in rows] + ["", f"Full report: [{norm}/report.html]({norm}/report.html)", ""]
        plot = folder / norm / "plots" / "robust_accuracy.png"
        img = f"<img alt='robust accuracy, {norm}' src='{_data_uri(plot)}'>" if plot.is_file() else ""
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        page.append(f"<section id='{norm}'><h2>{norm}</h2>"
                    + "".join(f"<p><b>{html.escape(h)}</b></p>" for h in ev.headlines())
                    + "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + cells
                    + f"</table>{img}<p><a href='{norm}/report.html'>full {norm} report</a></p></section>")
    style = "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:3px 6px}table{border-collapse:collapse}"
    with OutputFolder(folder).lock() as out:
        out.write_text("summary.md", "\n".join(md) + "\n")
        out.write_text("report.html", "<!DOCTYPE html><html><head><meta charset='utf-8'><title>minnorm evaluation"
                       f"</title><style>{style}</style></head><body><h1>Robustness evaluation</h1>"
                       + "".join(page) + "</body></html>\n")
