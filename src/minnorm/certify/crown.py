"""Back-substitution bounds (CROWN) for chains of conv/linear/ReLU/max-pool layers, and a fast
certified radius on top of them.

``bounds.propagate`` pushes affine forms *forward* from the input: every node carries ``n + 1``
columns (``n`` = 784 on Fashion-MNIST), so one propagation through the shipped CNN costs 784 times
its forward pass. This module goes *backward* instead (CROWN, Zhang et al. 2018, Sec. 3.1-3.2;
the back-substitution of DeepPoly, Singh et al. 2019, Sec. 4):

- a node's pre-activation bound is a linear functional of that node (one row per neuron and
  side) substituted back layer by layer to the input, where it is concretised exactly over the
  lp ball intersected with the box (Hölder: ``core.norms.holder_step_in_box``);
- only neurons that a cheaper bound cannot prove stable get rows: interval arithmetic (IBP)
  from the previous layer's bounds, intersected with bounds from a larger ball when the radius
  search has one (bounds on a ball are valid on every smaller ball). At the certified radius of
  the shipped CNN about 3% of its ReLUs are unstable, so back-substitution touches a few
  thousand rows instead of 784 columns through every layer;
- a row of a convolutional layer only depends on a window of the layer below (its receptive
  field), so rows are stored as windows ``[R, C, K1, K2]`` with per-row offsets (the "patches"
  of auto_LiRPA, Xu et al. 2020, Sec. 3.3) and widened layer by layer by a transposed
  convolution; windows as large as the layer become dense rows.

Back-substitution is at least as tight as the forward form (CROWN picks each neuron's relaxation
per output row after the weights have cancelled; the forward form picks it per path). Bounds in
float32 are not sound by themselves: :func:`certified_radius_fast` searches in float32 and
re-proves its final radius in float64 (the precision every other bound of this package uses).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.norms import dual_exponent, holder_step_in_box
from ..models.architectures import Normalize
from .bounds import Bounds, _windows, concretize, margin_spec, relu_relaxation
from .graph import Graph

__all__ = ["Plan", "backward_bounds", "certified_radius_fast", "make_plan"]

_DIAG = (Normalize, nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.Dropout, nn.Dropout2d)
BOTH_SIDES = True
ROW_BUDGET = 2 ** 23  # elements of the widest row block held at once (about 32 MiB in float32)


@dataclass
class _Step:
    """One op of the chain: ``kind`` in ``input, conv, linear, flatten, diag, relu, maxpool``."""

    kind: str
    module: nn.Module | None
    shape: tuple[int, ...]        # the op's output shape (no batch dimension)
    op: object = None
    scale: torch.Tensor | None = None   # diag: out = scale * in + shift (elementwise)
    shift: torch.Tensor | None = None


@dataclass
class Plan:
    """A graph as a chain of steps in one dtype; ``None`` from :func:`make_plan` where the graph is
    not a chain of supported layers (residual adds, average pooling: ``bounds.propagate`` then)."""

    steps: list[_Step]
    dtype: torch.dtype


def make_plan(graph: Graph, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Plan | None:
    """Classify every op of ``graph`` (built in float64) for back-substitution in ``dtype``."""
    with torch.no_grad():
        vals = graph.forward(torch.zeros(1, *input_shape, dtype=torch.float64))
    steps: list[_Step] = []
    for i, op in enumerate(graph.ops):
        shape = tuple(vals[i].shape[1:])
        if op.kind == "input":
            steps.append(_Step("input", None, shape, op))
            continue
        if op.inputs != [i - 1]:
            return None
        step = _classify(op, shape, tuple(vals[i - 1].shape[1:]), dtype)
        if step is None:
            return None
        steps.append(step)
    return Plan(steps, dtype)


def _classify(op, shape, in_shape, dtype) -> _Step | None:
    m = op.module
    if op.kind == "relu":
        return _Step("relu", m, shape, op)
    if op.kind == "maxpool":
        return _Step("maxpool", m, shape, op) if len(in_shape) == 3 else None
    if op.kind != "affine":
        return None
    if isinstance(m, nn.Conv2d) and not isinstance(m.padding, str) and m.padding_mode == "zeros":
        return _Step("conv", _cast(m, dtype), shape, op)
    if isinstance(m, nn.Linear) and len(in_shape) == 1:
        return _Step("linear", _cast(m, dtype), shape, op)
    if op.extra.get("flatten") or (isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1):
        return _Step("flatten", None, shape, op)
    if isinstance(m, _DIAG) or op.extra.get("elementwise") or (isinstance(m, nn.Sequential) and not len(m)):
        with torch.no_grad():
            zero = torch.zeros(1, *in_shape, dtype=torch.float64)
            shift = op.fn(zero)[0]
            scale = op.fn(torch.ones_like(zero))[0] - shift
        return _Step("diag", None, shape, op, scale.to(dtype), shift.to(dtype))
    return None


def _cast(m: nn.Module, dtype) -> nn.Module:
    import copy
    return copy.deepcopy(m).to(dtype)


# ---------------------------------------------------------------- rows


@dataclass
class _Rows:
    """Linear functionals ``sum a * v + const`` of one node ``v`` of item ``item``: ``a`` is
    ``[R, N]`` for flat nodes, or a window ``[R, C, K1, K2]`` at offsets ``(oh, ow)`` (top-left
    corner in the node; zero outside the node) for spatial ones."""

    item: torch.Tensor
    a: torch.Tensor
    const: torch.Tensor
    oh: torch.Tensor | None = None
    ow: torch.Tensor | None = None

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1).sum(1)


def _take(t: torch.Tensor, rows: _Rows) -> torch.Tensor:
    """Per-item tensor ``t`` ``[B, *shape]`` read at every row's window: ``rows.a``'s shape
    (positions outside the node read the nearest edge; ``rows.a`` is zero there)."""
    if rows.oh is None:
        return t[rows.item]
    h, w = t.shape[-2:]
    k1, k2 = rows.a.shape[-2:]
    if k1 == h and k2 == w:  # windows as large as the node have offset 0
        return t[rows.item]
    # windows at the distinct (item, offset) pairs only (rows of one position share them), read
    # from a strided view of every window, then copied out per row
    key = (rows.item * (h + k1) + rows.oh + k1 - 1) * (w + k2) + rows.ow + k2 - 1
    uniq, inverse = torch.unique(key, return_inverse=True)
    ow_u = uniq % (w + k2)
    oh_u = (uniq // (w + k2)) % (h + k1)
    item_u = uniq // ((w + k2) * (h + k1))
    pad = F.pad(t, (k2 - 1, k2 - 1, k1 - 1, k1 - 1), mode="replicate")
    win = pad.unfold(2, k1, 1).unfold(3, k2, 1)                     # [B, C, H', W', k1, k2] view
    return win[item_u, :, oh_u, ow_u].index_select(0, inverse)


def _crop_dim(a: torch.Tensor, off: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Re-index dimension ``dim`` of windows at offsets ``off`` to the node's ``[0, size)``."""
    pos = torch.arange(size, device=a.device)
    idx = pos[None, :] - off[:, None]                              # [R, size]
    valid = (idx >= 0) & (idx < a.shape[dim])
    shape = [a.shape[0], 1, 1, 1]
    shape[dim] = size
    index = idx.clamp(0, a.shape[dim] - 1).view(shape)
    full = list(a.shape)
    full[dim] = size
    out = a.gather(dim, index.expand(full))
    return out * valid.view(shape).to(a.dtype)


