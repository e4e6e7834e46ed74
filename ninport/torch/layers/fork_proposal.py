"""py-faster-rcnn's region proposal layer (rbgirshick/py-faster-rcnn lib/rpn/proposal_layer.py, anchors from
lib/rpn/generate_anchors.py, box arithmetic from lib/fast_rcnn/bbox_transform.py, NMS from lib/nms), behind
``type: "Python"``, and OpenCV's ``Proposal`` type. TEST settings; one image (py-faster-rcnn asserts a batch of
one; a larger batch uses its first image). The greedy NMS exports as ONNX NonMaxSuppression.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ninport.caffe.fork_shapes import FORK_OF, ProposalConfig, proposal_config
from ninport.torch.registry import LayerContext, register_layer


def generate_anchors(base_size: int, ratios, scales) -> np.ndarray:
    """generate_anchors.py restated: the base box [0, 0, base-1, base-1]; for each ratio a box of about the same
    area (widths round(sqrt(area / ratio)), heights round(width * ratio), numpy's round), then each scaled by
    every scale, all centred on the base box's centre. Rows ordered ratio-major."""
    def boxes(ws, hs, cx, cy):
        ws, hs = np.asarray(ws, dtype=np.float64)[:, None], np.asarray(hs, dtype=np.float64)[:, None]
        return np.hstack((cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)))

    w = h = float(base_size)
    cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
    ws = np.round(np.sqrt(w * h / np.asarray(ratios, dtype=np.float64)))
    hs = np.round(ws * np.asarray(ratios, dtype=np.float64))
    out = []
    for rw, rh in zip(ws, hs):
        out.append(boxes(rw * np.asarray(scales, dtype=np.float64), rh * np.asarray(scales, dtype=np.float64),
                         cx, cy))
    return np.vstack(out)


class _GreedyNms(torch.autograd.Function):
    """Greedy NMS as py-faster-rcnn's nms (py_cpu_nms.py / gpu_nms): highest score first, drop boxes whose IoU
    with a kept one exceeds the threshold, areas counted with +1 pixel. Boxes arrive with x2 and y2 already
    shifted by +1, so the plain IoU of ONNX NonMaxSuppression is the same number. Returns kept indices, in
    descending score order, at most ``limit``; boxes scoring below -0.5 (filtered) are never kept."""

    @staticmethod
    def forward(ctx, boxes, scores, thresh: float, limit: int):  # noqa: ANN001
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[scores[order] > -0.5]
        x1, y1, x2, y2 = boxes.unbind(1)
        areas = (x2 - x1) * (y2 - y1)
        keep = []
        while order.numel() and len(keep) < limit:
            i = order[0]
            keep.append(int(i))
            rest = order[1:]
            w = torch.clamp(torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]), min=0)
            h = torch.clamp(torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]), min=0)
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            order = rest[iou <= thresh]
        return torch.tensor(keep, dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, thresh: float, limit: int):  # noqa: ANN001
        zero = g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64))
        b = g.op("Unsqueeze", boxes, zero)
        s = g.op("Unsqueeze", g.op("Unsqueeze", scores, zero), zero)
        selected = g.op("NonMaxSuppression", b, s, g.op("Constant", value_t=torch.tensor([limit], dtype=torch.int64)),
                        g.op("Constant", value_t=torch.tensor([thresh], dtype=torch.float32)),
                        g.op("Constant", value_t=torch.tensor([-0.5], dtype=torch.float32)))
        return g.op("Gather", selected, g.op("Constant", value_t=torch.tensor(2, dtype=torch.int64)), axis_i=1)


