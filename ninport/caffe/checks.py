"""Caffe's own refusals, checked before any shape rule runs or anything is allocated.

Blob and top counts per layer type, in-place and multiple-writer rules (``net.cpp``), the integer and ratio
ranges of parameters (``layers/*.cpp``, ``LayerSetUp``) and the size limits of ``Blob::Reshape`` (``blob.cpp``).
"""

from __future__ import annotations

import math

from ninport.caffe import caffe_pb2
from ninport.caffe.net import Layer, Net
from ninport.errors import NetError, ShapeError

Shape = tuple[int, ...]

# blob.cpp, Blob::Reshape: a blob holds at most INT_MAX values and has at most kMaxBlobAxes (32) axes.
INT_MAX = 2**31 - 1
MAX_AXES = 32

_ANY = None
# (min bottoms, max bottoms, min tops, max tops) per type, from the Exact/Min/MaxNum{Bottom,Top}Blobs of each
# layer's header in BVLC Caffe (include/caffe/layers/*.hpp). Neuron layers (neuron_layer.hpp) take one of each.
_NEURON = (1, 1, 1, 1)
COUNTS: dict[str, tuple[int | None, int | None, int | None, int | None]] = {
    **{t: _NEURON for t in ("ReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log", "Threshold",
                            "Clip", "Swish", "Dropout", "PReLU")},
    "Convolution": (1, _ANY, 1, _ANY),  # base_conv_layer.hpp: EqualNumBottomTopBlobs
    "Deconvolution": (1, _ANY, 1, _ANY),
    "Pooling": (1, 1, 1, 2),  # MaxTopBlobs is 2 for MAX (the mask), else 1: see _pooling_counts
    "InnerProduct": (1, 1, 1, 1),
    "LRN": (1, 1, 1, 1),
    "Softmax": (1, 1, 1, 1),
    "Split": (1, 1, 1, _ANY),
    "MVN": (1, 1, 1, 1),
    "BatchNorm": (1, 1, 1, 1),
    "Scale": (1, 2, 1, 1),
    "Bias": (1, 2, 1, 1),
    "Eltwise": (2, _ANY, 1, 1),
    "Concat": (1, _ANY, 1, 1),
    "Slice": (1, 1, 1, _ANY),
    "Flatten": (1, 1, 1, 1),
    "Reshape": (1, 1, 1, 1),
    "Crop": (2, 2, 1, 1),
    "ArgMax": (1, 1, 1, 1),
    "Reduction": (1, 1, 1, 1),
    "Tile": (1, 1, 1, 1),
    "Embed": (1, 1, 1, 1),
    "Parameter": (0, 0, 1, 1),
    "Silence": (1, _ANY, 0, 0),
    "Input": (0, 0, 1, _ANY),
    "Accuracy": (2, 2, 1, 2),
    "SoftmaxWithLoss": (2, 3, 1, 2),
}

# Layers whose tops alias their bottom and which Caffe refuses to run in place (split_layer.cpp,
# flatten_layer.cpp, reshape_layer.cpp: "does not allow in-place computation").
NO_IN_PLACE = ("Split", "Flatten", "Reshape")


def _fail(layer: Layer, what: str) -> ShapeError:
    return ShapeError(f"layer {_cut(layer.name)!r} ({_cut(layer.type)}): {what}")


def check_writers(net: Net) -> None:
    """Caffe's rule for tops (net.cpp, ``AppendTop``): a top that repeats the bottom at the same position is
    computed in place; any other top whose name an earlier layer (or this one) already wrote is refused,
    "produced by multiple sources". Also the layers that may not run in place. Uses Caffe's names."""
    written: set[str] = set()
    for layer in net.layers:
        bottoms, tops = layer.caffe_bottoms, layer.caffe_tops
        mine: set[str] = set()
        for i, top in enumerate(tops):
            in_place = i < len(bottoms) and bottoms[i] == top
            if in_place and layer.type in NO_IN_PLACE:
                raise NetError(f"{net.where(layer)}: layer {_cut(layer.name)!r} ({layer.type}) does not allow "
                               f"in-place computation (top {_cut(top)!r} is its bottom), as in Caffe")
            if not in_place and (top in written or top in mine):
                raise NetError(f"{net.where(layer)}: top blob {_cut(top)!r} of layer {_cut(layer.name)!r} is "
                               "produced by multiple sources (Caffe refuses this unless it is in place)")
            mine.add(top)
        written |= mine


