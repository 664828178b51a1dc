"""Reference architectures, kept small because CPU attacks run them millions of times.

Every model maps images in [0, 1] to logits ``[B, K]``; any normalisation belongs inside
(:class:`Normalize`), so attacks see the input box the user sees.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "MLP",
    "Normalize",
    "ResNetSmall",
    "SmallCNN",
    "build_model",
    "make_activation",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name: relu, leaky_relu, silu/swish, gelu, softplus."""
    key = name.lower().replace("-", "_")
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (dim 1), as the first layer of a model; one mean and std
    apply to every value of an input of any shape."""

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float):
        super().__init__()
        try:
            mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
            std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"mean and std must be numbers or sequences of numbers, got {mean!r} and {std!r}") from None
        if mean_t.shape != std_t.shape:
            raise ValueError(f"mean and std must have the same length, got {mean_t.numel()} and {std_t.numel()}")
        if not bool(torch.isfinite(mean_t).all()):
            raise ValueError(f"mean must be finite, got {mean}")
        if not bool((std_t > 0).all() and torch.isfinite(std_t).all()):
            raise ValueError(f"std must be > 0 and finite, got {std}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.mean.numel()
        if c == 1:  # any shape, flat rows [B, D] included (a [1, 1, 1] buffer would add an axis to them)
            shape: tuple[int, ...] = ()
        elif x.dim() >= 2 and x.shape[1] == c:
            shape = (1, c) + (1,) * (x.dim() - 2)
        else:  # broadcasting would turn a grayscale batch into c channels
            raise ValueError(f"Normalize has {c} channels (mean and std) but the inputs have shape {tuple(x.shape)}; "
                             f"they must be [B, {c}, ...]")
        return (x - self.mean.to(x.dtype).reshape(shape)) / self.std.to(x.dtype).reshape(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def normalized(model: nn.Module, mean: Sequence[float] | float, std: Sequence[float] | float) -> nn.Module:
    """``model`` behind a :class:`Normalize` layer, in eval mode: inputs stay in the [0, 1] box
    the attacks work in (Foolbox's ``preprocessing=dict(mean=..., std=...)``)."""
    return nn.Sequential(Normalize(mean, std), model).eval()


class SmallCNN(nn.Sequential):
    """Two conv blocks (two 3x3 convs + 2x2 max-pool each), then two dense layers.

    For 28x28 Fashion-MNIST: 16-16-pool-32-32-pool-128-10, about 0.23 M parameters.
    """

    def __init__(self, activation: str = "relu", in_channels: int = 1, num_classes: int = 10,
                 input_size: int = 28, width: int = 16, hidden: int = 128):
        if input_size % 4:
            raise ValueError(f"input_size must be a multiple of 4 (two 2x2 pools), got {input_size}")
        act = lambda: make_activation(activation)
        w = width
        super().__init__(
            nn.Conv2d(in_channels, w, 3, padding=1), act(), nn.Conv2d(w, w, 3, padding=1), act(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), act(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), act(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * (input_size // 4) ** 2, hidden), act(), nn.Linear(hidden, num_classes),
        )


class MLP(nn.Sequential):
    """Flatten, then dense layers: 784-256-256-10 by default."""

    def __init__(self, activation: str = "relu", in_features: int = 784, hidden: Sequence[int] = (256, 256),
                 num_classes: int = 10):
        layers: list[nn.Module] = [nn.Flatten()]
        sizes = [in_features, *hidden]
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), make_activation(activation)]
        super().__init__(*layers, nn.Linear(sizes[-1], num_classes))


class _BasicBlock(nn.Module):
    """He et al. (2016) basic block: conv-BN-act-conv-BN plus the (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1, self.act2 = make_activation(activation), make_activation(activation)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A CIFAR-style ResNet (He et al., 2016, Sec. 4.2) with ``blocks`` basic blocks per stage
    and widths 16-32-64: ResNet-8 with the defaults (``blocks=1``), ResNet-20 with ``blocks=3``.
    ``mean``/``std`` put a :class:`Normalize` in front."""

    def __init__(self, activation: str = "relu", in_channels: int = 3, num_classes: int = 10, blocks: int = 1,
                 widths: Sequence[int] = (16, 32, 64), mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        self.normalize = Normalize(mean, std) if mean is not None and std is not None else nn.Identity()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), make_activation(activation))
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                stages.append(_BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, activation))
                cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(self.normalize(x)))))


ARCHITECTURES: dict[str, type[nn.Module]] = {"cnn": SmallCNN, "mlp": MLP, "resnet": ResNetSmall}


def build_model(architecture: str, **kwargs) -> nn.Module:
    """Instantiate a reference architecture by name (``cnn``, ``mlp``, ``resnet``) with keyword arguments."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](**kwargs)
