"""The README's quick start runs as written (on a tiny model standing in for the user's)."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start() -> str:
    text = README.read_text()
    section = text[text.index("## Quick start"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quick_start_runs(capsys):
    code = quick_start()
    assert len(code.strip().splitlines()) < 10
    x = tiny_inputs(6).expand(6, 3, 8, 8).clone()  # three channels, as the mean/std in the snippet
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), tiny_mlp()).eval()
    y = true_labels(net, x)
    namespace = {"my_net": net, "x_test": x, "y_test": y}
    exec(compile(code, "README quick start", "exec"), namespace)  # noqa: S102
    linf, l2 = (float(v) for v in capsys.readouterr().out.split())
    runs = namespace["runs"]
    assert linf == runs["linf"].robust_accuracy(8 / 255) and l2 == runs["l2"].robust_accuracy(0.5)
    assert runs["linf"].samples == 6
    for name, eps, value in (("linf", 8 / 255, linf), ("l2", 0.5, l2)):  # counted by hand from the table
        t = runs[name].table
        unbroken = ~(t["best_norm"] <= eps * (1 + 1e-4) + 1e-6)  # nan (misclassified) and inf count
        assert value == float((t["correct"] & unbroken).mean()) <= runs[name].clean_accuracy
