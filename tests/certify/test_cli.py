"""``minnorm certify``: brackets printed and written as CSV and strict JSON; unsupported models, hostile
``--out`` folders and time limits the solver cannot take refused before any computation."""
from __future__ import annotations

import csv
import errno
import json

import pytest
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


# --------------------------------------------------------------------------- --out, --norm and --time-limit

@pytest.fixture
def no_solving(monkeypatch):
    """Certification that fails the test if it starts: refusals must come before any computation."""
    import minnorm.certify

    def computed(*args, **kwargs):
        raise AssertionError("the certification ran before the bad option was refused")

    monkeypatch.setattr(minnorm.certify, "exact", computed)
    monkeypatch.setattr(minnorm.certify, "lower_bound", computed)


def _refused(argv: list[str], capture, *needles: str) -> str:
    """Exit code 2 and one line on stderr, naming the problem (and nothing from a solver on stdout)."""
    assert main(["certify", "--n", "1", "--mode", "lower", *argv]) == 2
    out, err = capture.readouterr()
    assert "ERROR" not in out, out
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("minnorm certify: error: "), lines
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.mark.parametrize("planted", ["certify-linf.csv.tmp", "certify-linf.csv", "certify-linf.json"])
def test_certify_never_writes_through_a_link_planted_in_out(tmp_path, capsys, no_solving, planted):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "cl"
    out.mkdir()
    (out / planted).symlink_to(victim)
    _refused(["--out", str(out)], capsys, str(out / planted), "symbolic link")
    assert victim.read_text() == "precious" and (out / planted).is_symlink()
    assert sorted(p.name for p in out.iterdir()) == [planted]


def test_certify_refuses_a_symlinked_out_folder(tmp_path, capsys, no_solving):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    _refused(["--out", str(tmp_path / "link")], capsys, "is a symbolic link")
    assert not any(real.iterdir())


def test_certify_refuses_an_out_that_cannot_be_a_folder_before_solving(tmp_path, capsys, no_solving):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    _refused(["--out", str(notes)], capsys, str(notes), "not a folder")
    _refused(["--out", str(notes / "sub")], capsys, "is not a folder")
    assert notes.read_text() == "my notes"


def test_certify_refuses_an_out_it_cannot_create_before_solving(tmp_path, capsys, no_solving, monkeypatch):
    import pathlib

    real_mkdir = pathlib.Path.mkdir

    def refuse(self, *args, **kwargs):  # as mkdir /sys/foo does, even for root
        if self.name == "forbidden":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refuse)
    msg = _refused(["--out", str(tmp_path / "forbidden")], capsys, "cannot create --out", "Operation not permitted")
    assert "Errno" not in msg


def test_certify_file_names_do_not_depend_on_how_the_norm_is_spelled(tmp_path, capsys):
    for spelling in ("inf", "Linf", "2"):
        assert main(["certify", "--n", "1", "--mode", "lower", "--norm", spelling, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mlp-tiny linf: 1 samples" in out and "mlp-tiny l2: 1 samples" in out
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["certify-l2.csv", "certify-l2.json", "certify-linf.csv", "certify-linf.json"]
    assert _strict((tmp_path / "certify-linf.json").read_text())["norm"] == "linf"
    assert _strict((tmp_path / "certify-l2.json").read_text())["norm"] == "l2"


@pytest.mark.parametrize("limit", ["nan", "inf", "-inf", "0", "1e30"])
def test_certify_refuses_a_time_limit_the_solver_cannot_take(capfd, no_solving, limit):
    _refused(["--mode", "exact", f"--time-limit={limit}"], capfd, "--time-limit")  # capfd: SCIP writes from C
