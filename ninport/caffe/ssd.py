"""Shape rules of the SSD fork's layers (weiliu89/caffe, branch ssd), and its PriorBox arithmetic in numpy.

PriorBox, Normalize, Permute and DetectionOutput follow ``src/caffe/layers/{prior_box,normalize,permute,
detection_output}_layer.cpp`` of that fork; the prior boxes are computed here (no torch) so the converter can
fold them into a constant and ``inspect`` can check the parameters.
"""

from __future__ import annotations

import math

import numpy as np

from ninport.caffe import caffe_pb2
from ninport.caffe.net import Layer
from ninport.caffe.shapes import LayerShapes, Shape, _count, rule
from ninport.errors import NetError, ShapeError


def _bad(layer: Layer, what: str) -> NetError:
    return NetError(f"layer {layer.name!r} ({layer.type}): {what}")


def _needs(layer: Layer, bottoms: list[Shape], n: int) -> None:
    if len(bottoms) != n:
        raise _bad(layer, f"takes {n} bottoms, the net gives {len(bottoms)}")


# ---------------------------------------------------------------------------------------------------------
# PriorBox (prior_box_layer.cpp)


def aspect_ratios(p: caffe_pb2.PriorBoxParameter) -> list[float]:
    """1, then each given ratio not already present (within 1e-6), followed by its inverse when ``flip``."""
    ratios = [1.0]
    for ar in p.aspect_ratio:
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(float(ar))
        if p.flip:
            ratios.append(1.0 / ar)
    return ratios


def num_priors(layer: Layer) -> int:
    p = layer.param.prior_box_param
    if not p.min_size:
        raise _bad(layer, "prior_box_param needs min_size")
    if any(s <= 0 for s in p.min_size):
        raise _bad(layer, "min_size must be positive")
    if p.max_size:
        if len(p.max_size) != len(p.min_size):
            raise _bad(layer, f"{len(p.max_size)} max_size for {len(p.min_size)} min_size; Caffe needs as many")
        if any(mx <= mn for mn, mx in zip(p.min_size, p.max_size)):
            raise _bad(layer, "each max_size must be greater than its min_size")
    if len(p.variance) not in (0, 1, 4):
        raise _bad(layer, f"{len(p.variance)} variance values; Caffe takes 1 or 4")
    if any(v <= 0 for v in p.variance):
        raise _bad(layer, "variance must be positive")
    if (p.HasField("img_h") or p.HasField("img_w")) and p.HasField("img_size"):
        raise _bad(layer, "give img_size or img_h/img_w, not both")
    if (p.HasField("step_h") or p.HasField("step_w")) and p.HasField("step"):
        raise _bad(layer, "give step or step_h/step_w, not both")
    if p.width or p.height or p.offset_h or p.offset_w:
        raise _bad(layer, "OpenCV's explicit prior width/height/offset_h/offset_w are not supported")
    return len(aspect_ratios(p)) * len(p.min_size) + len(p.max_size)


