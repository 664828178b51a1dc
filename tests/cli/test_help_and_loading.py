"""`minnorm --help` for every command (issue 10, item 8) and how `--model pkg.mod:factory` is
imported (item 15)."""
from __future__ import annotations

import argparse
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minnorm.cli import _common, build_parser, main

SRC = Path(__file__).resolve().parents[2] / "src"


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def exit_code(argv: list[str]) -> int:
    """main()'s return value, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as done:
        return int(done.code or 0)


def test_top_level_help_and_bare_command(capsys):
    assert exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: minnorm")
    for name in subcommands():
        assert name in out
    assert main([]) == 2  # no command: the same help, and the usage-error code
    assert capsys.readouterr().out == out


@pytest.mark.parametrize("command", subcommands())
def test_every_subcommand_help(command, capsys):
    assert exit_code([command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: minnorm {command}")


def test_help_of_the_installed_command_in_a_fresh_process():
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    run = subprocess.run([sys.executable, "-m", "minnorm", "--help"], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and "usage: minnorm" in run.stdout, run.stderr


SHADOW = "raise ImportError('the local folder shadowed the installed package')\n"
FACTORY = "import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))\n"


def test_factory_import_does_not_let_the_working_directory_shadow_packages(tmp_path, monkeypatch):
    """The `minnorm` script does not see the working directory; load_model adds it, last."""
    (tmp_path / "matplotlib").mkdir()
    (tmp_path / "matplotlib" / "__init__.py").write_text(SHADOW)
    (tmp_path / "mymod.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    sys.modules.pop("mymod", None)
    model = _common.load_model("mymod:make")
    assert isinstance(model, __import__("torch").nn.Module) and not model.training
    assert sys.path[-1] == str(tmp_path)  # importable, but searched last
    spec = importlib.machinery.PathFinder.find_spec("matplotlib", sys.path)
    assert spec is not None and not spec.origin.startswith(str(tmp_path))
