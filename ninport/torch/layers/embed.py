"""Embed (Caffe's embed_layer.cpp): a lookup table indexed by the bottom's values, plus an optional bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ninport.torch.registry import LayerContext, register_layer


class Embed(nn.Module):
    """Row ``int(x)`` of the K × N table for every bottom value, with the bias added; the top is the bottom's
    shape plus N.

    Caffe casts each value with ``static_cast<int>`` (truncation toward zero), as torch's and ONNX's casts
    do. An index outside [0, K) is undefined behaviour in Caffe (only debug builds check it); here it is
    clamped to the table, so a random export input cannot fail.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.rows = int(weight.shape[0])
        self.bias = nn.Parameter(bias) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = x.to(torch.int64).clamp(0, self.rows - 1)
        out = F.embedding(index, self.weight)
        return out + self.bias if self.bias is not None else out


@register_layer(
    "Embed",
    notes="input_dim, num_output, bias_term; values cut to int, outside [0, input_dim) clamped (undefined in Caffe)",
)
def embed(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.embed_param
    return Embed(ctx.weight(0), ctx.weight(1) if p.bias_term else None)
