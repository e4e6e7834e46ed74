"""Element-wise activations with Caffe's formulas and parameters: ReLU (``negative_slope``), PReLU, ELU,
Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold, Clip and Swish (``src/caffe/layers/*_layer.cpp``).
Constants Caffe derives in ``LayerSetUp`` are derived here the same way, in float32."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ninport.torch.registry import LayerContext, register_layer


def _f32(value: float) -> float:
    """``value`` rounded to float32, as Caffe holds every layer constant in ``Dtype``."""
    return float(np.float32(value))


@register_layer("ReLU")
def relu(ctx: LayerContext) -> nn.Module:
    slope = ctx.layer.param.relu_param.negative_slope
    # Caffe's ReLU with a slope is a leaky ReLU: max(x, 0) + slope * min(x, 0).
    return nn.LeakyReLU(slope) if slope else nn.ReLU()


@register_layer("PReLU", notes="channel_shared")
def prelu(ctx: LayerContext) -> nn.Module:
    # max(x, 0) + slope[c] * min(x, 0) with c the axis-1 index (prelu_layer.cpp); channel_shared keeps one
    # slope for all channels. nn.PReLU computes exactly that and keeps the slopes as ``weight``.
    shared = ctx.layer.param.prelu_param.channel_shared
    channels = 1 if shared else ctx.bottom_shapes[0][1]
    module = nn.PReLU(num_parameters=channels)
    module.weight = nn.Parameter(ctx.weight(0).reshape(channels))
    return module


@register_layer("ELU")
def elu(ctx: LayerContext) -> nn.Module:
    # elu_layer.cpp: max(x, 0) + alpha * (exp(min(x, 0)) - 1), which is PyTorch's ELU.
    return nn.ELU(alpha=ctx.layer.param.elu_param.alpha)


@register_layer("Sigmoid")
def sigmoid(ctx: LayerContext) -> nn.Module:
    return nn.Sigmoid()


@register_layer("TanH")
def tanh(ctx: LayerContext) -> nn.Module:
    return nn.Tanh()


class AbsVal(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


@register_layer("AbsVal")
def absval(ctx: LayerContext) -> nn.Module:
    return AbsVal()


class BNLL(nn.Module):
    """log(1 + exp(x)), written as Caffe's bnll_layer.cpp writes it so large inputs do not overflow:
    x + log(1 + exp(-x)) for x > 0, log(1 + exp(x)) otherwise; both are relu(x) + log(1 + exp(-|x|))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + torch.log1p(torch.exp(-torch.abs(x)))


@register_layer("BNLL")
def bnll(ctx: LayerContext) -> nn.Module:
    return BNLL()


class Power(nn.Module):
    """(shift + scale * x) ** power, step by step as power_layer.cpp does it (skipping steps that are
    identities); when power * scale is 0 Caffe ignores the input and fills the top with a constant."""

    def __init__(self, power: float, scale: float, shift: float):
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift
        self.constant: float | None = None
        if power * scale == 0:
            with np.errstate(all="ignore"):  # C's pow: 0 ** -1 is inf, (-1) ** 0.5 is nan
                self.constant = 1.0 if power == 0 else float(np.power(np.float32(shift), np.float32(power)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.constant is not None:
            return torch.full_like(x, self.constant)
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        if self.power != 1:
            x = torch.pow(x, self.power)
        return x

    def extra_repr(self) -> str:
        return f"power={self.power}, scale={self.scale}, shift={self.shift}"


@register_layer("Power", notes="power, scale, shift")
def power(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.power_param
    return Power(p.power, p.scale, p.shift)


class Exp(nn.Module):
    """base ** (shift + scale * x) as exp_layer.cpp computes it: exp(inner * x) * outer, with
    inner = ln(base) * scale and outer = base ** shift (base -1 means e)."""

    def __init__(self, inner_scale: float, outer_scale: float):
        super().__init__()
        self.inner_scale, self.outer_scale = inner_scale, outer_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inner_scale != 1:
            x = x * self.inner_scale
        y = torch.exp(x)
        if self.outer_scale != 1:
            y = y * self.outer_scale
        return y

    def extra_repr(self) -> str:
        return f"inner_scale={self.inner_scale}, outer_scale={self.outer_scale}"


def _log_base(ctx: LayerContext, base: float) -> float:
    """ln(base), exactly 1 for Caffe's "base -1 means e" (exp_layer.cpp, log_layer.cpp)."""
    if base == -1:
        return 1.0
    if not base > 0:
        raise ctx.unsupported(f"base {base:g} (Caffe requires base > 0, or -1 for e)")
    return _f32(math.log(_f32(base)))


@register_layer("Exp", notes="base, scale, shift")
def exp(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.exp_param
    inner = _f32(_log_base(ctx, p.base) * _f32(p.scale))
    with np.errstate(all="ignore"):  # an overflow is inf in Caffe too
        if p.shift == 0:
            outer = 1.0
        elif p.base == -1:
            outer = float(np.exp(np.float32(p.shift)))
        else:
            outer = float(np.power(np.float32(p.base), np.float32(p.shift)))
    return Exp(inner, outer)


class Log(nn.Module):
    """log_base(shift + scale * x) as log_layer.cpp computes it: ln(scale * x + shift) * (1 / ln(base))."""

    def __init__(self, scale: float, shift: float, base_scale: float):
        super().__init__()
        self.scale, self.shift, self.base_scale = scale, shift, base_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        y = torch.log(x)
        if self.base_scale != 1:
            y = y * self.base_scale
        return y

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shift={self.shift}, base_scale={self.base_scale}"


@register_layer("Log", notes="base, scale, shift")
def log(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.log_param
    log_base = _log_base(ctx, p.base)
    if log_base == 0:
        raise ctx.unsupported(f"base {p.base:g} (1 / ln(base) is infinite; Caffe rejects it)")
    base_scale = _f32(1.0 / log_base)
    return Log(p.scale, p.shift, base_scale)


class Threshold(nn.Module):
    """1 where x > threshold, else 0 (threshold_layer.cpp; strictly greater)."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


@register_layer("Threshold")
def threshold(ctx: LayerContext) -> nn.Module:
    return Threshold(ctx.layer.param.threshold_param.threshold)


class Clip(nn.Module):
    """max(min, min(x, max)) in that order (clip_layer.cpp), so a min above max gives min everywhere, where
    ``torch.clamp`` would give max."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.clamp(x, max=self.high), min=self.low)

    def extra_repr(self) -> str:
        return f"min={self.low}, max={self.high}"


@register_layer("Clip")
def clip(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.clip_param
    if not p.HasField("min") or not p.HasField("max"):
        raise ctx.unsupported("a clip_param without both min and max (Caffe requires them)")
    return Clip(p.min, p.max)


class Swish(nn.Module):
    """x * sigmoid(beta * x) (swish_layer.cpp)."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x * self.beta if self.beta != 1 else x)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@register_layer("Swish", notes="beta")
def swish(ctx: LayerContext) -> nn.Module:
    return Swish(ctx.layer.param.swish_param.beta)
