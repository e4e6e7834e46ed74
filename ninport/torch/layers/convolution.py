"""Convolution (Caffe's convolution_layer.cpp), N-D with groups, dilation and per-axis pad/stride."""

from __future__ import annotations

from torch import nn

from ninport.caffe.shapes import conv_geometry
from ninport.torch.registry import LayerContext, register_layer

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@register_layer("Convolution")
def convolution(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.convolution_param
    shape = ctx.bottom_shapes[0]
    if p.axis not in (1, 1 - len(shape)):
        raise ctx.unsupported(f"axis {p.axis} (channels must be axis 1)")
    if len(ctx.layer.bottoms) != 1:
        raise ctx.unsupported(f"{len(ctx.layer.bottoms)} bottoms sharing one set of filters")
    n = len(shape) - 2
    if n not in _CONV:
        raise ctx.unsupported(f"{n}-D spatial input")
    kernel, stride, pad, dilation = conv_geometry(p, ctx.layer, n)
    conv = _CONV[n](shape[1], p.num_output, kernel, stride=stride, padding=pad, dilation=dilation,
                    groups=p.group or 1, bias=p.bias_term)
    conv.weight.data = ctx.weight(0)
    if p.bias_term:
        conv.bias.data = ctx.weight(1)
    return conv
