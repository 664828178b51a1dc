"""The writing layer of minnorm.evaluation.store: strict JSON, the one atomic write, OutputFolder
(no symbolic links, lock, manifest, staging) and the pre-flight check of an output folder."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minnorm.evaluation.store import (
    FILES,
    OutputFolder,
    UnsafeOutput,
    atomic_write,
    check_out_dir,
    json_safe,
    json_text,
    read_tensor_file,
    write_json,
)

SRC = Path(__file__).resolve().parents[2] / "src"


def strict(text: str):
    def reject(token):
        raise ValueError(token)
    return json.loads(text, parse_constant=reject)


def test_json_rule_nan_is_null_infinity_is_a_string():
    obj = {"a": math.nan, "b": math.inf, "c": -math.inf, "d": (1, 2.5), "e": np.float32(0.5), "f": np.int64(3),
           "g": torch.tensor([1.0, math.inf]), "h": np.array([math.nan]), 5: Path("x/y"), "i": torch.float32}
    assert json_safe(obj) == {"a": None, "b": "inf", "c": "-inf", "d": [1, 2.5], "e": 0.5, "f": 3, "g": [1.0, "inf"],
                              "h": [None], "5": "x/y", "i": "torch.float32"}
    assert strict(json_text(obj)) == json_safe(obj)
    with pytest.raises(ValueError):
        json.dumps(json_safe({"x": math.nan}) | {"y": math.nan}, allow_nan=False)


def test_atomic_write_replaces_whole_files_and_refuses_links(tmp_path):
    path = tmp_path / "f.json"
    write_json(path, {"x": math.inf})
    assert strict(path.read_text()) == {"x": "inf"}
    atomic_write(path, lambda f: f.write(b"bytes from a writer"))
    assert path.read_bytes() == b"bytes from a writer"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(UnsafeOutput, match="symbolic link"):
        atomic_write(link, "overwrite?")
    assert victim.read_text() == "precious" and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "link", "victim"]  # no temporary left


def test_output_folder_never_follows_a_link_at_any_depth(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = OutputFolder(tmp_path / "out").create()
    (out.path / "plots").symlink_to(elsewhere)
    with pytest.raises(UnsafeOutput, match="plots is a symbolic link"):
        out.write_text("plots/a.png", "x")
    assert not any(elsewhere.iterdir())
    (tmp_path / "linked").symlink_to(out.path)
    with pytest.raises(UnsafeOutput, match="symbolic link"):
        OutputFolder(tmp_path / "linked").write_text("a.txt", "x")
    with pytest.raises(ValueError, match="not a path inside"):
        out.write_text("../escape.txt", "x")


def test_manifest_and_clear_own_files_keep_everything_else(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = OutputFolder(tmp_path / "out")
    out.write_text("a.txt", "a")
    out.write_bytes("sub/b.bin", b"b")
    assert set(out.files()) == {"a.txt", "sub/b.bin"}
    (out.path / "mine.txt").write_text("mine")
    (out.path / "sub" / "mine.txt").write_text("mine")
    (out.path / "a.txt").unlink()
    (out.path / "a.txt").symlink_to(victim)  # planted where one of ours was
    removed = out.clear_own_files()
    assert sorted(removed) == ["a.txt", "sub/b.bin"]
    assert victim.read_text() == "precious"
    assert (out.path / "mine.txt").is_file() and (out.path / "sub" / "mine.txt").is_file()
    assert out.files() == {} and json.loads((out.path / FILES).read_text())["files"] == {}


def test_staging_moves_all_files_or_none(tmp_path):
    out = OutputFolder(tmp_path / "out")
    out.write_text("keep.txt", "old")
    with pytest.raises(RuntimeError):
        with out.staging() as stage:
            (stage / "keep.txt").write_text("new")
            raise RuntimeError("failed half way")
    assert (out.path / "keep.txt").read_text() == "old"
    (out.path / "plots").mkdir()
    (out.path / "plots" / "b.png").symlink_to(tmp_path / "nowhere")
    with out.staging() as stage:
        (stage / "plots").mkdir()
        (stage / "keep.txt").write_text("new")
        (stage / "plots" / "b.png").write_text("png")
        with pytest.raises(UnsafeOutput):
            out.commit(stage)  # every destination is checked before anything moves
    assert (out.path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in out.path.iterdir()) == [".minnorm-files.json", ".minnorm.lock", "keep.txt", "plots"]


LOCKER = """
import sys
sys.path.insert(0, {src!r})
from minnorm.evaluation.store import OutputFolder
try:
    OutputFolder({out!r}).lock()
    print("got it")
except ValueError as err:
    print(err)
"""


def other_process_locks(path: Path) -> str:
    code = LOCKER.format(src=str(SRC), out=str(path))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()


def test_lock_is_reentrant_in_a_process_and_exclusive_between_processes(tmp_path):
    first, second = OutputFolder(tmp_path / "out"), OutputFolder(tmp_path / "out")
    with first.lock():
        second.lock()  # the same process may take it again
        assert "in use by another minnorm process" in other_process_locks(tmp_path / "out")
        assert f"pid {os.getpid()}" in other_process_locks(tmp_path / "out")
        second.unlock()
        assert "in use" in other_process_locks(tmp_path / "out")  # still held by `first`
    assert other_process_locks(tmp_path / "out") == "got it"


def test_check_out_dir(tmp_path):
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UnsafeOutput, match="exists and is not a folder"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(UnsafeOutput, match="is not a folder"):
        check_out_dir(tmp_path / "file" / "sub")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").symlink_to(tmp_path / "file")
    with pytest.raises(UnsafeOutput, match="holds a symbolic link"):
        check_out_dir(tmp_path / "d")
    assert not (tmp_path / "new").exists()  # it creates nothing


def test_read_tensor_file_names_the_file_and_the_problem(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(read_tensor_file(good)["w"], torch.ones(2))
    bad = tmp_path / "bad.pt"
    torch.save({"w": os.system}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt.*posix\.system"):
        read_tensor_file(bad)
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match=r"bad\.safetensors is not a valid safetensors file"):
        read_tensor_file(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        read_tensor_file(tmp_path / "missing.pt")
