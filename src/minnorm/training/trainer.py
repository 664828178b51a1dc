"""Standard and adversarial training with per-epoch checkpoints that resume exactly.

The learning rate is a pure function of the optimisation step (see :func:`learning_rate`), and
all randomness (shuffling, attack noise) comes from two seeded generators whose states are
checkpointed, so an interrupted run resumed from its last finished epoch ends with the same
weights as an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core import check_int, check_positive
from ..data import batches
from ..evaluation.store import atomic_write, write_json
from .adversary import Adversary

__all__ = ["CHECKPOINT_NAME", "accuracy", "learning_rate", "train"]

CHECKPOINT_NAME = "checkpoint.pt"
SCHEDULES = ("constant", "cosine", "onecycle")
# Changing these mid-run would make the resumed run a different experiment.
_RESUME_KEYS = ("epochs", "lr", "batch_size", "optimizer", "weight_decay", "schedule", "adversary",
                "adversary_kwargs", "max_norm", "seed", "train_size")


def learning_rate(schedule: str, lr: float, step: int, total: int) -> float:
    """``constant``; ``cosine`` decay from lr to 0 (Loshchilov & Hutter, 2017, without restarts);
    ``onecycle``: linear warm-up from lr/25 over the first 20% of steps, then cosine to 0."""
    t = min(step / max(total, 1), 1.0)
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "onecycle":
        if t < 0.2:
            return lr * (0.04 + 0.96 * t / 0.2)
        return lr * 0.5 * (1 + math.cos(math.pi * (t - 0.2) / 0.8))
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int = 500) -> float:
    """Clean top-1 accuracy in eval mode (the model's modes are restored)."""
    device, dtype = _device_dtype(model)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        correct = sum(int((model(xb.to(dtype)).argmax(1) == yb).sum())
                      for xb, yb in batches(*data, batch_size, device=device))
    finally:
        for m, mode in modes:
            m.training = mode
    return correct / max(len(data[1]), 1)


def _make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def _write_logs(directory: Path, log: list[dict[str, Any]]) -> None:
    write_json(directory / "log.json", log)
    fields = list(dict.fromkeys(k for entry in log for k in entry))
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=fields)
    w.writeheader()
    w.writerows(log)
    atomic_write(directory / "log.csv", text.getvalue())


def train(model: nn.Module, train_data: tuple[torch.Tensor, torch.Tensor],
          test_data: tuple[torch.Tensor, torch.Tensor] | None = None, *, epochs: int, lr: float = 1e-3,
          batch_size: int = 128, optimizer: str = "adam", weight_decay: float = 0.0, schedule: str = "onecycle",
          adversary: str | None = None, adversary_kwargs: dict[str, Any] | None = None,
          max_norm: float | None = None, robust_samples: int = 1000, checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = True, seed: int = 0, progress: bool = True,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place on ``train_data`` = (x in [0, 1], y); returns the per-epoch log.

    ``adversary`` = None trains on clean images; otherwise each batch is replaced by the
    adversarial images of the registered attack of that name (see :class:`Adversary`), e.g.
    ``"pgd-linf"``/``"pgd-l2"`` (Madry et al., 2018) or ``"ddn"`` (Rony et al., 2019, Sec. 5).
    Each epoch logs the clean test accuracy and, with an adversary, the robust accuracy at
    ``max_norm`` on the first ``robust_samples`` test images.

    With ``checkpoint_dir``, model, optimizer, schedule step, generator states and log are saved
    atomically after every epoch (``checkpoint.pt``, ``log.json``, ``log.csv``); with
    ``resume=True`` a run with the same settings continues after the last finished epoch.
    ``on_epoch_end(entry)`` is called after each checkpoint. The model's train/eval modes are
    restored on return.
    """
    epochs, lr, batch_size, weight_decay, robust_samples = _check_settings(
        train_data, schedule, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
        robust_samples=robust_samples)
    x_train = train_data[0]
    adv = Adversary(adversary, max_norm, adversary_kwargs or {}) if adversary else None
    device, dtype = _device_dtype(model)
    config = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
              "weight_decay": weight_decay, "schedule": schedule, "adversary": adversary,
              "adversary_kwargs": {k: v for k, v in (adv.kwargs if adv else {}).items()},
              "max_norm": adv.max_norm if adv else max_norm, "seed": seed, "train_size": int(x_train.shape[0])}
    opt = _make_optimizer(optimizer, model, lr, weight_decay)
    gens = (torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed + 1))
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start_epoch, log = 0, []
    if ckpt_dir is not None and resume and (ckpt_dir / CHECKPOINT_NAME).is_file():
        start_epoch, log = _resume(ckpt_dir / CHECKPOINT_NAME, config, model, opt, gens)
    modes = [(m, m.training) for m in model.modules()]
    started = time.perf_counter() - (log[-1]["total_seconds"] if log else 0.0)
    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            entry = _train_epoch(model, opt, train_data, adv, gens, config, epoch, progress)
            if test_data is not None:
                entry.update(_test_epoch(model, test_data, adv, gens[1], batch_size, robust_samples))
            entry["epoch_seconds"] = time.perf_counter() - t0
            entry["total_seconds"] = time.perf_counter() - started
            log.append(entry)
            if ckpt_dir is not None:
                _save_checkpoint(ckpt_dir, model, opt, gens, log, config)
            if progress:
                _print_entry(entry)
            if on_epoch_end is not None:
                on_epoch_end(entry)
    finally:
        for m, mode in modes:
            m.training = mode
    return log


def _check_settings(train_data: tuple[torch.Tensor, torch.Tensor], schedule: str, *, epochs: int, lr: float,
                    batch_size: int, weight_decay: float, robust_samples: int) -> tuple[int, float, int, float, int]:
    """The numeric settings, checked (a ValueError names the bad one), and the schedule's name
    and the training data's shape refused early."""
    checked = (check_int("epochs", epochs), check_positive("lr", lr), check_int("batch_size", batch_size),
               check_positive("weight_decay", weight_decay, allow_zero=True),
               check_int("robust_samples", robust_samples, minimum=0))
    learning_rate(schedule, checked[1], 0, 1)
    x_train, y_train = train_data
    if x_train.shape[0] != y_train.shape[0] or x_train.shape[0] == 0:
        raise ValueError(f"train_data must be a non-empty pair (x, y), got {x_train.shape[0]} and {y_train.shape[0]}")
    return checked


def _print_entry(entry: dict[str, Any]) -> None:
    """One line per epoch: every logged value, floats to 4 decimals."""
    shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in entry.items() if v is not None}
    tqdm.write("  ".join(f"{k}={v}" for k, v in shown.items()))


