"""Persistence of an evaluation run: a manifest, one small file per finished batch, resume.

Layout of a run folder::

    run.json                  settings, environments that worked on it, status
    batches/batch-000007.json per-sample results of global batch 7 (the commit marker)
    batches/batch-000007.pt   its clean inputs and adversarials (optional, for the figures)

Every file is written to a temporary name, flushed, fsync'ed and renamed into place, so a batch
is either completely on disk or not at all: a run killed at any point resumes by redoing only
the batches whose JSON file is missing, and no sample is ever counted twice because a batch's
file name is its global index. The JSON is written after the tensors, so its presence means
both are complete.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import torch

MANIFEST = "run.json"
BATCHES = "batches"
# Settings that only shape the reports; a resume may change them.
REPORT_ONLY = ("grid", "examples", "sanity_margin")


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system lets a directory be synced
    finally:
        os.close(fd)


def jsonable(obj: Any) -> Any:
    """Settings as they will read back from JSON: tuples become lists, non-finite floats the
    strings "inf", "-inf", "nan", and anything else that JSON cannot hold its repr()."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_fingerprint(model) -> str:
    """Hash of the model's class, parameters and buffers: a resume must attack the same weights."""
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name in sorted(state):
        h.update(name.encode())
        h.update(tensor_fingerprint(state[name]).encode())
    return h.hexdigest()[:16]


def environment() -> dict[str, Any]:
    """Package versions and machine, recorded with the results."""
    import numpy

    from .. import __version__

    env = {"minnorm": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(), "hostname": socket.gethostname(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cuda": torch.version.cuda if torch.cuda.is_available() else None,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        import matplotlib
        env["matplotlib"] = matplotlib.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    return env


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in REPORT_ONLY}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and old != new:
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            name = a.get("name", i) if isinstance(a, dict) and isinstance(b, dict) and a.get("name") == b.get("name") else i
            out += _differences(a, b, f"{prefix}{name}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: saved {old!r}, now {new!r}"]
    return []


class RunStore:
    """A run folder on disk (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.batches = self.folder / BATCHES

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text())

    def open(self, config: dict[str, Any], *, overwrite: bool = False) -> set[int]:
        """Start or resume a run; returns the batches already done.

        A finished run is refused unless ``overwrite``; an unfinished one resumes only with the
        same settings (a ValueError lists what differs).
        """
        config = jsonable(config)  # as it will read back from disk
        old = self.manifest()
        if old is not None and overwrite:
            self.clear()
            old = None
        if old is None and self.folder.exists() and any(self.folder.iterdir()) and not overwrite:
            raise ValueError(f"{self.folder} exists and is not an evaluation run folder; choose another "
                             "output folder or pass --overwrite (overwrite=True) to replace its contents")
        if old is not None:
            if old.get("status") == "finished":
                raise ValueError(f"{self.folder} holds a finished evaluation; pass --overwrite "
                                 "(overwrite=True) to redo it, choose another output folder, or rebuild its "
                                 f"reports with `minnorm report {self.folder}`")
            diff = _differences(_comparable(old["config"]), _comparable(config))
            if diff:
                raise ValueError(f"{self.folder} holds an unfinished run with other settings, so it cannot be "
                                 "resumed with these: " + "; ".join(diff) +
                                 ". Rerun with the saved settings, or pass --overwrite to start afresh")
            old["config"] = config  # report-only settings may change
            old["environments"].append(environment())
            write_json(self.manifest_path, old)
            return self.done()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.batches.mkdir(exist_ok=True)
        write_json(self.manifest_path, {"format": 1, "status": "running", "config": config,
                                        "environments": [environment()]})
        return set()

    def clear(self) -> None:
        """Remove what a previous run wrote (only the files this module and the reports create)."""
        if self.batches.is_dir():
            shutil.rmtree(self.batches)
        for name in (MANIFEST, "results.json", "samples.csv", "summary.csv", "summary.md", "report.html"):
            (self.folder / name).unlink(missing_ok=True)
        if (self.folder / "plots").is_dir():
            shutil.rmtree(self.folder / "plots")

    def done(self) -> set[int]:
        if not self.batches.is_dir():
            return set()
        return {int(p.stem.split("-")[1]) for p in self.batches.glob("batch-*.json")}

    def save_batch(self, index: int, record: dict[str, Any], tensors: dict[str, torch.Tensor] | None) -> None:
        if tensors is not None:
            path = self.batches / f"batch-{index:06d}.pt"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save({k: v.contiguous() for k, v in tensors.items()}, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        write_json(self.batches / f"batch-{index:06d}.json", record)

    def load_batches(self) -> list[dict[str, Any]]:
        paths = sorted(self.batches.glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
        return [json.loads(p.read_text()) for p in paths]

    def load_tensors(self, index: int) -> dict[str, torch.Tensor] | None:
        path = self.batches / f"batch-{index:06d}.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def finish(self) -> None:
        manifest = self.manifest()
        manifest["status"] = "finished"
        manifest["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        write_json(self.manifest_path, manifest)
