"""The BN layers of three forks, which give the same type name and field 3 different meanings (the dialect is
told per layer by ``ninport.caffe.fork_shapes.bn_dialect``):

- SegNet (alexgkendall/caffe-segnet) and ENet (TimoSaemann/caffe-enet) bn_layer.cpp: blobs scale and shift.
  ``bn_mode: INFERENCE`` computes scale * x + shift (statistics already folded in); the default LEARN
  normalizes by the statistics of the batch itself, over N, H and W, at TEST too: (x - E[x]) / sqrt(E[x²] -
  E[x]² + 1e-9) * scale + shift.
- PSPNet (hszhao/PSPNet, after yjxiong/caffe) bn_layer.cpp: blobs slope, bias, mean, variance. At TEST (or when
  frozen) (x - mean) * (variance + eps)^-1/2 * slope + bias.
"""

from __future__ import annotations

import torch
from torch import nn

from ninport.caffe.fork_shapes import FORK_OF, bn_dialect
from ninport.torch.registry import LayerContext, register_layer


class AffineBN(nn.Module):
    """scale * x + shift per channel (SegNet/ENet, bn_mode INFERENCE)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.reshape(1, -1, 1, 1))
        self.register_buffer("shift", shift.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class BatchStatisticsBN(AffineBN):
    """SegNet/ENet's LEARN mode: the batch's own mean and variance (E[x²] - E[x]², over N, H, W), eps 1e-9."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        variance = (x * x).mean(dim=(0, 2, 3), keepdim=True) - mean * mean
        return (x - mean) / torch.sqrt(variance + 1e-9) * self.scale + self.shift


class StoredStatisticsBN(nn.Module):
    """PSPNet's BN at TEST: (x - mean) * (variance + eps)^-1/2 * slope + bias."""

    def __init__(self, slope: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor,
                 eps: float):
        super().__init__()
        for name, value in (("slope", slope), ("bias", bias), ("mean", mean), ("variance", variance)):
            self.register_buffer(name, value.reshape(1, -1, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * torch.rsqrt(self.variance + self.eps) * self.slope + self.bias

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


@register_layer("BN", notes=f"SegNet/ENet (bn_mode LEARN: batch statistics; INFERENCE) and PSPNet (eps) "
                            f"dialects, told by the fields; fork: {FORK_OF['BN']}")
def bn(ctx: LayerContext) -> nn.Module:
    if len(ctx.layer.tops) > 1:
        raise ctx.unsupported("the batch mean and variance tops")
    p = ctx.layer.param.bn_param
    if bn_dialect(ctx.layer) == "pspnet":
        return StoredStatisticsBN(ctx.weight(0), ctx.weight(1), ctx.weight(2), ctx.weight(3), float(p.eps))
    if p.bn_mode == p.INFERENCE:
        return AffineBN(ctx.weight(0), ctx.weight(1))
    return BatchStatisticsBN(ctx.weight(0), ctx.weight(1))
