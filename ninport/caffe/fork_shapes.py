"""Shape rules of layers that only Caffe forks have, each after the fork's own ``Reshape``/``LayerSetUp``.

The fork and file are named at each rule; ``FORK_OF`` maps every type to the fork it comes from, for
``ninport layers``. Fields a fork adds to the schema are read only through ``fork_param`` so that a schema
without them gives one clear line instead of an AttributeError.
"""

from __future__ import annotations

from dataclasses import dataclass

from ninport.caffe.net import Layer
from ninport.caffe.shapes import LayerShapes, Shape, _conv_common, _count, conv_geometry, rule
from ninport.errors import ShapeError

# Layer type -> the fork (repository) whose source defines it.
FORK_OF: dict[str, str] = {
    "ReLU6": "MobileNet-v2 / SSDLite ports (e.g. chuanqi305/MobileNet-SSD, OpenCV's importer)",
    "ConvolutionDepthwise": "MobileNet ports (conv_dw_layer.cpp, e.g. chuanqi305/MobileNet-SSD's caffe)",
    "DepthwiseConvolution": "yonghenglh6/DepthwiseConvolution",
    "Axpy": "SENet ports (hujie-frank/SENet, axpy_layer.cpp)",
    "ShuffleChannel": "farmingyard/ShuffleNet (shuffle_channel_layer.cpp)",
    "BN": "alexgkendall/caffe-segnet, TimoSaemann/caffe-enet (scale, shift, bn_mode) and hszhao/PSPNet "
          "(slope, bias, mean, variance, eps); bn_layer.cpp of each",
    "Upsample": "alexgkendall/caffe-segnet (unpooling by the mask) and YOLO ports (nearest, scale)",
    "ROIPooling": "rbgirshick/caffe-fast-rcnn (roi_pooling_layer.cpp)",
    "PSROIPooling": "daijifeng001/caffe-rfcn (psroi_pooling_layer.cpp)",
    "Python": "rbgirshick/py-faster-rcnn lib/rpn/proposal_layer.py (module rpn.proposal_layer, layer "
              "ProposalLayer) only; other Python layers need a plugin",
    "Proposal": "OpenCV's name for py-faster-rcnn's proposal layer (proposal_param)",
    "Interp": "hszhao/PSPNet and DeepLab v2 (interp_layer.cpp; V1 enum INTERP in DeepLab v1)",
}


def fork_param(layer: Layer, name: str):
    """The fork parameter message ``name`` of a layer, or a ShapeError when the schema lacks it."""
    if name not in layer.param.DESCRIPTOR.fields_by_name:
        raise ShapeError(f"layer {layer.name!r} ({layer.type}): this schema has no {name}")
    return getattr(layer.param, name)


