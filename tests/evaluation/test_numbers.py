"""Issue 10, the wrong numbers: each test here failed on the code before the fix."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

import minnorm
from minnorm.cli import main

MODEL = "helpers:tiny_mlp"


@pytest.fixture
def data_file(tmp_path):
    x = tiny_inputs(12)
    y = true_labels(tiny_mlp(), x, wrong=(3,))
    path = tmp_path / "data.pt"
    torch.save({"x": x, "y": y}, path)
    return str(path), x, y


@pytest.mark.parametrize("eps", [0.1, 8 / 255])
def test_fixed_eps_robust_accuracy_at_its_own_radius(eps):
    """Item 1: float32 norms come back a hair above eps; at its own radius a fixed-eps attack's
    robust accuracy is clean accuracy times one minus its success rate."""
    model, x = tiny_mlp(), tiny_inputs(12)
    y = true_labels(model, x, wrong=(3,))
    ev = minnorm.evaluate(model, (x, y), "pgd-linf", "inf", epsilons=[eps], grid=[eps], progress=False, quick=True)
    row = ev.row("pgd-linf")
    success = row["success_at"][f"{eps:g}"]
    assert 0 < success
    expected = ev.clean_accuracy * (1 - success)
    assert row["robust_accuracy"][0] == pytest.approx(expected)
    assert ev.robust_accuracy(eps, "pgd-linf") == pytest.approx(expected)
    assert ev.robust_accuracy(eps) == pytest.approx(expected)  # best of all = the one attack here


def test_robust_accuracy_helpers_refuse_bad_radii():
    model, x = tiny_mlp(), tiny_inputs(4)
    res = minnorm.attacks.get("fgsm")(model, x, true_labels(model, x), eps=0.1)
    for bad in (float("nan"), -1.0, "x"):
        with pytest.raises(ValueError):
            res.robust_accuracy(bad)
    assert res.robust_accuracy("8/255") == res.robust_accuracy(8 / 255)


def test_budget_keeps_the_best_adversarial_within_it(data_file, tmp_path, capsys):
    """Item 3: DDN-100 costs 201 passes; a budget of 200 used to zero it and blame masking."""
    path = data_file[0]
    assert main(["evaluate", "--model", MODEL, "--data", path, "--attacks", "ddn,pgd-l2", "--eps-search",
                 "--param", "pgd-l2.steps=10", "--search-steps", "4", "--budget", "200", "--out",
                 str(tmp_path / "out"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {r["attack"]: r for r in results["summary"]}
    assert rows["ddn"]["success_rate"] == 1.0
    assert rows["ddn"]["over_budget"] == 11  # every attacked sample hit the cap ...
    table = minnorm.evaluation.Evaluation.load(tmp_path / "out").table
    assert int(table["ddn.passes"].max()) <= 200  # ... and none spent more
    assert "gradient masking" not in printed and "over budget" in printed


def test_param_values_are_checked_before_anything_is_written(data_file, tmp_path, capsys):
    """Item 12: a bad hyper-parameter used to be found after run.json was written, so the
    corrected command was then refused as 'changed settings'."""
    out = tmp_path / "out"
    base = ["evaluate", "--model", MODEL, "--data", data_file[0], "--out", str(out), "--device", "cpu"]
    assert main(base + ["--attacks", "ddn", "--param", "ddn.steps=-3"]) == 2
    assert "steps" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(base + ["--attacks", "ddn", "--param", "ddn.steps=3"]) == 0


@pytest.mark.parametrize("param, message", [
    ("pgd-l2.norm=inf", "fixes norm=2"), ("pgd-l2.targeted=True", "--targeted"),
    ("pgd-l2.generator=None", "--seed"), ("pgd-l2.labels=None", "labels"),
])
def test_param_cannot_change_what_an_attack_is(data_file, param, message, capsys):
    """Item 2: --param pgd-l2.norm=inf ran an Linf attack labelled l2."""
    assert main(["evaluate", "--model", MODEL, "--data", data_file[0], "--attacks", "pgd-l2", "--epsilons", "0.5",
                 "--param", param, "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err


def test_labels_out_of_range_are_refused_by_evaluate():
    """Item 6: labels 99 and -1 were accepted and gave a wrong clean accuracy."""
    model, x = tiny_mlp(), tiny_inputs(4)
    y = true_labels(model, x)
    for bad, where in ((99, 2), (-1, 1)):
        z = y.clone()
        z[where] = bad
        with pytest.raises(ValueError, match=f"label {bad} at index {where}"):
            minnorm.evaluate(model, (x, z), "ddn", 2, progress=False, quick=True)
    ev = minnorm.evaluate(model, (x, y.int()), "ddn", 2, progress=False, quick=True)  # any integer dtype
    assert ev.clean_accuracy == 1.0


def test_compare_keeps_two_norms_apart(data_file, tmp_path, capsys):
    """Item 16: an L2 and an Linf run on one epsilon axis. Since issue 14 compare puts runs of
    different norms in separate tables and panels, and refuses one radius for both."""
    base = ["evaluate", "--model", MODEL, "--data", data_file[0], "--device", "cpu", "--quick"]
    assert main(base + ["--attacks", "ddn", "--out", str(tmp_path / "l2")]) == 0
    assert main(base + ["--attacks", "deepfool-linf", "--out", str(tmp_path / "linf")]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "l2"), str(tmp_path / "linf"), "--eps", "0.1"]) == 2
    assert "norm" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "l2"), str(tmp_path / "linf"), "--eps", "l2=0.5,linf=8/255"]) == 0
    out = capsys.readouterr().out
    assert "l2: robust accuracy at eps = 0.5" in out and "linf: robust accuracy at eps = 8/255" in out


def test_full_parameters_are_recorded(data_file, tmp_path):
    """Item 14: `"parameters": {}` was recorded for ddn; now signature and registry defaults too."""
    out = tmp_path / "out"
    assert main(["attack", "--attack", "ddn", "--param", "steps=7", "--model", MODEL, "--data", data_file[0],
                 "--out", str(out), "--device", "cpu"]) == 0
    params = json.loads((out / "attack.json").read_text())["parameters"]
    assert params["steps"] == 7 and params["gamma"] == 0.05 and params["init_norm"] == 1.0 and "levels" in params
    saved = json.loads((out / "results.json").read_text())["config"]["attacks"][0]["params"]
    assert saved == params
    tr = minnorm.attacks.get("tr-linf").parameters()
    assert tr["norm"] == float("inf") and tr["refine_steps"] == 10 and "steps" in tr
