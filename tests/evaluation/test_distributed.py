"""`torchrun --nproc_per_node 2 -m minnorm evaluate` (gloo, CPU) gives the single-process result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

from minnorm.cli import main

ROOT = Path(__file__).resolve().parents[2]


def per_sample(folder) -> list[dict]:
    rows = json.loads((Path(folder) / "results.json").read_text())["per_sample"]
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


def test_two_ranks_equal_one_process(tmp_path, monkeypatch):
    x = tiny_inputs(9)
    torch.save({"x": x, "y": true_labels(tiny_mlp(), x, wrong=(2,))}, tmp_path / "data.pt")
    # random starts (pgd) and an epsilon search make the result depend on every generator
    args = ["evaluate", "--model", "helpers:tiny_mlp", "--data", str(tmp_path / "data.pt"), "--attacks",
            "ddn,pgd-l2", "--quick", "--eps-search", "--search-steps", "3", "--batch-size", "2", "--seed", "7",
            "--device", "cpu", "--no-adversarials", "--samples", "9"]  # --samples: --n is ambiguous to torchrun
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "minnorm", *args, "--out", str(tmp_path / "two")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # only rank 0 reports
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two, one = per_sample(tmp_path / "two"), per_sample(tmp_path / "one")
    assert [r["index"] for r in two] == list(range(9))
    assert two == one
    # batches were dealt round-robin: both ranks did work, every batch exactly once
    batches = sorted((tmp_path / "two" / "batches").glob("*.json"))
    assert [p.name for p in batches] == [f"batch-{b:06d}.json" for b in range(5)]
    assert [json.loads(p.read_text())["rank"] for p in batches] == [0, 1, 0, 1, 0]
