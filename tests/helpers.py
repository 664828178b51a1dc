"""Tiny models and data shared by the test suite (also available as fixtures in conftest.py).

Everything is seeded and CPU-cheap: 1x8x8 inputs in [0, 1], 4 classes. Random-init networks
have small logit margins, so every attack breaks them with its ``quick`` settings.
"""
from __future__ import annotations

import math

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


# ---------------------------------------------------------------- the affine oracle (one home)
#
# For z = W x + b on flattened inputs the untargeted adversarial region is the union over j != y of
# the halfspaces (w_j - w_y) . x' + b_j - b_y >= 0, so the minimal lp perturbation is the smallest
# distance to one of them: (z_y - z_j) / ||w_y - w_j||_q by Hölder (q the dual exponent) without a
# box, and within a box the box-constrained hyperplane step of core.norms.min_step_to_hyperplane
# (itself checked against HiGHS and a QP solver in tests/core/test_norms.py). Targeted, the region
# is an intersection (a polytope): its minimal L1/Linf distance is a linear program (HiGHS).

def affine_model(d: int = 20, k: int = 3, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Flatten -> Linear(d, k), float64, eval mode: weights N(0, scale^2), biases N(0, 0.01)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64) * scale)
        lin.bias.copy_(torch.randn(k, generator=g, dtype=torch.float64) * 0.1)
    return nn.Sequential(nn.Flatten(), lin).eval()


def affine_inputs(n: int, d: int = 20, seed: int = 1, edge: bool = False) -> torch.Tensor:
    """``n`` points in [0, 1]^d: near the centre, or (``edge``) with a third of the coordinates on a face."""
    g = torch.Generator().manual_seed(seed)
    x = 0.4 + 0.2 * torch.rand(n, d, generator=g, dtype=torch.float64)
    if edge:
        face = torch.rand(n, d, generator=g, dtype=torch.float64)
        x = torch.where(face < 1 / 6, torch.zeros_like(x), torch.where(face < 1 / 3, torch.ones_like(x), x))
    return x


def _linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 1, "the affine oracle needs a model with exactly one nn.Linear (and Flatten)"
    return layers[0]


def affine_distances(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: float,
                     bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """``[B, K]``: the minimal lp distance from ``x`` to the region where class j beats ``y``
    (``inf`` for j = y, and where the box cannot reach it; 0 where j already beats y)."""
    from minnorm.core.norms import dual_exponent, min_step_to_hyperplane

    lin = _linear(model)
    w = lin.weight.detach()
    with torch.no_grad():
        z = lin(x.flatten(1).to(w.dtype))
    gap = (z.gather(1, y[:, None]) - z).clamp_min(0)  # needed increase of z_j - z_y
    diff = w[None] - w[y][:, None]  # [B, K, d]
    if bounds is None:
        dist = gap / torch.linalg.vector_norm(diff, ord=dual_exponent(p), dim=2)
    else:
        k = w.shape[0]
        xs = x.flatten(1).to(w.dtype).repeat_interleave(k, 0)
        step, ok = min_step_to_hyperplane(diff.flatten(0, 1), gap.flatten(), p, xs, bounds)
        dist = torch.where(ok, torch.linalg.vector_norm(step, ord=p, dim=1), math.inf).view(-1, k)
    return dist.scatter(1, y[:, None], math.inf)


def affine_minimum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, p: float,
                   bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """Exact minimal lp norm of an untargeted adversarial perturbation, per sample (inf if none)."""
    return affine_distances(model, x, y, p, bounds).min(1).values


def targeted_minimum_lp(model: nn.Module, x: torch.Tensor, t: torch.Tensor, p: float,
                        bounds: tuple[float, float]) -> torch.Tensor:
    """Minimal L1 or Linf norm reaching ``z_t >= z_j`` for all j within the box: an LP (HiGHS)."""
    import numpy as np
    from scipy.optimize import linprog

    lin = _linear(model)
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    out = []
    for xi, ti in zip(x.flatten(1).numpy(), t.tolist()):
        d, k = xi.shape[0], w.shape[0]
        rows = [j for j in range(k) if j != ti]
        a_cls = np.stack([w[j] - w[ti] for j in rows])  # (w_j - w_t) . (x + u - v) + b_j - b_t <= 0
        rhs = np.array([-(w[j] - w[ti]) @ xi - b[j] + b[ti] for j in rows])
        lo, hi = bounds
        if p == 1:
            res = linprog(np.ones(2 * d), A_ub=np.concatenate([a_cls, -a_cls], 1), b_ub=rhs,
                          bounds=[(0, hi - v) for v in xi] + [(0, v - lo) for v in xi], method="highs")
        else:
            a_ub = np.concatenate([np.concatenate([a_cls, np.zeros((len(rows), 1))], 1),
                                   np.concatenate([np.eye(d), -np.ones((d, 1))], 1),
                                   np.concatenate([-np.eye(d), -np.ones((d, 1))], 1)])
            cost = np.zeros(d + 1)
            cost[-1] = 1
            res = linprog(cost, A_ub=a_ub, b_ub=np.concatenate([rhs, np.zeros(2 * d)]),
                          bounds=[(lo - v, hi - v) for v in xi] + [(0, None)], method="highs")
        out.append(res.fun if res.status == 0 else math.inf)
    return torch.tensor(out, dtype=x.dtype)
