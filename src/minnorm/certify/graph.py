"""A piecewise-linear network as a small computation graph the verifiers can walk.

The model is traced with ``torch.fx`` down to its leaf modules, and every node becomes one
:class:`Op`: ``input``, ``affine`` (Linear, Conv, eval BatchNorm, Normalize, pooling by
averages, flatten, identity, eval dropout, adding a constant), ``relu`` (ReLU and LeakyReLU, with
their negative slope), ``maxpool`` (MaxPool2d) or ``add`` (a residual sum of two nodes). These
are the layers ``attacks/_piecewise.py`` supports. Anything else -- a smooth activation such as
SiLU, a layer in train mode, a Python-level operation fx cannot see through -- is refused with a
``ValueError`` naming the layer: a bound for a network we did not fully understand would be wrong.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..models.architectures import Normalize

__all__ = ["Graph", "Op", "build_graph"]

_NONNEG = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AvgPool1d, nn.AvgPool2d,
           nn.AdaptiveAvgPool2d, Normalize)
_SIGNED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
_EVAL_ONLY = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d)
_FLATTENS = (torch.flatten, "flatten")
_ADDS = (operator.add, torch.add, "add")


@dataclass
class Op:
    """One node: ``kind``, the indices of its input ops, and for affine ops the function ``fn``
    (the op itself, applied to a batch) plus, where its linear part ``W`` can have either sign,
    ``lin(t) = W t`` and ``abs(t) = |W| t`` (elementwise absolute weights), so that bounds pass
    through it in centre/radius form (``fn(t) = lin(t) + fn(0)``)."""

    kind: str
    inputs: list[int]
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    lin: Callable[[torch.Tensor], torch.Tensor] | None = None
    abs: Callable[[torch.Tensor], torch.Tensor] | None = None
    slope: float = 0.0
    module: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def linear(self, t: torch.Tensor) -> torch.Tensor:
        """The linear part ``fn(t) - fn(0)`` of an affine op."""
        return self.fn(t) - self.fn(torch.zeros_like(t[:1]))


@dataclass
class Graph:
    """Ops in topological order; ``ops[0]`` is the input and ``ops[-1]`` the logits."""

    ops: list[Op]
    model: nn.Module

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every node's value at ``x`` (used by the tests and to pick relaxations)."""
        vals: list[torch.Tensor] = []
        for op in self.ops:
            if op.kind == "input":
                vals.append(x)
            elif op.kind == "add":
                vals.append(vals[op.inputs[0]] + vals[op.inputs[1]])
            else:
                vals.append(op.fn(vals[op.inputs[0]]))
        return vals


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Normalize) or not list(m.children()) or super().is_leaf_module(m, qualname)