def check_counts(layer: Layer) -> None:
    """Bottom and top counts of a known layer type, as Caffe's ``CheckBlobCounts`` makes them."""
    limits = COUNTS.get(layer.type)
    if limits is None:
        return
    lo_b, hi_b, lo_t, hi_t = limits
    if layer.type == "Pooling" and layer.param.pooling_param.pool != caffe_pb2.PoolingParameter.MAX:
        hi_t = 1
    nb, nt = len(layer.bottoms), len(layer.tops)
    for n, lo, hi, what in ((nb, lo_b, hi_b, "bottom"), (nt, lo_t, hi_t, "top")):
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
            raise NetError(f"layer {_cut(layer.name)!r} ({layer.type}) has {n} {what}s; Caffe's {layer.type} "
                           f"takes {want} {what}s")
    if layer.type in ("Convolution", "Deconvolution") and nb != nt:
        raise NetError(f"layer {_cut(layer.name)!r} ({layer.type}) needs as many tops as bottoms (Caffe's "
                       f"EqualNumBottomTopBlobs), got {nb} and {nt}")


def _int_field(layer: Layer, name: str, value: int, lo: int = 0, hi: int = INT_MAX) -> None:
    if not lo <= value <= hi:
        raise _fail(layer, f"{name} {value} is out of range [{lo}, {hi}]")


def _conv(layer: Layer, bottoms: list[Shape]) -> None:
    p = layer.param.convolution_param
    if p.num_output < 1:
        raise _fail(layer, f"num_output must be positive, got {p.num_output}")
    _int_field(layer, "num_output", p.num_output, 1)
    if p.HasField("group") and p.group < 1:
        raise _fail(layer, f"group must be positive, got {p.group}")
    _int_field(layer, "group", p.group, 0)
    # base_conv_layer.cpp, LayerSetUp: each of kernel, stride and pad is given one way, not both.
    for what, plain in (("kernel", "kernel_size"), ("stride", "stride"), ("pad", "pad")):
        if len(getattr(p, plain)) and (p.HasField(f"{what}_h") or p.HasField(f"{what}_w")):
            raise _fail(layer, f"give {plain} or {what}_h/{what}_w, not both")
        for value in list(getattr(p, plain)) + [getattr(p, f"{what}_h"), getattr(p, f"{what}_w")]:
            _int_field(layer, plain, value)
    if p.HasField("stride_h") or p.HasField("stride_w"):
        # Caffe divides by these without checking them; a zero is a crash there, an error here.
        if p.stride_h < 1 or p.stride_w < 1:
            raise _fail(layer, f"stride_h and stride_w must both be given and positive, got "
                               f"{p.stride_h} and {p.stride_w}")
    if any(s < 1 for s in p.stride):
        raise _fail(layer, f"stride must be positive, got {list(p.stride)}")
    for d in p.dilation:
        _int_field(layer, "dilation", d, 1)
    shape = bottoms[0]
    for other in bottoms[1:]:
        if other != shape:
            raise _fail(layer, f"all bottoms must have one shape (Caffe's Reshape), got {list(shape)} and "
                               f"{list(other)}")


