"""Issue 10 item 10: `minnorm attack --out` into a folder that holds a run."""
from __future__ import annotations

import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

from minnorm.cli import main


def test_attack_out_refuses_a_finished_run_and_overwrite_removes_only_its_files(tmp_path, capsys):
    x = tiny_inputs(6)
    torch.save({"x": x, "y": true_labels(tiny_mlp(), x)}, tmp_path / "d.pt")
    out = tmp_path / "out"
    args = ["attack", "--attack", "fgsm", "--eps", "0.1", "--model", "helpers:tiny_mlp", "--data",
            str(tmp_path / "d.pt"), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    before = (out / "adversarials.pt").read_bytes()
    mine = out / "notes.txt"
    mine.write_text("the user's own file")
    capsys.readouterr()
    assert main(args) == 2  # a finished run is kept ...
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "adversarials.pt").read_bytes() == before
    assert main(args + ["--overwrite", "--format", "safetensors"]) == 0  # ... unless asked
    assert not (out / "adversarials.pt").exists(), "the old run's adversarials were left beside the new ones"
    assert (out / "adversarials.safetensors").is_file()
    assert mine.read_text() == "the user's own file"
