"""Normalizations with Caffe's arithmetic: LRN (lrn_layer.cpp, across and within channels), BatchNorm
(batch_norm_layer.cpp: stored statistics divided by the scale-factor blob, no affine part) and MVN
(mvn_layer.cpp: eps added to the standard deviation)."""

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
        lrn = WithinChannelLRN(p.local_size, p.alpha, p.beta, ctx.bottom_shapes[0][2:])
        if ctx.dynamic_hw:
            # Stride 1 with pad (size - 1) / 2: every window's divisor is size², at any input size.
            from ninport.torch.layers.pooling import AnySizePool2d

            pad = (p.local_size - 1) // 2
            lrn.pool = AnySizePool2d(AVE, (p.local_size,) * 2, (1, 1), (pad, pad), ceil_mode=True)
        return lrn
    # Across channels: x / (k + alpha / n * sum of x² over n neighbouring channels) ** beta, as PyTorch's.
    return nn.LocalResponseNorm(p.local_size, alpha=p.alpha, beta=p.beta, k=p.k)


class CaffeBatchNorm(nn.Module):
    """Caffe's BatchNorm: (x - mean) / sqrt(variance + eps) over axis 1, with no scale or shift (Caffe pairs
    it with a Scale layer).

    The stored blobs are running sums: Caffe divides mean and variance by the third blob, multiplying by
    1 / factor, and by 0 when the factor is 0 (batch_norm_layer.cpp, Forward_cpu). They are buffers named
    ``mean``, ``variance`` and ``scale_factor``. ``use_global_stats`` is the prototxt's value, or None to
    follow Caffe's default: stored statistics in eval mode (TEST), batch statistics in train mode (TRAIN),
    where the buffers are then updated as Caffe updates its blobs.
    """

    def __init__(self, channels: int, eps: float, use_global_stats: bool | None, moving_average_fraction: float):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.use_global_stats = use_global_stats
        self.moving_average_fraction = moving_average_fraction
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.zeros(channels))
        self.register_buffer("scale_factor", torch.zeros(1))

    def _per_channel(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        # A 1-D bottom has one channel (batch_norm_layer.cpp, LayerSetUp); else channels are axis 1.
        return t if ndim < 2 else t.reshape((1, self.channels) + (1,) * (ndim - 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_global = (not self.training) if self.use_global_stats is None else self.use_global_stats
        if use_global:
            factor = torch.where(self.scale_factor == 0, torch.zeros_like(self.scale_factor), 1 / self.scale_factor)
            mean = self._per_channel(self.mean * factor, x.dim())
            variance = self._per_channel(self.variance * factor, x.dim())
        else:
            dims = [0, *range(2, x.dim())]  # every axis but the channels
            mean = x.mean(dim=dims, keepdim=True)
            variance = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
            if self.training:
                self._update_running(mean, variance, x.numel() // self.channels)
        return (x - mean) / torch.sqrt(variance + self.eps)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, variance: torch.Tensor, m: int) -> None:
        # Caffe keeps running sums, not averages: s = s * f + 1, mean = batch mean + f * mean,
        # variance = m / (m - 1) * batch variance + f * variance (unbiased, m values per channel).
        f = self.moving_average_fraction
        correction = m / (m - 1) if m > 1 else 1.0
        self.scale_factor.mul_(f).add_(1)
        self.mean.mul_(f).add_(mean.detach().reshape(-1))
        self.variance.mul_(f).add_(variance.detach().reshape(-1) * correction)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}, use_global_stats={self.use_global_stats}"


@register_layer("BatchNorm", notes="scale-factor blob (0 gives 0); no affine part (Caffe pairs it with Scale)")
def batch_norm(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.batch_norm_param
    shape = ctx.bottom_shapes[0]
    channels = shape[1] if len(shape) > 1 else 1
    use_global = p.use_global_stats if p.HasField("use_global_stats") else None
    module = CaffeBatchNorm(channels, p.eps, use_global, p.moving_average_fraction)
    module.mean.copy_(ctx.weight(0).reshape(channels))
    module.variance.copy_(ctx.weight(1).reshape(channels))
    module.scale_factor.copy_(ctx.weight(2).reshape(1))
    return module


class MVN(nn.Module):
    """Mean-variance normalization per sample (``across_channels``) or per sample and channel.

    mvn_layer.cpp subtracts the mean, then divides by sqrt(E[(x - mean)²]) + eps: eps is added to the
    standard deviation, not to the variance. Caffe's Reshape gives the top the legacy 4-D shape
    (num, channels, height, width), so a bottom with fewer axes gains trailing axes of size 1.
    """

    def __init__(self, normalize_variance: bool, across_channels: bool, eps: float, top_ndim: int):
        super().__init__()
        self.normalize_variance, self.across_channels, self.eps = normalize_variance, across_channels, eps
        self.top_ndim = top_ndim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while x.dim() < self.top_ndim:
            x = x.unsqueeze(-1)
        dims = list(range(1 if self.across_channels else 2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        x = x - mean
        if self.normalize_variance:
            std = torch.sqrt((x * x).mean(dim=dims, keepdim=True))
            x = x / (std + self.eps)
        return x

    def extra_repr(self) -> str:
        return (f"normalize_variance={self.normalize_variance}, across_channels={self.across_channels}, "
                f"eps={self.eps}")


@register_layer("MVN", notes="at most 4 axes; the top takes Caffe's legacy 4-D shape")
def mvn(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.mvn_param
    return MVN(p.normalize_variance, p.across_channels, p.eps, len(ctx.top_shapes[0]))
