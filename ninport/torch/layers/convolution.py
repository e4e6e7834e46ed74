"""Convolution and Deconvolution (Caffe's convolution_layer.cpp, deconv_layer.cpp): N-D with groups, dilation,
per-axis pad/stride, and several bottoms run through the same filters (one top each)."""

from __future__ import annotations

import torch
from torch import nn

from ninport.caffe.shapes import conv_geometry
from ninport.torch.registry import LayerContext, register_layer


class _SharedFilters:
    """Caffe runs every bottom of a (de)convolution through the same filters and gives one top per bottom;
    mixed into the torch class so the state dict keeps torch's plain ``weight``/``bias`` names."""

    def forward(self, *xs: torch.Tensor):
        forward = super().forward
        outs = tuple(forward(x) for x in xs)
        return outs[0] if len(outs) == 1 else outs


class Conv1d(_SharedFilters, nn.Conv1d):
    pass


class Conv2d(_SharedFilters, nn.Conv2d):
    pass


class Conv3d(_SharedFilters, nn.Conv3d):
    pass


class ConvTranspose1d(_SharedFilters, nn.ConvTranspose1d):
    pass


class ConvTranspose2d(_SharedFilters, nn.ConvTranspose2d):
    pass


class ConvTranspose3d(_SharedFilters, nn.ConvTranspose3d):
    pass


_CONV = {1: Conv1d, 2: Conv2d, 3: Conv3d}
_DECONV = {1: ConvTranspose1d, 2: ConvTranspose2d, 3: ConvTranspose3d}


def _build(ctx: LayerContext, classes: dict) -> nn.Module:
    p = ctx.layer.param.convolution_param
    shape = ctx.bottom_shapes[0]
    if p.axis not in (1, 1 - len(shape)):
        raise ctx.unsupported(f"axis {p.axis} (channels must be axis 1)")
    if any(s != shape for s in ctx.bottom_shapes[1:]):
        raise ctx.unsupported(f"bottoms of different shapes {[list(s) for s in ctx.bottom_shapes]}")
    n = len(shape) - 2
    if n not in classes:
        raise ctx.unsupported(f"{n}-D spatial input")
    kernel, stride, pad, dilation = conv_geometry(p, ctx.layer, n)
    group = p.group or 1
    module = classes[n](shape[1], p.num_output, kernel, stride=stride, padding=pad, dilation=dilation,
                        groups=group, bias=p.bias_term)
    # Caffe's Deconvolution weight is C_in × C_out/group × k..., which is exactly ConvTranspose's layout, and
    # its output size s*(i-1) + d*(k-1) + 1 - 2p is ConvTranspose's with output_padding 0.
    module.weight.data = ctx.weight(0)
    if p.bias_term:
        module.bias.data = ctx.weight(1)
    return module


@register_layer(
    "Convolution",
    notes="group, dilation, pad/kernel/stride _h/_w, bias_term; 1-3 spatial axes; several bottoms share the filters",
)
def convolution(ctx: LayerContext) -> nn.Module:
    return _build(ctx, _CONV)


@register_layer(
    "Deconvolution",
    notes="group, dilation, pad/kernel/stride _h/_w, bias_term; 1-3 spatial axes; several bottoms share the filters",
)
def deconvolution(ctx: LayerContext) -> nn.Module:
    return _build(ctx, _DECONV)
