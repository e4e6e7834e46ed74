"""Layers that move or route data: Concat, Split, Flatten, Softmax, Dropout."""

from __future__ import annotations

import torch
from torch import nn

from ninport.torch.registry import LayerContext, register_layer


class Concat(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


@register_layer("Concat")
def concat(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") and not p.HasField("axis") else p.axis
    return Concat(axis % len(ctx.bottom_shapes[0]))


class Split(nn.Module):
    """Caffe's Split hands the same data to every top."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count

    def forward(self, x: torch.Tensor):
        return tuple(x for _ in range(self.count))


@register_layer("Split")
def split(ctx: LayerContext) -> nn.Module:
    return Split(len(ctx.layer.tops))


class Flatten(nn.Module):
    def __init__(self, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(self.start, self.end)


@register_layer("Flatten")
def flatten(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.flatten_param
    ndim = len(ctx.bottom_shapes[0])
    return Flatten(p.axis % ndim, p.end_axis % ndim)


@register_layer("Softmax")
def softmax(ctx: LayerContext) -> nn.Module:
    return nn.Softmax(dim=ctx.layer.param.softmax_param.axis % len(ctx.bottom_shapes[0]))


@register_layer("Dropout")
def dropout(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.dropout_param
    # Training scales kept units by 1 / (1 - ratio), as PyTorch does; at inference it is the identity.
    return nn.Dropout(p.dropout_ratio)
