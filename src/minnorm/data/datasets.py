"""Datasets as ``(x, y)`` tensor pairs: x float32 ``[N, C, H, W]`` in [0, 1], y int64 ``[N]``.

Everything is held in memory: the datasets this library uses are small, and a tensor pair is
all an attack or a training loop needs.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..core.validation import check_int
from .cifar import load_cifar10, read_cifar10_batch
from .idx import read_idx

__all__ = ["CLASS_NAMES", "DEFAULT_FASHION_MNIST_ROOT", "SAMPLE_PATH", "batches", "check_pair", "fashion_mnist_root",
           "load_fashion_mnist", "load_sample", "resolve_dataset", "to_tensors"]

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
SAMPLE_PATH = Path(__file__).with_name("fashion_mnist_sample.npz")
_MISSING_HINT = ("install it with `apt-get install -y dataset-fashion-mnist` (files go to "
                 f"{DEFAULT_FASHION_MNIST_ROOT}) or set MINNORM_DATA to a folder holding the IDX files")


def check_pair(x: torch.Tensor, y: torch.Tensor, source: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and normalise an ``(inputs, labels)`` pair; errors are ``ValueError`` naming ``source``.

    Inputs: uint8 is scaled to float32 in [0, 1] (``/ 255``), floating point passes through, any
    other dtype is refused; ``[N, ...]`` with N >= 1, finite, and a 4-D tensor that looks
    channels-last (``[N, H, W, C]`` with C in 1, 3, 4 while dim 1 is not) is refused. Labels:
    one per input, any integer dtype (or whole-valued floats), >= 0; returned as int64.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"{source}: inputs and labels must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.layout != torch.strided or y.layout != torch.strided:
        raise ValueError(f"{source}: sparse tensors are not supported; store dense ones (x.to_dense())")
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    elif not x.is_floating_point():
        raise ValueError(f"{source}: inputs must be uint8 (0-255) or floating point, got {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{source}: inputs must be [N, ...] with N >= 1 samples, got shape {tuple(x.shape)}")
    if x.dim() == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        raise ValueError(f"{source}: inputs of shape {tuple(x.shape)} look channels-last [N, H, W, C]; minnorm "
                         "takes [N, C, H, W] (convert with x.permute(0, 3, 1, 2))")
    finite = torch.isfinite(x.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"{source}: inputs hold NaN or infinite values (sample {int((~finite).nonzero()[0])})")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{source}: {x.shape[0]} inputs but labels of shape {tuple(y.shape)}; need one label per input")
    if y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{source}: labels must be integers, got {y.dtype}")
    if y.is_floating_point():
        bad = (~torch.isfinite(y)) | (y != y.round())
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"{source}: labels must be whole numbers; label {i} is {float(y[i])!r}")
    if bool((y < 0).any()):
        i = int((y < 0).nonzero()[0])
        raise ValueError(f"{source}: labels are class indices >= 0; label {i} is {y[i].item()}")
    return x.contiguous(), y.to(torch.int64)


def to_tensors(images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
               source: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (``[N, H, W]`` or ``[N, C, H, W]``, or flat rows ``[N, D]`` as they are) ->
    float32 in [0, 1] with a channel axis; float images pass through. Labels -> int64. Checked by :func:`check_pair`."""
    try:
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    except (TypeError, ValueError) as err:  # strings, objects: numpy's message without the file's name
        raise ValueError(f"{source}: images and labels must be numeric arrays; {str(err).splitlines()[0]}") from None
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() not in (2, 4):
        raise ValueError(f"{source}: images must be [N, H, W] or [N, C, H, W] (or flat rows [N, D], "
                         f"reshaped by --input-shape), got shape {tuple(x.shape)}")
    return check_pair(x, y, source)


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$MINNORM_DATA``, else the Debian package's folder. A
    ``fashion-mnist`` sub-folder is followed, so MINNORM_DATA may point at its parent."""
    base = Path(root if root is not None else os.environ.get("MINNORM_DATA") or DEFAULT_FASHION_MNIST_ROOT)
    return base / "fashion-mnist" if (base / "fashion-mnist").is_dir() else base


def _idx_file(base: Path, stem: str) -> Path:
    name = f"{stem}-idx{3 if stem.endswith('images') else 1}-ubyte"
    for candidate in (base / f"{name}.gz", base / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST file {stem}-*-ubyte[.gz] not found in {base}; {_MISSING_HINT}")


def load_fashion_mnist(split: str = "test", root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Xiao et al., 2017) ``test`` (10,000) or ``train`` (60,000) split:
    x float32 ``[N, 1, 28, 28]`` in [0, 1], y int64 ``[N]``."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    base = fashion_mnist_root(root)
    prefix = "t10k" if split == "test" else "train"
    images = read_idx(_idx_file(base, f"{prefix}-images"))
    labels = read_idx(_idx_file(base, f"{prefix}-labels"))
    if images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{base}: unexpected Fashion-MNIST arrays {images.dtype}{images.shape} / {labels.shape}")
    return to_tensors(images, labels)


def load_sample() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 1,000 Fashion-MNIST test images, shipped inside the package (no download):
    x float32 ``[1000, 1, 28, 28]`` in [0, 1], y int64 ``[1000]``."""
    with np.load(SAMPLE_PATH, allow_pickle=False) as f:
        return to_tensors(f["x"], f["y"])