def _pooling(layer: Layer, bottoms: list[Shape]) -> None:
    p = layer.param.pooling_param
    # pooling_layer.cpp, LayerSetUp: kernel_size or both kernel_h and kernel_w; the same for pad and stride.
    has = {f: p.HasField(f) for f in ("kernel_size", "kernel_h", "kernel_w", "pad", "pad_h", "pad_w", "stride",
                                       "stride_h", "stride_w")}
    if p.global_pooling:
        if has["kernel_size"] or has["kernel_h"] or has["kernel_w"]:
            raise _fail(layer, "global pooling takes no kernel size")
        strides = [p.stride_h, p.stride_w] if (has["stride_h"] or has["stride_w"]) else [p.stride]
        if p.pad or p.pad_h or p.pad_w or strides != [1, 1] and strides != [1]:
            raise _fail(layer, "global pooling takes only pad 0 and stride 1")
    else:
        if has["kernel_size"] and (has["kernel_h"] or has["kernel_w"]):
            raise _fail(layer, "give kernel_size or kernel_h and kernel_w, not both")
        if not has["kernel_size"] and has["kernel_h"] != has["kernel_w"]:
            raise _fail(layer, "a non-square kernel needs both kernel_h and kernel_w")
    for what in ("pad", "stride"):
        if has[what] and (has[f"{what}_h"] or has[f"{what}_w"]):
            raise _fail(layer, f"give {what} or {what}_h and {what}_w, not both")
        if has[f"{what}_h"] != has[f"{what}_w"]:
            raise _fail(layer, f"give both {what}_h and {what}_w, or neither")
    for name in has:
        _int_field(layer, name, getattr(p, name))


def _lrn(layer: Layer, bottoms: list[Shape]) -> None:
    p = layer.param.lrn_param
    shape = bottoms[0]
    # lrn_layer.cpp: an odd local_size (Caffe keeps it in an int), and a 4-D bottom.
    _int_field(layer, "local_size", p.local_size, 1)
    if p.local_size % 2 == 0:
        raise _fail(layer, f"local_size must be odd, got {p.local_size}")
    if len(shape) != 4:
        raise _fail(layer, f"needs a 4-D bottom (num, channels, height, width), got {list(shape)}")
    n, c, h, w = shape
    if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        # Caffe's padded_square buffer holds (channels + local_size - 1) x height x width values; ninport's pads
        # the whole batch the same way.
        _limit(layer, n * (c + p.local_size - 1) * h * w, f"the channel-padded buffer of local_size {p.local_size}")
    else:
        pad = (p.local_size - 1) // 2
        _limit(layer, n * c * (h + 2 * pad) * (w + 2 * pad), f"the padded window buffer of local_size {p.local_size}")
    for name in ("alpha", "beta", "k"):
        if not math.isfinite(getattr(p, name)):
            raise _fail(layer, f"{name} must be finite, got {getattr(p, name)}")


def _limit(layer: Layer, count: int, what: str) -> None:
    if count > INT_MAX:
        raise _fail(layer, f"{what} would hold {count:,} values, more than a Caffe blob can (2^31 - 1)")


def _dropout(layer: Layer, bottoms: list[Shape]) -> None:
    ratio = layer.param.dropout_param.dropout_ratio
    # dropout_layer.cpp: the ratio is a probability below 1 (scale 1 / (1 - ratio)).
    if not (math.isfinite(ratio) and 0.0 <= ratio < 1.0):
        raise _fail(layer, f"dropout_ratio must be in [0, 1), got {ratio}")


def _flatten(layer: Layer, bottoms: list[Shape]) -> None:
    p = layer.param.flatten_param
    ndim = len(bottoms[0])
    for name, axis in (("axis", p.axis), ("end_axis", p.end_axis)):
        if not -ndim <= axis < ndim:
            raise _fail(layer, f"{name} {axis} is out of range for a {ndim}-D bottom")
    start, end = p.axis % ndim, p.end_axis % ndim
    # flatten_layer.cpp counts the axes start..end_axis, which Blob::count allows down to end_axis = axis - 1.
    if end < start - 1:
        raise _fail(layer, f"end_axis {p.end_axis} comes before axis {p.axis} of a {ndim}-D bottom")


def _base(layer: Layer, what: str, base: float) -> None:
    # exp_layer.cpp and log_layer.cpp: "base must be strictly positive" (or -1 for e).
    if not (base == -1 or (math.isfinite(base) and base > 0)):
        raise _fail(layer, f"{what} base {base:g} must be positive, or -1 for e")


def _exp(layer: Layer, bottoms: list[Shape]) -> None:
    _base(layer, "exp", layer.param.exp_param.base)


