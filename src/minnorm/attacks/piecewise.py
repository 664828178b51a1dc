"""Piecewise-affine view of a PyTorch model (Croce, Rauber and Hein, Sec. 2 and 4.2).

A ReLU/max-pool network is affine on each *linear region* Q(y), the set of inputs sharing y's
activation pattern: the ReLU signs (eq. 7) and the argmax positions of every max-pool (eq. 8).
Freezing that pattern at a representative ``y`` turns the network into an affine map whose
Jacobian-vector products (forward mode) and vector-Jacobian products (reverse mode) give the
constraint products ``A v`` and ``A^T mu`` of the region without ever forming ``A`` (Sec. 4.2).

The view works by hooks on the model's own leaf modules, so custom ``forward`` code with residual
additions works unchanged. Every leaf module must be one of :data:`AFFINE` (affine in eval mode) or
:data:`PIECEWISE`; anything else raises a ``TypeError`` naming it. Nonlinearities applied as plain
functions inside a custom ``forward`` are invisible to hooks and are not detected.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models.architectures import Normalize

__all__ = ["AFFINE", "PIECEWISE", "PiecewiseAffine", "Region", "RegionOperator"]

AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Flatten, nn.Unflatten, nn.Identity, nn.AvgPool1d,
          nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, Normalize)
PIECEWISE = (nn.ReLU, nn.LeakyReLU, nn.MaxPool2d)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # children are checked on their own
_EVAL_ONLY = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d)


def _check_module(name: str, m: nn.Module) -> None:
    label = f"layer {name or '<model>'} ({type(m).__name__})"
    if isinstance(m, PIECEWISE + AFFINE):
        if isinstance(m, _EVAL_ONLY) and m.training:
            raise ValueError(f"{label} is not affine in train mode; call model.eval() first")
        if isinstance(m, nn.MaxPool2d) and (m.ceil_mode or m.return_indices):
            raise TypeError(f"{label}: ceil_mode/return_indices are not supported by the piecewise-affine view")
        return
    if isinstance(m, _CONTAINERS):
        return
    own = list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
    if not list(m.children()) or own:
        raise TypeError(f"{label} is not supported by the piecewise-affine view; supported layers: "
                        + ", ".join(t.__name__ for t in PIECEWISE + AFFINE))


@dataclass
class Region:
    """The frozen pattern of a batch of representatives: one tensor per piecewise layer
    (bool ReLU masks ``z >= 0`` or long max-pool argmax indices), batch first."""

    patterns: list[torch.Tensor]
    n: int

    def take(self, rows: torch.Tensor) -> "Region":
        return Region([p[rows] for p in self.patterns], int(rows.numel()))

    def hashes(self) -> torch.Tensor:
        """Two int64 hashes per sample of the whole pattern ``[n, 2]`` (the visited-region cache
        of Sec. 4). Fixed pseudo-random weights; int64 arithmetic wraps, which is fine for a hash."""
        n = self.n
        out = torch.zeros(n, 2, dtype=torch.long, device=self.patterns[0].device if self.patterns else "cpu")
        for i, p in enumerate(self.patterns):
            flat = p.reshape(n, -1).long() + 1
            g = torch.Generator(device="cpu").manual_seed(1000 + i)
            w = torch.randint(-2**62, 2**62, (2, flat.shape[1]), generator=g).to(flat.device)
            # elementwise products, not a matmul: integer matmul does not exist on CUDA
            out = out * 1000003 + torch.stack([(flat * w[0]).sum(1), (flat * w[1]).sum(1)], 1)
        return out


class PiecewiseAffine:
    """Hooks on a model that (a) capture the activation pattern at given inputs and (b) evaluate the
    network with a pattern frozen, returning the logits and the region's constraint values
    ``g(x) >= 0`` per piecewise layer: ``s * z`` for ReLU pre-activations ``z`` with signs
    ``s = +-1`` (eq. 7), and ``z_argmax - z_i`` for every other member ``i`` of a pool (eq. 8).

    Use as a context manager (``with PiecewiseAffine(model) as net:``) so that the hooks are
    removed afterwards; the model itself is never modified.
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"the linear-region attack needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.layers = []
        for name, m in model.named_modules():
            _check_module(name, m)
            if isinstance(m, PIECEWISE):
                self.layers.append(m)
        self._mode = "off"
        self._region: Region | None = None
        self._captured: list[torch.Tensor] = []
        self._constraints: list[torch.Tensor] = []
        self._inputs: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "PiecewiseAffine":
        for i, m in enumerate(self.layers):
            self._handles.append(m.register_forward_pre_hook(self._pre_hook(i)))
            self._handles.append(m.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @contextmanager
    def _as(self, mode: str, region: Region | None = None):
        self._mode, self._region, self._captured, self._constraints = mode, region, [], []
        try:
            yield
        finally:
            self._mode, self._region, self._inputs = "off", None, {}

    # ------------------------------------------------------------------ public evaluation

    def capture(self, x: torch.Tensor) -> tuple[torch.Tensor, Region]:
        """A plain forward pass that also records the activation pattern at ``x``."""
        with self._as("capture"), torch.no_grad():
            logits = self.model(x)
            region = Region(list(self._captured), x.shape[0])
        self._check_count(len(region.patterns))
        return logits, region

    def frozen(self, region: Region):
        """The affine map ``x -> (logits, [g_1(x), ..., g_L(x)])`` of ``region`` (flattened
        ``[n, m_l]`` constraint values). Exactly the network at the representative itself."""
        def fn(x: torch.Tensor):
            with self._as("frozen", region):
                logits = self.model(x)
                cons = list(self._constraints)
            self._check_count(len(cons))
            return logits, cons
        return fn

    def _check_count(self, n: int) -> None:
        if n != len(self.layers):
            raise RuntimeError(f"{n} of {len(self.layers)} piecewise layers ran in the forward pass; a layer used "
                               "twice or not at all cannot be frozen")

    # ------------------------------------------------------------------ hooks

    def _pre_hook(self, i: int):
        def hook(module, args):
            if self._mode != "off":
                z = args[0]
                # an in-place ReLU overwrites its input; keep the pre-activation
                self._inputs[i] = z.clone() if getattr(module, "inplace", False) else z
        return hook

    def _hook(self, i: int):
        def hook(module, args, output):
            if self._mode == "off":
                return None
            z = self._inputs.pop(i)
            if self._mode == "capture":
                if isinstance(module, nn.MaxPool2d):
                    _, idx = F.max_pool2d(z, module.kernel_size, module.stride, module.padding, module.dilation,
                                          return_indices=True)
                    self._captured.append(idx)
                else:
                    self._captured.append(z >= 0)  # sgn(0) = +1 (footnote 1)
                return None
            pattern = self._region.patterns[len(self._constraints)]
            if isinstance(module, nn.MaxPool2d):
                out, cons = _frozen_pool(module, z, pattern)
            else:
                mask = pattern.to(z.dtype)
                slope = module.negative_slope if isinstance(module, nn.LeakyReLU) else 0.0
                out = z * (mask + (1 - mask) * slope)
                cons = z * (2 * mask - 1)
            self._constraints.append(cons.flatten(1))
            return out
        return hook


def _frozen_pool(module: nn.MaxPool2d, z: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-pool with the argmax frozen (a gather, affine), and eq. 8's ``z_max - z_i`` per window
    member; padded positions and the argmax itself give exactly-zero rows."""
    b, c, h, w = z.shape
    out = z.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
    k, d, p, s = (_pair(getattr(module, a)) for a in ("kernel_size", "dilation", "padding", "stride"))
    windows = F.unfold(z, k, d, p, s).view(b, c, k[0] * k[1], -1)
    pos = torch.arange(h * w, device=z.device, dtype=z.dtype).view(1, 1, h, w) + 1  # 0 marks padding
    where = F.unfold(pos, k, d, p, s).view(1, 1, k[0] * k[1], -1)
    chosen = idx.flatten(2)[:, :, None, :] + 1
    keep = (where > 0) & (where.long() != chosen)
    cons = (out.flatten(2)[:, :, None, :] - windows) * keep.to(z.dtype)
    return out, cons


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class RegionOperator:
    """The constraints of the linear regions of a batch of representatives ``y`` as an
    :class:`~minnorm.attacks.qp.Operator` in the perturbation ``d = z - x0``:

        A d <= b   with   A = -J_F,   b = F(x0) = F(y) + J_F (x0 - y),

    where ``F(z) = (C f(z), g_1(z), ..., g_L(z))`` collects, for the frozen affine network, the
    decision constraints ``C f >= 0`` (``C`` ``[n, r, K]``: one row ``e_l - e_c`` per QP for
    eq. 10, or ``e_s - e_r`` for every ``r`` for eq. 11) and the ReLU/max-pool constraints.
    ``A^T mu`` is a reverse-mode VJP at ``y`` (Sec. 4.2). ``A v`` is a JVP: by default computed as
    the VJP of the (linear) VJP map, reusing one recorded graph per region, which on CPU is far
    cheaper than ``torch.func.jvp`` (see docs/linear-region.md); ``forward_mode=True`` uses true
    forward-mode ``torch.func.jvp``. Either way the model is only ever evaluated at the
    representatives themselves. ``owner`` maps rows to the attacked samples for pass counting on
    ``counter`` (a :class:`~minnorm.core.CountedModel`): one forward pass per region, one backward
    pass per product.
    """

    def __init__(self, net: PiecewiseAffine, region: Region, y: torch.Tensor, x0: torch.Tensor,
                 decision: torch.Tensor, counter=None, owner: torch.Tensor | None = None,
                 forward_mode: bool = False):
        self.net, self.region, self.y, self.x0, self.decision = net, region, y.detach(), x0, decision
        self.counter, self.owner, self.n, self.forward_mode = counter, owner, y.shape[0], forward_mode
        frozen = net.frozen(region)

        def fn(z: torch.Tensor) -> torch.Tensor:
            logits, cons = frozen(z)
            dec = torch.einsum("nrk,nk->nr", decision, logits)
            self.sizes = [dec.shape[1]] + [c.shape[1] for c in cons]
            return torch.cat([dec, *cons], 1)

        self._fn = fn
        with torch.enable_grad():
            self._yy = self.y.clone().requires_grad_(True)
            self._out = fn(self._yy)
            self._u = torch.zeros_like(self._out, requires_grad=True)
            (self._g,) = torch.autograd.grad(self._out, self._yy, self._u, create_graph=True)
        self.value = self._out.detach()
        self._charge(None, forward=1)

    def _charge(self, rows: torch.Tensor | None, forward: int = 0, backward: int = 0) -> None:
        if self.counter is None or self.owner is None:
            return
        own = self.owner if rows is None else self.owner[rows]
        ones = torch.ones_like(own)
        if forward:
            self.counter.forward_passes.index_add_(0, own, ones * forward)
        if backward:
            self.counter.backward_passes.index_add_(0, own, ones * backward)

    def jvp(self, v: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``J_F v`` at ``y``."""
        self._charge(rows, backward=1)
        if self.forward_mode:
            return torch.func.jvp(self._fn, (self.y,), (v,))[1].detach()
        with torch.enable_grad():
            (t,) = torch.autograd.grad(self._g, self._u, v, retain_graph=True)
        return t

    def offsets(self) -> torch.Tensor:
        """``b = F(x0)`` of the frozen network (one JVP)."""
        return self.value + self.jvp(self.x0 - self.y)

    def matvec(self, v: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return -self.jvp(v, rows)

    def rmatvec(self, mu: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        self._charge(rows, backward=1)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self._out, self._yy, -mu, retain_graph=True)
        return grad

    def restrict(self, rows: torch.Tensor) -> "RegionOperator":
        return RegionOperator(self.net, self.region.take(rows), self.y[rows], self.x0[rows], self.decision[rows],
                              self.counter, None if self.owner is None else self.owner[rows], self.forward_mode)
