"""`evaluate --certify`: the bracket certified <= exact <= attack, per sample, in the evaluation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

import minnorm
from minnorm.cli import main

pytest.importorskip("highspy")


@pytest.fixture(scope="module")
def certified():
    model, x = tiny_mlp(), tiny_inputs(6)
    y = true_labels(model, x, wrong=(2,))
    ev = minnorm.evaluate(model, (x, y), "deepfool-linf,fmn-linf", "inf", quick=True, certify="exact",
                          certify_time_limit=60, eps=[0.05], progress=False)
    return ev


def test_bracket_holds_per_sample(certified):
    t = certified.table
    attacked = t["correct"]
    lower, exact = t["certified_radius"][attacked], t["exact_norm"][attacked]
    assert (t["certify_status"][attacked] == "exact").all(), t["certify_status"]
    assert (lower <= exact * (1 + 1e-6)).all(), "a certified radius above the exact minimum"
    for a in certified.attack_names:
        norms = t[f"{a}.norm"][attacked]
        assert (exact <= norms * (1 + 1e-6) + 1e-9).all(), f"{a} beat the exact minimum"
    assert np.isnan(t["exact_norm"][~attacked]).all()  # the misclassified sample is not certified


def test_certified_accuracy_is_below_the_attacks(certified):
    for eps in (0.0, 0.02, 0.05, 0.1, 0.3):
        assert certified.certified_robust_accuracy(eps) <= certified.robust_accuracy(eps) + 1e-12
    assert "certified lower bound" in certified.headlines()[0]
    ratios = certified.exact_ratios()
    assert set(ratios) == {"deepfool-linf", "fmn-linf", "All"}
    assert all(r["median"] >= 1 - 1e-6 and r["worst"] >= r["p90"] >= r["median"] for r in ratios.values())
    assert ratios["All"]["worst"] <= min(ratios[a]["worst"] for a in ("deepfool-linf", "fmn-linf")) + 1e-12


def test_certify_refuses_a_smooth_model_before_writing(tmp_path, capsys):
    x = tiny_inputs(4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.SiLU(), torch.nn.Linear(8, 4)).eval()
    with pytest.raises(ValueError, match="SiLU"):
        minnorm.evaluate(model, (x, true_labels(model, x)), "deepfool-linf", "inf", quick=True, certify="bound",
                         out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_certify_bound(tmp_path, capsys):
    x = tiny_inputs(5)
    torch.save({"x": x, "y": true_labels(tiny_mlp(), x)}, tmp_path / "d.pt")
    assert main(["evaluate", "--model", "helpers:tiny_mlp", "--data", str(tmp_path / "d.pt"), "--attacks", "ddn",
                 "--quick", "--certify", "--eps", "0.1", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert "certified lower bound" in capsys.readouterr().out
    head = (tmp_path / "out" / "samples.csv").read_text().splitlines()[0].split(",")
    assert "certified_radius" in head and "exact_norm" in head
