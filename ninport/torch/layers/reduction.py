"""ArgMax and Reduction (Caffe's argmax_layer.cpp, reduction_layer.cpp)."""

from __future__ import annotations

import torch
from torch import nn

from ninport.caffe import caffe_pb2
from ninport.torch.registry import LayerContext, register_layer

_OP = caffe_pb2.ReductionParameter


def caffe_top_k(x: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest values along ``dim`` and their indices, in Caffe's order.

    argmax_layer.cpp partially sorts (value, index) pairs with ``std::greater``, so among equal values the
    higher index comes first. Reversing the axis turns that into "lower index first", which ONNX's TopK
    guarantees and a stable descending sort gives; torch's own topk orders ties arbitrarily, so eager mode
    sorts and only the traced graph uses TopK.
    """
    size = x.shape[dim]
    flipped = x.flip(dim)
    if torch.jit.is_tracing():
        values, index = torch.topk(flipped, k, dim=dim, largest=True, sorted=True)
    else:
        values, index = torch.sort(flipped, dim=dim, descending=True, stable=True)
        values, index = values.narrow(dim, 0, k), index.narrow(dim, 0, k)
    return values, (size - 1) - index


class ArgMax(nn.Module):
    """Indices (as floats, like Caffe's blobs) or values of the ``top_k`` largest entries.

    With ``axis`` the layer works along that axis and gives values when ``out_max_val``, else indices. Without
    it, each item's entries are flattened and the top is N × 1 × top_k (indices) or N × 2 × top_k (indices,
    then values), padded with trailing 1s to the bottom's number of axes.
    """

    def __init__(self, top_k: int, axis: int | None, out_max_val: bool, top_axes: int):
        super().__init__()
        self.top_k, self.axis, self.out_max_val, self.top_axes = top_k, axis, out_max_val, top_axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is not None:
            values, index = caffe_top_k(x, self.top_k, self.axis)
            return values if self.out_max_val else index.to(x.dtype)
        values, index = caffe_top_k(x.flatten(1), self.top_k, 1)
        parts = [index.to(x.dtype)] + ([values] if self.out_max_val else [])
        out = torch.stack(parts, dim=1)
        return out.reshape([x.shape[0], len(parts), self.top_k] + [1] * (self.top_axes - 3))


@register_layer("ArgMax", notes="top_k, axis, out_max_val; indices as floats, ties to the higher index as in Caffe")
def argmax(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.argmax_param
    shape = ctx.bottom_shapes[0]
    axis = p.axis % len(shape) if p.HasField("axis") else None
    return ArgMax(int(p.top_k), axis, bool(p.out_max_val), len(ctx.top_shapes[0]))


class Reduction(nn.Module):
    """SUM, ASUM, SUMSQ or MEAN of all axes from ``axis`` on, times ``coeff``; MEAN is the sum times
    coeff / count, as reduction_layer.cpp folds the count into the coefficient."""

    def __init__(self, op: int, axis: int, scale: float):
        super().__init__()
        self.op, self.axis, self.scale = op, axis, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(self.axis)  # axis 0 gives one row, whose sum is the 0-D top Caffe makes
        if self.op == _OP.ASUM:
            flat = flat.abs()
        elif self.op == _OP.SUMSQ:
            flat = flat * flat
        out = flat.sum(dim=-1)
        return out * self.scale if self.scale != 1.0 else out


@register_layer("Reduction", notes="SUM, ASUM, SUMSQ, MEAN; axis, coeff")
def reduction(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.reduction_param
    shape = ctx.bottom_shapes[0]
    axis = p.axis % len(shape) if shape else 0
    if p.operation not in (_OP.SUM, _OP.ASUM, _OP.SUMSQ, _OP.MEAN):
        raise ctx.unsupported(f"reduction operation {p.operation}")
    scale = float(p.coeff)
    if p.operation == _OP.MEAN:
        count = 1
        for d in shape[axis:]:
            count *= d
        scale = float(torch.tensor(p.coeff, dtype=torch.float32) / count)  # Caffe divides in float32
    return Reduction(p.operation, axis, scale)
