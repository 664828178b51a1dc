"""CIFAR-10/100 "python version" batches, read without trusting the pickle.

The batches are pickles, and unpickling runs whatever callables the file names. The
:class:`RestrictedUnpickler` resolves only numpy's array-reconstruction globals (and
``_codecs.encode`` for latin-1, which protocol-2 pickles written by Python 3 use for bytes);
everything else, ``os.system`` included, raises ``pickle.UnpicklingError``. Dicts, lists,
tuples, str, bytes, ints and floats need no global and load as usual.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2 moved the module; old pickles still name numpy.core
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

__all__ = ["CIFAR10_CLASS_NAMES", "RefusedPickle", "RestrictedUnpickler", "load_cifar10", "read_cifar10_batch", "restricted_load"]

CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class RefusedPickle(pickle.UnpicklingError, ValueError):
    """A data file the restricted unpickler refused (also a ``ValueError``: bad input)."""


def _dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dt = np.dtype(obj, align, copy)
    if dt.hasobject:  # object arrays would unpickle arbitrary items through the array's state
        raise RefusedPickle("object dtypes are not allowed")
    return dt


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if str(encoding).lower().replace("-", "_") not in ("latin1", "latin_1", "iso8859_1", "iso_8859_1"):
        raise RefusedPickle(f"_codecs.encode with encoding {encoding!r} is not allowed")
    if not isinstance(text, str):
        raise RefusedPickle(f"_codecs.encode expects a str, got {type(text).__name__}")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits plain containers, scalars, bytes and numpy arrays only."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickle(f"refusing to load global {module}.{name} from a data file") from None


def restricted_load(data: bytes) -> Any:
    # encoding="bytes" keeps Python 2 str (array buffers) as bytes, as the CIFAR docs say.
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 (or CIFAR-100, fine labels) python batch -> ``(x uint8 [N,3,32,32], y int64 [N])``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch not found: {path}")
    try:
        obj = restricted_load(path.read_bytes())
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 (hostile or damaged pickles fail in many ways)
        cls = RefusedPickle if isinstance(err, pickle.UnpicklingError) else ValueError
        raise cls(f"{path}: not a CIFAR python batch, or a damaged one ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")  # noqa: TRY004 (bad file, not bad argument)
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    labels = entries.get("labels", entries.get("fine_labels"))
    data = entries.get("data")
    if data is None or labels is None:
        raise ValueError(f"{path}: missing 'data' or 'labels' entry (keys: {sorted(map(str, entries))})")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(split: str = "test", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``test`` or ``train`` split as uint8 arrays from ``root`` (or ``$MINNORM_DATA``),
    the folder holding ``test_batch`` or its ``cifar-10-batches-py`` parent."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    base = root if root is not None else os.environ.get("MINNORM_DATA")
    if base is None:
        raise FileNotFoundError("CIFAR-10 needs a root: pass root=... or set MINNORM_DATA to the "
                                "cifar-10-batches-py folder")
    base = Path(base)
    if (base / "cifar-10-batches-py").is_dir():
        base = base / "cifar-10-batches-py"
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    parts = [read_cifar10_batch(base / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