def build_graph(model: nn.Module, dtype: torch.dtype = torch.float64) -> Graph:
    """Trace ``model`` (copied and cast to ``dtype``, so the caller's model is untouched) into a
    :class:`Graph`; ``ValueError`` names the first layer that is not piecewise-linear or not
    supported."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"certification needs an nn.Module, got {type(model).__name__}")
    for name, m in model.named_modules():
        if isinstance(m, _EVAL_ONLY) and m.training:
            raise ValueError(f"layer {name} ({type(m).__name__}) is not affine in train mode; call model.eval() first")
    model = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()  # the solvers work on the CPU
    for t in model.parameters():
        t.requires_grad_(False)
    try:
        traced = _Tracer().trace(model)
    except Exception as err:  # noqa: BLE001 (fx raises many kinds of errors on untraceable code)
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx ({err}); certification needs a "
                         "graph of supported layers") from None
    modules = dict(model.named_modules())
    ops: list[Op] = []
    index: dict[str, int] = {}
    for node in traced.nodes:
        if node.op == "output":
            arg = node.args[0]
            if not isinstance(arg, fx.Node) or index[arg.name] != len(ops) - 1:
                raise ValueError("the model must return one logits tensor computed last")
            continue
        op = _make_op(node, modules, index)
        index[node.name] = len(ops)
        ops.append(op)
    if sum(op.kind == "input" for op in ops) != 1:
        raise ValueError("the model must take exactly one input tensor")
    return Graph(ops, model)


def _node_inputs(node: fx.Node, index: dict[str, int]) -> list[int]:
    return [index[a.name] for a in node.args if isinstance(a, fx.Node)]


def _make_op(node: fx.Node, modules: dict[str, nn.Module], index: dict[str, int]) -> Op:
    if node.op == "placeholder":
        return Op("input", [], node.name)
    inputs = _node_inputs(node, index)
    if node.op == "call_module":
        return _module_op(node.target, modules[node.target], inputs)
    target = node.target if node.op == "call_function" else str(node.target)
    label = getattr(target, "__name__", str(target))
    if node.op in ("call_function", "call_method") and target in _ADDS and len(node.args) == 2 and not node.kwargs:
        if len(inputs) == 2:
            return Op("add", inputs, node.name)
        const = next(a for a in node.args if not isinstance(a, fx.Node))
        if isinstance(const, (int, float)):
            return Op("affine", inputs, node.name, fn=lambda t, c=const: t + c, extra={"elementwise": True})
    if node.op in ("call_function", "call_method") and target in _FLATTENS and len(inputs) == 1:
        args = tuple(node.args[1:])
        start = args[0] if args else node.kwargs.get("start_dim", 0)
        if start == 1 and len(args) <= 1:
            return Op("affine", inputs, node.name, fn=lambda t: torch.flatten(t, 1), extra={"flatten": True})
    if node.op == "call_function" and target in (F.relu, torch.relu) and len(inputs) == 1:
        return Op("relu", inputs, node.name, fn=torch.relu, slope=0.0)
    raise ValueError(f"operation {node.name} ({label}) is not supported by certification; supported: Linear, "
                     "Conv1d/2d, eval BatchNorm, Normalize, Flatten, AvgPool, ReLU, LeakyReLU, MaxPool2d, "
                     "residual adds")


def _module_op(name: str, m: nn.Module, inputs: list[int]) -> Op:
    label = f"layer {name} ({type(m).__name__})"
    if len(inputs) != 1:
        raise ValueError(f"{label} must take exactly one tensor input")
    if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
        slope = float(m.negative_slope) if isinstance(m, nn.LeakyReLU) else 0.0
        if not 0 <= slope <= 1:
            raise ValueError(f"{label}: negative_slope must be in [0, 1] for the relaxations, got {slope}")
        return Op("relu", inputs, name, fn=m, slope=slope, module=m)
    if isinstance(m, nn.MaxPool2d):
        if m.ceil_mode or m.return_indices:
            raise ValueError(f"{label}: ceil_mode/return_indices are not supported")
        return Op("maxpool", inputs, name, fn=m, module=m)
    if isinstance(m, nn.Sequential) and not len(m):
        return Op("affine", inputs, name, fn=lambda t: t, module=m)
    if isinstance(m, _NONNEG):
        return Op("affine", inputs, name, fn=m, module=m)
    if isinstance(m, _SIGNED):
        lin, absolute = _signed_parts(m)
        return Op("affine", inputs, name, fn=m, lin=lin, abs=absolute, module=m)
    raise ValueError(f"{label} is not piecewise-linear or not supported by certification; supported: Linear, "
                     "Conv1d/2d, eval BatchNorm, Normalize, Flatten, AvgPool, ReLU, LeakyReLU, MaxPool2d, "
                     "residual adds")


def _signed_parts(m: nn.Module):
    """The linear map ``W t`` of a Linear/Conv/BatchNorm layer and ``|W| t``."""
    if isinstance(m, nn.Linear):
        w = m.weight.detach()
        return (lambda t: F.linear(t, w)), (lambda t: F.linear(t, w.abs()))
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        w = m.weight.detach()
        return (lambda t: m._conv_forward(t, w, None)), (lambda t: m._conv_forward(t, w.abs(), None))
    scale = 1 / torch.sqrt(m.running_var.detach() + m.eps)
    if m.weight is not None:
        scale = scale * m.weight.detach()

    def part(s):
        return lambda t: t * s.view(1, -1, *([1] * (t.dim() - 2)))
    return part(scale), part(scale.abs())