def _resume(path: Path, config: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer,
            gens: tuple[torch.Generator, torch.Generator]) -> tuple[int, list[dict[str, Any]]]:
    """Load a checkpoint written by :func:`_save_checkpoint` with the same settings; returns (epoch, log)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    changed = [k for k in _RESUME_KEYS if json.dumps(state["config"].get(k)) != json.dumps(config[k])]
    if changed:
        raise ValueError(f"{path} was written with different settings ({', '.join(changed)}); "
                         "use another checkpoint directory or resume=False to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gens[0].set_state(state["data_rng"])
    gens[1].set_state(state["attack_rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"]), list(state["log"])


def _save_checkpoint(ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer,
                     gens: tuple[torch.Generator, torch.Generator], log: list[dict[str, Any]],
                     config: dict[str, Any]) -> None:
    """Model, optimizer, generator states and log, written atomically; the logs beside. The learning
    rate needs no state: it is a function of the step, and the step of the epoch."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": len(log),
             "data_rng": gens[0].get_state(), "attack_rng": gens[1].get_state(),
             "torch_rng": torch.get_rng_state(), "log": log, "config": config}
    atomic_write(ckpt_dir / CHECKPOINT_NAME, lambda f: torch.save(state, f))
    _write_logs(ckpt_dir, log)


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, train_data: tuple[torch.Tensor, torch.Tensor],
                 adv: Adversary | None, gens: tuple[torch.Generator, torch.Generator], config: dict[str, Any],
                 epoch: int, progress: bool) -> dict[str, Any]:
    """One pass over the shuffled training set (adversarial batches with ``adv``); the epoch's log entry."""
    device, dtype = _device_dtype(model)
    x_train, y_train = train_data
    batch_size, lr, schedule = config["batch_size"], config["lr"], config["schedule"]
    steps_per_epoch = math.ceil(x_train.shape[0] / batch_size)
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(batches(x_train, y_train, batch_size, shuffle=True, generator=gens[0], device=device),
               total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config['epochs']}", disable=None if progress else True,
               leave=False, dynamic_ncols=True)
    for i, (xb, yb) in enumerate(bar):
        xb = xb.to(dtype)
        if adv is not None:
            xb = adv.perturb(model, xb, yb, gens[1])
        step_lr = learning_rate(schedule, lr, epoch * steps_per_epoch + i, config["epochs"] * steps_per_epoch)
        for group in opt.param_groups:
            group["lr"] = step_lr
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * len(yb)
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(yb)
        if i % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", lr=f"{step_lr:.2e}")
    bar.close()
    return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "lr": step_lr, "test_accuracy": None, "robust_accuracy": None}


def _test_epoch(model: nn.Module, test_data: tuple[torch.Tensor, torch.Tensor], adv: Adversary | None,
                attack_gen: torch.Generator, batch_size: int, robust_samples: int) -> dict[str, Any]:
    """Clean test accuracy and, with an adversary, robust accuracy on the first ``robust_samples`` test images."""
    device, dtype = _device_dtype(model)
    out: dict[str, Any] = {"test_accuracy": accuracy(model, test_data, max(batch_size, 500))}
    if adv is not None and robust_samples:
        xr, yr = (t[:robust_samples] for t in test_data)
        robust = sum(int(adv.robust_correct(model, xb.to(dtype), yb, attack_gen).sum())
                     for xb, yb in batches(xr, yr, batch_size, device=device))
        out["robust_accuracy"] = robust / len(yr)
    return out
