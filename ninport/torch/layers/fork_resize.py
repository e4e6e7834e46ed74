"""Resizing layers of the segmentation forks: Interp (hszhao/PSPNet, DeepLab), bilinear with aligned corners
after an optional crop; its output size is computed at run time, so it takes any input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ninport.caffe.fork_shapes import FORK_OF, fork_param
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
    return Interp(-p.pad_beg, -p.pad_end, mode, p.shrink_factor, p.zoom_factor, tuple(ctx.top_shapes[0][2:]))
