"""PNG figures of an evaluation (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import ALL


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def robust_accuracy_plot(evaluation, path: Path) -> Path:
    """Robust accuracy versus epsilon for every attack, the best-of-all curve on top."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for row in evaluation.summary:
        best = row["attack"] == ALL
        ax.plot(evaluation.grid, [100 * v for v in row["robust_accuracy"]], label=row["attack"],
                color="black" if best else None, lw=2.5 if best else 1.4, ls="-" if best else "--",
                marker=None if len(evaluation.grid) > 12 else "o", ms=3)
    ax.set_xlabel(f"epsilon ({_norm_label(evaluation.config['norm'])})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Robust accuracy vs. epsilon")
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
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), dpi=100, squeeze=False)
    correct = evaluation.table["correct"]
    finite = [evaluation.table[_norm_col(a)][correct] for a in names]
    allv = np.concatenate([v[np.isfinite(v)] for v in finite]) if finite else np.zeros(0)
    bins = np.linspace(0, float(allv.max()) if len(allv) and allv.max() > 0 else 1.0, 21)
    for ax, name, values in zip(axes.flat, names, finite):
        ok = values[np.isfinite(values)]
        ax.hist(ok, bins=bins, color="black" if name == ALL else "tab:blue", alpha=0.8)
        ax.set_title(f"{name} ({len(ok)}/{len(values)} broken)", fontsize=9)
        ax.set_xlabel(_norm_label(evaluation.config["norm"]), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def examples_plot(examples: list[dict[str, Any]], attacks: list[str], path: Path,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> Path | None:
    """Clean images, each attack's adversarial and its perturbation heat map, one row per
    sample, laid out like the trust-region paper's Figures 6-12.

    The panels are composed into one RGB mosaic drawn on a single axes: dozens of separate
    axes would cost seconds of layout for no visible gain.
    """
    if not examples:
        return None
    plt = _pyplot()
    from matplotlib import colormaps

    h, w = examples[0]["input"].shape[-2:]
    pad, top = max(2, h // 8), max(8, h // 3)
    cols = 1 + 2 * len(attacks)
    cell_h, cell_w = h + top + pad, w + pad
    mosaic = np.ones((cell_h * len(examples), cell_w * cols, 3))
    labels = []
    lo, hi = bounds
    for r, ex in enumerate(examples):
        panels = [(_rgb(ex["input"], lo, hi), f"#{ex['index']} y={ex['label']}")]
        for a in attacks:
            adv, norm = ex["adv"][a], ex["norm"][a]
            if math.isfinite(norm):
                heat = np.abs(adv - ex["input"]).sum(axis=0)
                heat = colormaps["inferno"](heat / heat.max() if heat.max() > 0 else heat)[..., :3]
                panels += [(_rgb(adv, lo, hi), a), (heat, f"|dx| {norm:.3g}")]
            else:
                panels += [(None, f"{a}: failed"), (None, "")]
        for c, (img, text) in enumerate(panels):
            y0, x0 = r * cell_h + top, c * cell_w
            if img is not None:
                mosaic[y0:y0 + h, x0:x0 + w] = img
            labels.append((x0 + w / 2, y0 - 1, text))
    scale = max(1.0, 56 / h)  # small images get more pixels so the captions stay legible
    fig = plt.figure(figsize=(mosaic.shape[1] * scale / 50, mosaic.shape[0] * scale / 50), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="nearest")
    for x, y, text in labels:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=6)
    ax.axis("off")
    fig.savefig(path)
    plt.close(fig)
    return path


def _rgb(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    img = np.clip((img - lo) / (hi - lo), 0, 1)
    return np.repeat(img[0][..., None], 3, axis=-1) if img.shape[0] == 1 else np.moveaxis(img[:3], 0, -1)


def _norm_col(name: str) -> str:
    return "best_norm" if name == ALL else f"{name}.norm"


def _norm_label(norm: Any) -> str:
    return "Linf" if norm == "linf" else f"L{float(norm):g}"
