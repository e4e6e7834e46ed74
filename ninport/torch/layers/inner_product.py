"""InnerProduct (Caffe's inner_product_layer.cpp): flatten from ``axis``, then a linear map."""

from __future__ import annotations

import torch
from torch import nn

from ninport.torch.registry import LayerContext, register_layer


class InnerProduct(nn.Linear):
    """A linear layer over everything from ``axis`` on, as Caffe flattens it (C-order)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, axis: int):
        super().__init__(in_features, out_features, bias=bias)
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.axis + 1:
            x = x.flatten(self.axis)
        return super().forward(x)


@register_layer("InnerProduct", notes="axis, transpose, bias_term")
def inner_product(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.inner_product_param
    shape = ctx.bottom_shapes[0]
    axis = p.axis % len(shape)
    in_features = 1
    for d in shape[axis:]:
        in_features *= d
    module = InnerProduct(in_features, p.num_output, p.bias_term, axis)
    weight = ctx.weight(0)
    # transpose: true stores the weight as K×N instead of N×K.
    module.weight.data = weight.t().contiguous() if p.transpose else weight
    if p.bias_term:
        module.bias.data = ctx.weight(1)
    return module
