"""``minnorm certify``: brackets printed and written as CSV and strict JSON; unsupported models refused."""
from __future__ import annotations

import csv
import json

from minnorm.cli import main


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-strict JSON token {name}")
    return json.loads(text, parse_constant=refuse)


def test_certify_writes_brackets(tmp_path, capsys):
    rc = main(["certify", "--model", "mlp-tiny", "--data", "sample", "--n", "2", "--norm", "linf",
               "--time-limit", "60", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "exact" in out and "mlp-tiny linf: 2 samples" in out
    rows = list(csv.DictReader((tmp_path / "certify-linf.csv").open()))
    assert len(rows) == 2 and all(float(r["lower"]) <= float(r["upper"]) for r in rows)
    doc = _strict((tmp_path / "certify-linf.json").read_text())
    assert [s["status"] for s in doc["samples"]] == [r["status"] for r in rows]


def test_certify_lower_mode_has_no_infinity(tmp_path):
    rc = main(["certify", "--model", "mlp-tiny", "--n", "2", "--norm", "l2", "--mode", "lower",
               "--attack", "deepfool-l2", "--out", str(tmp_path)])
    assert rc == 0
    doc = _strict((tmp_path / "certify-l2.json").read_text())
    assert all(s["status"] in ("certified", "exact", "misclassified") for s in doc["samples"])


def test_certify_refuses_smooth_model(capsys):
    assert main(["certify", "--model", "mlp-silu", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "SiLU" in err and "not piecewise-linear" in err and len(err.strip().splitlines()) == 1


def test_tiny_models_are_shipped():
    from minnorm import models

    for name, hidden in (("mlp-tiny", [16, 16]), ("mlp-tiny32", [32, 32])):
        info = models.shipped_info(name)
        assert info["model_kwargs"]["hidden"] == hidden and "--hidden" in info["recipe"]
        assert info["clean_test_accuracy"] >= 0.84
        model = models.load_shipped(name)
        assert [m.out_features for m in model if hasattr(m, "out_features")] == [*hidden, 10]
