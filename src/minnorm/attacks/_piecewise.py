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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..core.validation import check_output_shape
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
    # what the pattern fixes, built on first use by the frozen/linear evaluations: per layer and
    # dtype the ReLU output multipliers and constraint signs, or the max-pool window masks
    cache: dict = field(default_factory=dict, repr=False, compare=False)

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
        self._buffer: torch.Tensor | None = None
        self._column = 0
        self._handles: list = []
        self._offsets = _offset_names(model)
        self._zeros: dict = {}

    def __enter__(self) -> "PiecewiseAffine":
        # The piecewise layers' forward is shadowed by an instance attribute while the view is open,
        # so that a frozen evaluation does not also compute the real max-pool/ReLU it replaces.
        for i, m in enumerate(self.layers):
            own = m.__dict__.get("forward")
            self._handles.append((m, own))
            m.forward = self._forward(i, m, own or type(m).forward.__get__(m))
        return self

    def __exit__(self, *exc) -> None:
        for m, own in self._handles:
            if own is None:
                del m.forward
            else:
                m.forward = own
        self._handles.clear()

    @contextmanager
    def _as(self, mode: str, region: Region | None = None):
        self._mode, self._region, self._captured, self._constraints = mode, region, [], []
        try:
            yield
        finally:
            self._mode, self._region = "off", None

    # ------------------------------------------------------------------ public evaluation

    def capture(self, x: torch.Tensor, call=None) -> tuple[torch.Tensor, Region]:
        """A plain forward pass that also records the activation pattern at ``x``; ``call`` (say a
        CountedModel bound to the samples' indices) runs the model instead of calling it directly."""
        with self._as("capture"), torch.no_grad():
            logits = (call or self.model)(x)
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
            check_output_shape(logits, x.shape[0])
            return logits, cons
        return fn

    def linear(self, region: Region):
        """The linear part ``v -> (J_f v, [J_g1 v, ...])`` of :meth:`frozen`: the same evaluation with
        every offset (biases, BatchNorm running means, ``Normalize`` means) set to zero, so a Jacobian-
        vector product costs one plain forward pass without autograd (Sec. 4.2's ``A v``). With
        ``out`` (``[n, c + m]``), the constraint values are written into its columns from ``c`` on
        and come back as views of it (no concatenation)."""
        def fn(v: torch.Tensor, out: torch.Tensor | None = None, column: int = 0):
            key = (v.dtype, v.device)
            if key not in self._zeros:
                self._zeros[key] = [torch.zeros_like(getattr(m, a), dtype=v.dtype, device=v.device)
                                    for m, a in self._offsets]
            with self._as("frozen", region), _swapped(self._offsets, self._zeros[key]):
                self._buffer, self._column = out, column
                try:
                    logits = self.model(v)
                finally:
                    self._buffer = None
                cons = list(self._constraints)
            self._check_count(len(cons))
            check_output_shape(logits, v.shape[0])
            return logits, cons
        return fn

    def _check_count(self, n: int) -> None:
        if n != len(self.layers):
            raise RuntimeError(f"{n} of {len(self.layers)} piecewise layers ran in the forward pass; a layer used "
                               "twice or not at all cannot be frozen")

    # ------------------------------------------------------------------ the piecewise layers

    def _forward(self, i: int, module: nn.Module, original):
        def forward(z: torch.Tensor) -> torch.Tensor:
            if self._mode == "off":
                return original(z)
            if self._mode == "capture":
                if isinstance(module, nn.MaxPool2d):
                    out, idx = F.max_pool2d(z, module.kernel_size, module.stride, module.padding, module.dilation,
                                            return_indices=True)
                    self._captured.append(idx)
                    return out
                self._captured.append(z >= 0)  # sgn(0) = +1 (footnote 1); before an in-place ReLU runs
                return original(z)
            return self._frozen_layer(module, z)
        return forward

    def _frozen_layer(self, module: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """One piecewise layer with the region's pattern: its (affine) output, and its constraint
        values appended to ``self._constraints``; what the pattern fixes is cached on the region."""
        layer = len(self._constraints)
        pattern, cache = self._region.patterns[layer], self._region.cache
        key = (layer, z.dtype, z.shape[1:])
        dst = None
        if self._buffer is not None:
            size = _constraint_count(module, z)
            dst = self._buffer[:, self._column:self._column + size]
            self._column += size
        if isinstance(module, nn.MaxPool2d):
            if key not in cache:
                cache[key] = _pool_masks(module, z, pattern)
            out, cons = _frozen_pool(z, pattern, *cache[key], dst)
        else:
            if key not in cache:
                mask = pattern.to(z.dtype)
                slope = module.negative_slope if isinstance(module, nn.LeakyReLU) else 0.0
                cache[key] = (mask + (1 - mask) * slope, 2 * mask - 1)
            mult, sign = cache[key]
            out = z * mult
            cons = z * sign if dst is None else torch.mul(z, sign, out=dst.view(z.shape))
        self._constraints.append(cons.flatten(1))
        return out


def _pool_masks(module: nn.MaxPool2d, z: torch.Tensor, idx: torch.Tensor):
    """What a frozen max-pool pattern fixes: the unfold geometry and a ``[b, c, k*k, windows]``
    mask of the window members that are neither padding nor the argmax."""
    b, c, h, w = z.shape
    k, d, p, s = (_pair(getattr(module, a)) for a in ("kernel_size", "dilation", "padding", "stride"))
    pos = torch.arange(h * w, device=z.device, dtype=z.dtype).view(1, 1, h, w) + 1  # 0 marks padding
    where = F.unfold(pos, k, d, p, s).view(1, 1, k[0] * k[1], -1)
    chosen = idx.flatten(2)[:, :, None, :] + 1
    keep = (where > 0) & (where.long() != chosen)
    tiles = k == s and d == (1, 1) and p == (0, 0) and h % k[0] == 0 and w % k[1] == 0
    return (k, d, p, s), keep.to(z.dtype), tiles


def _constraint_count(module: nn.Module, z: torch.Tensor) -> int:
    """Constraint rows per sample of a piecewise layer with input ``z``."""
    if not isinstance(module, nn.MaxPool2d):
        return z[0].numel()
    k, d, p, s = (_pair(getattr(module, a)) for a in ("kernel_size", "dilation", "padding", "stride"))
    out = [(z.shape[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)]
    return z.shape[1] * k[0] * k[1] * out[0] * out[1]


def _frozen_pool(z: torch.Tensor, idx: torch.Tensor, geometry, keep: torch.Tensor, tiles: bool,
                 dst: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-pool with the argmax frozen (a gather, affine), and eq. 8's ``z_max - z_i`` per window
    member; padded positions and the argmax itself give exactly-zero rows. ``dst``: where to write
    the constraint values (a view of a preallocated buffer; no autograd there, so the windows of a
    non-overlapping pool are read through a strided view instead of being unfolded)."""
    b, c = z.shape[:2]
    out = z.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
    k = geometry[0]
    if tiles and z.is_contiguous():  # windows as a strided view: no unfold forward, no fold backward
        h, w = out.shape[2:]
        windows = z.view(b, c, h, k[0], w, k[1]).permute(0, 1, 3, 5, 2, 4)  # [b, c, ki, kj, h, w]
        mask = keep.view(windows.shape)
        if dst is None:
            return out, ((out[:, :, None, None] - windows) * mask).reshape(keep.shape)
        return out, torch.sub(out[:, :, None, None], windows, out=dst.view(windows.shape)).mul_(mask).view(keep.shape)
    windows = F.unfold(z, *geometry).view(b, c, keep.shape[2], -1)
    if dst is None:
        return out, (out.flatten(2)[:, :, None, :] - windows) * keep
    cons = torch.sub(out.flatten(2)[:, :, None, :], windows, out=dst.view(windows.shape))
    return out, cons.mul_(keep)


def _offset_names(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The parameters and buffers that make the affine layers affine rather than linear, as
    ``(module, name)``: biases, BatchNorm running means, ``Normalize`` means."""
    found = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d)):
            found += [(m, "bias")] if m.bias is not None else []
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.running_mean is not None:
            found.append((m, "running_mean"))
        if isinstance(m, Normalize):
            found.append((m, "mean"))
    return found


@contextmanager
def _swapped(slots: list[tuple[nn.Module, str]], values: list[torch.Tensor]):
    """Temporarily put ``values`` in the modules' parameter/buffer slots (restored on exit); the
    cheap equivalent of ``torch.func.functional_call`` for a handful of tensors."""
    saved = []
    try:
        for (m, name), value in zip(slots, values):
            table = m._parameters if name in m._parameters else m._buffers
            saved.append((table, name, table[name]))
            table[name] = value
        yield
    finally:
        for table, name, value in reversed(saved):
            table[name] = value


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class RegionOperator:
    """The constraints of the linear regions of a batch of representatives ``y`` as an
    :class:`~minnorm.attacks._qp.Operator` in the perturbation ``d = z - x0``:

        A d <= b   with   A = -J_F,   b = F(x0) = F(y) + J_F (x0 - y),

    where ``F(z) = (C f(z), g_1(z), ..., g_L(z))`` collects, for the frozen affine network, the
    decision constraints ``C f >= 0`` (``C`` ``[n, r, K]``: one row ``e_l - e_c`` per QP for
    eq. 10, or ``e_s - e_r`` for every ``r`` for eq. 11) and the ReLU/max-pool constraints.
    ``A^T mu`` is a reverse-mode VJP on one graph recorded at ``y`` per region (Sec. 4.2). ``A v``
    is the frozen network's linear part (:meth:`PiecewiseAffine.linear`) evaluated on ``v``: one
    plain forward pass without autograd, several times cheaper on CPU than the double backward used
    before or ``torch.func.jvp`` (see docs/linear-region.md); ``forward_mode=True`` uses true
    forward-mode ``torch.func.jvp`` instead (for tests). ``owner`` maps rows to the attacked
    samples for pass counting on ``counter`` (a :class:`~minnorm.core.CountedModel`): one forward
    pass per region, one backward pass per product, handed over by :meth:`flush`.
    """

    def __init__(self, net: PiecewiseAffine, region: Region, y: torch.Tensor, x0: torch.Tensor,
                 decision: torch.Tensor, counter=None, owner: torch.Tensor | None = None,
                 forward_mode: bool = False, _tally=None):
        self.net, self.region, self.y, self.x0, self.decision = net, region, y.detach(), x0, decision
        self.counter, self.owner, self.n, self.forward_mode = counter, owner, y.shape[0], forward_mode
        # passes are tallied per row here (shared with restricted copies) and handed to the counter
        # in one call by flush(): a CountedModel.charge per product costs more than a small product
        n = y.shape[0]
        self._tally = _tally or (torch.zeros(2, n, dtype=torch.long, device=y.device), torch.arange(n, device=y.device),
                                 owner)
        frozen, self._linear = net.frozen(region), net.linear(region)
        self._fn = lambda z: self._stack(*frozen(z))
        with torch.enable_grad():
            self._yy = self.y.clone().requires_grad_(True)
            self._out = self._fn(self._yy)
        self.value = self._out.detach()
        self._charge(None, forward=1)

    def _stack(self, logits: torch.Tensor, cons: list[torch.Tensor]) -> torch.Tensor:
        dec = torch.einsum("nrk,nk->nr", self.decision, logits)
        self.sizes = [dec.shape[1]] + [c.shape[1] for c in cons]
        return torch.cat([dec, *cons], 1)

    def _charge(self, rows: torch.Tensor | None, forward: int = 0, backward: int = 0) -> None:
        if self.counter is None or self.owner is None:
            return
        counts, index, _ = self._tally
        at = index if rows is None else index[rows]
        counts[0, at] += forward
        counts[1, at] += backward

    def flush(self) -> None:
        """Charge the tallied passes to the CountedModel (``CountedModel.charge``) and reset them."""
        counts, _, owner = self._tally
        if self.counter is not None and owner is not None and bool(counts.any()):
            self.counter.charge(owner, forward=counts[0].clone(), backward=counts[1].clone())
            counts.zero_()

    def out_of_budget(self, reserve: int) -> torch.Tensor | None:
        """Per row: whether its sample (``owner``) has fewer than ``reserve`` passes left per row
        of this operator once the tallied, not yet flushed passes are charged; ``None`` without a
        budget. A solver that stops such rows keeps every pass it computes creditable (a pass past
        the budget is not credited: :mod:`minnorm.core.counting`)."""
        counts, _, owner = self._tally
        left = None if self.counter is None or owner is None else self.counter.passes_left()
        if left is None:
            return None
        pending = torch.zeros_like(left).index_add_(0, owner, counts.sum(0))
        rows = torch.bincount(owner, minlength=left.shape[0])
        return (left - pending < reserve * rows)[owner]

    def jvp(self, v: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``J_F v`` at ``y``."""
        self._charge(rows, backward=1)
        if self.forward_mode:
            return torch.func.jvp(self._fn, (self.y,), (v,))[1].detach()
        with torch.no_grad():
            r = self.sizes[0]
            out = torch.empty(v.shape[0], sum(self.sizes), dtype=v.dtype, device=v.device)
            logits, _ = self._linear(v, out, r)
            out[:, :r] = torch.einsum("nrk,nk->nr", self.decision, logits)
            return out

    def offsets(self) -> torch.Tensor:
        """``b = F(x0)`` of the frozen network (one JVP)."""
        return self.value + self.jvp(self.x0 - self.y)

    # A = -J_F: the sign goes on the small (input-sized) side, which is exact in floating point

    def matvec(self, v: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return -self.jvp(v, rows) if self.forward_mode else self.jvp(-v, rows)

    def rmatvec(self, mu: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        self._charge(rows, backward=1)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self._out, self._yy, mu, retain_graph=True)
        return -grad

    def restrict(self, rows: torch.Tensor) -> "RegionOperator":
        counts, index, owner = self._tally
        return RegionOperator(self.net, self.region.take(rows), self.y[rows], self.x0[rows], self.decision[rows],
                              self.counter, None if self.owner is None else self.owner[rows], self.forward_mode,
                              _tally=(counts, index[rows], owner))