def _fit(a: torch.Tensor, oh: torch.Tensor, ow: torch.Tensor, h: int, w: int):
    """Zero the window outside the node; a window at least as large as the node in a dimension
    becomes the node's full extent there (offset 0)."""
    k1, k2 = a.shape[-2:]
    if k1 >= h:
        a, oh = _crop_dim(a, oh, h, 2), torch.zeros_like(oh)
    else:
        hh = oh[:, None] + torch.arange(k1, device=a.device)
        a = a * ((hh >= 0) & (hh < h)).to(a.dtype)[:, None, :, None]
    if k2 >= w:
        a, ow = _crop_dim(a, ow, w, 3), torch.zeros_like(ow)
    else:
        ww = ow[:, None] + torch.arange(k2, device=a.device)
        a = a * ((ww >= 0) & (ww < w)).to(a.dtype)[:, None, None, :]
    return a, oh, ow


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _back_conv(rows: _Rows, m: nn.Conv2d, in_shape) -> _Rows:
    const = rows.const
    if m.bias is not None:
        const = const + (rows.a.sum((2, 3)) * m.bias).sum(1)
    s, d, p = _pair(m.stride), _pair(m.dilation), _pair(m.padding)
    a = F.conv_transpose2d(rows.a, m.weight, stride=s, dilation=d, groups=m.groups)
    a, oh, ow = _fit(a, rows.oh * s[0] - p[0], rows.ow * s[1] - p[1], in_shape[1], in_shape[2])
    return _Rows(rows.item, a, const, oh, ow)