def _log(layer: Layer, bottoms: list[Shape]) -> None:
    _base(layer, "log", layer.param.log_param.base)


def _reshape(layer: Layer, bottoms: list[Shape]) -> None:
    dims = list(layer.param.reshape_param.shape.dim)
    # reshape_layer.cpp, LayerSetUp: 0 copies a bottom axis, one -1 is inferred, other sizes are taken as given
    # (and Blob::Reshape refuses negative ones).
    if any(d < -1 for d in dims) or dims.count(-1) > 1:
        raise _fail(layer, f"reshape dims {_cut(str(dims))} may hold sizes, 0 (copy) and one -1 (infer) only")
    if len(dims) > MAX_AXES:
        raise _fail(layer, f"reshape has {len(dims)} dims, more than Caffe's {MAX_AXES}")


def _input(layer: Layer, bottoms: list[Shape]) -> None:
    for top, shape in zip(layer.tops, layer.param.input_param.shape):
        if not len(shape.dim):
            raise _fail(layer, f"input {_cut(top)!r} has an empty shape; ninport needs at least a batch axis")


PARAM_CHECKS = {
    "Convolution": _conv,
    "Deconvolution": _conv,
    "Pooling": _pooling,
    "LRN": _lrn,
    "Dropout": _dropout,
    "Flatten": _flatten,
    "Exp": _exp,
    "Log": _log,
    "Input": _input,
    "Reshape": _reshape,
}


def check_layer(layer: Layer, bottoms: list[Shape]) -> None:
    """Everything Caffe checks of a layer before its Reshape: counts, then parameter ranges."""
    check_counts(layer)
    check = PARAM_CHECKS.get(layer.type)
    if check is not None:
        check(layer, bottoms)


def check_shape(layer: Layer, shape: Shape, what: str) -> None:
    """Blob::Reshape's limits on a top or a weight blob; zero sizes are refused too (nothing to convert)."""
    if len(shape) > MAX_AXES:
        raise _fail(layer, f"{what} has {len(shape)} axes, more than Caffe's {MAX_AXES}")
    count = 1
    for d in shape:
        if d < 1:
            raise _fail(layer, f"{what} would have shape {_cut(str(list(shape)))}: every size must be positive")
        count *= d
    if count > INT_MAX:
        raise _fail(layer, f"{what} of shape {_cut(str(list(shape)))} holds {count:,} values, more than a Caffe "
                           "blob can (2^31 - 1)")


def check_result(layer: Layer, bottoms: list[Shape], tops: list[Shape], params: list[Shape]) -> None:
    """Limits on what a shape rule produced, and on the working buffers Caffe (or ninport) allocate for it."""
    for i, shape in enumerate(tops):
        check_shape(layer, shape, f"top {i}")
    for i, shape in enumerate(params):
        check_shape(layer, shape, f"weight blob {i}")
    if layer.type in ("Convolution", "Deconvolution") and tops and bottoms:
        p = layer.param.convolution_param
        axis = p.axis % len(bottoms[0])
        spatial = bottoms[0][axis + 1:] if layer.type == "Deconvolution" else tops[0][axis + 1:]
        channels = p.num_output if layer.type == "Deconvolution" else bottoms[0][axis]
        kernel = params[0][2:] if params else ()
        count = channels * math.prod(kernel) * math.prod(spatial)
        # base_conv_layer.cpp: the im2col buffer is (channels x kernel) x output positions.
        _limit(layer, count, "the im2col buffer")
    if layer.type == "Pooling" and tops and bottoms and len(bottoms[0]) == 4:
        from ninport.caffe.shapes import pooling_geometry

        kernel, stride, _pad, out = pooling_geometry(layer.param.pooling_param, layer, bottoms[0])
        n, c = bottoms[0][:2]
        extent = math.prod((o - 1) * s + k for o, s, k in zip(out, stride, kernel))
        # ninport pools a padded copy of the input whose size is what the last window reaches.
        _limit(layer, n * c * extent, "the padded pooling input")


def _cut(text: str, limit: int = 80) -> str:
    """A name or value quoted in an error line, cut to a sane length."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"
