"""Bad input files and data: one line, exit code 2, before any attack runs (issue 10, item 9).

The contract each case checks is in conftest.py (``Workspace.refused``).
"""
from __future__ import annotations

import gzip
import json
import os
import pickle

import numpy as np
import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels
from safetensors.torch import save_file

from minnorm.cli import _common, main
from minnorm.data import write_idx

COMMANDS = ["attack", "evaluate"]


def per_sample(folder) -> list[dict]:
    """The per-sample results of a run folder without the wall-clock columns."""
    rows = json.loads((folder / "results.json").read_text())["per_sample"]
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --------------------------------------------------------------------------- tensor files

@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_malicious_pt_data_is_refused_unopened(ws, capsys, command, suffix):
    marker = ws.root / "pwned"
    path = ws.inputs / f"evil{suffix}"
    torch.save({"x": Payload(marker), "y": torch.zeros(3)}, path)
    ws.refused(ws.args(command, path), capsys, str(path), "posix.system")
    assert not marker.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_malicious_pt_weights_are_refused_unopened(ws, capsys, command):
    marker = ws.root / "pwned"
    weights = ws.inputs / "evil-weights.pt"
    torch.save({"inner.1.weight": Payload(marker)}, weights)
    msg = ws.refused(ws.args(command, ws.data_file(), "--weights", str(weights)), capsys, str(weights))
    assert "posix.system" in msg and "Re-running" not in msg  # not torch's advice to turn the check off
    assert not marker.exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("content, needle", [
    ({"x": [[0.5] * 64] * 3, "y": [0, 1, 2]}, "must be tensors"),
    ([1, 2, 3], "must hold a dict"),
    ({"inputs": torch.zeros(3, 1, 8, 8)}, "must hold tensors 'x' and 'y'"),
])
def test_pt_without_tensors_is_refused(ws, capsys, command, content, needle):
    path = ws.inputs / "odd.pt"
    torch.save(content, path)
    ws.refused(ws.args(command, path), capsys, str(path), needle)


@pytest.mark.parametrize("command", COMMANDS)
def test_garbage_pt_and_safetensors_are_refused(ws, capsys, command):
    for name, needle in (("garbage.pt", "cannot be loaded as plain tensors"),
                         ("garbage.safetensors", "not a valid safetensors file")):
        path = ws.inputs / name
        path.write_bytes(b"\x00garbage" * 40)
        ws.refused(ws.args(command, path), capsys, str(path), needle)
        ws.refused(ws.args(command, ws.data_file(), "--weights", str(path)), capsys, str(path), needle)


@pytest.mark.parametrize("command", COMMANDS)
def test_mismatched_x_and_y_are_refused(ws, capsys, command):
    path = ws.data_file(y=torch.zeros(5, dtype=torch.long))
    ws.refused(ws.args(command, path), capsys, str(path), "6 inputs but labels of shape (5,)")


@pytest.mark.parametrize("command", COMMANDS)
def test_channels_last_and_wrong_shapes_are_refused(ws, capsys, command):
    x = tiny_inputs(6)
    path = ws.data_file("nhwc.pt", x=x.permute(0, 2, 3, 1).contiguous())  # the MLP would take it flattened
    ws.refused(ws.args(command, path), capsys, str(path), "channels-last")
    path = ws.data_file("big.pt", x=torch.rand(6, 1, 9, 9))
    ws.refused(ws.args(command, path), capsys, str(path), "(1, 9, 9) do not fit the model")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("y, needle", [
    (torch.tensor([0, 1, 2, 3, 99, 0]), "label 4 is 99, but the model has 4 classes"),
    (torch.tensor([0, -1, 2, 3, 1, 0]), "label 1 is -1"),
    (torch.tensor([0, 1.5, 2, 3, 1, 0]), "label 1 is 1.5"),
])
def test_labels_out_of_range_or_fractional_are_refused(ws, capsys, command, y, needle):
    path = ws.data_file(y=y)
    ws.refused(ws.args(command, path), capsys, str(path), needle)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("option", ["--data", "--weights"])
def test_a_folder_named_like_a_file_is_called_a_folder(ws, capsys, command, option):
    """``--data dir.pt`` said "no such file" although the path exists."""
    folder = ws.inputs / ("dir.pt" if option == "--data" else "dir.safetensors")
    folder.mkdir()
    data = folder if option == "--data" else ws.data_file()
    extra = ["--weights", str(folder)] if option == "--weights" else []
    ws.refused(ws.args(command, data, *extra), capsys, f"{option}: {folder} is a folder, not a file")


@pytest.mark.parametrize("command", COMMANDS)
def test_string_labels_in_npz_name_the_file(ws, capsys, command):
    """numpy's conversion error came without the file's name."""
    path = ws.inputs / "strings.npz"
    np.savez(path, x=tiny_inputs(3).numpy(), y=np.array(["a", "b", "c"]))
    ws.refused(ws.args(command, path), capsys, f"{path}: images and labels must be numeric arrays")


@pytest.mark.parametrize("command", COMMANDS)
def test_sparse_inputs_are_refused(ws, capsys, command):
    """A sparse ``x`` ended in "reshape is not implemented for sparse tensors" (a traceback)."""
    path = ws.data_file("sparse.pt", x=tiny_inputs(6).to_sparse())
    ws.refused(ws.args(command, path), capsys, str(path), "sparse tensors are not supported")