def prior_boxes(layer: Layer, feature: Shape, image: Shape | None) -> np.ndarray:
    """The PriorBox top, shape (1, 2, H*W*num_priors*4): corner boxes relative to the image, then variances.

    As the fork's Forward_cpu: cell centres at (w + offset) * step_w, (h + offset) * step_h, with the steps the
    image size over the feature size unless given; per min_size a square of side int(min_size), then (with
    max_size) a square of side sqrt(int(min_size) * int(max_size)), then min_size * sqrt(ar) by
    min_size / sqrt(ar) for each ratio but 1. The fork truncates the sizes to int (``int min_size_``).
    """
    p = layer.param.prior_box_param
    count = num_priors(layer)
    fh, fw = int(feature[-2]), int(feature[-1])
    if p.HasField("img_h") or p.HasField("img_w") or p.HasField("img_size"):
        ih, iw = (p.img_h, p.img_w) if not p.HasField("img_size") else (p.img_size, p.img_size)
        if ih <= 0 or iw <= 0:
            raise _bad(layer, "img_size/img_h/img_w must be positive")
    else:
        if image is None:
            raise _bad(layer, "needs the image as a second bottom (or img_size)")
        ih, iw = int(image[-2]), int(image[-1])
    if p.HasField("step_h") or p.HasField("step_w") or p.HasField("step"):
        sh, sw = (p.step_h, p.step_w) if not p.HasField("step") else (p.step, p.step)
        if sh <= 0 or sw <= 0:
            raise _bad(layer, "step must be positive")
    else:
        sh, sw = np.float32(ih) / np.float32(fh), np.float32(iw) / np.float32(fw)
    sh, sw = float(np.float32(sh)), float(np.float32(sw))
    ratios = aspect_ratios(p)
    sizes: list[tuple[float, float]] = []  # (width, height) of each prior of a cell, in Caffe's order
    for s, min_size in enumerate(p.min_size):
        side = int(min_size)
        sizes.append((side, side))
        if p.max_size:
            big = math.sqrt(side * int(p.max_size[s]))
            sizes.append((big, big))
        for ar in ratios:
            if abs(ar - 1.0) < 1e-6:
                continue
            sizes.append((side * math.sqrt(ar), side / math.sqrt(ar)))
    assert len(sizes) == count
    wh = np.asarray(sizes, dtype=np.float64)  # (count, 2)
    cy, cx = np.meshgrid((np.arange(fh) + p.offset) * sh, (np.arange(fw) + p.offset) * sw, indexing="ij")
    cx = cx[:, :, None]
    cy = cy[:, :, None]
    boxes = np.stack([(cx - wh[:, 0] / 2) / iw, (cy - wh[:, 1] / 2) / ih,
                      (cx + wh[:, 0] / 2) / iw, (cy + wh[:, 1] / 2) / ih], axis=-1)  # (fh, fw, count, 4)
    boxes = boxes.reshape(-1)
    if p.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    variance = list(p.variance) or [0.1]
    if len(variance) == 1:
        var = np.full(boxes.size, variance[0])
    else:
        var = np.tile(np.asarray(variance, dtype=np.float64), boxes.size // 4)
    return np.stack([boxes, var]).astype(np.float32)[None]


@rule("PriorBox")
def _prior_box(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    if len(bottoms) not in (1, 2):
        raise _bad(layer, f"takes the feature map and the image as bottoms, the net gives {len(bottoms)}")
    feature = bottoms[0]
    if len(feature) != 4:
        raise ShapeError(f"layer {layer.name!r} (PriorBox): the feature map must be 4-D, it is {list(feature)}")
    p = layer.param.prior_box_param
    if len(bottoms) == 1 and not (p.HasField("img_size") or (p.HasField("img_h") and p.HasField("img_w"))):
        raise _bad(layer, "needs the image as a second bottom (or img_size)")
    return LayerShapes([(1, 2, feature[2] * feature[3] * num_priors(layer) * 4)])


# ---------------------------------------------------------------------------------------------------------
# Normalize (normalize_layer.cpp) and Permute (permute_layer.cpp)


@rule("Normalize")
def _normalize(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    _needs(layer, bottoms, 1)
    shape = bottoms[0]
    if len(shape) < 2:
        raise ShapeError(f"layer {layer.name!r} (Normalize): needs channels, the bottom is {list(shape)}")
    p = layer.param.norm_param
    # A channel-shared scale is a 0-axis blob (``vector<int>(0)`` in LayerSetUp), else one per channel.
    scale: Shape = () if p.channel_shared else (shape[1],)
    return LayerShapes([shape], [scale], macs=3 * _count(shape))


def permute_order(layer: Layer, ndim: int) -> list[int]:
    """The full axis order: the given axes (each once, in range), then the others in their order."""
    order: list[int] = []
    for axis in layer.param.permute_param.order:
        if axis >= ndim:
            raise _bad(layer, f"order names axis {axis} of a {ndim}-D bottom")
        if axis in order:
            raise _bad(layer, f"order repeats axis {axis}")
        order.append(int(axis))
    return order + [a for a in range(ndim) if a not in order]


@rule("Permute")
def _permute(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    _needs(layer, bottoms, 1)
    order = permute_order(layer, len(bottoms[0]))
    return LayerShapes([tuple(bottoms[0][a] for a in order)])


# ---------------------------------------------------------------------------------------------------------
# DetectionOutput (detection_output_layer.cpp)


def detection_geometry(layer: Layer, bottoms: list[Shape]) -> tuple[int, int, int]:
    """(num_priors, num_classes, loc classes) after checking the three bottoms against each other."""
    _needs(layer, bottoms, 3)
    p = layer.param.detection_output_param
    if not p.HasField("num_classes") or p.num_classes < 1:
        raise _bad(layer, "detection_output_param needs num_classes")
    classes = int(p.num_classes)
    loc_classes = 1 if p.share_location else classes
    loc, conf, prior = bottoms
    if len(prior) < 3 or prior[1] != 2 or prior[2] % 4:
        raise ShapeError(f"layer {layer.name!r} (DetectionOutput): the prior bottom must be (1, 2, 4 * priors), "
                         f"it is {list(prior)}")
    priors = prior[2] // 4
    if _count(loc[1:]) != priors * loc_classes * 4:
        raise ShapeError(f"layer {layer.name!r} (DetectionOutput): {priors} priors need {priors * loc_classes * 4} "
                         f"location values per image, the loc bottom has {_count(loc[1:])}")
    if _count(conf[1:]) != priors * classes:
        raise ShapeError(f"layer {layer.name!r} (DetectionOutput): {priors} priors × {classes} classes need "
                         f"{priors * classes} confidences per image, the conf bottom has {_count(conf[1:])}")
    if loc[0] != conf[0]:
        raise ShapeError(f"layer {layer.name!r} (DetectionOutput): loc and conf disagree on the batch")
    if p.nms_param.eta != 1.0:
        raise _bad(layer, f"adaptive NMS (eta {p.nms_param.eta:g}) is not supported; only eta 1")
    if p.nms_param.nms_threshold <= 0:
        raise _bad(layer, "nms_threshold must be positive")
    if p.code_type not in (1, 2, 3):
        raise _bad(layer, f"unknown code_type {p.code_type}")
    return priors, classes, loc_classes


@rule("DetectionOutput")
def _detection_output(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    detection_geometry(layer, bottoms)
    # The number of rows is known only after NMS; Caffe's Reshape declares one row (1, 1, 1, 7) and Forward
    # gives (1, 1, kept, 7): image, label, score, xmin, ymin, xmax, ymax.
    return LayerShapes([(1, 1, 1, 7)])


def detection_rows(blob: np.ndarray) -> np.ndarray:
    """A DetectionOutput top in a canonical form for comparing backends: rows (image, label, score, box) sorted
    by image, label, descending score, then box, without the all-zero rows OpenCV pads its output with. The set
    of detections is what Caffe defines; the order of rows with equal keys is not."""
    rows = np.asarray(blob, dtype=np.float64).reshape(-1, 7)
    rows = rows[np.abs(rows).sum(axis=1) > 0]
    order = np.lexsort((rows[:, 6], rows[:, 5], rows[:, 4], rows[:, 3], -rows[:, 2], rows[:, 1], rows[:, 0]))
    return rows[order].reshape(1, 1, -1, 7)
