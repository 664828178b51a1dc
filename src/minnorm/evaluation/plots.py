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


def examples_plot(examples: list[dict[str, Any]], attacks: list[str], path: Path) -> Path | None:
    """Clean images, each attack's adversarial and its perturbation heat map, one row per
    sample, laid out like the trust-region paper's Figures 6-12."""
    if not examples:
        return None
    plt = _pyplot()
    cols = 1 + 2 * len(attacks)
    fig, axes = plt.subplots(len(examples), cols, figsize=(1.6 * cols, 1.75 * len(examples)), dpi=100,
                             squeeze=False)
    for r, ex in enumerate(examples):
        clean = ex["input"]
        _image(axes[r, 0], clean, f"#{ex['index']} label {ex['label']}")
        for j, a in enumerate(attacks):
            adv, norm = ex["adv"][a], ex["norm"][a]
            broken = math.isfinite(norm)
            _image(axes[r, 1 + 2 * j], adv, a if broken else f"{a}: failed")
            if broken:  # channels summed: where the attack spent its norm
                axes[r, 2 + 2 * j].imshow(np.abs(adv - clean).sum(axis=0), cmap="inferno")
            axes[r, 2 + 2 * j].set_title(f"|dx| {norm:.3g}" if broken else "-", fontsize=7)
            axes[r, 2 + 2 * j].axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _image(ax, img: np.ndarray, title: str) -> None:
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(np.moveaxis(img[:3], 0, -1), 0, 1))
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _norm_col(name: str) -> str:
    return "best_norm" if name == ALL else f"{name}.norm"


def _norm_label(norm: Any) -> str:
    return "Linf" if norm == "linf" else f"L{float(norm):g}"