@rule("ReLU6")
def _relu6(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    return LayerShapes([bottoms[0]])


def depthwise_geometry(layer: Layer) -> tuple[list[int], list[int], list[int], list[int]]:
    """Kernel, stride, pad, dilation of ConvolutionDepthwise as conv_dw_layer.cpp's LayerSetUp reads them: the
    usual ConvolutionParameter fields (an unset stride is 1, an unset pad 0, as upstream)."""
    return conv_geometry(layer.param.convolution_param, layer, 2)


@rule("ConvolutionDepthwise")
def _convolution_depthwise(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    # conv_dw_layer.cpp: one k×k filter per input channel; the top has the bottom's channels whatever
    # num_output says; weight C×1×kh×kw, bias C.
    shape = bottoms[0]
    if len(shape) != 4:
        raise ShapeError(f"layer {layer.name!r}: ConvolutionDepthwise needs a 4-D bottom, got {list(shape)}")
    kernel, stride, pad, dilation = depthwise_geometry(layer)
    out = [(size + 2 * p - (d * (k - 1) + 1)) // s + 1
           for size, k, s, p, d in zip(shape[2:], kernel, stride, pad, dilation)]
    if any(o <= 0 for o in out):
        raise ShapeError(f"layer {layer.name!r}: input {list(shape)} is too small for kernel {kernel}")
    channels = shape[1]
    top = (shape[0], channels, *out)
    params = [(channels, 1, *kernel)] + ([(channels,)] if layer.param.convolution_param.bias_term else [])
    return LayerShapes([top], params, _count(top) * kernel[0] * kernel[1])


@rule("DepthwiseConvolution")
def _depthwise_convolution(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    # yonghenglh6/DepthwiseConvolution: a ConvolutionLayer subclass with a faster kernel; shapes and blobs are
    # Convolution's with the group the prototxt gives (group = channels in every published net).
    return _conv_common(layer, bottoms, deconv=False)


@rule("Axpy")
def _axpy(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    # axpy_layer.cpp (SENet ports): bottoms a (N×C or N×C×1×1), x, y; top = a * x + y, shaped like x.
    if len(bottoms) != 3:
        raise ShapeError(f"layer {layer.name!r}: Axpy needs 3 bottoms (a, x, y), got {len(bottoms)}")
    a, x, y = bottoms
    if len(a) < 2 or a[0] != x[0] or a[1] != x[1] or _count(a) != a[0] * a[1]:
        raise ShapeError(f"layer {layer.name!r}: Axpy scale {list(a)} must be N×C(×1×1) of {list(x)}")
    if _count(x) != _count(y):
        raise ShapeError(f"layer {layer.name!r}: Axpy x {list(x)} and y {list(y)} differ in size")
    return LayerShapes([x], [], _count(x))


@rule("ShuffleChannel")
def _shuffle_channel(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    shape = bottoms[0]
    group = fork_param(layer, "shuffle_channel_param").group
    if group <= 0 or len(shape) < 2 or shape[1] % group:
        raise ShapeError(f"layer {layer.name!r}: ShuffleChannel group {group} does not divide {list(shape)}")
    return LayerShapes([shape])



def interp_size(layer: Layer, height: int, width: int) -> tuple[int, int, int, int]:
    """(H_eff, W_eff, H_out, W_out) of an Interp layer for an input of height × width, as hszhao/PSPNet's
    src/caffe/layers/interp_layer.cpp Reshape computes them (DeepLab v2's is the same): the input is first
    cropped by -pad_beg / -pad_end (both must be <= 0), then shrunk, zoomed, or set to height/width."""
    p = fork_param(layer, "interp_param")
    if p.pad_beg > 0 or p.pad_end > 0:
        raise ShapeError(f"layer {layer.name!r}: Interp only crops (pad_beg and pad_end <= 0), as the fork does")
    h_eff, w_eff = height + p.pad_beg + p.pad_end, width + p.pad_beg + p.pad_end
    shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
    if (shrink and p.shrink_factor < 1) or (zoom and p.zoom_factor < 1):
        raise ShapeError(f"layer {layer.name!r}: Interp shrink_factor and zoom_factor must be >= 1")
    if shrink and not zoom:
        h_out, w_out = (h_eff - 1) // p.shrink_factor + 1, (w_eff - 1) // p.shrink_factor + 1
    elif zoom and not shrink:
        h_out, w_out = h_eff + (h_eff - 1) * (p.zoom_factor - 1), w_eff + (w_eff - 1) * (p.zoom_factor - 1)
    elif p.HasField("height") and p.HasField("width"):
        h_out, w_out = p.height, p.width
    elif shrink and zoom:
        h_out, w_out = (h_eff - 1) // p.shrink_factor + 1, (w_eff - 1) // p.shrink_factor + 1
        h_out, w_out = h_out + (h_out - 1) * (p.zoom_factor - 1), w_out + (w_out - 1) * (p.zoom_factor - 1)
    else:
        raise ShapeError(f"layer {layer.name!r}: Interp needs zoom_factor, shrink_factor or height and width")
    if min(h_eff, w_eff, h_out, w_out) <= 0:
        raise ShapeError(f"layer {layer.name!r}: Interp sizes must be positive (input {height}×{width}, "
                         f"cropped {h_eff}×{w_eff}, output {h_out}×{w_out})")
    return h_eff, w_eff, h_out, w_out


@rule("Interp")
def _interp(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    shape = bottoms[0]
    if len(shape) != 4:
        raise ShapeError(f"layer {layer.name!r}: Interp needs a 4-D bottom, got {list(shape)}")
    _, _, h_out, w_out = interp_size(layer, shape[2], shape[3])
    return LayerShapes([(shape[0], shape[1], h_out, w_out)])


# The BN dialects: SegNet and ENet (2 blobs: scale, shift, and bn_mode) or PSPNet/DeepLab (4 blobs: slope,
# bias, mean, variance, and eps); see ninport.caffe.dialects.CLASHES for the fields that tell them apart.
SEGNET_BN_FIELDS = ("bn_mode", "scale_filler", "shift_filler")
PSPNET_BN_FIELDS = ("slope_filler", "bias_filler", "momentum", "frozen", "eps", "engine")


def bn_dialect(layer: Layer) -> str:
    """``"segnet"`` or ``"pspnet"`` for one BN layer: by the bn_param fields it sets, else by its number of
    ``param`` specs (PSPNet's files give 4, one per blob), else SegNet/ENet (the dialects table's default)."""
    if "bn_param" not in layer.param.DESCRIPTOR.fields_by_name:
        raise ShapeError(f"layer {layer.name!r} (BN): this schema has no bn_param")
    p = layer.param.bn_param
    segnet = any(p.HasField(f) for f in SEGNET_BN_FIELDS)
    pspnet = any(p.HasField(f) for f in PSPNET_BN_FIELDS)
    if segnet and pspnet:
        raise ShapeError(f"layer {layer.name!r} (BN) mixes SegNet/ENet and PSPNet bn_param fields")
    if pspnet or (not segnet and len(layer.param.param) == 4):
        return "pspnet"
    return "segnet"


@rule("BN")
def _bn(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    shape = bottoms[0]
    if len(shape) != 4:
        raise ShapeError(f"layer {layer.name!r}: BN needs a 4-D bottom, got {list(shape)}")
    per_channel = (1, shape[1], 1, 1)
    # alexgkendall/caffe-segnet bn_layer.cpp: scale, shift (1×C×1×1); hszhao/PSPNet bn_layer.cpp: slope, bias,
    # mean, variance (1×C×1×1). SegNet's optional tops 2 and 3 (batch mean and variance) are 1×C×1×1.
    count = 4 if bn_dialect(layer) == "pspnet" else 2
    tops = [shape] + [per_channel] * (len(layer.tops) - 1)
    return LayerShapes(tops, [per_channel] * count, _count(shape))


def upsample_kind(layer: Layer, bottoms: int) -> str:
    """``"unpool"`` (SegNet/ENet: a second bottom, the pooling mask) or ``"nearest"`` (YOLO ports)."""
    return "unpool" if bottoms == 2 else "nearest"


def upsample_size(layer: Layer, height: int, width: int) -> tuple[int, int]:
    p = fork_param(layer, "upsample_param")
    if upsample_kind(layer, len(layer.bottoms)) == "nearest":
        # YOLO ports (e.g. eric612/Caffe-YOLOv3-Windows upsample_layer.cpp): each pixel repeated scale×scale;
        # their schema's scale defaults to 1.
        scale = p.scale if p.HasField("scale") else 1
        if scale < 1:
            raise ShapeError(f"layer {layer.name!r}: Upsample scale must be >= 1")
        return height * scale, width * scale
    # alexgkendall/caffe-segnet upsample_layer.cpp: upsample_h/_w when given, else H × scale_h - pad_out_h.
    if p.HasField("upsample_h") and p.HasField("upsample_w"):
        return p.upsample_h, p.upsample_w
    scale_h, scale_w = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
    if scale_h < 2 or scale_w < 2:
        raise ShapeError(f"layer {layer.name!r}: SegNet's Upsample needs a scale > 1")
    return height * scale_h - int(p.pad_out_h), width * scale_w - int(p.pad_out_w)


@rule("Upsample")
def _upsample(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    shape = bottoms[0]
    if len(shape) != 4 or len(bottoms) > 2:
        raise ShapeError(f"layer {layer.name!r}: Upsample needs a 4-D bottom (and the pooling mask), "
                         f"got {[list(b) for b in bottoms]}")
    if len(bottoms) == 2 and tuple(bottoms[1]) != tuple(shape):
        raise ShapeError(f"layer {layer.name!r}: the mask {list(bottoms[1])} must have the shape of {list(shape)}")
    h, w = upsample_size(layer, shape[2], shape[3])
    if h <= 0 or w <= 0:
        raise ShapeError(f"layer {layer.name!r}: Upsample output {h}×{w} is not positive")
    return LayerShapes([(shape[0], shape[1], h, w)])


def _rois(layer: Layer, rois: Shape) -> int:
    """The number of ROIs in a ``[batch_index, x1, y1, x2, y2]`` bottom (R×5 or R×5×1×1)."""
    if len(rois) < 2 or _count(rois[1:]) != 5:
        raise ShapeError(f"layer {layer.name!r}: the ROI bottom must be R×5 (batch index, x1, y1, x2, y2), "
                         f"got {list(rois)}")
    return rois[0]


@rule("ROIPooling")
def _roi_pooling(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    # rbgirshick/caffe-fast-rcnn roi_pooling_layer.cpp: top R × C × pooled_h × pooled_w.
    if len(bottoms) != 2 or len(bottoms[0]) != 4:
        raise ShapeError(f"layer {layer.name!r}: ROIPooling takes a 4-D feature map and the ROIs")
    p = fork_param(layer, "roi_pooling_param")
    if p.pooled_h <= 0 or p.pooled_w <= 0:
        raise ShapeError(f"layer {layer.name!r}: ROIPooling needs pooled_h and pooled_w > 0")
    return LayerShapes([(_rois(layer, bottoms[1]), bottoms[0][1], p.pooled_h, p.pooled_w)])


@rule("PSROIPooling")
def _psroi_pooling(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    # daijifeng001/caffe-rfcn psroi_pooling_layer.cpp: channels = output_dim × group_size²; top R × output_dim ×
    # group_size × group_size.
    if len(bottoms) != 2 or len(bottoms[0]) != 4:
        raise ShapeError(f"layer {layer.name!r}: PSROIPooling takes a 4-D score map and the ROIs")
    p = fork_param(layer, "psroi_pooling_param")
    if p.output_dim <= 0 or p.group_size <= 0:
        raise ShapeError(f"layer {layer.name!r}: PSROIPooling needs output_dim and group_size > 0")
    if bottoms[0][1] != p.output_dim * p.group_size ** 2:
        raise ShapeError(f"layer {layer.name!r}: {bottoms[0][1]} channels, but output_dim {p.output_dim} × "
                         f"group_size² {p.group_size ** 2} = {p.output_dim * p.group_size ** 2}")
    return LayerShapes([(_rois(layer, bottoms[1]), p.output_dim, p.group_size, p.group_size)])


# py-faster-rcnn's region proposal layer, behind ``type: "Python"`` (rbgirshick/py-faster-rcnn
# lib/rpn/proposal_layer.py), and OpenCV's own ``Proposal`` type with ``proposal_param`` (same algorithm).
PROPOSAL_MODULES = {("rpn.proposal_layer", "ProposalLayer")}


@dataclass
class ProposalConfig:
    """The proposal layer's settings at TEST: py-faster-rcnn's cfg.TEST defaults (lib/fast_rcnn/config.py:
    RPN_PRE_NMS_TOP_N 6000, RPN_POST_NMS_TOP_N 300, RPN_NMS_THRESH 0.7, RPN_MIN_SIZE 16) and its anchors
    (generate_anchors.py: base 16, ratios 0.5, 1, 2, scales 8, 16, 32); ``feat_stride`` from param_str."""

    feat_stride: int = 16
    base_size: int = 16
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    scales: tuple[float, ...] = (8.0, 16.0, 32.0)
    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    nms_thresh: float = 0.7
    min_size: float = 16.0


def proposal_config(layer: Layer) -> ProposalConfig | None:
    """The proposal settings of a ``Python`` proposal layer or a ``Proposal`` layer; None for other Python
    layers."""
    if layer.type == "Proposal":
        p = fork_param(layer, "proposal_param")
        return ProposalConfig(p.feat_stride, p.base_size, tuple(p.ratio) or (0.5, 1.0, 2.0),
                              tuple(p.scale) or (8.0, 16.0, 32.0), p.pre_nms_topn, p.post_nms_topn, p.nms_thresh,
                              float(p.min_size))
    python = layer.param.python_param
    if (python.module, python.layer) not in PROPOSAL_MODULES:
        return None
    import ast

    text = python.param_str.strip()
    try:  # the param_str is YAML there; the forms used in practice ("'feat_stride': 16") are Python literals
        value = ast.literal_eval(text if text.startswith("{") else "{" + text + "}") if text else {}
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ShapeError(f"layer {layer.name!r}: cannot read param_str {text!r} (expected 'feat_stride': N)") from None
    stride = value.get("feat_stride", 16) if isinstance(value, dict) else 16
    if not isinstance(stride, int) or stride <= 0:
        raise ShapeError(f"layer {layer.name!r}: feat_stride must be a positive integer, got {stride!r}")
    return ProposalConfig(feat_stride=stride)


@rule("Python", "Proposal")
def _python(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    config = proposal_config(layer)
    if config is None:
        python = layer.param.python_param
        raise ShapeError(f"layer {layer.name!r}: Python layer {python.module}.{python.layer} is not known to "
                         "ninport (register a converter for it with ninport.register_layer)")
    if len(bottoms) != 3 or len(bottoms[0]) != 4:
        raise ShapeError(f"layer {layer.name!r}: the proposal layer takes scores, bbox deltas and im_info")
    anchors = len(config.ratios) * len(config.scales)
    if bottoms[0][1] != 2 * anchors or bottoms[1][1] != 4 * anchors:
        raise ShapeError(f"layer {layer.name!r}: {anchors} anchors need {2 * anchors} score and {4 * anchors} "
                         f"delta channels, got {bottoms[0][1]} and {bottoms[1][1]}")
    # At most post_nms_top_n rows [0, x1, y1, x2, y2] (fewer when fewer boxes survive; the ONNX axis is symbolic).
    count = min(config.post_nms_top_n or 10 ** 9, config.pre_nms_top_n or 10 ** 9,
                anchors * bottoms[0][2] * bottoms[0][3])
    return LayerShapes([(count, 5), (count, 1)][: len(layer.tops)])
