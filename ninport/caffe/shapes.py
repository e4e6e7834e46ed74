"""Caffe's shape arithmetic, without torch: the top shapes and the weight shapes of every layer.

Each rule follows the ``Reshape``/``LayerSetUp`` of the Caffe layer it names (``src/caffe/layers/*.cpp`` in
BVLC Caffe). A rule takes the layer and its bottom shapes and returns a ``LayerShapes``: the shape of each
top, the expected shape of each learnable blob, and the multiply-accumulates of one forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ninport.caffe import caffe_pb2
from ninport.caffe.checks import check_layer, check_result
from ninport.caffe.net import Layer, Net
from ninport.errors import NetError, ShapeError, UnsupportedLayerError

Shape = tuple[int, ...]


@dataclass
class LayerShapes:
    tops: list[Shape]
    params: list[Shape] = field(default_factory=list)
    macs: int = 0


Rule = Callable[[Layer, list[Shape]], LayerShapes]
RULES: dict[str, Rule] = {}


def rule(*types: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for t in types:
            RULES[t] = fn
        return fn

    return register


def _count(shape: Shape) -> int:
    return math.prod(int(d) for d in shape)  # Python integers: no silent int64 wrap-around


def _axis(axis: int, ndim: int, layer: Layer, what: str = "axis") -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"layer {layer.name!r}: {what} {axis} is out of range for a {ndim}-D bottom")
    return axis % ndim


def _spatial(values, single_h, single_w, has_h: bool, n: int, default: int, what: str, layer: Layer) -> list[int]:
    """Read a kernel/stride/pad/dilation that Caffe accepts as a repeated field or as ``_h``/``_w``."""
    if has_h:
        if n != 2:
            raise ShapeError(f"layer {layer.name!r}: {what}_h/{what}_w only apply to 2-D spatial input")
        return [int(single_h), int(single_w)]
    values = list(values)
    if not values:
        return [default] * n
    if len(values) == 1:
        return [int(values[0])] * n
    if len(values) != n:
        raise ShapeError(f"layer {layer.name!r}: {what} has {len(values)} values for {n} spatial dims")
    return [int(v) for v in values]


def conv_geometry(p: caffe_pb2.ConvolutionParameter, layer: Layer, n: int) -> tuple[list[int], ...]:
    kernel = _spatial(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h") or p.HasField("kernel_w"),
                      n, 0, "kernel", layer)
    if any(k <= 0 for k in kernel):
        raise ShapeError(f"layer {layer.name!r}: kernel size must be positive, got {kernel}")
    stride = _spatial(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h") or p.HasField("stride_w"),
                      n, 1, "stride", layer)
    pad = _spatial(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), n, 0, "pad", layer)
    dilation = _spatial(p.dilation, 0, 0, False, n, 1, "dilation", layer)
    return kernel, stride, pad, dilation


def _conv_common(layer: Layer, bottoms: list[Shape], deconv: bool) -> LayerShapes:
    p = layer.param.convolution_param
    (shape,) = bottoms[:1]
    axis = _axis(p.axis, len(shape), layer)
    n = len(shape) - axis - 1
    kernel, stride, pad, dilation = conv_geometry(p, layer, n)
    channels = shape[axis]
    group = p.group or 1
    if channels % group or p.num_output % group:
        raise ShapeError(
            f"layer {layer.name!r}: {channels} input and {p.num_output} output channels "
            f"do not divide into {group} groups"
        )
    out_spatial = []
    for size, k, s, pd, d in zip(shape[axis + 1 :], kernel, stride, pad, dilation):
        extent = d * (k - 1) + 1
        if deconv:
            out_spatial.append(s * (size - 1) + extent - 2 * pd)
        else:
            out_spatial.append((size + 2 * pd - extent) // s + 1)
    if any(o <= 0 for o in out_spatial):
        raise ShapeError(
            f"layer {layer.name!r}: input {list(shape)} is too small for kernel {kernel}, stride {stride}, "
            f"pad {pad} (output {out_spatial})"
        )
    top = tuple(shape[: axis + 1]) + tuple(out_spatial)
    top = top[:axis] + (p.num_output,) + top[axis + 1 :]
    if deconv:
        weight = (channels, p.num_output // group, *kernel)
        macs = _count(shape) * (p.num_output // group) * _count(tuple(kernel))
    else:
        weight = (p.num_output, channels // group, *kernel)
        macs = _count(top) * (channels // group) * _count(tuple(kernel))
    params = [weight] + ([(p.num_output,)] if p.bias_term else [])
    return LayerShapes([top] * len(layer.tops), params, macs * len(layer.tops))


@rule("Convolution")
def _convolution(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    # Caffe runs every bottom through the same filters; each gives one top.
    return _conv_common(layer, bottoms, deconv=False)


@rule("Deconvolution")
def _deconvolution(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    return _conv_common(layer, bottoms, deconv=True)


def pooling_geometry(p: caffe_pb2.PoolingParameter, layer: Layer, shape: Shape) -> tuple[list[int], ...]:
    """Kernel, stride, pad and output size of a 2-D Caffe pooling (pooling_layer.cpp, LayerSetUp/Reshape)."""
    if len(shape) != 4:
        raise ShapeError(f"layer {layer.name!r}: pooling needs a 4-D bottom, got {list(shape)}")
    height, width = shape[2], shape[3]
    if p.global_pooling:
        kernel, stride, pad = [height, width], [1, 1], [0, 0]
        if p.HasField("pad") or p.HasField("pad_h") or p.HasField("pad_w"):
            if p.pad or p.pad_h or p.pad_w:
                raise ShapeError(f"layer {layer.name!r}: global pooling does not take padding")
    else:
        if p.HasField("kernel_h") or p.HasField("kernel_w"):
            kernel = [p.kernel_h, p.kernel_w]
        elif p.HasField("kernel_size"):
            kernel = [p.kernel_size] * 2
        else:
            raise ShapeError(f"layer {layer.name!r}: pooling needs kernel_size or kernel_h/kernel_w")
        pad = [p.pad_h, p.pad_w] if (p.HasField("pad_h") or p.HasField("pad_w")) else [p.pad] * 2
        stride = [p.stride_h, p.stride_w] if (p.HasField("stride_h") or p.HasField("stride_w")) else [p.stride] * 2
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride):
        raise ShapeError(f"layer {layer.name!r}: pooling kernel {kernel} and stride {stride} must be positive")
    if any(pd >= k for pd, k in zip(pad, kernel)):
        raise ShapeError(f"layer {layer.name!r}: pooling pad {pad} must be smaller than kernel {kernel}")
    if any(pad) and p.pool == caffe_pb2.PoolingParameter.STOCHASTIC:
        # pooling_layer.cpp, LayerSetUp: "Padding implemented only for average and max pooling."
        raise ShapeError(f"layer {layer.name!r}: STOCHASTIC pooling takes no padding (pad {pad})")
    out = []
    for size, k, s, pd in zip((height, width), kernel, stride, pad):
        span = size + 2 * pd - k
        # round_mode CEIL (the default) rounds up; FLOOR was added upstream later.
        o = (math.floor(span / s) if p.round_mode == caffe_pb2.PoolingParameter.FLOOR else math.ceil(span / s)) + 1
        out.append(o)
    if pad[0] or pad[1]:
        # The last window must start inside the image (or its left/top padding), else it is dropped.
        for i, (size, s, pd) in enumerate(zip((height, width), stride, pad)):
            if (out[i] - 1) * s >= size + pd:
                out[i] -= 1
    if any(o <= 0 for o in out):
        raise ShapeError(f"layer {layer.name!r}: input {list(shape)} is smaller than pooling kernel {kernel}")
    return kernel, stride, pad, out


@rule("Pooling")
def _pooling(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    shape = bottoms[0]
    _, _, _, out = pooling_geometry(layer.param.pooling_param, layer, shape)
    top = (shape[0], shape[1], *out)
    # A second top (the argmax mask of MAX pooling) has the same shape.
    return LayerShapes([top] * len(layer.tops))


@rule("InnerProduct")
def _inner_product(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.inner_product_param
    shape = bottoms[0]
    axis = _axis(p.axis, len(shape), layer)
    k = _count(shape[axis:])
    top = tuple(shape[:axis]) + (p.num_output,)
    weight = (k, p.num_output) if p.transpose else (p.num_output, k)
    params = [weight] + ([(p.num_output,)] if p.bias_term else [])
    return LayerShapes([top], params, _count(shape[:axis]) * k * p.num_output)


@rule(
    "ReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log", "Threshold", "Clip", "Swish",
    "Dropout", "LRN", "Softmax", "Split",
)
def _same_shape(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    if layer.type == "Softmax":
        _axis(layer.param.softmax_param.axis, len(bottoms[0]), layer)
    return LayerShapes([bottoms[0]] * len(layer.tops))


@rule("MVN")
def _mvn(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    # mvn_layer.cpp reshapes the top with the legacy accessors (num, channels, height, width): a bottom of
    # fewer axes gets a 4-D top padded with 1s, and more than 4 axes is an error in Caffe.
    shape = bottoms[0]
    if len(shape) > 4:
        raise ShapeError(f"layer {layer.name!r}: MVN takes at most 4 axes (Caffe's legacy shape), got {list(shape)}")
    return LayerShapes([tuple(shape) + (1,) * (4 - len(shape))])


@rule("PReLU")
def _prelu(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    shape = bottoms[0]
    if len(shape) < 2:
        raise ShapeError(f"layer {layer.name!r}: PReLU needs at least 2 axes, got {list(shape)}")
    # channel_shared: one slope in a 0-axis blob (prelu_layer.cpp makes it with an empty shape vector)
    return LayerShapes([shape], [() if layer.param.prelu_param.channel_shared else (shape[1],)])


@rule("BatchNorm")
def _batch_norm(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    shape = bottoms[0]
    channels = shape[1] if len(shape) > 1 else 1
    # mean, variance, and the moving-average scale factor (batch_norm_layer.cpp)
    return LayerShapes([shape], [(channels,), (channels,), (1,)])


def _broadcast_shape(layer: Layer, shape: Shape, axis: int, num_axes: int, what: str) -> Shape:
    axis = _axis(axis, len(shape), layer) if shape else 0
    if num_axes == -1:
        return tuple(shape[axis:])
    if num_axes < -1 or axis + num_axes > len(shape):
        raise ShapeError(f"layer {layer.name!r}: {what} axis {axis} num_axes {num_axes} exceed {list(shape)}")
    return tuple(shape[axis : axis + num_axes])


def _check_second_bottom(layer: Layer, shape: Shape, other: Shape, axis: int, what: str) -> None:
    """The two-bottom Scale/Bias: the second bottom must equal the first's dims from ``axis`` on."""
    axis = _axis(axis, len(shape), layer) if other else 0
    if tuple(shape[axis : axis + len(other)]) != tuple(other):
        raise ShapeError(
            f"layer {layer.name!r}: {what} bottom {list(other)} does not match {list(shape)} from axis {axis}"
        )


