"""Issue 14, item 5: reports a reader takes in at a glance.

One small run (tiny MLP, 10 samples, three attacks, certified radii) is reported once; the tests read the
figures matplotlib drew (their texts, lines, colour bar), recompute the per-class table and the
confusion matrix by hand and with the model, and render report.html in headless Chromium: each
new element present in the DOM, and a screenshot in which the curves, the band and the example
images are actually drawn.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import near, region, render, screenshot, text_of
from helpers import tiny_inputs, tiny_mlp, true_labels
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

import minnorm
from minnorm.core import radius_limit
from minnorm.data.classes import CIFAR10_CLASS_NAMES, FASHION_MNIST_CLASS_NAMES, class_label, class_names
from minnorm.evaluation import report
from minnorm.evaluation.store import RunStore

N = 10
NAMES = ["cat", "dog", "owl", "fox"]
ATTACKS = ["deepfool-l2", "ddn", "fgm-l2"]
GLOSSARY_TERMS = ["area gap", "rel. worst", "over budget", "best-of-all (All)"]


class Run:
    """The evaluation, its folder, the model and every figure drawn while reporting it."""

    def __init__(self, ev, folder: Path, model, figures: dict[str, Figure]):
        self.ev, self.folder, self.model, self.figures = ev, folder, model, figures


def _evaluate(folder: Path, figures: dict[str, Figure], **kwargs):
    real = Figure.savefig

    def keep(fig, fname, *args, **kw):
        figures[Path(fname).name] = fig
        return real(fig, fname, *args, **kw)

    model = tiny_mlp()
    x = tiny_inputs(N)
    y = true_labels(model, x, wrong=(3,))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", keep)
        ev = minnorm.evaluate(model, (x, y), ATTACKS, 2, epsilons=[0.1, 0.3], quick=True, progress=False,
                              out=folder, examples=3, batch_size=4,
                              describe={"model": {"name": "tiny_mlp"}, "data": {"name": "toys", "class_names": NAMES}},
                              **kwargs)
    return ev, model


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    folder = tmp_path_factory.mktemp("report") / "run"
    figures: dict[str, Figure] = {}
    ev, model = _evaluate(folder, figures, certify="bound")
    return Run(ev, folder, model, figures)


def _texts(fig: Figure) -> str:
    from matplotlib.text import Text

    return " | ".join(t.get_text() for t in fig.findobj(Text))


# --------------------------------------------------------------------------- class names

def test_class_names_of_known_data_sets():
    assert class_names("sample") == class_names("fashion-mnist:train") == FASHION_MNIST_CLASS_NAMES
    assert class_names("cifar10") == class_names("CIFAR-10:test") == CIFAR10_CLASS_NAMES
    assert class_names({"name": "sample"})[9] == "Ankle boot"
    assert class_names({"name": "/data/my.pt"}) is None and class_names(None) is None
    assert class_names({"name": "sample", "class_names": ["a", "b"]}) == ("a", "b")
    assert class_label(3, FASHION_MNIST_CLASS_NAMES) == "3 Dress" and class_label(3, None) == "3"
    assert class_label(12, FASHION_MNIST_CLASS_NAMES) == "12"  # a label the names do not cover


# --------------------------------------------------------------------------- figures

def test_every_plot_is_titled_with_model_data_and_sample_count(run):
    assert set(run.figures) == {"robust_accuracy.png", "norm_histograms.png", "examples.png"}
    for name, fig in run.figures.items():
        text = _texts(fig)
        assert "tiny_mlp" in text and "toys" in text and f"{N} samples" in text and "L2" in text, (name, text)


def test_curves_stay_visible_under_the_best_of_all_line(run):
    ev = run.ev
    ax = run.figures["robust_accuracy.png"].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    best = lines["All (best of all)"]
    assert to_rgb(best.get_color()) == (0, 0, 0) and best.get_linewidth() < 1.5
    for a in ATTACKS:
        line = lines[a]
        assert line.get_zorder() > best.get_zorder()  # drawn over the best-of-all line
        assert line.get_marker() not in (None, "None", "") and line.get_linestyle() != "-"
        grid = line.get_xdata()
        assert np.allclose(line.get_ydata(), [100 * ev.robust_accuracy(e, a) for e in grid])
    assert len({lines[a].get_color() for a in ATTACKS}) == len(ATTACKS)
    assert np.allclose(best.get_ydata(), [100 * ev.robust_accuracy(e) for e in best.get_xdata()])
    # the band spans the attacks' curves
    band = [c for c in ax.collections if c.get_label() == "spread of the attacks"]
    assert len(band) == 1
    # the axis and its grid go past the largest norm any attack found, where every curve is flat
    norms = np.concatenate([ev.table[f"{a}.norm"] for a in ATTACKS])
    largest = norms[np.isfinite(norms)].max()
    assert ax.get_xlim()[1] > largest * 1.05
    assert any(g.get_visible() for g in ax.get_xgridlines())
    assert "L2" in ax.get_xlabel()


def _saved(run) -> dict[int, dict[str, torch.Tensor]]:
    """Sample index -> its input and adversarials, read from the saved batches."""
    store = RunStore(run.folder)
    out = {}
    for b in sorted(store.done()):
        t = store.load_tensors(b)
        for j, i in enumerate(t["index"].tolist()):
            out[i] = {"input": t["inputs"][j], **{a: t[f"adv/{a}"][j] for a in ATTACKS}}
    return out


def test_examples_show_class_names_the_adversarial_class_and_one_colour_scale(run):
    fig = run.figures["examples.png"]
    text = _texts(fig)
    saved = _saved(run)
    examples = report.load_examples(run.ev, ATTACKS)
    assert len(examples) == 3
    top = 0.0
    for ex in examples:
        i = ex["index"]
        assert NAMES[ex["label"]] in text
        for a in ATTACKS:
            if not math.isfinite(ex["norm"][a]):
                continue
            with torch.no_grad():
                pred = int(run.model(saved[i][a][None]).argmax())
            assert f"{a}\n\u2192 {NAMES[pred]}" in text  # the class the model gives the adversarial
            top = max(top, float((saved[i][a] - saved[i]["input"]).abs().sum(0).max()))
    bars = [ax for ax in fig.axes if ax is not fig.axes[0]]
    assert len(bars) == 1 and "one scale for all panels" in bars[0].get_title()
    vmin, vmax = bars[0].get_xlim()
    assert vmin == 0 and vmax == pytest.approx(top)  # one scale: the largest |dx| of all panels


# --------------------------------------------------------------------------- tables

def test_per_class_table_matches_a_count_by_hand(run):
    ev = run.ev
    head, rows = report.per_class(ev)
    radii = report.per_class_radii(ev)
    assert head == ["class", "samples", "clean accuracy"] + [f"RA@{e:.3g}" for e in radii] + ["median norm"]
    samples = ev.per_sample()
    expected = []
    for k in sorted({s["label"] for s in samples}):
        mine = [s for s in samples if s["label"] == k]
        ra = [sum(s["correct"] and not s["best_norm"] <= radius_limit(e) for s in mine) / len(mine) for e in radii]
        broken = [s["best_norm"] for s in mine if s["correct"] and math.isfinite(s["best_norm"])]
        expected.append([f"{k} {NAMES[k]}", str(len(mine)), f"{100 * sum(s['correct'] for s in mine) / len(mine):.1f}%"]
                        + [f"{100 * v:.1f}%" for v in ra] + [f"{statistics.median(broken):.4g}" if broken else "-"])
    assert rows == expected


def test_confusion_matrix_matches_the_model_on_the_best_adversarials(run):
    ev = run.ev
    saved = _saved(run)
    _, preds = report.scan_saved(ev)
    classes, counts = report.confusion(ev, preds)
    expected = np.zeros_like(counts)
    for s in ev.per_sample():
        if not s["correct"]:
            continue
        adv = s["label"]  # unbroken: stays on the diagonal
        if s["best_attack"]:
            with torch.no_grad():
                adv = int(run.model(saved[s["index"]][s["best_attack"]][None]).argmax())
        expected[s["label"], adv] += 1
    assert classes == list(range(len(NAMES))) and (counts == expected).all()
    assert counts.sum() == int(ev.table["correct"].sum()) and np.trace(counts) < counts.sum()


def test_markdown_has_glossary_per_class_table_and_confusion_matrix(run):
    md = (run.folder / "summary.md").read_text()
    for term in GLOSSARY_TERMS:
        assert f"- **{term}**: " in md
    assert "## Per class" in md and f"| 0 {NAMES[0]} |" in md
    assert "## Clean to adversarial class" in md and "| true \\ adversarial | 0 cat | 1 dog | 2 owl | 3 fox |" in md
    assert "over budget" in md.split("## Summary")[1].split("\n\n")[2]  # a column of the summary table


def test_without_saved_predictions_there_is_no_confusion_matrix(run, tmp_path, monkeypatch):
    real = RunStore.load_tensors

    def older(self, index):  # a run saved before adversarial predictions were kept
        t = real(self, index)
        return {k: v for k, v in t.items() if not k.startswith(report.ADV_PRED)}

    monkeypatch.setattr(RunStore, "load_tensors", older)
    examples, preds = report.scan_saved(run.ev)
    assert preds is None and examples and all("adv_pred" not in ex for ex in examples)
    run.ev.save(tmp_path / "older")
    md = (tmp_path / "older" / "summary.md").read_text()
    assert report.NO_PREDICTIONS in md and "true \\ adversarial" not in md and "## Per class" in md


# --------------------------------------------------------------------------- in the browser

@pytest.fixture(scope="module")
def page(run, tmp_path_factory):
    return render(run.folder / "report.html", tmp_path_factory.mktemp("chromium"))


def test_each_new_element_is_in_the_page_chromium_renders(page):
    loaded = {alt: img["loaded"] for alt, img in page["images"].items()}
    assert loaded == {"robust_accuracy": "yes", "norm_histograms": "yes", "examples": "yes", "control": "no"}
    text = text_of(page["dom"])
    for term in GLOSSARY_TERMS:
        assert f"<dt>{term}</dt>" in page["dom"]
    assert "Per class" in text and "1 dog" in text
    assert "Clean to adversarial class" in text and "true \\ adversarial" in text
    assert 'class="confusion"' in page["dom"] and 'class="per-class"' in page["dom"]
    assert "over budget" in text and "spans the attacks' curves" in text


def test_screenshot_shows_the_curves_the_band_and_the_example_images(run, page, tmp_path):
    pixels = screenshot(page, tmp_path)
    curves = region(pixels, page["images"]["robust_accuracy"]["box"])
    assert curves.shape[0] > 200 and curves.shape[1] > 300
    for i in range(len(ATTACKS)):  # every attack's colour shows, also where it lies on the best of all
        rgb = tuple(int(255 * v) for v in to_rgb(f"C{i}"))
        assert near(curves, rgb, 40) > 300, (ATTACKS[i], near(curves, rgb, 40))  # the legend alone: < 100
    assert near(curves, (0, 0, 0), 60) > 200  # the best-of-all line, axes and text
    bands = run.figures["robust_accuracy.png"].axes[0].collections
    assert len(bands) == 2
    for band in bands:  # the attacks' spread and the certified bracket
        r, g, b, alpha = band.get_facecolor()[0]
        over_white = tuple(int(255 * (1 - alpha * (1 - v))) for v in (r, g, b))
        assert max(over_white) - min(over_white) > 8  # a tint, told apart from the white page and the grey grid
        assert near(curves, over_white, 4) > 2000, band.get_label()  # a filled area, not a line
    images = region(pixels, page["images"]["examples"]["box"])
    assert images.shape[0] > 150
    assert (images.min(axis=-1) < 0.9).mean() > 0.2  # images and heat maps, not a blank figure
    assert near(images, (252, 255, 164), 40) > 20 and near(images, (188, 55, 84), 40) > 20  # inferno colour bar
    blank = region(pixels, [0, page["height"] - 25, 1280, 25])
    assert near(blank, (0, 0, 0), 60) == 0  # the measure can say "nothing drawn"


def test_a_certified_run_explains_the_certified_curve_and_the_bracket(run):
    md = (run.folder / "summary.md").read_text()
    assert "- **certified (lower bound)**: " in md and "- **bracket**: " in md
    labels = [line.get_label() for line in run.figures["robust_accuracy.png"].axes[0].get_lines()]
    assert "certified (lower bound)" in labels
    assert not any("bracket" in line for line in report.glossary_markdown(None))  # not for uncertified runs


def test_a_fixed_eps_attack_has_no_robust_accuracy_where_it_did_not_run():
    """PGD run at 0.1 showed RA@0.5 as a plain number: every sample it never tried at 0.5 counted
    as robust there."""
    model = tiny_mlp()
    x = tiny_inputs(6)
    ev = minnorm.evaluate(model, (x, true_labels(model, x)), ["pgd-l2", "ddn"], 2, epsilons=[0.1], eps=[0.1, 0.5],
                          quick=True, progress=False)
    head, rows = report.table_cells(ev)
    cells = {r[0]: dict(zip(head, r)) for r in rows}
    assert cells["pgd-l2"]["RA@0.5"] == "not run"
    assert cells["pgd-l2"]["RA@0.1"] == f"{100 * ev.robust_accuracy(0.1, 'pgd-l2'):.1f}%"
    assert cells["ddn"]["RA@0.5"] == f"{100 * ev.robust_accuracy(0.5, 'ddn'):.1f}%"
    assert cells["All"]["RA@0.5"].endswith("%")
