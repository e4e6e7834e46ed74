"""Small fork layers: ReLU6, ConvolutionDepthwise, DepthwiseConvolution, Axpy and ShuffleChannel, each after
the fork source named in ``ninport.caffe.fork_shapes`` and below. All take any spatial size."""

from __future__ import annotations

import torch
from torch import nn

from ninport.caffe.fork_shapes import FORK_OF, depthwise_geometry, fork_param
from ninport.torch.layers.convolution import convolution
from ninport.torch.registry import LayerContext, register_layer


class ReLU6(nn.Module):
    """min(max(x, 0), 6): OpenCV's importer and the MobileNet-v2 ports' relu6 layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 6.0)


@register_layer("ReLU6", notes=f"min(max(x, 0), 6); fork: {FORK_OF['ReLU6']}")
def relu6(ctx: LayerContext) -> nn.Module:
    return ReLU6()


@register_layer("ConvolutionDepthwise",
                notes=f"one filter per channel, num_output ignored as in conv_dw_layer.cpp; fork: "
                      f"{FORK_OF['ConvolutionDepthwise']}")
def convolution_depthwise(ctx: LayerContext) -> nn.Module:
    kernel, stride, pad, dilation = depthwise_geometry(ctx.layer)
    channels = ctx.bottom_shapes[0][1]
    bias = ctx.layer.param.convolution_param.bias_term
    # conv_dw_layer.cpp's Forward_cpu sums weight[c, kh, kw] * x[c, h_in, w_in] over the window inside the image
    # (zero padding): a convolution with groups = channels and C×1×kh×kw weights.
    module = nn.Conv2d(channels, channels, kernel, stride=stride, padding=pad, dilation=dilation,
                       groups=channels, bias=bias)
    module.weight.data = ctx.weight(0)
    if bias:
        module.bias.data = ctx.weight(1)
    return module


@register_layer("DepthwiseConvolution",
                notes=f"Convolution with the prototxt's group; fork: {FORK_OF['DepthwiseConvolution']}")
def depthwise_convolution(ctx: LayerContext) -> nn.Module:
    return convolution(ctx)


class Axpy(nn.Module):
    """a * x + y with one a per item and channel (SENet ports' axpy_layer.cpp: the SE block's scale-and-add)."""

    def forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale = a.reshape(a.shape[0], a.shape[1], *([1] * (x.dim() - 2)))
        return scale * x + y.reshape(x.shape)


@register_layer("Axpy", notes=f"a (N×C×1×1) * x + y; fork: {FORK_OF['Axpy']}")
def axpy(ctx: LayerContext) -> nn.Module:
    return Axpy()


class ShuffleChannel(nn.Module):
    """Channel c = i * (C / g) + j moves to j * g + i (shuffle_channel_layer.cpp, Resize_cpu): a reshape to
    g × C/g, a transpose, and back."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = x.reshape(shape[0], self.group, shape[1] // self.group, -1).transpose(1, 2)
        return y.reshape(shape)

    def extra_repr(self) -> str:
        return f"group={self.group}"


@register_layer("ShuffleChannel", notes=f"group; fork: {FORK_OF['ShuffleChannel']}")
def shuffle_channel(ctx: LayerContext) -> nn.Module:
    return ShuffleChannel(int(fork_param(ctx.layer, "shuffle_channel_param").group))
