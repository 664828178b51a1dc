"""The IDX format of MNIST and Fashion-MNIST (LeCun et al.), raw or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions ``n``; then ``n`` big-endian
uint32 sizes; then the data, big-endian, in C order.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _TYPES.items()}

__all__ = ["read_idx", "write_idx"]


def _open(path: Path, mode: str):
    # Decide by content, not by name: a renamed .gz must still read.
    if "r" in mode:
        with open(path, "rb") as f:
            magic = f.read(2)
        return gzip.open(path, mode) if magic == b"\x1f\x8b" else open(path, mode)
    return gzip.open(path, mode) if path.suffix == ".gz" else open(path, mode)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a native-endian numpy array.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file) for
    damaged or truncated gzip data, a bad magic number, an unknown type code, or a data size
    that does not match the header (computed with Python integers, so huge sizes cannot wrap).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    try:
        with _open(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(f"{path}: damaged or truncated gzip data ({err or type(err).__name__})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    code, ndim = data[2], data[3]
    if code not in _TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = _TYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python integers: no wrap-around
    if len(data) - header != expected:
        raise ValueError(f"{path}: IDX shape {shape} needs {expected} data bytes, found {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as IDX (gzip-compressed when the name ends in ``.gz``)."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with _open(Path(path), "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=_TYPES[code]).tobytes())