@rule("Scale")
def _scale(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.scale_param
    shape = bottoms[0]
    if len(bottoms) > 1:
        _check_second_bottom(layer, shape, bottoms[1], p.axis, "scale")
        return LayerShapes([shape], [bottoms[1]] if p.bias_term else [], 0)
    scale = _broadcast_shape(layer, shape, p.axis, p.num_axes, "scale")
    return LayerShapes([shape], [scale] + ([scale] if p.bias_term else []), 0)


@rule("Bias")
def _bias(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.bias_param
    shape = bottoms[0]
    if len(bottoms) > 1:
        _check_second_bottom(layer, shape, bottoms[1], p.axis, "bias")
        return LayerShapes([shape])
    return LayerShapes([shape], [_broadcast_shape(layer, shape, p.axis, p.num_axes, "bias")])


@rule("Eltwise")
def _eltwise(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    if len(bottoms) < 2:
        raise ShapeError(f"layer {layer.name!r}: Eltwise needs at least 2 bottoms, got {len(bottoms)}")
    for other in bottoms[1:]:
        if other != bottoms[0]:
            raise ShapeError(f"layer {layer.name!r}: Eltwise bottoms differ in shape: {[list(b) for b in bottoms]}")
    p = layer.param.eltwise_param
    if p.coeff and len(p.coeff) != len(bottoms):
        raise ShapeError(f"layer {layer.name!r}: {len(p.coeff)} coeff values for {len(bottoms)} bottoms")
    if p.coeff and p.operation == caffe_pb2.EltwiseParameter.PROD:
        # eltwise_layer.cpp, LayerSetUp: "Eltwise layer only takes coefficients for summation."
        raise ShapeError(f"layer {layer.name!r}: Eltwise PROD takes no coeff (Caffe allows them only for SUM)")
    return LayerShapes([bottoms[0]])


@rule("Concat")
def _concat(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.concat_param
    if p.HasField("axis") and p.HasField("concat_dim"):
        raise ShapeError(f"layer {layer.name!r}: Concat takes axis or concat_dim, not both")
    first = bottoms[0]
    # The legacy concat_dim counts only when axis is not given (concat_layer.cpp).
    axis = _axis(p.concat_dim if p.HasField("concat_dim") and not p.HasField("axis") else p.axis, len(first), layer)
    total = 0
    for b in bottoms:
        if len(b) != len(first) or any(b[i] != first[i] for i in range(len(first)) if i != axis):
            raise ShapeError(
                f"layer {layer.name!r}: Concat bottoms {[list(x) for x in bottoms]} differ outside axis {axis}"
            )
        total += b[axis]
    return LayerShapes([first[:axis] + (total,) + first[axis + 1 :]])


def slice_axis(layer: Layer, shape: Shape) -> int:
    """The axis a Slice cuts: ``slice_dim`` (legacy, never negative) or ``axis`` (slice_layer.cpp)."""
    p = layer.param.slice_param
    if p.HasField("slice_dim") and p.HasField("axis"):
        raise ShapeError(f"layer {layer.name!r}: Slice takes axis or slice_dim, not both")
    if p.HasField("slice_dim"):
        if p.slice_dim >= len(shape):
            raise ShapeError(f"layer {layer.name!r}: slice_dim {p.slice_dim} is out of range for {list(shape)}")
        return int(p.slice_dim)
    return _axis(p.axis, len(shape), layer)


@rule("Slice")
def _slice(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.slice_param
    shape = bottoms[0]
    axis = slice_axis(layer, shape)
    size = shape[axis]
    count = len(layer.tops)
    if p.slice_point:
        if len(p.slice_point) != count - 1:
            raise ShapeError(f"layer {layer.name!r}: {len(p.slice_point)} slice points for {count} tops")
        points = [0, *p.slice_point, size]
        if any(b <= a for a, b in zip(points, points[1:])):
            raise ShapeError(f"layer {layer.name!r}: slice points {list(p.slice_point)} do not split {size}")
        sizes = [b - a for a, b in zip(points, points[1:])]
    else:
        if size % count:
            raise ShapeError(f"layer {layer.name!r}: axis of size {size} does not split into {count} equal tops")
        sizes = [size // count] * count
    return LayerShapes([shape[:axis] + (s,) + shape[axis + 1 :] for s in sizes])


@rule("Flatten")
def _flatten(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.flatten_param
    shape = bottoms[0]
    start = _axis(p.axis, len(shape), layer)
    end = _axis(p.end_axis, len(shape), layer, "end_axis")
    return LayerShapes([shape[:start] + (_count(shape[start : end + 1]),) + shape[end + 1 :]])


@rule("Reshape")
def _reshape(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.reshape_param
    shape = bottoms[0]
    ndim = len(shape)
    start = p.axis if p.axis >= 0 else p.axis + ndim + 1
    if not 0 <= start <= ndim:
        raise ShapeError(f"layer {layer.name!r}: reshape axis {p.axis} out of range for {list(shape)}")
    if p.num_axes < -1:
        raise ShapeError(f"layer {layer.name!r}: reshape num_axes must be >= 0, or -1 for all; got {p.num_axes}")
    end = ndim if p.num_axes == -1 else start + p.num_axes
    if end > ndim:
        raise ShapeError(f"layer {layer.name!r}: reshape num_axes {p.num_axes} exceeds {list(shape)}")
    dims = list(p.shape.dim)
    new: list[int] = []
    infer = -1
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise ShapeError(f"layer {layer.name!r}: reshape dim {i} copies an axis the bottom lacks")
            new.append(shape[start + i])
        elif d == -1:
            if infer >= 0:
                raise ShapeError(f"layer {layer.name!r}: reshape has more than one -1")
            infer = len(new)
            new.append(1)
        else:
            new.append(int(d))
    top = list(shape[:start]) + new + list(shape[end:])
    if infer >= 0:
        known = _count(tuple(top))
        if _count(shape) % known:
            raise ShapeError(f"layer {layer.name!r}: cannot reshape {list(shape)} to {dims}")
        top[start + infer] = _count(shape) // known
    if _count(tuple(top)) != _count(shape):
        raise ShapeError(f"layer {layer.name!r}: reshape of {list(shape)} to {top} changes the element count")
    return LayerShapes([tuple(top)])


@rule("Crop")
def _crop(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.crop_param
    if len(bottoms) != 2:
        raise ShapeError(f"layer {layer.name!r}: Crop needs two bottoms, got {len(bottoms)}")
    shape, ref = bottoms
    axis = _axis(p.axis, len(shape), layer)
    if len(p.offset) > 1 and axis + len(p.offset) != len(shape):
        # crop_layer.cpp, LayerSetUp: several offsets must cover exactly the axes from ``axis`` on.
        raise ShapeError(
            f"layer {layer.name!r}: {len(p.offset)} crop offsets for the {len(shape) - axis} axes from axis {axis}"
        )
    if len(ref) != len(shape):
        raise ShapeError(f"layer {layer.name!r}: Crop bottoms {list(shape)} and {list(ref)} differ in axes")
    top = list(shape)
    for i in range(axis, len(shape)):
        offset = 0
        if len(p.offset) == 1:
            offset = p.offset[0]
        elif len(p.offset) > 1:
            offset = p.offset[i - axis]
        if offset + ref[i] > shape[i]:
            raise ShapeError(f"layer {layer.name!r}: crop of {ref[i]} at offset {offset} exceeds {shape[i]}")
        top[i] = ref[i]
    return LayerShapes([tuple(top)])


@rule("ArgMax")
def _argmax(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.argmax_param
    shape = bottoms[0]
    if p.top_k < 1:
        raise ShapeError(f"layer {layer.name!r}: ArgMax top_k must be at least 1")
    if p.HasField("axis"):
        axis = _axis(p.axis, len(shape), layer)
        if p.top_k > shape[axis]:
            raise ShapeError(f"layer {layer.name!r}: ArgMax top_k {p.top_k} exceeds axis {axis} of {list(shape)}")
        return LayerShapes([shape[:axis] + (p.top_k,) + shape[axis + 1 :]])
    # argmax_layer.cpp: max(num_axes, 3) axes, all 1 except N, (1 or 2) and top_k.
    if p.top_k > _count(shape[1:]):
        raise ShapeError(
            f"layer {layer.name!r}: ArgMax top_k {p.top_k} exceeds the {_count(shape[1:])} values per item"
        )
    top = [1] * max(len(shape), 3)
    top[0], top[1], top[2] = shape[0], 2 if p.out_max_val else 1, p.top_k
    return LayerShapes([tuple(top)])


@rule("Reduction")
def _reduction(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    shape = bottoms[0]
    axis = _axis(layer.param.reduction_param.axis, len(shape), layer) if shape else 0
    return LayerShapes([shape[:axis]])


@rule("Tile")
def _tile(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.tile_param
    shape = bottoms[0]
    axis = _axis(p.axis, len(shape), layer)
    if not p.HasField("tiles") or p.tiles <= 0:
        raise ShapeError(f"layer {layer.name!r}: Tile needs a positive number of tiles")
    return LayerShapes([shape[:axis] + (shape[axis] * p.tiles,) + shape[axis + 1 :]])


@rule("Embed")
def _embed(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    p = layer.param.embed_param
    if p.num_output <= 0 or p.input_dim <= 0:
        raise ShapeError(f"layer {layer.name!r}: Embed needs positive num_output and input_dim")
    params = [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])
    return LayerShapes([bottoms[0] + (p.num_output,)], params)


@rule("Parameter")
def _parameter(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    shape = tuple(int(d) for d in layer.param.parameter_param.shape.dim)
    return LayerShapes([shape], [shape])


@rule("Silence")
def _silence(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    return LayerShapes([])


@rule("Input")
def _input(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    shapes = [tuple(int(d) for d in s.dim) for s in layer.param.input_param.shape]
    return LayerShapes(shapes)


@rule(
    "SoftmaxWithLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss",
    "SigmoidCrossEntropyLoss", "ContrastiveLoss", "Accuracy",
)
def _loss(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
    # Losses and accuracy give a scalar (Accuracy's optional second top is per class; rare).
    return LayerShapes([()] * len(layer.tops))


# ---------------------------------------------------------------------------------------------------------


@dataclass
class NetShapes:
    """Shapes of every blob version, and per layer its expected weight shapes and MACs."""

    blobs: dict[str, Shape]
    layers: dict[str, LayerShapes]

    def params(self) -> int:
        return sum(_count(s) for ls in self.layers.values() for s in ls.params)

    def macs(self) -> int:
        return sum(ls.macs for ls in self.layers.values())


def unknown_layers(net: Net, known: set[str] | None = None) -> list[tuple[str, str, str]]:
    known = set(RULES) if known is None else known
    return [(layer.name, layer.type, net.where(layer)) for layer in net.layers
            if layer.type not in known or not layer_known(layer)]


def layer_known(layer: Layer) -> bool:
    """False for a layer whose type has a rule for other instances only: a Python layer whose module ninport
    does not implement (only py-faster-rcnn's proposal layer), unless a plugin replaced the Python rule."""
    if layer.type != "Python" or getattr(RULES.get("Python"), "__module__", "") != "ninport.caffe.fork_shapes":
        return True
    from ninport.caffe.fork_shapes import PROPOSAL_MODULES

    python = layer.param.python_param
    return (python.module, python.layer) in PROPOSAL_MODULES


_plugins_loaded = False


def _load_plugin_rules() -> bool:
    """Load the ``ninport.layers`` entry points once, for their shape rules; True when there were any.

    Only reached for a type no built-in rule knows, so ``ninport inspect`` of an ordinary net never imports
    plugin code (which usually imports torch).
    """
    global _plugins_loaded
    if _plugins_loaded:
        return False
    _plugins_loaded = True
    from importlib.metadata import entry_points

    if not list(entry_points(group="ninport.layers")):
        return False
    from ninport.torch.registry import converters

    converters()
    return True


def infer_shapes(net: Net) -> NetShapes:
    """Run Caffe's shape rules through the net in order; every unknown layer type is reported at once."""
    missing = unknown_layers(net)
    if missing and _load_plugin_rules():
        missing = unknown_layers(net)
    if missing:
        raise UnsupportedLayerError(missing)
    blobs: dict[str, Shape] = {}
    per_layer: dict[str, LayerShapes] = {}
    for layer in net.layers:
        bottoms = [blobs[b] for b in layer.bottoms]
        try:
            check_layer(layer, bottoms)  # Caffe's own refusals first (ninport.caffe.checks)
            shapes = RULES[layer.type](layer, bottoms)
            if len(shapes.tops) == len(layer.tops):
                check_result(layer, bottoms, shapes.tops, shapes.params)
        except ShapeError as exc:
            raise ShapeError(f"{net.where(layer)}: {exc}") from None
        except NetError as exc:
            raise NetError(f"{net.where(layer)}: {exc}") from None
        except (ValueError, IndexError) as exc:
            raise NetError(f"{net.where(layer)}: layer {layer.name!r} ({layer.type}): {exc}") from None
        if len(shapes.tops) != len(layer.tops):
            raise NetError(
                f"{net.where(layer)}: layer {layer.name!r} ({layer.type}) has {len(layer.tops)} tops, "
                f"Caffe's rule gives {len(shapes.tops)}"
            )
        for top, shape in zip(layer.tops, shapes.tops):
            blobs[top] = tuple(int(d) for d in shape)
        per_layer[layer.name] = shapes
    return NetShapes(blobs, per_layer)


# Rules of fork families, one file each; imported last so they can use the helpers above, and so registering
# them here.
from ninport.caffe import fork_shapes, ssd  # noqa: E402, F401
