"""Eltwise (Caffe's eltwise_layer.cpp): the element-wise PROD, SUM with per-bottom coefficients, or MAX of
two or more bottoms of one shape, combined left to right in Caffe's order."""

from __future__ import annotations

import torch
from torch import nn

from ninport.caffe import caffe_pb2
from ninport.torch.registry import LayerContext, register_layer

_OPS = {
    caffe_pb2.EltwiseParameter.PROD: "PROD",
    caffe_pb2.EltwiseParameter.SUM: "SUM",
    caffe_pb2.EltwiseParameter.MAX: "MAX",
}


class Eltwise(nn.Module):
    def __init__(self, operation: str, coeffs: list[float]):
        super().__init__()
        self.operation = operation
        self.coeffs = coeffs

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.operation == "PROD":
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y
        if self.operation == "MAX":
            y = xs[0]
            for x in xs[1:]:
                y = torch.maximum(y, x)
            return y
        # SUM: Caffe zeroes the top, then adds coeff * bottom for each bottom in turn (caffe_axpy).
        y = None
        for x, c in zip(xs, self.coeffs):
            term = x if c == 1 else x * c
            y = term if y is None else y + term
        return y

    def extra_repr(self) -> str:
        return self.operation + (f", coeff={self.coeffs}" if self.operation == "SUM" else "")


@register_layer("Eltwise", notes="PROD, SUM with coeff, MAX")
def eltwise(ctx: LayerContext) -> nn.Module:
    # The shape rule (ninport/caffe/shapes.py) has already checked the bottom count and the coefficients.
    p = ctx.layer.param.eltwise_param
    coeffs = [float(c) for c in p.coeff] if p.coeff else [1.0] * len(ctx.layer.bottoms)
    return Eltwise(_OPS[p.operation], coeffs)
