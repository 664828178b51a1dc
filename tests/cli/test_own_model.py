"""Issue 14 item 6: bring your own model without glue."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

from minnorm.cli import _common, main
from minnorm.models import MLP, load_shipped, load_weights, normalized, save_weights


@pytest.fixture
def flat_data(tmp_path):
    x = tiny_inputs(8)
    torch.save({"x": x.flatten(1), "y": true_labels(tiny_mlp(), x)}, tmp_path / "flat.pt")
    return str(tmp_path / "flat.pt"), x


def test_model_args_normalize_and_input_shape(tmp_path, flat_data, capsys):
    path, x = flat_data
    args = ["evaluate", "--attacks", "ddn", "--quick", "--model", "helpers:tiny_mlp", "--model-arg", "hidden=8",
            "--model-arg", "seed=3", "--normalize", "0.5/0.25", "--input-shape", "1,8,8", "--data", path,
            "--device", "cpu", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    model = normalized(tiny_mlp(seed=3, hidden=8), [0.5], [0.25])
    with torch.no_grad():
        expected = model(x).argmax(1)
    header = (tmp_path / "out" / "samples.csv").read_text().splitlines()
    col = header[0].split(",").index("clean_pred")
    assert [int(r.split(",")[col]) for r in header[1:]] == expected.tolist()


def test_bad_model_options_exit_2(flat_data, capsys):
    path, _ = flat_data
    base = ["evaluate", "--attacks", "ddn", "--quick", "--data", path, "--device", "cpu"]
    cases = [(["--model", "helpers:tiny_mlp", "--model-arg", "widht=3", "--input-shape", "1,8,8"],
              "cannot be called with these arguments"),
             (["--model", "os.path:join"], "--model os.path:join: the factory cannot be called with no arguments"),
             (["--model", "helpers:tiny_mlp", "--model-arg", "hidden"], "--model-arg expects key=value"),
             (["--model", "cnn", "--model-arg", "width=3"], "factory"),
             (["--model", "helpers:tiny_mlp", "--normalize", "0.5", "--input-shape", "1,8,8"], "MEAN/STD"),
             (["--model", "helpers:tiny_mlp", "--normalize", "0.5/inf", "--input-shape", "1,8,8"], "MEAN/STD"),
             (["--model", "helpers:tiny_mlp", "--normalize", "nan/1", "--input-shape", "1,8,8"], "MEAN/STD"),
             (["--model", "helpers:tiny_mlp", "--input-shape", "2,8,8"], "128 values per sample")]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_weights_record_their_activation():
    """SiLU weights loaded into the ReLU cnn used to load silently (same shapes, another model)."""
    from minnorm.models.weights import WEIGHTS_DIR

    with pytest.raises(ValueError, match="SiLU.*ReLU"):
        load_weights(load_shipped("cnn"), WEIGHTS_DIR / "cnn-silu.safetensors")
    with pytest.raises(ValueError, match="'cnn' model, not of MLP"):
        load_weights(load_shipped("mlp"), WEIGHTS_DIR / "cnn.safetensors")
    load_weights(load_shipped("cnn-silu"), WEIGHTS_DIR / "cnn-silu.safetensors")  # the right one loads


def test_train_json_is_a_model(tmp_path):
    """The JSON `minnorm train --export` writes names the architecture; its weights sit beside it."""
    kwargs = {"in_features": 64, "hidden": [8], "num_classes": 4, "activation": "silu"}
    torch.manual_seed(0)
    net = MLP(**kwargs).eval()
    save_weights(net, tmp_path / "m.safetensors", metadata={"architecture": "mlp", "model_kwargs": kwargs})
    (tmp_path / "m.json").write_text(json.dumps({"architecture": "mlp", "model_kwargs": kwargs}))
    model = _common.load_model(str(tmp_path / "m.json"))
    x = tiny_inputs(3)
    torch.testing.assert_close(model(x), net(x))
    with pytest.raises(ValueError, match="SiLU"):  # the same weights into a ReLU MLP are refused
        load_weights(MLP(**{**kwargs, "activation": "relu"}), tmp_path / "m.safetensors")
