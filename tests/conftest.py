"""Shared test setup: one CPU thread, deterministic hypothesis, tiny seeded models and data.

Test modules import plain helpers with ``from helpers import ...`` (this folder is put on
``sys.path`` here, since pytest runs with ``--import-mode=importlib``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import helpers  # noqa: E402

# Tiny models are slower with several threads, and the test machines are shared.
torch.set_num_threads(1)

try:
    from hypothesis import settings

    # Derandomised so a failure reproduces on every run; no example database in the checkout.
    settings.register_profile("minnorm", max_examples=60, deadline=None, derandomize=True, database=None)
    settings.load_profile("minnorm")
except ImportError:  # hypothesis is a dev extra; tests that need it import it themselves
    pass


@pytest.fixture(params=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return getattr(torch, request.param)


@pytest.fixture
def tiny_mlp() -> torch.nn.Module:
    """Flatten -> Linear(64, 16) -> ReLU -> Linear(16, 4), eval mode, float32, seed 0."""
    return helpers.tiny_mlp()


@pytest.fixture
def tiny_cnn() -> torch.nn.Module:
    """Conv 3x3 (4 channels) -> ReLU -> MaxPool 2 -> Linear(64, 4), eval mode, float32, seed 0."""
    return helpers.tiny_cnn()


@pytest.fixture
def tiny_batch(tiny_mlp) -> tuple[torch.Tensor, torch.Tensor]:
    """Six 1x8x8 images in [0, 1] labelled with ``tiny_mlp``'s own predictions (all correct)."""
    x = helpers.tiny_inputs(6)
    return x, helpers.true_labels(tiny_mlp, x)