def _back_relu(rows: _Rows, relax) -> _Rows:
    """Lower-bound rows through ``alpha z <= relu(z) <= s z + t``: positive coefficients take the
    lower line, negative ones the upper (CROWN, Zhang et al. 2018, Theorem 3.2)."""
    alpha, s, t = _take(relax, rows).chunk(3, dim=1)
    pos, neg = _split_signs(rows.a)
    return _Rows(rows.item, pos * alpha + neg * s, rows.const + rows.total(neg * t), rows.oh, rows.ow)


def _split_signs(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max(a, 0), min(a, 0))`` (``maximum`` with a zero scalar: torch 2.13's CPU ``where`` and
    ``clamp`` are about 10x slower on these windows)."""
    pos = torch.maximum(a, a.new_zeros(()))
    return pos, a - pos


def _back_maxpool(rows: _Rows, m: nn.MaxPool2d, info, in_shape) -> _Rows:
    """Through DeepPoly's max-pool bounds: below by the member with the largest lower bound,
    above by that member where it dominates the window, else by the window's largest upper bound."""
    best, exact, umax = _take(info, rows).chunk(3, dim=1)
    pos, neg = _split_signs(rows.a)
    coef = pos + neg * exact
    const = rows.const + rows.total(neg * (1 - exact) * umax)
    k, s, d, p = (_pair(getattr(m, x)) for x in ("kernel_size", "stride", "dilation", "padding"))
    r, c, k1, k2 = coef.shape
    spread = torch.zeros(r, c, k[0] * k[1], k1 * k2, dtype=coef.dtype, device=coef.device)
    spread.scatter_(2, best.long().view(r, c, 1, k1 * k2), coef.view(r, c, 1, k1 * k2))
    size = ((k1 - 1) * s[0] + d[0] * (k[0] - 1) + 1, (k2 - 1) * s[1] + d[1] * (k[1] - 1) + 1)
    a = F.fold(spread.view(r, c * k[0] * k[1], k1 * k2), size, k, dilation=d, stride=s)
    a, oh, ow = _fit(a, rows.oh * s[0] - p[0], rows.ow * s[1] - p[1], in_shape[1], in_shape[2])
    return _Rows(rows.item, a, const, oh, ow)


def _back_step(rows: _Rows, step: _Step, in_shape, relax) -> _Rows:
    if step.kind == "conv":
        return _back_conv(rows, step.module, in_shape)
    if step.kind == "linear":
        const = rows.const + (rows.a @ step.module.bias if step.module.bias is not None else 0)
        return _Rows(rows.item, rows.a @ step.module.weight, const)
    if step.kind == "flatten":
        zero = torch.zeros_like(rows.item)
        if len(in_shape) == 3:
            return _Rows(rows.item, rows.a.reshape(-1, *in_shape), rows.const, zero, zero)
        return _Rows(rows.item, rows.a.reshape(-1, *in_shape), rows.const)
    if step.kind == "diag":
        view = _Rows(torch.zeros_like(rows.item), rows.a, rows.const, rows.oh, rows.ow)
        scale, shift = _take(step.scale[None], view), _take(step.shift[None], view)
        return _Rows(rows.item, rows.a * scale, rows.const + rows.total(rows.a * shift), rows.oh, rows.ow)
    if step.kind == "relu":
        return _back_relu(rows, relax)
    return _back_maxpool(rows, step.module, relax, in_shape)


