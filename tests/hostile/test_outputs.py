"""Hostile and damaged output folders (issue 10, items 9-11, 13, 14).

``--out`` that cannot be written is refused before any attack runs; nothing is written through
a symbolic link planted in it; a second process on the same folder is refused (lock); an
``--overwrite`` removes only files a run wrote (manifest); a damaged saved batch is named and
recomputed, and reports are written all or nothing; every JSON file is strict.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from minnorm.cli import main
from minnorm.evaluation import report as report_module

COMMANDS = ["attack", "evaluate"]
SRC = Path(__file__).resolve().parents[2] / "src"


def strict_load(path: Path):
    def reject(token):
        raise ValueError(f"{path}: non-standard JSON token {token}")
    return json.loads(path.read_text(), parse_constant=reject)


def per_sample(folder: Path) -> list[dict]:
    rows = strict_load(folder / "results.json")["per_sample"]
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


# --------------------------------------------------------------------------- --out that cannot be used

@pytest.mark.parametrize("command", COMMANDS)
def test_out_that_is_a_file_is_refused_before_the_attack(ws, capsys, command):
    ws.out.write_text("my notes")
    ws.refused(ws.args(command, ws.data_file()), capsys, str(ws.out), "not a folder")
    assert ws.out.read_text() == "my notes"
    ws.refused(ws.args(command, ws.data_file(), out=ws.out / "sub"), capsys, "is not a folder")


@pytest.mark.parametrize("command", COMMANDS)
def test_out_in_a_folder_that_is_not_writable_is_refused_before_the_attack(ws, capsys, command, monkeypatch):
    locked = ws.root / "readonly"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: let the check see what a user would
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real(p, mode, **kw))
        ws.refused(ws.args(command, ws.data_file(), out=locked / "out"), capsys, f"{locked} is not writable")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("command", COMMANDS)
def test_out_that_is_a_symlink_is_refused(ws, capsys, command):
    real = ws.root / "elsewhere"
    real.mkdir()
    ws.out.symlink_to(real)
    ws.refused(ws.args(command, ws.data_file()), capsys, "is a symbolic link")
    assert not any(real.iterdir())


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("planted", ["samples.csv", "summary.json", "results.json", "plots"])
def test_nothing_is_written_through_a_symlink_planted_in_out(ws, capsys, command, planted):
    victim = ws.root / "victim"
    if planted == "plots":
        victim.mkdir()
        (victim / "keep.txt").write_text("precious")
    else:
        victim.write_text("precious")
    ws.out.mkdir()
    (ws.out / planted).symlink_to(victim)
    ws.refused(ws.args(command, ws.data_file()), capsys, f"{ws.out / planted}", "symbolic link")
    assert (ws.out / planted).is_symlink()  # the link is left for the user to look at


def test_resumed_run_refuses_a_planted_link(ws, capsys):
    data = ws.data_file()
    assert main(ws.args("evaluate", data)) == 0
    manifest = json.loads((ws.out / "run.json").read_text())
    manifest["status"] = "running"  # as if it had been interrupted
    (ws.out / "run.json").write_text(json.dumps(manifest))
    victim = ws.root / "victim.csv"
    victim.write_text("precious")
    (ws.out / "samples.csv").unlink()
    (ws.out / "samples.csv").symlink_to(victim)
    ws.refused(ws.args("evaluate", data), capsys, str(ws.out / "samples.csv"), "symbolic link")


def test_report_refuses_a_planted_link_and_writes_nothing(ws, capsys):
    assert main(ws.args("evaluate", ws.data_file())) == 0
    victim = ws.root / "victim.png"
    victim.write_bytes(b"precious")
    link = ws.out / "plots" / "robust_accuracy.png"
    link.unlink()
    link.symlink_to(victim)
    before = ws.state(ws.out)
    msg = ws.refused(["report", str(ws.out)], capsys, str(link), "symbolic link")
    assert "Traceback" not in msg
    assert ws.state(ws.out) == before  # all or nothing: no other report was replaced either
    assert victim.read_bytes() == b"precious"


def test_compare_refuses_a_planted_link(ws, capsys):
    data = ws.data_file()
    for run in ("a", "b"):
        assert main(ws.args("evaluate", data, out=ws.root / run)) == 0
    victim = ws.root / "victim.md"
    victim.write_text("precious")
    ws.out.mkdir()
    (ws.out / "compare.md").symlink_to(victim)
    ws.refused(["compare", str(ws.root / "a"), str(ws.root / "b"), "--out", str(ws.out)], capsys,
               str(ws.out / "compare.md"), "symbolic link")
    assert not (ws.out / "compare.png").exists()  # both files or neither


# --------------------------------------------------------------------------- lock and manifest

HOLDER = """
import sys
sys.path.insert(0, {src!r})
from minnorm.evaluation.store import OutputFolder
folder = OutputFolder({out!r}).lock()
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held(ws):
    """Another process holding the lock of ``ws.out`` until the test ends."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER.format(src=str(SRC), out=str(ws.out)))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.communicate("", timeout=30)


@pytest.mark.parametrize("command", COMMANDS)
def test_second_process_on_the_same_out_is_refused(ws, capsys, held, command):
    msg = ws.refused(ws.args(command, ws.data_file()), capsys, "in use by another minnorm process",
                     f"pid {held.pid}")
    assert str(ws.out) in msg
    from minnorm.evaluation.store import OutputFolder

    with pytest.raises(ValueError, match="in use"):
        OutputFolder(ws.out).lock()
    held.communicate("", timeout=30)  # the holder ends: the lock goes with it
    assert main(ws.args(command, ws.data_file())) == 0


def test_overwrite_removes_only_the_files_the_run_wrote(ws, capsys):
    data = ws.data_file()
    assert main(ws.args("evaluate", data, "--batch-size", "2")) == 0
    assert {p.name for p in (ws.out / "batches").glob("*.json")} == {f"batch-00000{i}.json" for i in range(3)}
    mine = {ws.out / "notes.txt": "mine", ws.out / "plots" / "mine.png": "mine too",
            ws.out / "batches" / "README": "and this"}
    for path, text in mine.items():
        path.write_text(text)
    assert main(ws.args("evaluate", data, "--batch-size", "6")) == 2  # a finished run is kept ...
    capsys.readouterr()
    assert main(ws.args("evaluate", data, "--batch-size", "6", "--overwrite")) == 0  # ... unless --overwrite
    assert all(path.read_text() == text for path, text in mine.items())
    assert {p.name for p in (ws.out / "batches").glob("batch-*")} == {"batch-000000.json", "batch-000000.pt"}
    files = strict_load(ws.out / ".minnorm-files.json")["files"]
    assert "notes.txt" not in files and "batches/batch-000000.json" in files and "results.json" in files


# --------------------------------------------------------------------------- strict JSON

def test_every_json_a_run_writes_is_strict(ws, capsys):
    data = ws.data_file()
    # an attack that breaks nothing: its medians are NaN, its norms infinite
    argv = ["attack", "--attack", "fgm-l2", "--eps", "1e-9", "--model", "hostile_model:make", "--data", str(data),
            "--device", "cpu", "--out", str(ws.root / "attack")]
    assert main(argv) == 0
    argv = ws.args("evaluate", data, "--param", "max_iterations=1", out=ws.root / "evaluate")
    assert main(argv) == 0
    found = list((ws.root / "attack").rglob("*.json")) + list((ws.root / "evaluate").rglob("*.json"))
    assert len(found) >= 5
    for path in found:
        strict_load(path)


# --------------------------------------------------------------------------- damaged batches

@pytest.fixture
def finished(ws):
    data = ws.data_file(n=9)
    argv = ws.args("evaluate", data)
    assert main(argv) == 0
    assert main(ws.args("evaluate", data, out=ws.root / "reference")) == 0
    return argv


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _edit_norm(path: Path) -> None:
    record = json.loads(path.read_text())
    record["attacks"]["deepfool-l2"]["norm"][0] /= 2
    path.write_text(json.dumps(record, indent=1))


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00 not a torch file " * 20)


@pytest.mark.parametrize("damage, name, needle", [
    (_truncate, "batch-000001.json", "not valid JSON"),
    (_edit_norm, "batch-000001.json", "do not match its SHA-256"),
    (_garbage, "batch-000001.pt", "does not match the SHA-256"),
])
def test_damaged_batch_is_named_and_recomputed(ws, capsys, finished, damage, name, needle):
    damaged = ws.out / "batches" / name
    damage(damaged)
    before = ws.state(ws.out)
    ws.refused(["report", str(ws.out)], capsys, str(damaged), needle, "again")
    assert ws.state(ws.out) == before  # no half-written reports, status unchanged
    assert strict_load(ws.out / "run.json")["status"] == "finished"

    with pytest.warns(UserWarning, match=f"{name}.*recomputing"):
        assert main(finished) == 0  # the same command recomputes the damaged batch only
    assert per_sample(ws.out) == per_sample(ws.root / "reference")
    assert strict_load(ws.out / "run.json")["status"] == "finished"
    assert main(["report", str(ws.out)]) == 0


def test_reports_are_all_or_nothing(ws, capsys, monkeypatch, finished):
    before = ws.state(ws.out)

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(report_module, "examples_plot", broken)
    with pytest.raises(RuntimeError, match="figure failed"):  # a bug, not bad input: it propagates
        main(["report", str(ws.out)])
    assert ws.state(ws.out) == before
    assert not [p for p in ws.out.iterdir() if p.name.startswith(".minnorm-staging")]


# --------------------------------------------------------------------------- output files of other commands

def test_train_and_robustness_refuse_bad_output_paths_before_any_work(ws, capsys):
    victim = ws.root / "victim.json"
    victim.write_text("precious")
    (ws.root / "link.json").symlink_to(victim)
    data = ws.data_file()
    argv = ["robustness", "--model", "hostile_model:make", "--data", str(data), "--device", "cpu",
            "--json", str(ws.root / "link.json")]
    ws.refused(argv, capsys, "--json", "symbolic link")
    ws.out.write_text("a file")
    argv = ["train", "--data", str(data), "--test-data", str(data), "--epochs", "1", "--out", str(ws.out)]
    ws.refused(argv, capsys, "--out", "not a folder")
    argv = ["train", "--data", str(data), "--test-data", str(data), "--epochs", "1", "--out", str(ws.root / "t"),
            "--export", str(ws.root / "w.pt")]
    ws.refused(argv, capsys, "--export must end in .safetensors")
    assert not (ws.root / "t").exists()
