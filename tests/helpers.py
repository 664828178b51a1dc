"""Tiny models and data shared by the test suite (also available as fixtures in conftest.py).

Everything is seeded and CPU-cheap: 1x8x8 inputs in [0, 1], 4 classes. Random-init networks
have small logit margins, so every attack breaks them with its ``quick`` settings.
"""
from __future__ import annotations

import torch
from torch import nn

SHAPE = (1, 8, 8)
NUM_CLASSES = 4


def tiny_mlp(seed: int = 1, dtype: torch.dtype = torch.float32, hidden: int = 16, gain: float = 4.0) -> nn.Module:
    """Flatten -> Linear(64, hidden) -> ReLU -> Linear(hidden, 4), in eval mode.

    The first layer is scaled by ``gain`` and centred on the box's midpoint 0.5, so that the
    predictions vary over the classes (seed 1 predicts 2, 2, 0, 2, 1, 3 on ``tiny_inputs(6)``)
    and minimal L2 perturbations are about 0.05-0.3.
    """
    with torch.random.fork_rng(devices=[]):  # seeded init that leaves the global RNG alone
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))
    _centre(model[1], gain)
    return model.to(dtype).eval()


def tiny_cnn(seed: int = 2, dtype: torch.dtype = torch.float32, gain: float = 4.0) -> nn.Module:
    """Conv(1->4, 3x3) -> ReLU -> MaxPool(2) -> Flatten -> Linear(64, 4), in eval mode, the
    convolution scaled and centred like :func:`tiny_mlp` (seed 2 predicts 3, 1, 1, 2, 1, 2)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(4 * 4 * 4, NUM_CLASSES))
    _centre(model[0], gain)
    return model.to(dtype).eval()


def tiny_resnet() -> nn.Module:
    """ResNet-8 on 1-channel inputs, 4 classes, float64, eval mode: BatchNorm with random running
    statistics, residual additions, average pooling, a Normalize layer in front."""
    from minnorm.models import ResNetSmall

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        net = ResNetSmall(in_channels=1, num_classes=4, widths=(4, 4, 8), mean=[0.5], std=[0.1])
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        net.fc.weight.data.mul_(30)  # so that the predictions vary over the inputs
    return net.double().eval()


def _centre(layer: nn.Module, gain: float) -> None:
    with torch.no_grad():
        layer.weight.mul_(gain)
        layer.bias.copy_(-0.5 * layer.weight.flatten(1).sum(1))


def tiny_inputs(n: int = 6, seed: int = 0, dtype: torch.dtype = torch.float32,
                bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``n`` uniform images in the box, drawn from a private generator."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = bounds
    return (torch.rand(n, *SHAPE, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


def separated_inputs(n: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n <= 63`` images ``0.5 + 0.35 h_i`` (``h_i`` rows 1..n of the 64x64 Sylvester-Hadamard
    matrix) plus noise of 0.05 at most: any two differ in 32 pixels by 0.6 or more, so they are over
    19 apart in L1 and a point within L1 distance 9 of one is nearer to it than to any other by a
    factor of more than 0.9 (tests/pass_recorder.py attributes rows to samples this way)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < 64:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    g = torch.Generator().manual_seed(seed)
    noise = 0.1 * (torch.rand(n, 64, generator=g, dtype=torch.float64) - 0.5)
    return (0.5 + 0.35 * h[1:n + 1] + noise).view(n, *SHAPE).to(dtype)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def true_labels(model: nn.Module, x: torch.Tensor, wrong: tuple[int, ...] = ()) -> torch.Tensor:
    """The model's own predictions as labels (clean accuracy 100%), except at the rows ``wrong``,
    which get another label so that those samples are misclassified from the start."""
    y = predict(model, x)
    for i in wrong:
        y[i] = (y[i] + 1) % NUM_CLASSES
    return y


def target_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A target other than the clean prediction for every sample."""
    return (predict(model, x) + 1) % NUM_CLASSES


class RecordingModel(nn.Module):
    """Wraps a model and records every row it is queried with (detached copies), so a test can
    see all the points an attack looked at."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model
        self.queries: list[tuple[torch.Tensor, torch.Tensor]] = []  # (inputs, logits)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if _wrapped(x) or _wrapped(out):
            # inside a torch.func transform any op re-wraps its result, so keep the plain values as is
            self.queries.append((_plain(x), _plain(out)))
        else:
            self.queries.append((x.detach().clone(), out.detach().clone()))
        return out


def _wrapped(t: torch.Tensor) -> bool:
    functorch = getattr(torch._C, "_functorch", None)
    return functorch is not None and functorch.is_functorch_wrapped_tensor(t)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """The value under torch.func (jvp/vjp/grad/vmap) wrappers, which must not escape the transform."""
    while _wrapped(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


class ReshapedModel(nn.Module):
    """A model whose output has the wrong shape, for the input-check tests."""

    def __init__(self, model: nn.Module, how: str):
        super().__init__()
        self.inner, self.how = model, how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.how == "1d":
            return out[:, 0]
        if self.how == "3d":
            return out.unsqueeze(-1)
        if self.how == "batch":
            return out[:-1]
        raise ValueError(self.how)


def state_snapshot(model: nn.Module) -> dict:
    """Everything invariant 1 protects: values, requires_grad and .grad of every parameter and
    buffer, and the train/eval flag of every submodule."""
    return {
        "params": {n: (p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
                   for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "modes": {n: m.training for n, m in model.named_modules()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["modes"] == after["modes"], "train/eval mode of the model changed"
    assert before["buffers"].keys() == after["buffers"].keys()
    for n, b in before["buffers"].items():
        assert torch.equal(b, after["buffers"][n]), f"buffer {n} changed"
    assert before["params"].keys() == after["params"].keys()
    for n, (v, rg, g) in before["params"].items():
        v2, rg2, g2 = after["params"][n]
        assert torch.equal(v, v2), f"parameter {n} changed"
        assert rg == rg2, f"requires_grad of parameter {n} changed ({rg} -> {rg2})"
        assert (g is None) == (g2 is None), f".grad of parameter {n} changed (None -> tensor)"
        if g is not None:
            assert torch.equal(g, g2), f".grad of parameter {n} changed"