def _load_path(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    if path.is_dir():
        if (path / "test_batch").is_file() or (path / "cifar-10-batches-py").is_dir():
            return to_tensors(*load_cifar10("test", path))
        return load_fashion_mnist("test", path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                keys = ("x", "y") if "x" in f else ("images", "labels")
                if not set(keys) <= set(f.files):
                    raise ValueError(f"{path}: expected arrays 'x' and 'y' (or 'images' and 'labels'), found {f.files}")
                images, labels = f[keys[0]], f[keys[1]]
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError) as err:
            if isinstance(err, FileNotFoundError) or str(err).startswith(str(path)):
                raise
            raise ValueError(f"{path}: not a readable .npz of arrays ({err})") from None
        return to_tensors(images, labels, str(path))
    if path.suffix in (".pt", ".pth"):
        from ..evaluation.store import read_tensor_file

        obj = read_tensor_file(path, "data file")
        if isinstance(obj, dict):
            obj = (obj.get("x", obj.get("images")), obj.get("y", obj.get("labels")))
        if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj)):
            raise ValueError(f"{path}: expected a pair of tensors (x, y) or a dict with tensors 'x' and 'y'")
        return to_tensors(*obj, str(path))
    return to_tensors(*read_cifar10_batch(path), str(path))


def resolve_dataset(name: str, root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset by name or path.

    Names: ``sample`` (embedded), ``fashion-mnist`` / ``fashion-mnist:test`` /
    ``fashion-mnist:train``, ``cifar10`` / ``cifar10:test`` / ``cifar10:train`` (root or
    ``$MINNORM_DATA``). Paths: an ``.npz`` with ``x``/``y``, a ``.pt`` pair (loaded with
    ``weights_only=True``), a folder of Fashion-MNIST IDX files or CIFAR-10 batches (test split),
    or one CIFAR python batch file.
    """
    if isinstance(name, os.PathLike):  # a path, never a name (nor a name:split)
        path = Path(name).expanduser()
        if not path.exists():
            raise ValueError(f"no such file or folder: {path}")
        return _load_path(path)
    if not isinstance(name, str):
        raise TypeError(f"a dataset is a name or a path, got {type(name).__name__}")
    base, _, split = name.partition(":")
    key = base.lower().replace("_", "-")
    if key == "sample" and not split:
        return load_sample()
    if key in ("fashion-mnist", "fashionmnist"):
        return load_fashion_mnist(split or "test", root)
    if key in ("cifar10", "cifar-10"):
        return to_tensors(*load_cifar10(split or "test", root))
    path = Path(name).expanduser()
    if path.exists():
        return _load_path(path)
    raise ValueError(f"unknown dataset {name!r}: use sample, fashion-mnist[:test|:train], "
                     "cifar10[:test|:train], or a path (.npz, .pt, IDX folder, CIFAR batch)")


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None, drop_last: bool = False,
            device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches ``(x_b, y_b)`` of a tensor pair, optionally shuffled by ``generator`` (CPU),
    moved to ``device`` one batch at a time."""
    batch_size = check_int("batch_size", batch_size)  # NaN, inf, "4": named; 4.0 as 4
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
        yield (xb, yb) if device is None else (xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))
