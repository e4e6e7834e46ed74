"""Region pooling of the R-CNN forks: ROIPooling (rbgirshick/caffe-fast-rcnn roi_pooling_layer.cpp) and
PSROIPooling (daijifeng001/caffe-rfcn psroi_pooling_layer.cpp). ROIs are rows [batch index, x1, y1, x2, y2] in
image coordinates; both take any number of ROIs and any feature-map size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ninport.caffe.fork_shapes import FORK_OF, fork_param
from ninport.torch.registry import LayerContext, register_layer


def _c_round(value: float) -> int:
    """C's round(): halves away from zero (exact for float32 inputs, computed in double)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def roi_pool_reference(x: torch.Tensor, rois: torch.Tensor, pooled: tuple[int, int], scale: float) -> torch.Tensor:
    """ROIPooling as roi_pooling_layer.cpp's Forward_cpu computes it, ROI by ROI, the bin arithmetic in float32:
    ends rounded from x * spatial_scale, ROI size max(end - start + 1, 1), bin [floor(i * size / pooled),
    ceil((i + 1) * size / pooled)) shifted by the start and clipped to the map; an empty bin gives 0."""
    ph_n, pw_n = pooled
    height, width = x.shape[2], x.shape[3]
    f32 = np.float32
    out = x.new_zeros((rois.shape[0], x.shape[1], ph_n, pw_n))
    for n, roi in enumerate(rois.reshape(rois.shape[0], 5).tolist()):
        # Caffe aborts on a batch index outside the batch; here it is clamped (as in the exported graph).
        batch = min(max(int(roi[0]), 0), x.shape[0] - 1)
        x1, y1, x2, y2 = (_c_round(float(f32(v) * f32(scale))) for v in roi[1:])
        bin_h = f32(max(y2 - y1 + 1, 1)) / f32(ph_n)
        bin_w = f32(max(x2 - x1 + 1, 1)) / f32(pw_n)
        for ph in range(ph_n):
            hs = min(max(int(math.floor(f32(ph) * bin_h)) + y1, 0), height)
            he = min(max(int(math.ceil(f32(ph + 1) * bin_h)) + y1, 0), height)
            for pw in range(pw_n):
                ws = min(max(int(math.floor(f32(pw) * bin_w)) + x1, 0), width)
                we = min(max(int(math.ceil(f32(pw + 1) * bin_w)) + x1, 0), width)
                if he > hs and we > ws:
                    out[n, :, ph, pw] = x[batch, :, hs:he, ws:we].amax(dim=(1, 2))
    return out


class _RoiPoolFunction(torch.autograd.Function):
    """Eager: ``roi_pool_reference``. Exported: ONNX MaxRoiPool, which computes the same bins; onnxruntime's
    kernel starts each bin's maximum at the smallest positive float instead of -FLT_MAX, so the feature map is
    shifted to values >= 1 around it (x - min + 1) and shifted back, and an empty bin (0 there) gives 0."""

    @staticmethod
    def forward(ctx, x, rois, pooled_h: int, pooled_w: int, scale: float):  # noqa: ANN001
        return roi_pool_reference(x, rois, (pooled_h, pooled_w), scale)

    @staticmethod
    def symbolic(g, x, rois, pooled_h: int, pooled_w: int, scale: float):  # noqa: ANN001
        shape5 = g.op("Constant", value_t=torch.tensor([-1, 5], dtype=torch.int64))
        rois2 = g.op("Reshape", rois, shape5)
        # The batch index column, truncated and clamped to [0, N - 1] (onnxruntime refuses others; Caffe aborts).
        split = g.op("Constant", value_t=torch.tensor([1, 4], dtype=torch.int64))
        index, coords = g.op("Split", rois2, split, axis_i=1, outputs=2)
        last = g.op("Sub", g.op("Cast", g.op("Gather", g.op("Shape", x), g.op("Constant", value_t=torch.tensor(0)),
                                             axis_i=0), to_i=1), g.op("Constant", value_t=torch.tensor(1.0)))
        index = g.op("Min", g.op("Max", g.op("Floor", index), g.op("Constant", value_t=torch.tensor(0.0))), last)
        rois2 = g.op("Concat", index, coords, axis_i=1)
        low = g.op("ReduceMin", x, keepdims_i=0)
        one = g.op("Constant", value_t=torch.tensor(1.0))
        shifted = g.op("Add", g.op("Sub", x, low), one)
        pooled = g.op("MaxRoiPool", shifted, rois2, pooled_shape_i=[pooled_h, pooled_w], spatial_scale_f=scale)
        back = g.op("Sub", g.op("Add", pooled, low), one)
        zero = g.op("Constant", value_t=torch.tensor(0.0))
        return g.op("Where", g.op("Equal", pooled, zero), zero, back)


