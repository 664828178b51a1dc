"""Dataset readers: IDX, CIFAR python batches (and the refusal of hostile pickles), the sample."""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from minnorm import data

torch.set_num_threads(1)


# --------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a-idx3-ubyte{suffix}"
    data.write_idx(path, array)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_is_big_endian_and_gz_is_detected_by_content(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + bytes([0, 0, 1, 2, 0, 0, 0, 7])))
    np.testing.assert_array_equal(data.read_idx(path), [258, 7])


@pytest.mark.parametrize("raw, message", [
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "type code"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05", "needs 3 data bytes"),
    (b"", "magic"),
])
def test_idx_bad_files_raise(tmp_path, raw, message):
    path = tmp_path / "bad"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=message):
        data.read_idx(path)


def test_idx_size_is_computed_without_wrap_around(tmp_path):
    # 2**31 * 2**31 * 4 one-byte items: 2**64 bytes, which int64 arithmetic wraps to 0
    path = tmp_path / "huge"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4)))
    with pytest.raises(ValueError, match=rf"huge: IDX shape .* needs {2**64} data bytes, found 0"):
        data.read_idx(path)


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "bad header"])
def test_idx_damaged_gzip_raises_value_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "x-idx1-ubyte.gz"
    data.write_idx(path, np.arange(200, dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[:len(raw) // 2]
    elif damage == "corrupt":
        raw[12:-8] = bytes(b ^ 0x5A for b in raw[12:-8])
    else:
        raw[3] = 0xFF  # reserved flag bits
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"x-idx1-ubyte\.gz: damaged or truncated gzip data"):
        data.read_idx(path)


def test_check_pair_scales_uint8_and_refuses_what_cannot_be_right():
    x8 = torch.tensor([[[[0, 255]]]], dtype=torch.uint8).repeat(2, 1, 1, 1)
    x, y = data.check_pair(x8, torch.tensor([1, 0], dtype=torch.int32))
    assert x.dtype == torch.float32 and x.max() == 1.0 and y.dtype == torch.int64
    with pytest.raises(ValueError, match="channels-last"):
        data.check_pair(torch.rand(2, 28, 28, 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="2 inputs but labels of shape \\(3,\\)"):
        data.check_pair(torch.rand(2, 1, 4, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="label 1 is 0.5"):
        data.check_pair(torch.rand(2, 1, 4, 4), torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="int16"):
        data.check_pair(torch.zeros(2, 1, 4, 4, dtype=torch.int16), torch.tensor([0, 1]))


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.read_idx(tmp_path / "nope.gz")


# --------------------------------------------------------------------------- CIFAR

def _cifar_batch(n: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"testing batch 1 of 1", b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)]}


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_cifar_batch_reads(tmp_path, protocol):
    batch = _cifar_batch()
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = data.read_cifar10_batch(path)
    assert x.shape == (6, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x.reshape(6, -1), batch[b"data"])
    np.testing.assert_array_equal(y, batch[b"labels"])
    xt, yt = data.resolve_dataset(str(tmp_path))  # a folder holding test_batch
    assert xt.shape == (6, 3, 32, 32) and xt.dtype == torch.float32 and float(xt.max()) <= 1.0
    assert torch.equal(yt, torch.as_tensor(batch[b"labels"]))


def test_cifar10_train_split_concatenates(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(2, seed=i)))
    x, y = data.load_cifar10("train", tmp_path)
    assert x.shape == (10, 3, 32, 32) and y.shape == (10,)


class _Exploit:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class _Eval:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_cifar_reader_refuses_hostile_pickles(tmp_path):
    marker = tmp_path / "pwned"
    for i, payload in enumerate([{b"data": _Exploit(str(marker)), b"labels": []},
                                 [_Eval()],
                                 {b"data": np.array([None, 1], dtype=object), b"labels": [0, 1]}]):
        path = tmp_path / f"evil{i}"
        path.write_bytes(pickle.dumps(payload, protocol=2))
        with pytest.raises(pickle.UnpicklingError):
            data.read_cifar10_batch(path)
    assert not marker.exists()
    # the latin-1 shim of protocol-2 bytes must not become a generic codec gateway
    codec = b"\x80\x02c_codecs\nencode\nq\x00X\x02\x00\x00\x00abq\x01X\x03\x00\x00\x00hexq\x02\x86q\x03Rq\x04."
    with pytest.raises(pickle.UnpicklingError, match="hex"):
        data.restricted_load(codec)


def test_cifar_reader_rejects_wrong_content(tmp_path):
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="uint8 \\[N, 3072\\]"):
        data.read_cifar10_batch(path)


# --------------------------------------------------------------------------- sample, Fashion-MNIST, helpers

def test_load_sample():
    x, y = data.load_sample()
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (1000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y.tolist()) == set(range(10)) and len(data.CLASS_NAMES) == 10
    assert data.SAMPLE_PATH.stat().st_size < 600_000


@pytest.mark.skipif(not (data.DEFAULT_FASHION_MNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist not installed")
def test_sample_is_the_head_of_the_test_set():
    x, y = data.load_sample()
    xt, yt = data.load_fashion_mnist("test")
    assert xt.shape == (10000, 1, 28, 28)
    assert torch.equal(x, xt[:1000]) and torch.equal(y, yt[:1000])


def test_fashion_mnist_root_resolution(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    data.write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    data.write_idx(folder / "t10k-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8))
    monkeypatch.setenv("MINNORM_DATA", str(tmp_path))  # the parent works too
    x, y = data.load_fashion_mnist("test")
    assert x.shape == (3, 1, 28, 28) and torch.equal(y, torch.tensor([1, 2, 3]))
    assert torch.allclose(x[0, 0], torch.as_tensor(images[0]) / 255.0)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        data.load_fashion_mnist("train")
    with pytest.raises(FileNotFoundError, match="MINNORM_DATA"):
        data.load_fashion_mnist("test", root=tmp_path / "empty")
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("val")


def test_resolve_dataset_files(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4))
    xt, yt = data.resolve_dataset(str(tmp_path / "d.npz"))
    assert xt.shape == (4, 1, 8, 8) and yt.dtype == torch.int64
    torch.save({"x": xt, "y": yt}, tmp_path / "d.pt")
    xp, yp = data.resolve_dataset(str(tmp_path / "d.pt"))
    assert torch.equal(xp, xt) and torch.equal(yp, yt)
    assert data.resolve_dataset("sample")[0].shape[0] == 1000
    with pytest.raises(ValueError, match="unknown dataset"):
        data.resolve_dataset("imagenet")


def test_batches():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    parts = list(data.batches(x, y, 4))
    assert [len(b[1]) for b in parts] == [4, 4, 2] and torch.equal(torch.cat([b[1] for b in parts]), y)
    a = [b[1] for b in data.batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(1))]
    b = [b[1] for b in data.batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(1))]
    assert all(torch.equal(i, j) for i, j in zip(a, b)) and sorted(torch.cat(a).tolist()) == list(range(10))
    assert [len(b[1]) for b in data.batches(x, y, 4, drop_last=True)] == [4, 4]
    for xb, yb in data.batches(x, y, 3, shuffle=True, generator=torch.Generator().manual_seed(2)):
        assert torch.equal(xb[:, 0].long(), yb)  # pairs stay together
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(x, y, 0))
