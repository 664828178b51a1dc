"""``minnorm train --init``: training starts from given weights (a file or a shipped model)."""
from __future__ import annotations

import json

import numpy as np
import torch

from minnorm import models
from minnorm.cli import main


def _data(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 6, 6, generator=gen)
    y = (x.flatten(1)[:, :18].sum(1) > x.flatten(1)[:, 18:].sum(1)).long()
    for name in ("train", "test"):
        np.savez(tmp_path / f"{name}.npz", x=x.numpy(), y=y.numpy())


def _train(tmp_path, name, *extra):
    argv = ["train", "--model", "mlp", "--hidden", "8", "--data", str(tmp_path / "train.npz"), "--test-data",
            str(tmp_path / "test.npz"), "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / name),
            "--export", str(tmp_path / f"{name}.safetensors"), "--device", "cpu", "--no-progress", *extra]
    return main(argv)


def _state(path):
    return models.load_state(path)


def test_init_starts_from_the_given_weights(tmp_path):
    _data(tmp_path)
    assert _train(tmp_path, "first", "--seed", "1", "--lr", "0.05") == 0
    first = tmp_path / "first.safetensors"
    # a negligible learning rate: the result is the initial weights, which only --init makes the first run's
    assert _train(tmp_path, "again", "--init", str(first), "--lr", "1e-12", "--schedule", "constant") == 0
    assert _train(tmp_path, "fresh", "--lr", "1e-12", "--schedule", "constant") == 0
    start, again, fresh = (_state(tmp_path / f"{n}.safetensors") for n in ("first", "again", "fresh"))
    assert all(torch.allclose(start[k], again[k], atol=1e-9) for k in start)
    assert not all(torch.allclose(start[k], fresh[k], atol=1e-3) for k in start)
    info = json.loads((tmp_path / "again.json").read_text())
    assert info["init"] == str(first) and f"--init {first}" in info["recipe"]


def test_init_refuses_missing_and_mismatched_weights(tmp_path, capsys):
    _data(tmp_path)
    assert _train(tmp_path, "a", "--init", str(tmp_path / "nope.safetensors")) == 2
    assert "--init" in capsys.readouterr().err
    assert _train(tmp_path, "b", "--init", "mlp-tiny") == 2  # a shipped model of another shape
    assert "mlp-tiny.safetensors does not fit" in capsys.readouterr().err