class ROIPooling(nn.Module):
    def __init__(self, pooled_h: int, pooled_w: int, spatial_scale: float):
        super().__init__()
        self.pooled_h, self.pooled_w, self.spatial_scale = pooled_h, pooled_w, spatial_scale

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return _RoiPoolFunction.apply(x, rois, self.pooled_h, self.pooled_w, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"pooled=({self.pooled_h}, {self.pooled_w}), spatial_scale={self.spatial_scale}"


@register_layer("ROIPooling", notes=f"pooled_h/_w, spatial_scale, C rounding of the ROI ends; "
                                    f"fork: {FORK_OF['ROIPooling']}")
def roi_pooling(ctx: LayerContext) -> nn.Module:
    p = fork_param(ctx.layer, "roi_pooling_param")
    return ROIPooling(int(p.pooled_h), int(p.pooled_w), float(np.float32(p.spatial_scale)))


def _round_away(v: torch.Tensor) -> torch.Tensor:
    return torch.sign(v) * torch.floor(torch.abs(v) + 0.5)


class PSROIPooling(nn.Module):
    """psroi_pooling_layer.cpp: bin (i, j) of output channel o averages input channel (o * G + i) * G + j over
    [floor(i * bin + start), ceil((i + 1) * bin + start)) clipped to the map, where start = round(x1) * scale,
    end = (round(x2) + 1) * scale, size max(end - start, 0.1), bin = size / G; an empty bin gives 0.

    Written with tensor ops only (masks of each bin's rows and columns, two einsums), so it exports as it runs.
    """

    def __init__(self, output_dim: int, group: int, spatial_scale: float):
        super().__init__()
        self.output_dim, self.group, self.spatial_scale = output_dim, group, spatial_scale

    def _bins(self, start: torch.Tensor, end: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = torch.clamp(end - start, min=0.1)
        step = length / self.group
        index = torch.arange(self.group, dtype=start.dtype)
        lo = torch.clamp(torch.floor(index[None] * step[:, None] + start[:, None]), 0, size)
        hi = torch.clamp(torch.ceil((index[None] + 1) * step[:, None] + start[:, None]), 0, size)
        cells = torch.arange(size, dtype=start.dtype)
        mask = (cells[None, None] >= lo[:, :, None]) & (cells[None, None] < hi[:, :, None])
        return mask.to(start.dtype), hi - lo

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        r = rois.reshape(-1, 5)
        scale = self.spatial_scale
        x1, y1 = _round_away(r[:, 1]) * scale, _round_away(r[:, 2]) * scale
        x2, y2 = (_round_away(r[:, 3]) + 1) * scale, (_round_away(r[:, 4]) + 1) * scale
        mask_h, len_h = self._bins(y1, y2, x.shape[2])
        mask_w, len_w = self._bins(x1, x2, x.shape[3])
        g = self.group
        maps = x.reshape(x.shape[0], self.output_dim, g, g, x.shape[2], x.shape[3])
        rows = torch.einsum("rjw,boijhw->broijh", mask_w, maps)
        sums = torch.einsum("rih,broijh->broij", mask_h, rows)
        batch = torch.arange(x.shape[0], dtype=r.dtype)
        pick = (batch[None] == torch.floor(r[:, :1])).to(x.dtype)
        sums = torch.einsum("rb,broij->roij", pick, sums)
        area = len_h[:, None, :, None] * len_w[:, None, None, :]
        return torch.where(area > 0, sums / torch.clamp(area, min=1.0), torch.zeros_like(sums))

    def extra_repr(self) -> str:
        return f"output_dim={self.output_dim}, group_size={self.group}, spatial_scale={self.spatial_scale}"


@register_layer("PSROIPooling", notes=f"output_dim, group_size, spatial_scale; fork: {FORK_OF['PSROIPooling']}")
def psroi_pooling(ctx: LayerContext) -> nn.Module:
    p = fork_param(ctx.layer, "psroi_pooling_param")
    return PSROIPooling(int(p.output_dim), int(p.group_size), float(np.float32(p.spatial_scale)))