class Proposal(nn.Module):
    def __init__(self, config: ProposalConfig, scores_top: bool):
        super().__init__()
        self.config, self.scores_top = config, scores_top
        anchors = generate_anchors(config.base_size, config.ratios, config.scales)
        self.register_buffer("anchors", torch.from_numpy(anchors.astype(np.float32)), persistent=False)

    def forward(self, scores: torch.Tensor, deltas: torch.Tensor, im_info: torch.Tensor):
        c = self.config
        count = self.anchors.shape[0]
        # The second half of the score channels are the foreground probabilities; rows ordered (h, w, anchor).
        fg = scores[:1, count:]
        height, width = fg.shape[2], fg.shape[3]
        sx = torch.arange(width, dtype=torch.float32) * c.feat_stride
        sy = torch.arange(height, dtype=torch.float32) * c.feat_stride
        gy, gx = torch.meshgrid(sy, sx, indexing="ij")
        shifts = torch.stack((gx, gy, gx, gy), dim=-1).reshape(-1, 1, 4)
        anchors = (self.anchors[None] + shifts).reshape(-1, 4)
        d = deltas[:1].permute(0, 2, 3, 1).reshape(-1, 4)
        s = fg.permute(0, 2, 3, 1).reshape(-1)
        # bbox_transform.py, bbox_transform_inv: centre and size with +1 widths, exp of the size deltas.
        widths = anchors[:, 2] - anchors[:, 0] + 1.0
        heights = anchors[:, 3] - anchors[:, 1] + 1.0
        cx = anchors[:, 0] + 0.5 * widths
        cy = anchors[:, 1] + 0.5 * heights
        px, py = d[:, 0] * widths + cx, d[:, 1] * heights + cy
        pw, ph = torch.exp(d[:, 2]) * widths, torch.exp(d[:, 3]) * heights
        info = im_info.reshape(im_info.shape[0], -1)[0]
        # clip_boxes: max(min(v, size - 1), 0).
        x1 = torch.clamp(torch.minimum(px - 0.5 * pw, info[1] - 1), min=0)
        y1 = torch.clamp(torch.minimum(py - 0.5 * ph, info[0] - 1), min=0)
        x2 = torch.clamp(torch.minimum(px + 0.5 * pw, info[1] - 1), min=0)
        y2 = torch.clamp(torch.minimum(py + 0.5 * ph, info[0] - 1), min=0)
        boxes = torch.stack((x1, y1, x2, y2), dim=1)
        # _filter_boxes: both sides (+1) at least min_size * im_info[2]; the others score -1 and are never kept.
        least = c.min_size * info[2]
        valid = ((x2 - x1 + 1) >= least) & ((y2 - y1 + 1) >= least)
        s = torch.where(valid, s, torch.full_like(s, -1.0))
        if c.pre_nms_top_n > 0 and c.pre_nms_top_n < s.shape[0]:
            s, order = torch.topk(s, c.pre_nms_top_n)
            boxes = boxes[order]
        limit = c.post_nms_top_n if c.post_nms_top_n > 0 else s.shape[0]
        shifted = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0])
        keep = _GreedyNms.apply(shifted, s, float(c.nms_thresh), int(limit))
        kept = boxes[keep]
        rois = torch.cat((torch.zeros_like(kept[:, :1]), kept), dim=1)
        if self.scores_top:
            return rois, s[keep].reshape(-1, 1)
        return rois


@register_layer("Python", notes=f"fork: {FORK_OF['Python']}; TEST settings (pre/post-NMS top N 6000/300, "
                                f"NMS 0.7, min size 16), feat_stride from param_str")
def python_layer(ctx: LayerContext) -> nn.Module:
    return _proposal(ctx)


@register_layer("Proposal", notes=f"feat_stride, base_size, ratio, scale, pre/post_nms_topn, nms_thresh, min_size; "
                                  f"{FORK_OF['Proposal']}")
def proposal(ctx: LayerContext) -> nn.Module:
    return _proposal(ctx)


def _proposal(ctx: LayerContext) -> nn.Module:
    config = proposal_config(ctx.layer)
    if config is None:
        raise ctx.unsupported("this Python layer (only py-faster-rcnn's rpn.proposal_layer converts)")
    if ctx.dynamic_hw:
        raise ctx.unsupported("the proposal layer with --dynamic-hw (its top-N sizes are set for one input size)")
    return Proposal(config, scores_top=len(ctx.layer.tops) > 1)
