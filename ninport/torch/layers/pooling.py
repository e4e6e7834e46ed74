"""Pooling with Caffe's exact semantics (pooling_layer.cpp).

Caffe rounds the output size up (unless ``round_mode: FLOOR``) and drops a last window that would start in the
right/bottom padding. MAX ignores padded cells. AVE sums the cells inside the image and divides by the window
clipped to the *padded* input: padding counts in the divisor, the overhang past the padding does not.

STOCHASTIC pooling is converted as Caffe runs it at test time (GPU only in Caffe): every window gives the
average of its cells weighted by their own values, sum(x²) / sum(x), or 0 when that sum is not positive.

Where PyTorch's and ONNX's own pooling agree with those rules the module uses them as they are (one pooling
op in the exported graph); otherwise it pads explicitly and, for AVE, rescales by a precomputed divisor map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ninport.caffe import caffe_pb2
from ninport.caffe.shapes import pooling_geometry
from ninport.torch.registry import LayerContext, register_layer

MAX, AVE, STOCHASTIC = (caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE,
                        caffe_pb2.PoolingParameter.STOCHASTIC)


def caffe_avg_divisor(size: int, kernel: int, stride: int, pad: int, out: int) -> list[int]:
    """Caffe's AVE divisor along one axis: each window clipped to [-pad, size + pad)."""
    sizes = []
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        sizes.append(end - start)
    return sizes


class CaffePool2d(nn.Module):
    """2-D MAX or AVE pooling with Caffe's output size, window clipping and divisor."""

    def __init__(self, method: int, kernel, stride, pad, in_hw, out_hw, global_pool: bool = False):
        super().__init__()
        self.method = method
        self.kernel, self.stride, self.pad = tuple(kernel), tuple(stride), tuple(pad)
        self.out_hw = tuple(out_hw)
        self.global_pool = global_pool and method == AVE
        # What a native pooling op would give (PyTorch ceil mode == ONNX ceil mode when there is no padding).
        native = [math.ceil((s + 2 * p - k) / st) + 1 for s, k, st, p in zip(in_hw, kernel, stride, pad)]
        floor = [(s + 2 * p - k) // st + 1 for s, k, st, p in zip(in_hw, kernel, stride, pad)]
        no_pad = not any(pad)
        self.ceil_mode = list(out_hw) != floor
        self.native = no_pad and (list(out_hw) == floor or list(out_hw) == native)
        if method == AVE and self.ceil_mode:
            self.native = False  # a clipped last window: the divisor needs Caffe's rule
        # The explicit path pads left/top by ``pad`` and right/bottom by what the last window needs.
        self.explicit_pad = []
        for s, k, st, p, o in zip(in_hw, kernel, stride, pad, out_hw):
            need = (o - 1) * st + k
            self.explicit_pad.append((p, max(0, need - s - p)))
        if method == AVE and not self.native:
            dh = caffe_avg_divisor(in_hw[0], kernel[0], stride[0], pad[0], out_hw[0])
            dw = caffe_avg_divisor(in_hw[1], kernel[1], stride[1], pad[1], out_hw[1])
            area = kernel[0] * kernel[1]
            # avg_pool over the zero-padded input divides by the full kernel area; rescale to Caffe's divisor.
            ratio = torch.tensor([[area / (h * w) for w in dw] for h in dh], dtype=torch.float32)
            self.register_buffer("divisor_ratio", ratio.view(1, 1, *out_hw), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool:
            return F.adaptive_avg_pool2d(x, 1)
        if self.native:
            if self.method == MAX:
                return F.max_pool2d(x, self.kernel, self.stride, ceil_mode=self.ceil_mode)
            return F.avg_pool2d(x, self.kernel, self.stride)
        (pt, pb), (pl, pr) = self.explicit_pad
        value = float("-inf") if self.method == MAX else 0.0
        x = F.pad(x, (pl, pr, pt, pb), value=value)
        if self.method == MAX:
            y = F.max_pool2d(x, self.kernel, self.stride)
        else:
            y = F.avg_pool2d(x, self.kernel, self.stride) * self.divisor_ratio
        oh, ow = self.out_hw
        if y.shape[-2] != oh or y.shape[-1] != ow:
            y = y[..., :oh, :ow]
        return y


class StochasticPool2d(nn.Module):
    """Caffe's test-time STOCHASTIC pooling (pooling_layer.cu, StoPoolForwardTest; Caffe's CPU path is
    NOT_IMPLEMENTED). Windows start at ``o * stride`` (Caffe allows no padding here) and are clipped to the
    input; each gives sum(x²) / sum(x), the probability-weighted average, or 0 when sum(x) <= 0."""

    def __init__(self, kernel, stride, in_hw, out_hw):
        super().__init__()
        self.kernel, self.stride, self.out_hw = tuple(kernel), tuple(stride), tuple(out_hw)
        # Zero cells past the input add nothing to either sum, so padding right/bottom up to the last window's
        # end reproduces the clipping.
        self.extra = [max(0, (o - 1) * st + k - s) for s, k, st, o in zip(in_hw, kernel, stride, out_hw)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.extra):
            x = F.pad(x, (0, self.extra[1], 0, self.extra[0]))
        # Both averages divide by the same window area, which cancels in the ratio.
        total = F.avg_pool2d(x, self.kernel, self.stride)
        squares = F.avg_pool2d(x * x, self.kernel, self.stride)
        oh, ow = self.out_hw
        if total.shape[-2] != oh or total.shape[-1] != ow:
            total, squares = total[..., :oh, :ow], squares[..., :oh, :ow]
        positive = total > 0
        safe = torch.where(positive, total, torch.ones_like(total))
        return torch.where(positive, squares / safe, torch.zeros_like(total))


class AnySizePool2d(nn.Module):
    """MAX or AVE pooling for any input size (``convert --dynamic-hw``), with one native op.

    PyTorch's ``ceil_mode`` drops a last window that would start in the right/bottom padding, and its AVE
    divisor with ``count_include_pad`` is the window clipped to the padded input: Caffe's two rules
    (pooling_layer.cpp), so the native ops match Caffe at every size; onnxruntime's MaxPool/AveragePool do too
    (both checked against ``CaffePool2d`` at several sizes in tests/test_dynamic_hw.py).
    """

    def __init__(self, method: int, kernel, stride, pad, ceil_mode: bool, global_pool: bool = False):
        super().__init__()
        self.method, self.kernel, self.stride, self.pad = method, tuple(kernel), tuple(stride), tuple(pad)
        self.ceil_mode, self.global_pool = ceil_mode, global_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool:
            if self.method == MAX:
                return torch.amax(x, dim=(2, 3), keepdim=True)
            return torch.mean(x, dim=(2, 3), keepdim=True)
        if self.method == MAX:
            return F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil_mode)
        return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil_mode, count_include_pad=True)