def _concretize(rows: _Rows, x0: torch.Tensor, radius: torch.Tensor, p: float, box) -> torch.Tensor:
    """``min sum a * x + const`` over ``{||x - x0||_p <= r} ∩ box`` per row (exact: Hölder)."""
    xw = _take(x0, rows)
    base = rows.const + rows.total(rows.a * xw)
    r = radius[rows.item]
    if math.isinf(p) and box is not None:
        dl = torch.maximum(-radius.view(-1, *[1] * (x0.dim() - 1)), box[0] - x0)
        du = torch.minimum(radius.view(-1, *[1] * (x0.dim() - 1)), box[1] - x0)
        pos, neg = _split_signs(rows.a)
        return base + rows.total(pos * _take(dl, rows) + neg * _take(du, rows))
    flat = rows.a.flatten(1)
    if box is None:
        return base - r * torch.linalg.vector_norm(flat, ord=dual_exponent(p), dim=1)
    step = holder_step_in_box(-flat, p, r, xw.flatten(1), box)
    return base + (flat * step).sum(1)


# ---------------------------------------------------------------- bounds


def _substitute(plan: Plan, rows: _Rows, top: int, relax: dict) -> _Rows:
    """Rows of op ``top``'s output, substituted back to the input."""
    for i in range(top, 0, -1):
        rows = _back_step(rows, plan.steps[i], plan.steps[i - 1].shape, relax.get(i))
    return rows


