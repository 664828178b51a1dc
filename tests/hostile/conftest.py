"""Bad inputs and hostile output folders given to the `minnorm` command, in-process.

Every case asserts the same contract (issue 10): exit code 2, exactly one line on stderr that
names the problem (no traceback), no attack started (no forward pass with gradients enabled),
and nothing outside ``--out`` changed (files, links and folders under the test's own folder).
"""
from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

from minnorm.cli import main

HERE = Path(__file__).parent
MODEL = "hostile_model:make"

MODEL_SOURCE = '''
import torch
from helpers import tiny_mlp

FORWARDS = []  # one entry per forward pass: was autograd on (an attack) or off (a clean prediction)?


class Recording(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_mlp()

    def forward(self, x):
        FORWARDS.append(torch.is_grad_enabled())
        return self.inner(x)


def make():
    return Recording().eval()
'''


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every path under ``root`` except ``skip`` and below: kind, and for files mode, size,
    mtime and SHA-256, for links their target."""
    out = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(dirpath, name)
            if path == skip or skip in path.parents:
                continue
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns,
                            hashlib.sha256(path.read_bytes()).hexdigest())
        dirs[:] = [d for d in dirs if Path(dirpath, d) != skip]
    return out


@dataclass
class Workspace:
    root: Path
    inputs: Path
    out: Path
    forwards: list = field(default_factory=list)

    def data_file(self, name: str = "data.pt", n: int = 6, **override) -> Path:
        """A valid tensor file (``x``, ``y``) of ``n`` tiny images, with entries overridden."""
        x = tiny_inputs(n)
        tensors = {"x": x, "y": true_labels(tiny_mlp(), x), **override}
        path = self.inputs / name
        torch.save(tensors, path)
        return path

    def args(self, command: str, data: Path | str, *extra: str, out: Path | None = None) -> list[str]:
        if command == "attack":
            head = ["attack", "--attack", "deepfool-l2"]
        elif command == "evaluate":
            head = ["evaluate", "--attacks", "deepfool-l2", "--batch-size", "3"]
        else:
            raise ValueError(command)
        return [*head, "--quick", "--model", MODEL, "--data", str(data), "--device", "cpu",
                "--out", str(out or self.out), *extra]

    @staticmethod
    def state(folder: Path, skip: str = ".minnorm.lock") -> dict[str, tuple]:
        """:func:`snapshot` of a folder, without ``skip`` (the lock file, re-stamped by whoever locks)."""
        return snapshot(folder, folder / skip)

    def refused(self, argv: list[str], capsys, *needles: str) -> str:
        """Run ``argv``; assert the contract of the module docstring; return the message."""
        before = snapshot(self.root, self.out)
        self.forwards.clear()
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        lines = [s for s in err.splitlines() if s.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith(f"minnorm {argv[0]}: error: "), err
        assert "Traceback" not in err
        for needle in needles:
            assert needle in lines[0], lines[0]
        assert not any(self.forwards), "an attack ran before the input was refused"
        assert snapshot(self.root, self.out) == before
        return lines[0]


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Workspace:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "hostile_model.py").write_text(MODEL_SOURCE)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(inputs))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("hostile_model", None)
    import hostile_model

    return Workspace(tmp_path, inputs, tmp_path / "out", hostile_model.FORWARDS)