class MaxPoolWithMask(nn.Module):
    """MAX pooling with Caffe's second top, the mask (pooling_layer.cpp, Forward_cpu): for every output, the
    flat index h * W + w in its input plane of the first maximum in row-major window order, as a float.
    PyTorch's indices are the same numbers (the first maximum wins there too); any input size."""

    def __init__(self, kernel, stride, pad, ceil_mode: bool):
        super().__init__()
        self.kernel, self.stride, self.pad, self.ceil_mode = tuple(kernel), tuple(stride), tuple(pad), ceil_mode

    def forward(self, x: torch.Tensor):
        values, indices = F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil_mode,
                                       return_indices=True)
        return values, indices.to(x.dtype)


def _any_size_pooling(ctx: LayerContext, p, kernel, stride, pad) -> nn.Module:
    if p.pool == STOCHASTIC:
        raise ctx.unsupported("STOCHASTIC pooling with --dynamic-hw")
    if any(pd > k // 2 for pd, k in zip(pad, kernel)) and not p.global_pooling:
        raise ctx.unsupported(f"pad {pad} over half the kernel {kernel} with --dynamic-hw")
    ceil = p.round_mode != caffe_pb2.PoolingParameter.FLOOR
    return AnySizePool2d(p.pool, kernel, stride, pad, ceil, global_pool=p.global_pooling)


@register_layer(
    "Pooling",
    notes="MAX, AVE, STOCHASTIC (test-time weighted mean, input >= 0), global, round_mode, _h/_w; 2-D; "
          "MAX's mask top (for SegNet's Upsample)",
)
def pooling(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.pooling_param
    shape = ctx.bottom_shapes[0]
    kernel, stride, pad, out = pooling_geometry(p, ctx.layer, shape)
    if len(ctx.layer.tops) > 1:
        if p.pool != MAX or len(ctx.layer.tops) > 2:
            raise ctx.unsupported("a second top other than MAX pooling's mask")
        if any(pd > k // 2 for pd, k in zip(pad, kernel)) or p.global_pooling:
            raise ctx.unsupported(f"a mask top with pad {pad} over half the kernel {kernel} or global pooling")
        return MaxPoolWithMask(kernel, stride, pad, p.round_mode != caffe_pb2.PoolingParameter.FLOOR)
    if ctx.dynamic_hw:
        return _any_size_pooling(ctx, p, kernel, stride, pad)
    for size, st, pd, o in zip(shape[2:], stride, pad, out):
        if (o - 1) * st - pd >= size:
            raise ctx.unsupported(f"a last pooling window that starts past the input ({size}, stride {st})")
    if p.pool == STOCHASTIC:
        return StochasticPool2d(kernel, stride, shape[2:], out)
    return CaffePool2d(p.pool, kernel, stride, pad, shape[2:], out, global_pool=p.global_pooling)
