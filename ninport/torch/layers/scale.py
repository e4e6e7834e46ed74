"""Scale and Bias (Caffe's scale_layer.cpp, bias_layer.cpp): a factor or offset shaped like a run of the
bottom's axes starting at ``axis`` (``num_axes`` of them), broadcast over the axes before and after it. The
factor is a learned blob (one bottom) or the second bottom."""

from __future__ import annotations

import torch
from torch import nn

from ninport.torch.registry import LayerContext, register_layer


def _expand(t: torch.Tensor, trailing: int) -> torch.Tensor:
    """``t`` with ``trailing`` axes of size 1 appended, so it lines up with the bottom from Caffe's axis and
    broadcasts over the axes before it (the outer dims) and after it (the inner dims)."""
    return t[(...,) + (None,) * trailing] if trailing else t


class Scale(nn.Module):
    """top = bottom * scale (+ bias): ``weight`` is the learned scale (absent in the two-bottom form),
    ``bias`` the learned bias when ``bias_term`` is set."""

    def __init__(self, scale_shape: tuple[int, ...] | None, bias_shape: tuple[int, ...] | None, trailing: int):
        super().__init__()
        self.trailing = trailing
        self.weight = nn.Parameter(torch.ones(scale_shape)) if scale_shape is not None else None
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if bias_shape is not None else None

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        factor = self.weight if scale is None else scale
        y = x * _expand(factor, self.trailing)
        if self.bias is not None:
            y = y + _expand(self.bias, self.trailing)
        return y

    def extra_repr(self) -> str:
        return f"trailing_axes={self.trailing}"


# Weights are reshaped to the shape Caffe's rule gives, so a scalar factor (num_axes 0) stays 0-D whatever
# form its blob arrived in, and a module rebuilt from a state dict has the same parameter shapes.


def _broadcast_axes(ctx: LayerContext, axis: int, factor_shape: tuple[int, ...]) -> int:
    """How many bottom axes follow the factor's axes; a factor with no axes is a scalar (Caffe then sets
    axis to 0, which changes nothing)."""
    ndim = len(ctx.bottom_shapes[0])
    if not factor_shape:
        return 0
    start = axis % ndim
    return ndim - start - len(factor_shape)


@register_layer("Scale", notes="one or two bottoms; a learned factor spanning axis 0 fixes the batch size")
def scale(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.scale_param
    params = [tuple(s) for s in ctx.shapes.params]
    if len(ctx.layer.bottoms) > 1:
        scale_shape, bias_shape = None, (params[0] if p.bias_term else None)
        factor_shape = tuple(ctx.bottom_shapes[1])
    else:
        scale_shape, bias_shape = params[0], (params[1] if p.bias_term else None)
        factor_shape = scale_shape
    module = Scale(scale_shape, bias_shape, _broadcast_axes(ctx, p.axis, factor_shape))
    index = 0
    if scale_shape is not None:
        module.weight = nn.Parameter(ctx.weight(0).reshape(scale_shape))
        index = 1
    if bias_shape is not None:
        module.bias = nn.Parameter(ctx.weight(index).reshape(bias_shape))
    return module


class Bias(nn.Module):
    """top = bottom + bias: ``bias`` is the learned blob (one bottom) or the second bottom."""

    def __init__(self, bias_shape: tuple[int, ...] | None, trailing: int):
        super().__init__()
        self.trailing = trailing
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if bias_shape is not None else None

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return x + _expand(self.bias if bias is None else bias, self.trailing)

    def extra_repr(self) -> str:
        return f"trailing_axes={self.trailing}"


@register_layer("Bias", notes="one or two bottoms; a learned bias spanning axis 0 fixes the batch size")
def bias(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.bias_param
    if len(ctx.layer.bottoms) > 1:
        return Bias(None, _broadcast_axes(ctx, p.axis, tuple(ctx.bottom_shapes[1])))
    shape = tuple(ctx.shapes.params[0])
    module = Bias(shape, _broadcast_axes(ctx, p.axis, shape))
    module.bias = nn.Parameter(ctx.weight(0).reshape(shape))
    return module