def _chunks(plan: Plan, n: int) -> int:
    widest = max(math.prod(s.shape) for s in plan.steps)
    return max(1, ROW_BUDGET // max(widest, 1)) if n else 1


def _unit_rows(idx: torch.Tensor, shape, sign: torch.Tensor, dtype) -> _Rows:
    """``sign * e_neuron`` rows for the neurons ``idx`` ``[R, 1 + len(shape)]`` (item first)."""
    r = idx.shape[0]
    if len(shape) == 1:
        a = torch.zeros(r, shape[0], dtype=dtype)
        a[torch.arange(r), idx[:, 1]] = sign
        return _Rows(idx[:, 0], a, torch.zeros(r, dtype=dtype))
    a = torch.zeros(r, shape[0], 1, 1, dtype=dtype)
    a[torch.arange(r), idx[:, 1], 0, 0] = sign
    return _Rows(idx[:, 0], a, torch.zeros(r, dtype=dtype), idx[:, 2].clone(), idx[:, 3].clone())


def _tighten(plan, i, lo, up, relax, x0, radius, p, box):
    """Back-substituted bounds of op ``i``'s output neurons, the sides :func:`_needs` asks for:
    rows (``+e`` for a lower bound, ``-e`` for an upper) substituted back to the input and
    concretised exactly there. (Stopping rows early where the interval bounds of a layer on the
    way already decide them gave the same radii on the shipped CNN at 1.3x the time: the
    concretisations cost more than the rows they saved.)"""
    lo, up = lo.clone(), up.clone()
    need_l, need_u = _needs(plan, i, lo, up)
    idx = torch.cat([need_l.nonzero(), need_u.nonzero()])
    sign = torch.cat([torch.ones(int(need_l.sum()), dtype=plan.dtype), -torch.ones(int(need_u.sum()), dtype=plan.dtype)])
    size = _chunks(plan, 1)
    for s in range(0, idx.shape[0], size):
        part, sg = idx[s:s + size], sign[s:s + size]
        rows = _substitute(plan, _unit_rows(part, plan.steps[i].shape, sg, plan.dtype), i, relax)
        _update(lo, up, part, sg, _concretize(rows, x0, radius, p, box))
    return lo, up


def _update(lo, up, idx, sign, value) -> None:
    """Intersect ``[lo, up]`` with ``value`` (lower bounds of ``sign * neuron``) in place."""
    pos = sign > 0
    where = tuple(idx[pos].T)
    lo[where] = torch.maximum(lo[where], value[pos])
    where = tuple(idx[~pos].T)
    up[where] = torch.minimum(up[where], -value[~pos])


def _ibp(step: _Step, lo, up):
    """Interval arithmetic through an affine op (exact on boxes for one layer)."""
    if step.kind == "diag":
        a, b = step.scale * lo + step.shift, step.scale * up + step.shift
        return torch.minimum(a, b), torch.maximum(a, b)
    if step.kind == "flatten":
        return lo.flatten(1), up.flatten(1)
    m = step.module
    mid, rad = (lo + up) / 2, (up - lo) / 2
    if step.kind == "linear":
        c, r = F.linear(mid, m.weight, m.bias), F.linear(rad, m.weight.abs())
    else:
        c, r = m(mid), m._conv_forward(rad, m.weight.abs(), None)
    return c - r, c + r


def _needs(plan, i, lo, up):
    """Which bounds of op ``i``'s neurons matter ``(lower, upper)`` masks: both for unstable
    ReLU inputs; for members of max-pool windows (directly or after a ReLU) that the bounds leave
    undecided, both for the member with the largest lower bound (the relaxation's lower line,
    and the window's largest upper bound) and the upper bound of every other member that could
    be the maximum (whether the window is decided)."""
    nxt = plan.steps[i + 1]
    if nxt.kind == "relu":
        both = (lo < 0) & (up > 0)
        need_l, need_u = both.clone(), both.clone()
        if i + 2 < len(plan.steps) and plan.steps[i + 2].kind == "maxpool":
            a = nxt.op.slope
            best, other = _pool_relevant(plan.steps[i + 2].module, torch.maximum(lo, a * lo), torch.maximum(up, a * up))
            need_l |= (best | (other & BOTH_SIDES)) & (lo < up)
            need_u |= (best | other) & (lo < up)
        return need_l, need_u
    best, other = _pool_relevant(nxt.module, lo, up)
    return (best | (other & BOTH_SIDES)) & (lo < up), (best | other) & (lo < up)


def _pool_relevant(m: nn.MaxPool2d, lo: torch.Tensor, up: torch.Tensor):
    """Masks over the members of undecided windows (another member's upper bound exceeds the
    largest lower bound): the member with the largest lower bound, and the others whose upper
    bound reaches it."""
    lw, uw = _windows(lo, m, -math.inf), _windows(up, m, -math.inf)
    best = lw.argmax(2, keepdim=True)
    lbest = lw.gather(2, best)
    others = uw.scatter(2, best, torch.full_like(lbest, -math.inf)).amax(2, keepdim=True)
    undecided = others > lbest
    is_best = torch.zeros_like(uw, dtype=torch.bool).scatter_(2, best, True)
    flags = [(undecided & is_best), (undecided & ~is_best & (uw >= lbest))]
    k, s, p, d = (_pair(getattr(m, x)) for x in ("kernel_size", "stride", "padding", "dilation"))
    b, c = lo.shape[:2]
    size = (lo.shape[2] + 2 * p[0], lo.shape[3] + 2 * p[1])
    out = []
    for flag in flags:
        hit = F.fold(flag.to(lo.dtype).view(b, c * k[0] * k[1], -1), size, k, dilation=d, stride=s)
        out.append(hit[:, :, p[0]:p[0] + lo.shape[2], p[1]:p[1] + lo.shape[3]] > 0)
    return out[0], out[1]


def _pool_info(m: nn.MaxPool2d, lo: torch.Tensor, up: torch.Tensor):
    """Per window: the member with the largest lower bound (index in the window), whether it
    dominates every other member's upper bound, and the window's largest upper bound."""
    b, c = lo.shape[:2]
    lw, uw = _windows(lo, m, -math.inf), _windows(up, m, -math.inf)
    best = lw.argmax(2, keepdim=True)
    lbest = lw.gather(2, best)
    others = uw.scatter(2, best, torch.full_like(lbest, -math.inf)).amax(2, keepdim=True)
    out = m(lo).shape[2:]
    exact = (lbest >= others).squeeze(2).to(lo.dtype).view(b, c, *out)
    return best.squeeze(2).to(lo.dtype).view(b, c, *out), exact, uw.amax(2).view(b, c, *out)


def backward_bounds(plan: Plan, x0: torch.Tensor, radius: torch.Tensor, p: float, box,
                    spec: torch.Tensor | None = None, prior: dict | None = None,
                    tighten: bool = True) -> tuple[Bounds, dict]:
    """CROWN bounds on ``{||x - x0||_p <= radius} ∩ box`` per item (``x0`` ``[B, ...]``,
    ``radius`` ``[B]``): every ReLU/max-pool input's ``(l, u)`` (keyed by that op's index, as
    :func:`bounds.propagate`), and with ``spec`` ``[B, S, K]`` the lower bounds of
    ``spec @ logits`` and their input-level forms (``Bounds.spec_form``: ``a`` ``[B, n, S]``,
    ``c`` ``[B, S]``). ``prior`` (bounds of a larger ball, as returned in the second value)
    is intersected in, so only neurons it leaves undecided are back-substituted (none with
    ``tighten=False``: interval bounds intersected with ``prior`` only)."""
    dt = plan.dtype
    x0, radius = x0.to(dt), radius.to(dt)
    rv = radius.view(-1, *[1] * (x0.dim() - 1))
    lo, up = x0 - rv, x0 + rv
    if box is not None:
        lo, up = lo.clamp(min=box[0]), up.clamp(max=box[1])
    relax: dict[int, tuple] = {}
    neurons: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    tight: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # of the ReLU/max-pool inputs
    static = True  # affine in the input so far: IBP over the Linf box is exact
    for i, step in enumerate(plan.steps[1:], 1):
        if step.kind in ("relu", "maxpool"):
            neurons[i] = (lo, up)
            if step.kind == "relu":
                relax[i] = torch.cat(relu_relaxation(lo, up, step.op.slope), 1)
                a = step.op.slope
                lo, up = torch.maximum(lo, a * lo), torch.maximum(up, a * up)
            else:
                relax[i] = torch.cat(_pool_info(step.module, lo, up), 1)
                lo, up = step.module(lo), step.module(up)
            static = False
            continue
        lo, up = _ibp(step, lo, up)
        if i + 1 < len(plan.steps) and plan.steps[i + 1].kind in ("relu", "maxpool"):
            if prior is not None and i in prior:
                lo, up = torch.maximum(lo, prior[i][0].to(dt)), torch.minimum(up, prior[i][1].to(dt))
            if tighten and not (static and math.isinf(p)):
                lo, up = _tighten(plan, i, lo, up, relax, x0, radius, p, box)
            tight[i] = (lo, up)
    spec_lower, form = None, None
    if spec is not None:
        spec_lower, form = _spec_bounds(plan, spec.to(dt), relax, x0, radius, p, box)
    return Bounds(neurons, spec_lower, form), tight


def _spec_bounds(plan, spec, relax, x0, radius, p, box):
    b, s, k = spec.shape
    item = torch.arange(b).repeat_interleave(s)
    rows = _substitute(plan, _Rows(item, spec.reshape(b * s, k), torch.zeros(b * s, dtype=plan.dtype)),
                       len(plan.steps) - 1, relax)
    lower = _concretize(rows, x0, radius, p, box).view(b, s)
    a = rows.a if rows.oh is None else _dense(rows, x0.shape[1:])  # dense: re-concretised at other radii
    return lower, (a.reshape(b, s, -1).transpose(1, 2), rows.const.view(b, s))


def _dense(rows: _Rows, shape) -> torch.Tensor:
    """Windows as full ``[R, C, H, W]`` tensors."""
    return _crop_dim(_crop_dim(rows.a, rows.oh, shape[1], 2), rows.ow, shape[2], 3)


# ---------------------------------------------------------------- radius search

SLACK = 1e-4  # float32 bounds are widened by this much (relative, and of the layer's largest bound)


def _proven_radius(form, spec_lower, x0, radius, own, p, box, steps: int) -> torch.Tensor:
    """Largest ``r <= radius`` (bisection, ``steps`` halvings) at which the margin forms, valid on
    the ball of ``radius``, are positive for every other class; 0 if not even at ``r = 0``."""
    a, c = form
    flat = x0.reshape(x0.shape[0], -1).to(a.dtype)

    def ok(r):
        return (concretize(a, c, flat, r.to(a.dtype), p, box).masked_fill(own, math.inf) > 0).all(1)

    whole = (spec_lower.masked_fill(own, math.inf) > 0).all(1)
    lo = torch.where(whole, radius, torch.zeros_like(radius))
    hi = radius.clone()
    if bool(whole.all()):
        return lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        good = ok(mid)
        lo, hi = torch.where(good, mid, lo), torch.where(good, hi, mid)
    return torch.where(whole | ok(torch.zeros_like(radius)), lo, torch.zeros_like(lo))


def _widen(bounds: dict, dtype) -> dict:
    """Float32 bounds made safe for reuse: widened by ``SLACK`` times their magnitude plus
    ``SLACK`` times the layer's largest magnitude (float32's unit roundoff is 6e-8, so this is
    about 1000x the rounding error of the sums that produced them), and cast to ``dtype``."""
    out = {}
    for i, (lo, up) in bounds.items():
        lo, up = lo.to(dtype), up.to(dtype)
        mag = torch.maximum(lo.abs(), up.abs())
        scale = mag.flatten(1).amax(1).view(-1, *[1] * (lo.dim() - 1))
        pad = SLACK * (mag + scale)
        out[i] = (lo - pad, up + pad)
    return out


def _margin(graph: Graph, x0: torch.Tensor, labels: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """``min_j f_y(x0) - f_j(x0)`` per sample (float64): the margin bound at radius 0."""
    logits = graph.forward(x0.double())[-1]
    return (logits.gather(1, labels[:, None]) - logits).masked_fill(own, math.inf).amin(1)


def _predict(m0, pts, lo, hi, failed, tol):
    """Next radius: the root of ``m(R) = m0 - c R^k`` fitted to the margin bounds ``m`` of the
    last two propagations (``k = 2`` from the last one alone when their radii are within 15%),
    aimed ``tol / 2`` low, kept inside ``(lo, hi)`` and below ``2 lo`` until a ball has failed."""
    (r1, m1), (r2, m2) = pts
    d1, d2 = (m0 - m1).clamp_min(1e-30), (m0 - m2).clamp_min(1e-30)
    apart = (r1 > 0) & ((r2 / r1.clamp_min(1e-30) - 1).abs() > 0.15)
    k = torch.where(apart, torch.log(d2 / d1) / torch.log(r2 / r1.clamp_min(1e-30)), torch.full_like(r2, 2.0))
    k = torch.where(torch.isfinite(k), k, torch.full_like(k, 2.0)).clamp(1.0, 4.0)
    root = r2 * (m0 / d2).clamp_min(1e-30) ** (1 / k) * (1 - tol / 2)
    root = torch.where(failed, root, torch.minimum(root, 2 * torch.maximum(lo, r2)))
    low, high = lo * (1 + tol / 2), hi * (1 - tol / 4)
    mid = torch.sqrt(lo.clamp_min(hi * 1e-3) * hi)
    root = torch.where(root <= low, torch.minimum(lo * (1 + tol), mid), root)  # just above the proven radius
    return torch.where(root < high, root, torch.where(low < high, mid, hi))


def certified_radius_fast(graph: Graph, x0: torch.Tensor, labels: torch.Tensor, p: float, box,
                          high: torch.Tensor, rel_tol: float = 0.05, start: float = 1 / 8,
                          max_rounds: int = 6) -> torch.Tensor | None:
    """A certified radius ``<= high`` per sample by :func:`backward_bounds` (``None`` where the
    graph is not a supported chain: use ``bounds.certified_radius`` there).

    A propagation at ``R`` gives the margin lower bound ``m(R)`` (proven when positive) and forms
    valid on every smaller ball (``f(R)``, the largest radius they prove, when ``m(R) < 0``).
    ``m`` falls smoothly and faster than linearly (the relaxations loosen as neurons turn
    unstable), so instead of bisecting, each round fits ``m(R) = m(0) - c R^k`` to the last two
    propagations and aims just below its root (a safeguarded secant step in ``log R``): on the
    shipped CNN 3-4 propagations bracket the radius to ``rel_tol``. The first is at ``start *
    high`` (``high``: an attack's norm, above the true minimum). The bounds of the smallest
    failed ball are reused for smaller ones. The search runs in float32; the best radius is then
    re-proven in float64: its float32 intermediate bounds, widened by :data:`SLACK`, and the
    margins back-substituted in float64."""
    plan = make_plan(graph, tuple(x0.shape[1:]), torch.float32)
    if plan is None:
        return None
    k = graph.forward(x0[:1].double())[-1].shape[1]
    spec, own = margin_spec(labels, k, torch.float64), F.one_hot(labels, k).bool()
    b, high = x0.shape[0], high.double()
    m0 = _margin(graph, x0, labels, own)
    lo, hi = torch.zeros(b, dtype=torch.float64), high.clone()
    src = torch.zeros(b, dtype=torch.float64)  # the ball whose bounds proved lo
    failed = torch.zeros(b, dtype=torch.bool)
    pts = [(torch.zeros(b, dtype=torch.float64), m0.clone()), (torch.zeros(b, dtype=torch.float64), m0.clone())]
    radius = (high * start).clamp_min(1e-12)
    prior: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    proof: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for _ in range(max_rounds):
        act = ((hi > lo * (1 + rel_tol)) & (m0 > 0)).nonzero().flatten()
        if not act.numel():
            break
        r = radius[act]
        res, tight = backward_bounds(plan, x0[act], r.float(), p, box, spec[act].float(),
                                     {i: (v[0][act], v[1][act]) for i, v in prior.items()} or None)
        m = res.spec_lower.double().masked_fill(own[act], math.inf).amin(1)
        f = _proven_radius(res.spec_form, res.spec_lower, x0[act], r.float(), own[act], p, box, 20).double()
        f = torch.where(m > 0, r, torch.minimum(f, r))
        better = f > lo[act]
        lo[act[better]], src[act[better]] = f[better], r[better]
        _remember(proof, tight, act, better, b)
        _remember(prior, tight, act, m <= 0, b)
        hi[act[m <= 0]] = torch.minimum(hi[act[m <= 0]], r[m <= 0])
        pts = [(pts[1][0].clone(), pts[1][1].clone()), (pts[1][0].clone(), pts[1][1].clone())]
        pts[1][0][act], pts[1][1][act] = r, m
        failed[act[m <= 0]] = True
        radius[act] = _predict(m0[act], [(pts[0][0][act], pts[0][1][act]), (r, m)], lo[act], hi[act], failed[act], rel_tol)
    return _verify64(graph, x0, spec, own, p, box, lo, src, proof)


def _remember(store, tight, act, mask, b) -> None:
    """Keep ``tight`` (bounds of the samples ``act``) for the samples where ``mask`` holds."""
    rows = act[mask]
    for i, (l, u) in tight.items():
        if i not in store:
            store[i] = (torch.full((b, *l.shape[1:]), -math.inf, dtype=l.dtype),
                        torch.full((b, *u.shape[1:]), math.inf, dtype=u.dtype))
        store[i][0][rows], store[i][1][rows] = l[mask], u[mask]


def _verify64(graph, x0, spec, own, p, box, radius, src, proof) -> torch.Tensor:
    """The radius float64 proves: on the ball of ``src`` (where the float32 bounds ``proof`` were
    computed), intermediate bounds = float64 interval arithmetic intersected with ``proof``
    widened by :data:`SLACK`; the margins back-substituted in float64 and the largest radius
    ``<= radius`` their forms prove."""
    out = torch.zeros_like(radius)
    idx = (radius > 0).nonzero().flatten()
    if not idx.numel():
        return out
    plan = make_plan(graph, tuple(x0.shape[1:]), torch.float64)
    prior = _widen({i: (v[0][idx], v[1][idx]) for i, v in proof.items()}, torch.float64)
    res, _ = backward_bounds(plan, x0[idx].double(), src[idx], p, box, spec[idx], prior, tighten=False)
    f = _proven_radius(res.spec_form, res.spec_lower, x0[idx].double(), radius[idx], own[idx], p, box, 30)
    out[idx] = torch.minimum(f, radius[idx])
    return out
