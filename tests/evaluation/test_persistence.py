"""Interrupted evaluations resume to exactly the uninterrupted result; finished runs are kept."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

import minnorm
from minnorm.cli import main
from minnorm.evaluation import run as run_module

ROOT = Path(__file__).resolve().parents[2]


def per_sample(folder) -> list[dict]:
    """The saved per-sample table without the wall-clock columns."""
    rows = json.loads((Path(folder) / "results.json").read_text())["per_sample"]
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


@pytest.fixture
def problem():
    model = tiny_mlp()
    x = tiny_inputs(11)
    return model, x, true_labels(model, x, wrong=(3,))


SETTINGS = dict(attacks=["deepfool-l2", ("pgd-l2", {"steps": 4})], norm=2, epsilons=[0.2, 0.5], batch_size=3,
                seed=4, quick=True, progress=False, save_adversarials=False)


def test_injected_crash_resumes_without_redoing_or_losing_batches(tmp_path, problem, monkeypatch):
    model, x, y = problem
    minnorm.evaluate(model, (x, y), out=tmp_path / "ref", **SETTINGS)

    real = run_module._one_batch
    seen = []

    def crashing(*args):
        seen.append(args[3])
        if args[3] == 2:
            raise RuntimeError("injected crash")
        return real(*args)

    monkeypatch.setattr(run_module, "_one_batch", crashing)
    with pytest.raises(RuntimeError, match="injected crash"):
        minnorm.evaluate(model, (x, y), out=tmp_path / "run", **SETTINGS)
    saved = sorted(p.name for p in (tmp_path / "run" / "batches").glob("*.json"))
    assert saved == ["batch-000000.json", "batch-000001.json"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"

    seen.clear()
    monkeypatch.setattr(run_module, "_one_batch", lambda *a: seen.append(a[3]) or real(*a))
    ev = minnorm.evaluate(model, (x, y), out=tmp_path / "run", **SETTINGS)
    assert seen == [2, 3]  # only what was missing
    assert ev.samples == 11 and ev.table["index"].tolist() == list(range(11))
    assert per_sample(tmp_path / "run") == per_sample(tmp_path / "ref")
    assert len(json.loads((tmp_path / "run" / "run.json").read_text())["environments"]) == 2


def test_finished_run_is_kept_unless_overwrite_and_settings_must_match(tmp_path, problem):
    model, x, y = problem
    out = tmp_path / "run"
    minnorm.evaluate(model, (x, y), out=out, **SETTINGS)
    before = (out / "results.json").read_text()
    with pytest.raises(ValueError, match="finished evaluation; pass --overwrite"):
        minnorm.evaluate(model, (x, y), out=out, **SETTINGS)
    assert (out / "results.json").read_text() == before
    ev = minnorm.evaluate(model, (x, y), out=out, overwrite=True, **{**SETTINGS, "seed": 5})
    assert ev.config["seed"] == 5 and json.loads((out / "run.json").read_text())["config"]["seed"] == 5

    # an unfinished run resumes only with its own settings
    manifest = json.loads((out / "run.json").read_text())
    manifest["status"] = "running"
    (out / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"other settings.*seed: saved 5, now 4"):
        minnorm.evaluate(model, (x, y), out=out, **SETTINGS)
    other = tiny_mlp(seed=9)
    with pytest.raises(ValueError, match="model.fingerprint"):
        minnorm.evaluate(other, (x, y), out=out, **{**SETTINGS, "seed": 5})
    # a report-only setting may change on resume
    minnorm.evaluate(model, (x, y), out=out, grid=[0, 0.5, 1], **{**SETTINGS, "seed": 5})


def test_refuses_a_folder_that_is_not_a_run(tmp_path, problem):
    model, x, y = problem
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an evaluation run folder"):
        minnorm.evaluate(model, (x, y), out=tmp_path, **SETTINGS)
    assert (tmp_path / "notes.txt").read_text() == "mine"


KILLING_MODEL = '''
import os, signal
from pathlib import Path
from torch import nn
from helpers import tiny_mlp


class KillsItself(nn.Module):
    """tiny_mlp, but the first forward pass after the file $KILL_WHEN exists SIGKILLs the process."""

    def __init__(self):
        super().__init__()
        self.inner = tiny_mlp()

    def forward(self, x):
        when = os.environ.get("KILL_WHEN")
        if when and Path(when).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(x)


def make():
    return KillsItself()
'''


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """Killed (SIGKILL, no clean-up) at the first model call after the second batch was saved:
    exactly two batches are on disk, and resuming gives the uninterrupted run's results."""
    (tmp_path / "killingmodel.py").write_text(KILLING_MODEL)
    x = tiny_inputs(12)
    torch.save({"x": x, "y": true_labels(tiny_mlp(), x)}, tmp_path / "data.pt")
    args = ["evaluate", "--model", "killingmodel:make", "--data", str(tmp_path / "data.pt"), "--attacks",
            "deepfool-l2,ddn", "--quick", "--batch-size", "2", "--device", "cpu", "--no-adversarials"]
    out = tmp_path / "killed"
    env = {**os.environ, "KILL_WHEN": str(out / "batches" / "batch-000001.json"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "tests"), str(ROOT / "src")])}
    proc = subprocess.run([sys.executable, "-m", "minnorm", *args, "--out", str(out)], env=env, cwd=tmp_path,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    done = sorted(p.name for p in (out / "batches").glob("batch-*.json"))
    assert done == ["batch-000000.json", "batch-000001.json"]
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    assert per_sample(out) == per_sample(tmp_path / "straight")
    assert [r["index"] for r in per_sample(out)] == list(range(12))
