"""The SSD fork's layers (weiliu89/caffe, branch ssd): PriorBox folded to a constant, Normalize, Permute, and
DetectionOutput as box decoding + per-class top-k + ONNX NonMaxSuppression + keep_top_k, giving Caffe's
(1, 1, N, 7) rows. Sources: src/caffe/layers/{prior_box,normalize,permute,detection_output}_layer.cpp and
src/caffe/util/bbox_util.cpp (DecodeBBox, ApplyNMSFast, JaccardOverlap) of that fork."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ninport.caffe import ssd
from ninport.torch.registry import LayerContext, register_layer

FORK = "SSD fork (weiliu89/caffe)"


class PriorBoxConstant(nn.Module):
    """The prior boxes depend only on shapes: computed once (ninport.caffe.ssd.prior_boxes), a buffer here and
    a constant in ONNX. The bottoms are taken and ignored."""

    def __init__(self, boxes):
        super().__init__()
        self.register_buffer("boxes", torch.from_numpy(boxes))

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        return self.boxes


@register_layer("PriorBox", notes=f"{FORK}: folded to a constant from the shapes (min/max sizes, aspect ratios "
                "with flip, clip, variance, step, offset, img_size); sizes truncated to int as the fork does")
def prior_box(ctx: LayerContext) -> nn.Module:
    image = ctx.bottom_shapes[1] if len(ctx.bottom_shapes) > 1 else None
    return PriorBoxConstant(ssd.prior_boxes(ctx.layer, ctx.bottom_shapes[0], image))


class Normalize(nn.Module):
    """x / sqrt(sum of x² + eps), the sum over C, H, W per item (across_spatial) or over C per position, then
    times the learned scale (one value when channel_shared, else per channel)."""

    def __init__(self, scale: torch.Tensor, across_spatial: bool, channel_shared: bool, eps: float):
        super().__init__()
        self.scale = nn.Parameter(scale)
        self.across_spatial, self.channel_shared, self.eps = across_spatial, channel_shared, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, x.dim())) if self.across_spatial else (1,)
        norm = torch.sqrt((x * x).sum(dim=dims, keepdim=True) + self.eps)
        scale = self.scale if self.channel_shared else self.scale.reshape((1, -1) + (1,) * (x.dim() - 2))
        return x / norm * scale


@register_layer("Normalize", notes=f"{FORK}: across_spatial, channel_shared, eps")
def normalize(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.norm_param
    return Normalize(ctx.weight(0), p.across_spatial, p.channel_shared, p.eps)


class Permute(nn.Module):
    def __init__(self, order: list[int]):
        super().__init__()
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.order)


@register_layer("Permute", notes=f"{FORK}: any axis order")
def permute(ctx: LayerContext) -> nn.Module:
    return Permute(ssd.permute_order(ctx.layer, len(ctx.bottom_shapes[0])))


# ---------------------------------------------------------------------------------------------------------
# DetectionOutput


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Jaccard overlap of one corner box with many (bbox_util.cpp JaccardOverlap, normalized boxes): 0 when
    they do not intersect, and an invalid box (max < min) has size 0."""
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / np.where(union > 0, union, 1), 0)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX NonMaxSuppression (center_point_box 0): greedy, by score, boxes over ``score_threshold`` only, a box
    dropped when its overlap with a kept one exceeds ``iou_threshold``; rows (batch, class, box). Eager mode
    runs the same greedy loop (ApplyNMSFast's, with eta 1)."""

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_out: int, iou_threshold: float,
                score_threshold: float) -> torch.Tensor:
        # In numpy: torch ops here would all be recorded (slowly) while the exporter traces the module.
        all_boxes, all_scores = boxes.detach().cpu().numpy(), scores.detach().cpu().numpy()
        rows = []
        for b in range(all_boxes.shape[0]):
            for c in range(all_scores.shape[1]):
                s = all_scores[b, c]
                candidates = np.flatnonzero(s > score_threshold)
                # Descending score, ties to the lower index (std::stable_sort in GetMaxScoreIndex).
                order = candidates[np.argsort(-s[candidates], kind="stable")]
                kept: list[int] = []
                for i in order.tolist():
                    if len(kept) >= max_out:
                        break
                    if kept and bool((_iou(all_boxes[b, i], all_boxes[b, kept]) > iou_threshold).any()):
                        continue
                    kept.append(i)
                rows.extend((b, c, i) for i in kept)
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)

    @staticmethod
    def symbolic(g, boxes, scores, max_out: int, iou_threshold: float, score_threshold: float):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
                    center_point_box_i=0)


CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3


def _sort(x: torch.Tensor, dim: int = -1, descending: bool = False):
    """A sort whose ties go to the lower index: stable in eager mode; traced, an ONNX TopK, whose ties go to
    the lower index by the operator's definition (the exporter has no stable sort)."""
    if torch.jit.is_tracing():
        return torch.sort(x, dim=dim, descending=descending)
    return torch.sort(x, dim=dim, descending=descending, stable=True)


class DetectionOutput(nn.Module):
    """Caffe's DetectionOutput (detection_output_layer.cpp Forward_cpu):

    1. decode each location against its prior (DecodeBBox: CORNER, CENTER_SIZE or CORNER_SIZE, the prior's
       variances unless ``variance_encoded_in_target``), clipped to [0, 1] only with OpenCV's ``clip``;
    2. per image and class but the background: the ``top_k`` best scores over ``confidence_threshold``, then
       greedy NMS at ``nms_threshold`` (ApplyNMSFast);
    3. with ``keep_top_k`` > -1, the best ``keep_top_k`` of an image's survivors over all classes;
    4. rows (image, label, score, xmin, ymin, xmax, ymax) ordered by image, label, then score; when nothing
       survives in the whole batch, one row per image (image, -1, ..., -1).
    """

    def __init__(self, priors: int, classes: int, share_location: bool, background: int, code_type: int,
                 variance_in_target: bool, top_k: int, keep_top_k: int, nms_threshold: float,
                 confidence_threshold: float, clip: bool):
        super().__init__()
        self.priors, self.classes, self.share = priors, classes, share_location
        self.loc_classes = 1 if share_location else classes
        self.labels = [c for c in range(classes) if c != background]
        self.code_type, self.variance_in_target, self.clip = code_type, variance_in_target, clip
        self.top_k = priors if top_k < 0 else min(top_k, priors)
        self.keep_top_k, self.nms_threshold = keep_top_k, nms_threshold
        self.confidence_threshold = confidence_threshold

    def decode(self, loc: torch.Tensor, prior: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        if self.variance_in_target:
            var = torch.ones_like(var)
        if self.code_type == CORNER:
            return prior + var * loc
        pw = prior[..., 2] - prior[..., 0]
        ph = prior[..., 3] - prior[..., 1]
        if self.code_type == CORNER_SIZE:
            size = torch.stack([pw, ph, pw, ph], dim=-1)
            return prior + var * loc * size
        cx = (prior[..., 0] + prior[..., 2]) / 2 + var[..., 0] * loc[..., 0] * pw
        cy = (prior[..., 1] + prior[..., 3]) / 2 + var[..., 1] * loc[..., 1] * ph
        w = torch.exp(var[..., 2] * loc[..., 2]) * pw
        h = torch.exp(var[..., 3] * loc[..., 3]) * ph
        return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)

    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        # Written with shape-free tensor ops only (no Python ints from shapes), so the traced ONNX graph keeps
        # the batch and the number of detections dynamic.
        p, k_classes = self.priors, len(self.labels)
        pri = prior[0, 0].reshape(p, 1, 4)
        var = prior[0, 1].reshape(p, 1, 4)
        boxes = self.decode(loc.reshape(-1, p, self.loc_classes, 4), pri, var)  # (n, p, loc classes, 4)
        if self.clip:
            boxes = boxes.clamp(0.0, 1.0)
        labels = torch.tensor(self.labels, dtype=torch.int64)
        scores = conf.reshape(-1, p, self.classes).index_select(2, labels).permute(0, 2, 1)  # (n, K, p)
        if self.share:
            per_class = boxes[:, :, 0, :].unsqueeze(1).expand(-1, k_classes, -1, -1)
        else:
            per_class = boxes.index_select(2, labels).permute(0, 2, 1, 3)  # (n, K, p, 4)
        # top_k candidates per class (GetMaxScoreIndex), sorted by score; then NMS per (image, class).
        # Ties go to the lower index, as in ONNX's TopK and Caffe's std::stable_sort: a stable sort, then a slice.
        ranked = _sort(scores, dim=2, descending=True)
        top_scores, top_index = ranked.values[:, :, : self.top_k], ranked.indices[:, :, : self.top_k]
        top_boxes = torch.gather(per_class, 2, top_index.unsqueeze(-1).expand(-1, -1, -1, 4))
        flat_boxes = top_boxes.reshape(-1, self.top_k, 4)
        flat_scores = top_scores.reshape(-1, 1, self.top_k)
        # Caffe gives a box with max < min size 0, so it overlaps nothing (BBoxSize, IntersectBBox); ONNX's NMS
        # would reorder its corners. Such boxes go to NMS as unit squares far apart from everything.
        valid = (flat_boxes[..., 2:] >= flat_boxes[..., :2]).all(dim=-1, keepdim=True)
        spot = (torch.cumsum(torch.ones_like(flat_boxes[..., :1]), 1) * 3 + 10).expand(-1, -1, 2)
        nms_boxes = torch.where(valid, flat_boxes, torch.cat([spot, spot + 1], dim=-1))
        selected = _NonMaxSuppression.apply(nms_boxes, flat_scores, self.top_k, float(self.nms_threshold),
                                            float(self.confidence_threshold))
        group, rank = selected[:, 0], selected[:, 2]
        image = torch.div(group, k_classes, rounding_mode="floor")
        label = labels[group % k_classes]
        score = flat_scores[group, 0, rank]
        box = flat_boxes[group, rank]
        counter = torch.cumsum(torch.ones_like(group), 0) - 1  # 0, 1, 2, ...
        order = _sort(score, descending=True).indices  # over the whole batch, best first
        score_rank = torch.zeros_like(order).scatter(0, order, counter)
        big = 1 << 31  # more than any number of rows
        if self.keep_top_k > -1:
            # Each image keeps its keep_top_k best: position within the image after sorting by (image, score).
            by_image = _sort(image * big + score_rank).indices
            sorted_image = image[by_image]
            slots = torch.zeros_like(loc.flatten(1)[:, 0], dtype=torch.int64)  # one per image
            per_image = slots.scatter_add(0, image, torch.ones_like(image))
            first = torch.cumsum(per_image, 0) - per_image
            keep = by_image[(counter - first[sorted_image]) < self.keep_top_k]
            image, label, score, box, score_rank = image[keep], label[keep], score[keep], box[keep], score_rank[keep]
        # Caffe's order: image, then label (a std::map), then score within a label.
        final = _sort((image * self.classes + label) * big + score_rank).indices
        rows = torch.cat([image[final].unsqueeze(1).to(box.dtype), label[final].unsqueeze(1).to(box.dtype),
                          score[final].unsqueeze(1), box[final]], dim=1)
        # Nothing kept in the batch: one row per image, (i, -1, -1, -1, -1, -1, -1).
        ones = torch.ones_like(loc.flatten(1)[:, :1])  # (n, 1)
        fake = torch.cat([torch.cumsum(ones, 0) - 1, -ones.expand(-1, 6)], dim=1).to(box.dtype)
        none = torch.ones_like(rows[:, 0]).sum() == 0
        mask = torch.cat([torch.ones_like(rows[:, 0], dtype=torch.bool), none & (fake[:, 0] >= 0)])
        return torch.cat([rows, fake])[mask].reshape(1, 1, -1, 7)


@register_layer("DetectionOutput", notes=f"{FORK}: ONNX NonMaxSuppression giving Caffe's (1, 1, N, 7) rows; "
                "confidence_threshold, nms top_k, keep_top_k, share_location, background_label_id, CORNER/"
                "CENTER_SIZE/CORNER_SIZE, variance_encoded_in_target, OpenCV's clip; not adaptive NMS (eta < 1)")
def detection_output(ctx: LayerContext) -> nn.Module:
    priors, classes, _ = ssd.detection_geometry(ctx.layer, ctx.bottom_shapes)
    p = ctx.layer.param.detection_output_param
    if not p.normalized_bbox:
        raise ctx.unsupported("normalized_bbox: false (priors in pixels)")
    top_k = p.nms_param.top_k if p.nms_param.HasField("top_k") else -1
    threshold = p.confidence_threshold if p.HasField("confidence_threshold") else -3.4028234663852886e38
    return DetectionOutput(priors, classes, p.share_location, p.background_label_id, p.code_type,
                           p.variance_encoded_in_target, top_k, p.keep_top_k, p.nms_param.nms_threshold, threshold,
                           p.clip)
