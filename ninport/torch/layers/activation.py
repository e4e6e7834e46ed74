"""Element-wise activations: ReLU (with Caffe's ``negative_slope``)."""

from __future__ import annotations

from torch import nn

from ninport.torch.registry import LayerContext, register_layer


@register_layer("ReLU")
def relu(ctx: LayerContext) -> nn.Module:
    slope = ctx.layer.param.relu_param.negative_slope
    # Caffe's ReLU with a slope is a leaky ReLU: max(x, 0) + slope * min(x, 0).
    return nn.LeakyReLU(slope) if slope else nn.ReLU()
