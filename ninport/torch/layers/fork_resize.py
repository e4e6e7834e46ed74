"""Resizing layers of the forks: Interp (hszhao/PSPNet, DeepLab), bilinear with aligned corners after an
optional crop, and Upsample (SegNet/ENet unpooling by the pooling mask, YOLO ports' nearest). Output sizes are
computed at run time, so they take any input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ninport.caffe.fork_shapes import FORK_OF, fork_param, upsample_kind
from ninport.torch.registry import LayerContext, register_layer


class Interp(nn.Module):
    """hszhao/PSPNet src/caffe/util/interp.cpp, caffe_cpu_interp2: output pixel h2 reads the cropped input at
    h1r = h2 * (h1 - 1) / (h2_size - 1) (0 for a 1-pixel output), bilinear between floor(h1r) and the next row
    (the last row repeats): PyTorch's bilinear with align_corners=True, ONNX Resize "align_corners"."""

    def __init__(self, crop_beg: int, crop_end: int, mode: str, shrink: int, zoom: int, size: tuple[int, int]):
        super().__init__()
        self.crop_beg, self.crop_end = crop_beg, crop_end
        self.mode, self.shrink, self.zoom, self.size = mode, shrink, zoom, size

    def _out(self, n: int) -> int:
        if self.mode in ("shrink", "both"):
            n = (n - 1) // self.shrink + 1
        if self.mode in ("zoom", "both"):
            n = n + (n - 1) * (self.zoom - 1)
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop_beg or self.crop_end:
            x = x[:, :, self.crop_beg : x.shape[2] - self.crop_end, self.crop_beg : x.shape[3] - self.crop_end]
        if self.mode == "size":
            size = self.size
        else:
            size = (self._out(x.shape[2]), self._out(x.shape[3]))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, crop=({self.crop_beg}, {self.crop_end}), size={self.size}"


@register_layer("Interp", notes=f"zoom_factor, shrink_factor, height/width, pad_beg/pad_end (crop only), V1 INTERP; "
                                f"fork: {FORK_OF['Interp']}")
def interp(ctx: LayerContext) -> nn.Module:
    p = fork_param(ctx.layer, "interp_param")
    shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
    mode = ("shrink" if shrink and not zoom else "zoom" if zoom and not shrink
            else "size" if p.HasField("height") and p.HasField("width") else "both")
    if not ctx.dynamic_hw:
        mode = "size"  # sizes known: constants keep the exported graph's shapes static
    return Interp(-p.pad_beg, -p.pad_end, mode, p.shrink_factor, p.zoom_factor, tuple(ctx.top_shapes[0][2:]))


class Unpool(nn.Module):
    """SegNet/ENet's Upsample (alexgkendall/caffe-segnet upsample_layer.cpp): a zero top of the output size,
    each bottom value written at the flat index (h * W_out + w) its pooling mask gives, plane by plane."""

    def __init__(self, scale: tuple[int, int], pad_out: tuple[int, int], size: tuple[int, int] | None):
        super().__init__()
        self.scale, self.pad_out, self.size = scale, pad_out, size

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.size is not None:
            h, w = self.size
        else:
            h = x.shape[2] * self.scale[0] - self.pad_out[0]
            w = x.shape[3] * self.scale[1] - self.pad_out[1]
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        index = mask.reshape(x.shape[0], x.shape[1], -1).to(torch.int64)
        top = torch.zeros(x.shape[0], x.shape[1], h * w, dtype=x.dtype)
        return top.scatter(2, index, flat).reshape(x.shape[0], x.shape[1], h, w)


class NearestUpsample(nn.Module):
    """YOLO ports' Upsample: top[h][w] = bottom[h / scale][w / scale]."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=float(self.scale), mode="nearest")


@register_layer("Upsample", notes=f"with the pooling mask as second bottom (upsample_h/_w, scale, scale_h/_w, "
                                  f"pad_out_h/_w), or nearest by scale; fork: {FORK_OF['Upsample']}")
def upsample(ctx: LayerContext) -> nn.Module:
    p = fork_param(ctx.layer, "upsample_param")
    if upsample_kind(ctx.layer, len(ctx.layer.bottoms)) == "nearest":
        return NearestUpsample(p.scale if p.HasField("scale") else 1)
    if (p.HasField("upsample_h") and p.HasField("upsample_w")) or not ctx.dynamic_hw:
        # A size known in advance is a constant, so the exported graph's shapes stay static (the batch aside).
        return Unpool((0, 0), (0, 0), tuple(ctx.top_shapes[0][2:]))
    scale = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
    return Unpool(scale, (int(p.pad_out_h), int(p.pad_out_w)), None)
