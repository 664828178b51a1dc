"""PNG figures of an evaluation (matplotlib, Agg backend: no display needed).

Every figure is titled with the model, the data set, the sample count and the norm, so a figure
copied out of its report still says what it shows. Robust accuracy always comes from
``Evaluation.robust_accuracy`` (the one tolerance rule of :mod:`minnorm.core.radius`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.norms import norm_label
from ..data.classes import class_label
from .metrics import ALL

# Per attack: a line style and a marker, so a curve lying on another one (or on the best-of-all
# line, drawn thin and behind) stays visible; colours cycle C0.. (black is the best of all).
LINESTYLES = ["--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1)), (0, (1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
CURVE_POINTS = 101


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _model_name(ev) -> str:
    model = ev.config.get("model", {})
    return model.get("name") or model.get("class") or "model"


def _data_name(ev) -> str:
    """The data set's name, a file's name without its folders."""
    name = str(ev.config.get("data", {}).get("name") or "tensors")
    return Path(name).name if "/" in name or "\\" in name else name


def run_title(ev) -> str:
    """``cnn on sample, 50 samples, L2``: what every figure of ``ev`` is about."""
    return f"{_model_name(ev)} on {_data_name(ev)}, {ev.samples} samples, {norm_label(ev.config['norm'])}"


def group_title(runs: list[tuple[str, Any]]) -> str:
    """``3 runs: cnn, resnet, mlp on sample, 50 samples each`` for a panel of several runs."""
    models = list(dict.fromkeys(_model_name(ev) for _, ev in runs))
    data = {_data_name(ev) for _, ev in runs}
    samples = {ev.samples for _, ev in runs}
    text = f"{len(runs)} run{'s' if len(runs) > 1 else ''}: {', '.join(models)}"
    text += f" on {data.pop()}" if len(data) == 1 else " on " + ", ".join(sorted(data))
    return text + (f", {samples.pop()} samples{' each' if len(runs) > 1 else ''}" if len(samples) == 1
                   else ", " + "/".join(str(ev.samples) for _, ev in runs) + " samples")


def _largest_norm(ev) -> float:
    correct = ev.table["correct"]
    cols = [ev.table["best_norm"]] + [ev.table[f"{a}.norm"] for a in ev.attack_names]
    finite = [v[correct & np.isfinite(v)] for v in cols]
    finite = np.concatenate(finite) if finite else np.zeros(0)
    return float(finite.max()) if len(finite) else 0.0


def curve_grid(ev, points: int = CURVE_POINTS) -> list[float]:
    """Radii the curves are drawn at: the grid the user chose (``--grid``), else ``points`` radii
    from 0 to 10% past the largest norm any attack found, so every curve reaches its floor
    inside the plot (the summary's default grid stops at the largest best-of-all norm)."""
    if ev.config.get("grid"):
        return list(ev.grid)
    top = _largest_norm(ev) * 1.1 or (ev.grid[-1] if ev.grid else 1.0) or 1.0
    return [top * i / (points - 1) for i in range(points)]


def curves(ev, grid: Sequence[float]) -> dict[str, list[float]]:
    """Robust accuracy of each attack and of the best of all (``All``) at every radius of ``grid``."""
    out = {a: [ev.robust_accuracy(e, a) for e in grid] for a in ev.attack_names}
    out[ALL] = [ev.robust_accuracy(e) for e in grid]
    return out


def _style_axes(ax, grid: Sequence[float], norm: Any) -> None:
    ax.set_xlabel(f"epsilon ({norm_label(norm)} norm)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(0, grid[-1] if grid[-1] > 0 else 1.0)
    ax.grid(True, alpha=0.35)


def robust_accuracy_plot(evaluation, path: Path) -> Path:
    """Robust accuracy versus epsilon for every attack, with the best of all (black, thin, drawn
    behind the attacks so a curve lying on it stays visible) and a shaded band spanning the attacks'
    curves (where it is wide, the choice of attack matters)."""
    plt = _pyplot()
    ev = evaluation
    grid = curve_grid(ev)
    lines = curves(ev, grid)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    every = max(1, len(grid) // 12)
    if len(ev.attack_names) > 1:
        stack = 100 * np.array([lines[a] for a in ev.attack_names])
        ax.fill_between(grid, stack.min(axis=0), stack.max(axis=0), color="tab:purple", alpha=0.15, lw=0, zorder=0,
                        label="spread of the attacks")
    ax.plot(grid, [100 * v for v in lines[ALL]], color="black", lw=1.2, zorder=1, label=f"{ALL} (best of all)")
    if getattr(ev, "certified", False):  # the bracket: true robust accuracy lies between the two curves
        cert = [100 * ev.certified_robust_accuracy(e) for e in grid]
        ax.fill_between(grid, cert, [100 * v for v in lines[ALL]], color="tab:green", alpha=0.2, lw=0, zorder=0,
                        label="bracket (certified .. attacks)")
        ax.plot(grid, cert, color="tab:green", lw=1.4, ls="--", zorder=1, label="certified (lower bound)")
    for i, a in enumerate(ev.attack_names):
        ax.plot(grid, [100 * v for v in lines[a]], color=f"C{i % 10}", lw=1.6, ls=LINESTYLES[i % len(LINESTYLES)],
                marker=MARKERS[i % len(MARKERS)], ms=4, markevery=(i % every, every), zorder=2 + i, label=a)
    _style_axes(ax, grid, ev.config["norm"])
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"Robust accuracy vs. epsilon\n{run_title(ev)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def norm_histograms(evaluation, path: Path) -> Path:
    """Histogram of the per-sample norms each attack found (successes only), shared bins."""
    plt = _pyplot()
    names = evaluation.attack_names + [ALL]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows + 0.5), dpi=100, squeeze=False)
    correct = evaluation.table["correct"]
    finite = [evaluation.table[_norm_col(a)][correct] for a in names]
    allv = np.concatenate([v[np.isfinite(v)] for v in finite]) if finite else np.zeros(0)
    bins = np.linspace(0, float(allv.max()) if len(allv) and allv.max() > 0 else 1.0, 21)
    for ax, name, values in zip(axes.flat, names, finite):
        ok = values[np.isfinite(values)]
        ax.hist(ok, bins=bins, color="black" if name == ALL else "tab:blue", alpha=0.8)
        ax.set_title(f"{name} ({len(ok)}/{len(values)} broken)", fontsize=9)
        ax.set_xlabel(f"{norm_label(evaluation.config['norm'])} norm", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"Norms found per sample: {run_title(evaluation)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _heat(ex: dict[str, Any], a: str) -> np.ndarray:
    return np.abs(ex["adv"][a] - ex["input"]).sum(axis=0)


def heat_scale(examples: list[dict[str, Any]], attacks: list[str]) -> float:
    """One colour scale for every perturbation panel: the largest |dx| (summed over channels)."""
    top = [float(_heat(ex, a).max()) for ex in examples for a in attacks if math.isfinite(ex["norm"][a])]
    return max(top, default=0.0) or 1.0


def _panels(ex: dict[str, Any], attacks: list[str], bounds, vmax: float, names) -> list[tuple[Any, str]]:
    """One row of the figure: the clean image, then per attack its adversarial and |dx|."""
    from matplotlib import colormaps

    lo, hi = bounds
    truth = class_label(ex["label"], names, short=True) if names else f"y={ex['label']}"
    panels = [(_rgb(ex["input"], lo, hi), f"#{ex['index']}\n{truth}")]
    for a in attacks:
        norm = ex["norm"][a]
        if not math.isfinite(norm):
            panels += [(None, f"{a}\nfailed"), (None, "")]
            continue
        pred = ex.get("adv_pred", {}).get(a)
        caption = a if pred is None else f"{a}\n\u2192 {class_label(pred, names, short=True)}"
        heat = colormaps["inferno"](np.clip(_heat(ex, a) / vmax, 0, 1))[..., :3]
        panels += [(_rgb(ex["adv"][a], lo, hi), caption), (heat, f"|dx|\n{norm:.3g}")]
    return panels


def examples_plot(examples: list[dict[str, Any]], attacks: list[str], path: Path,
                  bounds: tuple[float, float] = (0.0, 1.0), title: str = "",
                  names: Sequence[str] | None = None) -> Path | None:
    """Clean images (index, true class), each attack's adversarial (with the class the model
    gives it, when the run saved it) and its perturbation |dx| summed over channels, one row per
    sample, laid out like the trust-region paper's Figures 6-12. Every perturbation panel shares
    one colour scale, shown by the colour bar.

    The panels are composed into one RGB mosaic drawn on a single axes: dozens of separate
    axes would cost seconds of layout for no visible gain.
    """
    if not examples:
        return None
    plt = _pyplot()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    h, w = examples[0]["input"].shape[-2:]
    scale = max(1.0, 56 / h)  # small images get more pixels so the captions stay legible
    px = 2 * scale  # figure pixels per image pixel
    pad, top = max(2, h // 8), max(h // 3, math.ceil(24 / px) + 1)  # two caption lines above each panel
    cols = 1 + 2 * len(attacks)
    cell_h, cell_w = h + top + pad, w + pad
    mosaic = np.ones((cell_h * len(examples), cell_w * cols, 3))
    vmax = heat_scale(examples, attacks)
    labels = []
    for r, ex in enumerate(examples):
        for c, (img, text) in enumerate(_panels(ex, attacks, bounds, vmax, names)):
            y0, x0 = r * cell_h + top, c * cell_w
            if img is not None:
                mosaic[y0:y0 + h, x0:x0 + w] = img
            labels.append((x0 + w / 2, y0 - 0.5, text))
    mw, mh = mosaic.shape[1] * px, mosaic.shape[0] * px
    head, foot = 34, 62  # pixels for the title and for the colour bar with its ticks and label
    fw, fh = max(mw, 440), mh + head + foot
    fig = plt.figure(figsize=(fw / 100, fh / 100), dpi=100)
    ax = fig.add_axes(((fw - mw) / 2 / fw, foot / fh, mw / fw, mh / fh))
    ax.imshow(mosaic, interpolation="nearest")
    for x, y, text in labels:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=6, linespacing=1.0)
    ax.axis("off")
    fig.text(0.5, 1 - 6 / fh, f"Examples: {title}" if title else "Examples", ha="center", va="top", fontsize=8)
    cax = fig.add_axes((0.2, 24 / fh, 0.6, 9 / fh))
    bar = fig.colorbar(ScalarMappable(Normalize(0, vmax), "inferno"), cax=cax, orientation="horizontal")
    bar.ax.tick_params(labelsize=6)
    cax.set_title("perturbation |dx| summed over channels (one scale for all panels)", fontsize=6, pad=2)
    fig.savefig(path)
    plt.close(fig)
    return path


def _rgb(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    img = np.clip((img - lo) / (hi - lo), 0, 1)
    return np.repeat(img[0][..., None], 3, axis=-1) if img.shape[0] == 1 else np.moveaxis(img[:3], 0, -1)


def _norm_col(name: str) -> str:
    return "best_norm" if name == ALL else f"{name}.norm"


# --------------------------------------------------------------------------- many runs

def leaderboard_plot(groups: list[tuple[Any, list[tuple[str, Any]]]], eps: dict[Any, float], path: Path) -> Path:
    """Best-of-all robust accuracy of many runs, one colour per run (a label keeps its colour in
    every panel), one panel per norm (never two norms on one axis), each from 0 to 10% past the
    largest best-of-all norm of its runs. ``groups``: ``[(norm, [(label, evaluation), ...]), ...]``;
    ``eps`` maps each norm to the radius of the leaderboard, marked by a dotted vertical line."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(6.2 * len(groups), 4.4), dpi=100, squeeze=False)
    colour: dict[str, int] = {}
    for _, runs in groups:
        for label, _ev in runs:
            colour.setdefault(label, len(colour))
    for ax, (norm, runs) in zip(axes.flat, groups):
        top = max([_largest_best_norm(ev) for _, ev in runs] + [eps.get(norm, 0.0)]) * 1.1 or 1.0
        grid = [top * i / (CURVE_POINTS - 1) for i in range(CURVE_POINTS)]
        every = max(1, len(grid) // 12)
        same_size = len({ev.samples for _, ev in runs}) == 1
        for label, ev in runs:
            i = colour[label]
            name = label if label == _model_name(ev) else f"{label} ({_model_name(ev)})"
            ax.plot(grid, [100 * ev.robust_accuracy(e) for e in grid], color=_run_colour(i), lw=1.6,
                    ls=["-", "--", "-.", ":"][(i // 10) % 4], marker=MARKERS[i % len(MARKERS)], ms=4,
                    markevery=(i % every, every), label=name if same_size else f"{name}, {ev.samples} samples")
        if norm in eps:
            ax.axvline(eps[norm], color="0.3", ls=":", lw=1)
        _style_axes(ax, grid, norm)
        ax.legend(fontsize=7, loc="upper right")
        ax.set_title(f"Robust accuracy, best of all attacks ({norm_label(norm)})\n{group_title(runs)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _largest_best_norm(ev) -> float:
    best = ev.table["best_norm"]
    finite = best[ev.table["correct"] & np.isfinite(best)]
    return float(finite.max()) if len(finite) else 0.0


def _run_colour(i: int) -> str:
    return f"C{i % 10}"