@pytest.mark.parametrize("command", COMMANDS)
def test_flat_npz_rows_take_input_shape(ws, command):
    """``--input-shape`` reshapes flat rows; an ``.npz`` of ``[N, D]`` rows was refused before it
    could (only ``.pt`` files reached the reshape)."""
    x = tiny_inputs(6)
    path = ws.inputs / "flat.npz"
    np.savez(path, x=x.flatten(1).numpy(), y=true_labels(tiny_mlp(), x).numpy())
    assert main(ws.args(command, path, "--input-shape", ",".join(map(str, x.shape[1:])))) == 0


@pytest.mark.parametrize("command", COMMANDS)
def test_non_finite_inputs_are_refused(ws, capsys, command):
    x = tiny_inputs(6)
    x[2, 0, 3, 3] = float("nan")
    path = ws.data_file(x=x)
    ws.refused(ws.args(command, path), capsys, str(path), "NaN or infinite values (sample 2)")


# --------------------------------------------------------------------------- dataset files

@pytest.mark.parametrize("command", COMMANDS)
def test_cifar_pickle_with_payload_is_refused(ws, capsys, command):
    marker = ws.root / "pwned"
    folder = ws.inputs / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}, protocol=2))
    for data in (folder, folder / "test_batch"):
        ws.refused(ws.args(command, data), capsys, "test_batch", "refusing to load global posix.system")
    assert not marker.exists()


def _fashion_folder(ws, images: bytes) -> object:
    folder = ws.inputs / "fmnist"
    folder.mkdir()
    x = (tiny_inputs(6)[:, 0] * 255).round().to(torch.uint8).numpy()
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", true_labels(tiny_mlp(), tiny_inputs(6)).numpy().astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x)
    full = (folder / "t10k-images-idx3-ubyte.gz").read_bytes()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(images if images else full)
    return folder, full


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_truncated_or_corrupt_idx_gz_is_refused(ws, capsys, command, damage):
    folder, full = _fashion_folder(ws, b"")
    if damage == "truncated":
        bad = full[:len(full) // 2]
    else:
        bad = bytearray(full)
        for i in range(20, len(bad) - 8, 7):
            bad[i] ^= 0x5A
        bad = bytes(bad)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(bad)
    ws.refused(ws.args(command, folder), capsys, "t10k-images-idx3-ubyte.gz", "gzip")


@pytest.mark.parametrize("command", COMMANDS)
def test_idx_size_check_does_not_wrap_around(ws, capsys, command):
    # 2**31 * 2**31 * 4 bytes = 2**64, which is 0 in int64: no data would have "matched"
    folder, _ = _fashion_folder(ws, b"")
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4))
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))
    ws.refused(ws.args(command, folder), capsys, "t10k-images-idx3-ubyte.gz", f"needs {2**64} data bytes, found 0")


@pytest.mark.parametrize("command", COMMANDS)
def test_garbage_npz_is_refused(ws, capsys, command):
    path = ws.inputs / "data.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip" * 5)
    ws.refused(ws.args(command, path), capsys, str(path))


# --------------------------------------------------------------------------- accepted and converted

def test_float64_data_runs_with_a_float32_model_as_float32(ws):
    """Converted to the model's dtype (docs/cli.md): the same numbers as float32 data."""
    x, y = tiny_inputs(6), true_labels(tiny_mlp(), tiny_inputs(6))
    np.savez(ws.inputs / "f32.npz", x=x.numpy(), y=y.numpy())
    np.savez(ws.inputs / "f64.npz", x=x.double().numpy(), y=y.numpy())
    assert main(ws.args("attack", ws.inputs / "f32.npz", out=ws.root / "a32")) == 0
    assert main(ws.args("attack", ws.inputs / "f64.npz", out=ws.root / "a64")) == 0
    assert per_sample(ws.root / "a32") == per_sample(ws.root / "a64")
    assert main(ws.args("evaluate", ws.inputs / "f64.npz", out=ws.root / "e64")) == 0


def test_uint8_tensors_are_scaled_like_npz(ws):
    x8 = (tiny_inputs(6) * 255).round().to(torch.uint8)
    y = torch.arange(6) % 4
    pt = ws.data_file("u8.pt", x=x8, y=y)
    st = ws.inputs / "u8.safetensors"
    save_file({"x": x8, "y": y}, str(st))
    npz = ws.inputs / "u8.npz"
    np.savez(npz, x=x8.numpy(), y=y.numpy())
    ref = _common.load_data(str(npz))
    for path in (pt, st):
        x, yy = _common.load_data(str(path))
        assert x.dtype == torch.float32 and float(x.max()) <= 1.0
        assert torch.equal(x, ref[0]) and torch.equal(yy, ref[1])


def test_integer_labels_of_any_dtype_load_as_int64(ws):
    for dtype in (torch.int32, torch.int16, torch.uint8, torch.float64):
        path = ws.data_file(y=(torch.arange(6) % 4).to(dtype))
        assert _common.load_data(str(path))[1].dtype == torch.int64
