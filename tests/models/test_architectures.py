"""Reference architectures, Normalize, safe weight loading, shipped weights."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from minnorm import models
from minnorm.data import load_sample

torch.set_num_threads(1)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "silu", "swish", "gelu", "softplus"])
def test_output_shapes(activation):
    torch.manual_seed(0)
    for model, shape in ((models.SmallCNN(activation), (2, 1, 28, 28)),
                         (models.SmallCNN(activation, in_channels=3, num_classes=5, input_size=32), (2, 3, 32, 32)),
                         (models.MLP(activation), (2, 1, 28, 28)),
                         (models.ResNetSmall(activation, mean=[0.5] * 3, std=[0.25] * 3), (2, 3, 32, 32))):
        model.eval()
        out = model(torch.rand(shape))
        assert out.shape == (2, model(torch.rand(1, *shape[1:])).shape[1])
        assert out.shape[1] == (5 if isinstance(model, models.SmallCNN) and shape[1] == 3 else 10)
        assert model(torch.rand(0, *shape[1:])).shape[0] == 0


def test_cnn_stays_small_and_works_in_float64():
    cnn = models.SmallCNN()
    assert sum(p.numel() for p in cnn.parameters()) < 300_000
    assert [type(m) for m in cnn if isinstance(m, (nn.Conv2d, nn.MaxPool2d))].count(nn.MaxPool2d) == 2
    out = models.SmallCNN().double()(torch.rand(1, 1, 28, 28, dtype=torch.float64))
    assert out.dtype == torch.float64
    resnet = models.ResNetSmall(mean=[0.5] * 3, std=[0.25] * 3).double().eval()
    assert resnet(torch.rand(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        models.SmallCNN("tanhh")
    with pytest.raises(ValueError, match="input_size"):
        models.SmallCNN(input_size=30)
    with pytest.raises(ValueError, match="std"):
        models.Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="architecture"):
        models.build_model("vgg")


def test_normalize():
    norm = models.Normalize([0.1, 0.2, 0.3], [0.5, 0.5, 2.0])
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)) / torch.tensor([0.5, 0.5, 2.0]).view(3, 1, 1)
    assert torch.allclose(norm(x), expected)
    assert set(norm.state_dict()) == {"mean", "std"}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    a, b = models.SmallCNN(), models.SmallCNN()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save({"model": a.state_dict(), "epoch": 3}, path)  # a training checkpoint unwraps
    else:
        models.save_weights(a, path, metadata={"architecture": "cnn", "epochs": 3})
    models.load_weights(b, path)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_load_weights_refuses_wrong_keys_and_shapes(tmp_path):
    cnn = models.SmallCNN()
    models.save_weights(models.MLP(), tmp_path / "mlp.safetensors")
    with pytest.raises(ValueError, match="missing keys: 0.weight.*unexpected keys: 1.bias, 1.weight"):
        models.load_weights(cnn, tmp_path / "mlp.safetensors")
    state = cnn.state_dict()
    models.save_weights({k: v for k, v in state.items() if k != "13.bias"}, tmp_path / "less.safetensors")
    with pytest.raises(ValueError, match="missing keys: 13.bias"):
        models.load_weights(cnn, tmp_path / "less.safetensors")
    models.load_weights(cnn, tmp_path / "less.safetensors", strict=False)
    models.save_weights(models.SmallCNN(num_classes=7), tmp_path / "k7.safetensors")
    with pytest.raises(ValueError, match="shape mismatch: 13.weight"):
        models.load_weights(cnn, tmp_path / "k7.safetensors", strict=False)
    with pytest.raises(FileNotFoundError):
        models.load_weights(cnn, tmp_path / "none.safetensors")


class _Payload:
    def __reduce__(self):
        return print, ("unpickled!",)


def test_load_weights_never_unpickles_objects(tmp_path):
    torch.save({"model": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        models.load_weights(models.MLP(), tmp_path / "evil.pt")
    torch.save({"module." + k: v for k, v in models.MLP().state_dict().items()}, tmp_path / "ddp.pt")
    models.load_weights(models.MLP(), tmp_path / "ddp.pt")  # DataParallel prefix is stripped


@pytest.mark.parametrize("name, floor", [("cnn", 0.88), ("mlp", 0.85)])
def test_shipped_models(name, floor):
    if name not in models.shipped_names():
        pytest.skip(f"{name} weights not trained yet (scripts/train_shipped.sh)")
    model = models.load_shipped(name)
    assert not model.training
    info = models.shipped_info(name)
    for key in ("architecture", "model_kwargs", "recipe", "epochs", "seconds", "clean_test_accuracy", "date"):
        assert key in info, key
    assert info["clean_test_accuracy"] >= floor
    json.dumps(info)
    x, y = load_sample()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc >= floor - 0.03
    with pytest.raises(ValueError, match="no shipped model"):
        models.load_shipped("no-such-model")
