"""LRN (Caffe's lrn_layer.cpp), across channels and within a channel."""

from __future__ import annotations

import torch
from torch import nn

from ninport.caffe import caffe_pb2
from ninport.torch.layers.pooling import AVE, CaffePool2d
from ninport.torch.registry import LayerContext, register_layer


class WithinChannelLRN(nn.Module):
    """x / (1 + alpha * mean of x² over a local_size² window) ** beta; Caffe builds it from an AVE pooling
    of x² with pad (local_size - 1) / 2, so its divisor follows Caffe's pooling rule. ``k`` is not used."""

    def __init__(self, size: int, alpha: float, beta: float, in_hw):
        super().__init__()
        pad = (size - 1) // 2
        out_hw = [s + 2 * pad - size + 1 for s in in_hw]
        self.pool = CaffePool2d(AVE, (size, size), (1, 1), (pad, pad), in_hw, out_hw)
        self.alpha, self.beta = alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 + self.alpha * self.pool(x * x)) ** (-self.beta)


@register_layer("LRN")
def lrn(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.lrn_param
    if p.local_size % 2 == 0:
        raise ctx.unsupported(f"an even local_size ({p.local_size}); Caffe requires it odd")
    if p.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL:
        return WithinChannelLRN(p.local_size, p.alpha, p.beta, ctx.bottom_shapes[0][2:])
    # Across channels: x / (k + alpha / n * sum of x² over n neighbouring channels) ** beta, as PyTorch's.
    return nn.LocalResponseNorm(p.local_size, alpha=p.alpha, beta=p.beta, k=p.k)
