"""Issue 14, item 3: `minnorm compare RUN RUN RUN ...`, a leaderboard over many runs.

Four runs of tiny MLPs (three in L2, one in Linf) and one folder holding a run per norm (the
layout of `evaluate --norms l2,linf`). Robust accuracy in the leaderboard is checked against a
count by hand over the saved per-sample norms, the ranking against that count, and the plot
against the rule that two norms never share an axis.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from browser import render, text_of
from helpers import tiny_inputs, tiny_mlp, true_labels
from matplotlib.figure import Figure

import minnorm
from minnorm.cli import main
from minnorm.core import radius_limit
from minnorm.evaluation import Evaluation
from minnorm.evaluation.compare import compare, default_eps, parse_eps

N = 8
L2_RUNS = {"m1": 1, "m2": 2, "m3": 3}


def _evaluate(folder: Path, seed: int, attacks: str, norm, **kwargs) -> None:
    x = tiny_inputs(N)
    y = true_labels(tiny_mlp(seed=1), x)  # one labelling for every model: the seeds differ in accuracy
    minnorm.evaluate(tiny_mlp(seed=seed), (x, y), attacks, norm, quick=True, progress=False, out=folder, examples=0,
                     describe={"model": {"name": f"mlp{seed}"}, "data": {"name": "toys"}}, **kwargs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    for name, seed in L2_RUNS.items():
        _evaluate(root / name, seed, "ddn,deepfool-l2", 2)
    _evaluate(root / "li", 1, "deepfool-linf", "inf")
    _evaluate(root / "both" / "l2", 2, "deepfool-l2", 2)
    _evaluate(root / "both" / "linf", 2, "deepfool-linf", "inf")
    return root


def _by_hand(folder: Path, eps: float) -> float:
    """Correct and not broken within eps (norm <= eps (1 + 1e-4) + 1e-6) by any attack, over all samples."""
    rows = json.loads((folder / "results.json").read_text())["per_sample"]
    robust = [r["correct"] and not (r["best_norm"] is not None and r["best_norm"] <= radius_limit(eps)) for r in rows]
    return sum(robust) / len(rows)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_leaderboard_ranks_runs_by_robust_accuracy_at_eps(runs, tmp_path, capsys):
    folders = [str(runs / n) for n in L2_RUNS]
    assert main(["compare", *folders, "--eps", "0.2", "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    for name in ("compare.md", "compare.csv", "compare.html", "compare.png"):
        assert (tmp_path / "cmp" / name).is_file(), name
    rows = _csv(tmp_path / "cmp" / "compare.csv")
    assert [r["norm"] for r in rows] == ["l2"] * 3 and {r["run"] for r in rows} == set(L2_RUNS)
    got = [float(r["robust_accuracy"]) for r in rows]
    assert got == sorted(got, reverse=True) and [int(r["rank"]) for r in rows] == [1, 2, 3]
    for r in rows:
        folder = runs / r["run"]
        ev = Evaluation.load(folder)
        assert float(r["eps"]) == 0.2
        assert float(r["robust_accuracy"]) == pytest.approx(_by_hand(folder, 0.2)) == ev.robust_accuracy(0.2)
        assert float(r["clean_accuracy"]) == pytest.approx(ev.clean_accuracy)
        assert float(r["median_norm"]) == pytest.approx(ev.row("All")["median_norm"])
        assert float(r["passes_per_sample"]) == pytest.approx(ev.row("All")["passes_per_sample"])
        assert r["model"] == f"mlp{L2_RUNS[r['run']]}" and r["data"] == "toys" and r["samples"] == str(N)
    assert len({float(r["robust_accuracy"]) for r in rows}) > 1  # the models differ: the ranking means something
    assert "l2: robust accuracy at eps = 0.2" in printed and "success m1/m2/m3" in printed
    assert re.search(r"^1\s+" + rows[0]["run"] + r"\s+mlp", printed, re.M)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## l2: leaderboard at eps = 0.2 (given with --eps)" in md and "### l2: attack by attack" in md
    assert "**RA@eps**" in md and "![robust accuracy](compare.png)" in md


def test_eps_as_a_fraction_and_per_norm(runs, tmp_path, capsys):
    assert main(["compare", str(runs / "m1"), str(runs / "li"), "--eps", "l2=0.5,linf=8/255",
                 "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    rows = {r["norm"]: r for r in _csv(tmp_path / "cmp" / "compare.csv")}
    assert float(rows["linf"]["eps"]) == 8 / 255 and float(rows["l2"]["eps"]) == 0.5
    assert float(rows["linf"]["robust_accuracy"]) == pytest.approx(_by_hand(runs / "li", 8 / 255))
    assert "linf: robust accuracy at eps = 8/255" in printed and "RA@8/255" in printed
    assert parse_eps("8/255", ["linf"]) == {"linf": 8 / 255}
    assert parse_eps("inf=0.1, 2=0.5", ["l2", "linf"]) == {"linf": 0.1, "l2": 0.5}
    with pytest.raises(ValueError, match="gives l2 twice"):  # the last one used to win silently
        parse_eps("l2=0.5,2=0.6", ["l2"])


def test_default_eps_is_the_runs_median_norm_or_the_radius_they_were_evaluated_at(runs, tmp_path):
    loaded = [(n, Evaluation.load(runs / n)) for n in L2_RUNS]
    medians = [ev.row("All")["median_norm"] for _, ev in loaded]
    eps, why = default_eps(loaded)
    assert eps == float(f"{np.median(medians):.2g}") and "median" in why
    _evaluate(tmp_path / "asked", 1, "ddn", 2, eps=["8/255", 0.3])
    first = [("asked", Evaluation.load(tmp_path / "asked"))] + loaded
    assert default_eps(first) == (pytest.approx(8 / 255), "the radius asked was evaluated at")
    res = compare([tmp_path / "asked", runs / "m2"])
    assert res.eps == {"l2": pytest.approx(8 / 255)}
    assert res.rows[0]["robust_accuracy"] == max(r["robust_accuracy"] for r in res.rows)


def test_certified_lower_bound_is_shown_for_runs_that_ran_certification(runs, tmp_path, capsys):
    _evaluate(tmp_path / "cert", 2, "ddn,deepfool-l2", 2, certify="bound")
    assert main(["compare", str(runs / "m1"), str(tmp_path / "cert"), "--eps", "0.05", "--out",
                 str(tmp_path / "cmp")]) == 0
    assert "certified RA@0.05" in capsys.readouterr().out
    rows = {r["run"]: r for r in _csv(tmp_path / "cmp" / "compare.csv")}
    assert rows["m1"]["certified_robust_accuracy"] == ""  # not certified: no number
    ev = Evaluation.load(tmp_path / "cert")
    by_hand = sum(s["correct"] and s["certified_radius"] is not None and s["certified_radius"] > 0.05
                  for s in json.loads((tmp_path / "cert" / "results.json").read_text())["per_sample"]) / N
    assert float(rows["cert"]["certified_robust_accuracy"]) == pytest.approx(ev.certified_robust_accuracy(0.05))
    assert by_hand <= float(rows["cert"]["certified_robust_accuracy"]) <= float(rows["cert"]["robust_accuracy"])


def test_a_folder_of_both_norms_is_one_run_per_norm(runs):
    res = compare([runs / "m1", runs / "both", runs / "li"], eps="l2=0.3,linf=0.03")
    assert {n: [label for label, _ in part] for n, part in res.groups.items()} == {"l2": ["m1", "both"],
                                                                                   "linf": ["both", "li"]}
    assert len(res.rows) == 4 and all(r["eps"] == (0.3 if r["norm"] == "l2" else 0.03) for r in res.rows)
    # a folder of runs of one norm: each is labelled with its subfolder
    res = compare([runs], eps="l2=0.3,linf=0.03")
    name = runs.name
    assert {n: sorted(label for label, _ in part) for n, part in res.groups.items()} == {
        "l2": [f"{name}/{m}" for m in L2_RUNS], "linf": [f"{name}/li"]}
    # one label may name a run in each norm (the same model in L2 and in Linf)
    res = compare([runs / "m1", runs / "li"], labels=["mlp1", "mlp1"])
    assert [(r["norm"], r["run"]) for r in res.rows] == [("l2", "mlp1"), ("linf", "mlp1")]


def test_the_plot_gives_each_norm_its_own_axis_and_each_run_its_colour(runs, tmp_path, monkeypatch):
    figures = {}
    real = Figure.savefig

    def keep(fig, fname, *args, **kw):
        figures[Path(fname).name] = fig
        return real(fig, fname, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", keep)
    folders = [runs / "m1", runs / "m2", runs / "li", runs / "m3"]
    compare(folders, tmp_path / "cmp", eps="l2=0.2,linf=0.02")
    axes = figures["compare.png"].axes
    assert len(axes) == 2
    colours = []
    for ax, norm, names in ((axes[0], "L2", ["m1", "m2", "m3"]), (axes[1], "Linf", ["li"])):
        assert norm in ax.get_xlabel() and f"({norm})" in ax.get_title()
        assert "toys" in ax.get_title() and f"{N} samples" in ax.get_title()
        curves = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert [line.get_label().split(" ")[0] for line in curves] == names  # only runs of this norm
        for line in curves:
            ev = Evaluation.load(runs / line.get_label().split(" ")[0])
            assert np.allclose(line.get_ydata(), [100 * ev.robust_accuracy(e) for e in line.get_xdata()])
            colours.append(line.get_color())
    assert len(set(colours)) == len(folders)


@pytest.mark.parametrize("args, message", [
    (["m1", "li", "--eps", "0.1"], "one radius, but the runs are in l2 and linf"),
    (["m1", "--eps", "l1=0.1"], "no run is in l1"),
    (["m1", "--eps", "-1"], "radius >= 0"),
    (["m1", "--eps", "abc"], "fraction such as 8/255"),
    (["m1", "m2", "--eps", "l2=0.1,linf"], "NORM=RADIUS"),
    (["m1", "m2", "--labels", "a"], "one non-empty name per run"),
    (["m1", "m2", "--labels", ","], "one non-empty name per run: 2 run(s), got ','"),  # said "got 2 name(s)"
    (["m1", "m2", "--labels", "a,a"], "a names two l2 runs"),
    (["m1", "nothing-here"], "not an evaluation run folder"),
])
def test_bad_input_says_what_to_fix(runs, tmp_path, capsys, args, message):
    args = [str(runs / a) if a in ("m1", "m2", "li", "nothing-here") else a for a in args]
    assert main(["compare", *args, "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_compare_html_is_self_contained_and_renders(runs, tmp_path):
    compare([runs / "m1", runs / "m2", runs / "li"], tmp_path / "cmp", eps="l2=0.2,linf=0.02")
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert re.findall(r"<img[^>]*src='([^']{0,22})", page) == ["data:image/png;base64,"]
    shown = render(tmp_path / "cmp" / "compare.html", tmp_path)
    assert {a: i["loaded"] for a, i in shown["images"].items()} == {"compare": "yes", "control": "no"}
    text = text_of(shown["dom"])
    for piece in ("l2: leaderboard at eps = 0.2", "linf: leaderboard at eps = 0.02", "l2: attack by attack",
                  "RA@0.2", "clean accuracy", "median norm", "passes/sample", "Glossary"):
        assert piece in text, piece
    assert "linf: attack by attack" not in text  # one Linf run: nothing to put side by side
