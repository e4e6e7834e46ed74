"""Bring every form of Caffe net definition to one list of V2 layers, then to a normalized ``Net``.

The steps follow Caffe's own ``upgrade_proto.cpp`` and ``net.cpp``: V0 (``layers { layer { ... } }``) and V1
(``layers { type: CONVOLUTION }``) become V2 ``LayerParameter``; net-level ``input``/``input_dim``/``input_shape``
become an ``Input`` layer; phase rules are applied; a train_val file gets its deploy view; in-place layers are
renamed so each blob version has one writer.
"""

from __future__ import annotations

from collections.abc import Sequence

from ninport.caffe import caffe_pb2
from ninport.caffe.net import Layer, Net
from ninport.caffe.prototxt import LayerBlock
from ninport.errors import NetError

V1 = caffe_pb2.V1LayerParameter

# V1 enum name -> V2 type string (Caffe: UpgradeV1LayerType in upgrade_proto.cpp).
V1_TO_V2_TYPE = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "INTERP": "Interp",  # DeepLab v1 (its caffe.proto: INTERP = 41; in the superset schema)
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# V0 type strings -> V2 type strings (Caffe: UpgradeV0LayerType).
V0_TO_V2_TYPE = {
    "accuracy": "Accuracy",
    "bnll": "BNLL",
    "concat": "Concat",
    "conv": "Convolution",
    "data": "Data",
    "dropout": "Dropout",
    "euclidean_loss": "EuclideanLoss",
    "flatten": "Flatten",
    "hdf5_data": "HDF5Data",
    "hdf5_output": "HDF5Output",
    "im2col": "Im2col",
    "images": "ImageData",
    "infogain_loss": "InfogainLoss",
    "innerproduct": "InnerProduct",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MultinomialLogisticLoss",
    "pool": "Pooling",
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "softmax": "Softmax",
    "softmax_loss": "SoftmaxWithLoss",
    "split": "Split",
    "tanh": "TanH",
    "window_data": "WindowData",
}

DATA_LAYER_TYPES = {
    "Data",
    "ImageData",
    "HDF5Data",
    "WindowData",
    "MemoryData",
    "DummyData",
    "AnnotatedData",
    "VideoData",
    "DenseImageData",  # SegNet's fork
}
# Layers a deploy view drops: they need labels and produce training signals.
TRAINING_ONLY_TYPES = {"Accuracy", "HDF5Output", "DetectionEvaluate"}  # the last: SSD fork's mAP layer


def is_loss_type(layer_type: str) -> bool:
    return layer_type.endswith("Loss")


# --------------------------------------------------------------------------------------------------------
# V0 and V1 to V2


def _transform_from_v0(v0: caffe_pb2.V0LayerParameter, out: caffe_pb2.LayerParameter) -> None:
    t = out.transform_param
    if v0.HasField("scale"):
        t.scale = v0.scale
    if v0.HasField("meanfile"):
        t.mean_file = v0.meanfile
    if v0.HasField("cropsize"):
        t.crop_size = v0.cropsize
    if v0.HasField("mirror"):
        t.mirror = v0.mirror
    if not t.ListFields():
        out.ClearField("transform_param")


def _v0_to_v2(v0: caffe_pb2.V0LayerParameter, out: caffe_pb2.LayerParameter, where: str) -> None:
    """Fill ``out`` from a V0 layer, as Caffe's UpgradeV0LayerParameter does for the fields each type uses."""
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if kind == "padding":
        out.type = "Padding"  # folded into the next layer by _fold_v0_padding
        out.convolution_param.pad.append(v0.pad)
        return
    if kind not in V0_TO_V2_TYPE:
        raise NetError(f"{where}: layer {v0.name!r} has V0 type {kind!r}, which Caffe's upgrade does not know")
    out.type = V0_TO_V2_TYPE[kind]
    out.blobs.extend(v0.blobs)
    for i in range(max(len(v0.blobs_lr), len(v0.weight_decay))):
        spec = out.param.add()
        if i < len(v0.blobs_lr):
            spec.lr_mult = v0.blobs_lr[i]
        if i < len(v0.weight_decay):
            spec.decay_mult = v0.weight_decay[i]
    if kind == "conv":
        p = out.convolution_param
        p.num_output = v0.num_output
        p.bias_term = v0.biasterm
        if v0.HasField("weight_filler"):
            p.weight_filler.CopyFrom(v0.weight_filler)
        if v0.HasField("bias_filler"):
            p.bias_filler.CopyFrom(v0.bias_filler)
        if v0.HasField("pad"):
            p.pad.append(v0.pad)
        p.kernel_size.append(v0.kernelsize)
        if v0.HasField("group"):
            p.group = v0.group
        if v0.HasField("stride"):
            p.stride.append(v0.stride)
    elif kind == "innerproduct":
        p = out.inner_product_param
        p.num_output = v0.num_output
        p.bias_term = v0.biasterm
        if v0.HasField("weight_filler"):
            p.weight_filler.CopyFrom(v0.weight_filler)
        if v0.HasField("bias_filler"):
            p.bias_filler.CopyFrom(v0.bias_filler)
    elif kind == "pool":
        p = out.pooling_param
        p.pool = v0.pool  # same enum values: MAX 0, AVE 1, STOCHASTIC 2
        p.kernel_size = v0.kernelsize
        if v0.HasField("stride"):
            p.stride = v0.stride
        if v0.HasField("pad"):
            p.pad = v0.pad
    elif kind == "dropout":
        out.dropout_param.dropout_ratio = v0.dropout_ratio
    elif kind == "lrn":
        p = out.lrn_param
        p.local_size, p.alpha, p.beta, p.k = v0.local_size, v0.alpha, v0.beta, v0.k
    elif kind == "data":
        p = out.data_param
        p.source, p.batch_size, p.rand_skip = v0.source, v0.batchsize, v0.rand_skip
        _transform_from_v0(v0, out)
    elif kind == "images":
        p = out.image_data_param
        p.source, p.batch_size, p.rand_skip = v0.source, v0.batchsize, v0.rand_skip
        p.shuffle, p.new_height, p.new_width = v0.shuffle_images, v0.new_height, v0.new_width
        _transform_from_v0(v0, out)
    elif kind == "hdf5_data":
        out.hdf5_data_param.source = v0.source
        out.hdf5_data_param.batch_size = v0.batchsize
    elif kind == "window_data":
        p = out.window_data_param
        p.source, p.batch_size = v0.source, v0.batchsize
        p.fg_threshold, p.bg_threshold = v0.det_fg_threshold, v0.det_bg_threshold
        p.fg_fraction, p.context_pad, p.crop_mode = v0.det_fg_fraction, v0.det_context_pad, v0.det_crop_mode
        _transform_from_v0(v0, out)
    elif kind == "concat":
        out.concat_param.axis = v0.concat_dim
    elif kind == "hdf5_output":
        out.hdf5_output_param.CopyFrom(v0.hdf5_output_param)


def _v1_to_v2(v1: caffe_pb2.V1LayerParameter, where: str) -> caffe_pb2.LayerParameter:
    out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("layer"):  # a V0 layer wrapped in V1's bottom/top
        _v0_to_v2(v1.layer, out, where)
        return out
    out.name = v1.name
    enum_name = V1.LayerType.Name(v1.type) if v1.type in V1.LayerType.values() else str(v1.type)
    if enum_name not in V1_TO_V2_TYPE:
        raise NetError(f"{where}: layer {v1.name!r} has V1 type {enum_name}, which has no V2 equivalent")
    out.type = V1_TO_V2_TYPE[enum_name]
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    out.loss_weight.extend(v1.loss_weight)
    out.blobs.extend(v1.blobs)
    count = max(len(v1.param), len(v1.blobs_lr), len(v1.weight_decay), len(v1.blob_share_mode))
    for i in range(count):
        spec = out.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for descriptor, value in v1.ListFields():
        if descriptor.name.endswith("_param") and descriptor.name in out.DESCRIPTOR.fields_by_name:
            getattr(out, descriptor.name).CopyFrom(value)
    return out


def _move_deprecated_transform(layer: caffe_pb2.LayerParameter) -> None:
    """Old data parameters carried scale/mean_file/crop_size/mirror; Caffe moves them to transform_param."""
    for param_name in ("data_param", "image_data_param", "window_data_param"):
        if not layer.HasField(param_name):
            continue
        p = getattr(layer, param_name)
        for f in ("scale", "mean_file", "crop_size", "mirror"):
            if f in p.DESCRIPTOR.fields_by_name and p.HasField(f):
                setattr(layer.transform_param, f, getattr(p, f))
                p.ClearField(f)


def _fold_v0_padding(layers: list[tuple[caffe_pb2.LayerParameter, int | None]], source: str) -> None:
    """V0 nets wrote padding as its own layer; Caffe folds it into the conv or pool that reads its output."""
    i = 0
    while i < len(layers):
        layer, line = layers[i]
        if layer.type != "Padding":
            i += 1
            continue
        pad = layer.convolution_param.pad[0]
        consumers = [c for c, _ in layers if layer.top and layer.top[0] in c.bottom]
        for consumer in consumers:
            if consumer.type == "Convolution":
                del consumer.convolution_param.pad[:]
                consumer.convolution_param.pad.append(pad)
            elif consumer.type == "Pooling":
                consumer.pooling_param.pad = pad
            else:
                raise NetError(f"{source}:{line}: V0 padding layer {layer.name!r} feeds a {consumer.type} layer")
            consumer.bottom[list(consumer.bottom).index(layer.top[0])] = layer.bottom[0]
        del layers[i]


def v2_layers(
    net: caffe_pb2.NetParameter, blocks: Sequence[LayerBlock] | None = None, source: str = "<net>"
) -> list[tuple[caffe_pb2.LayerParameter, int | None]]:
    """All layers of a NetParameter as V2 messages with their line numbers, in file order.

    A file may mix ``layer`` (V2) and ``layers`` (V0/V1) blocks; the block positions from the text scan put
    them back in the order they were written.
    """
    v2_lines: list[int | None] = []
    v1_lines: list[int | None] = []
    order: list[str] = []
    if blocks is not None and len(blocks) == len(net.layer) + len(net.layers):
        for block in blocks:
            (v2_lines if block.keyword == "layer" else v1_lines).append(block.line)
            order.append(block.keyword)
    else:
        v2_lines = [None] * len(net.layer)
        v1_lines = [None] * len(net.layers)
        order = ["layers"] * len(net.layers) + ["layer"] * len(net.layer)
    out: list[tuple[caffe_pb2.LayerParameter, int | None]] = []
    v1_iter = iter(zip(net.layers, v1_lines))
    v2_iter = iter(zip(net.layer, v2_lines))
    for keyword in order:
        if keyword == "layers":
            v1, line = next(v1_iter)
            where = f"{source}:{line}" if line else source
            out.append((_v1_to_v2(v1, where), line))
        else:
            layer, line = next(v2_iter)
            copy = caffe_pb2.LayerParameter()
            copy.CopyFrom(layer)
            out.append((copy, line))
    for layer, _ in out:
        _move_deprecated_transform(layer)
    _fold_v0_padding(out, source)
    return out


def input_layer_from_net(net: caffe_pb2.NetParameter, source: str) -> caffe_pb2.LayerParameter | None:
    """Net-level ``input`` with ``input_dim`` or ``input_shape`` becomes an Input layer (Caffe: UpgradeNetInput)."""
    if not net.input:
        if net.input_dim or net.input_shape:
            raise NetError(f"{source}: input_dim/input_shape given without any 'input' blob name")
        return None
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    if net.input_shape:
        if len(net.input_shape) != len(net.input):
            raise NetError(f"{source}: {len(net.input)} inputs but {len(net.input_shape)} input_shape entries")
        for shape in net.input_shape:
            layer.input_param.shape.add().CopyFrom(shape)
    elif net.input_dim:
        if len(net.input_dim) != 4 * len(net.input):
            raise NetError(
                f"{source}: {len(net.input)} inputs need {4 * len(net.input)} input_dim values, "
                f"found {len(net.input_dim)}"
            )
        for i in range(len(net.input)):
            layer.input_param.shape.add().dim.extend(net.input_dim[4 * i : 4 * i + 4])
    else:
        raise NetError(f"{source}: input {list(net.input)} has no input_dim or input_shape")
    return layer


# --------------------------------------------------------------------------------------------------------
# Phase rules (Caffe: Net::FilterNet and Net::StateMeetsRule)


def _rule_met(rule: caffe_pb2.NetStateRule, phase: int, level: int, stages: set[str]) -> bool:
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(layer: caffe_pb2.LayerParameter, phase: int, level: int, stages: set[str], where: str) -> bool:
    if layer.include and layer.exclude:
        raise NetError(f"{where}: layer {layer.name!r} has both include and exclude rules; Caffe allows one kind")
    if layer.include:
        return any(_rule_met(r, phase, level, stages) for r in layer.include)
    return not any(_rule_met(r, phase, level, stages) for r in layer.exclude)


# --------------------------------------------------------------------------------------------------------
# The deploy view of a train_val net


# Image shape (C, H, W) of the data sets a Data layer's source may name in ninport's syntax ("digits",
# "cifar10:PATH", ...; ninport/reproduce/train.py parse_source). ImageNet images vary: its shape needs a crop_size.
DATA_SET_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32),
                   "svhn": (3, 32, 32)}


def data_set_shape(source: str) -> tuple[int, int, int] | None:
    """The C,H,W of the data set a Data layer's ``source`` names (``digits``, ``cifar10:PATH?...``), else None."""
    name = source.partition("?")[0].partition(":")[0]
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    return DATA_SET_SHAPES.get({"sklearndigits": "digits"}.get(key, key))


def transform_dict(layer: caffe_pb2.LayerParameter) -> dict:
    """The preprocessing a layer's transform_param declares, as ``Net.preprocess`` keeps it."""
    t = layer.transform_param
    pre: dict = {}
    if layer.HasField("transform_param"):
        if t.crop_size:
            pre["crop_size"] = int(t.crop_size)
        if t.mean_file:
            pre["mean_file"] = t.mean_file
        if t.mean_value:
            pre["mean_value"] = [float(v) for v in t.mean_value]
        if t.HasField("scale"):
            pre["scale"] = float(t.scale)
        if t.mirror:
            pre["mirror"] = True
    return pre


def _data_layer_shape(layer: caffe_pb2.LayerParameter, where: str) -> tuple[tuple[int, ...] | None, dict]:
    """The N,C,H,W a data layer feeds, as far as its parameters say, and the preprocessing it declares."""
    t = layer.transform_param
    pre = transform_dict(layer)
    kind = layer.type
    batch, channels, height, width = 1, 3, 0, 0
    if kind == "Data":
        batch = layer.data_param.batch_size or 1
        known = data_set_shape(layer.data_param.source)
        if known is not None:
            channels, height, width = known
    elif kind == "ImageData":
        p = layer.image_data_param
        batch = p.batch_size or 1
        channels = 3 if p.is_color else 1
        height, width = p.new_height, p.new_width
    elif kind == "DenseImageData":
        p = layer.dense_image_data_param
        batch = p.batch_size or 1
        channels = 3 if p.is_color else 1
        height, width = p.crop_height or p.new_height, p.crop_width or p.new_width
    elif kind == "WindowData":
        batch = layer.window_data_param.batch_size or 1
    elif kind == "MemoryData":
        p = layer.memory_data_param
        batch, channels, height, width = p.batch_size, p.channels, p.height, p.width
    elif kind == "HDF5Data":
        batch = layer.hdf5_data_param.batch_size or 1
        return None, pre
    if t.crop_size:
        height = width = t.crop_size
    if not (height and width):
        return None, pre
    return (batch, channels, height, width), pre


def _parse_shape(text: str, what: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise NetError(f"{what}: {text!r} is not a shape like 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise NetError(f"{what}: {text!r} must be positive integers like 1,3,224,224")
    return dims


def parse_input_shapes(spec: str | Sequence[int] | dict | None) -> dict[str | None, tuple[int, ...]]:
    """``--input-shape``: ``1,3,224,224`` for the first input, or ``data=1,3,224,224;im_info=1,3``."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return {k: tuple(int(d) for d in v) for k, v in spec.items()}
    if not isinstance(spec, str):
        return {None: tuple(int(d) for d in spec)}
    out: dict[str | None, tuple[int, ...]] = {}
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            name, dims = part.split("=", 1)
            out[name.strip()] = _parse_shape(dims.strip(), "--input-shape")
        else:
            out[None] = _parse_shape(part, "--input-shape")
    return out


# --------------------------------------------------------------------------------------------------------
# Putting it together


PHASES = {"TEST": caffe_pb2.TEST, "TRAIN": caffe_pb2.TRAIN}


def normalize(
    net_param: caffe_pb2.NetParameter,
    blocks: Sequence[LayerBlock] | None = None,
    source: str = "<net>",
    phase: str = "TEST",
    level: int | None = None,
    stages: Sequence[str] | None = None,
    input_shape: str | Sequence[int] | dict | None = None,
    deploy: bool = True,
) -> Net:
    """The normalized ``Net`` of a parsed prototxt (see the module docstring for the steps)."""
    phase = phase.upper()
    if phase not in PHASES:
        raise NetError(f"phase must be TEST or TRAIN, got {phase!r}")
    state_level = level if level is not None else net_param.state.level
    state_stages = set(stages if stages is not None else net_param.state.stage)
    layers = v2_layers(net_param, blocks, source)
    input_layer = input_layer_from_net(net_param, source)
    if input_layer is not None:
        layers.insert(0, (input_layer, None))
    if not layers:
        raise NetError(f"{source}: the net has no layers (is the file empty?)")

    kept: list[tuple[caffe_pb2.LayerParameter, int | None]] = []
    for layer, line in layers:
        where = f"{source}:{line}" if line else source
        if layer_included(layer, PHASES[phase], state_level, state_stages, where):
            kept.append((layer, line))

    overrides = parse_input_shapes(input_shape)
    preprocess: dict = {}
    if deploy:
        kept, preprocess = _deploy_view(kept, source, overrides)
    if not preprocess:  # a deploy file whose Input layer carries the data layer's transform_param
        preprocess = next((transform_dict(lay) for lay, _ in kept if lay.type == "Input"
                           and lay.HasField("transform_param")), {})

    names: set[str] = set()
    out_layers: list[Layer] = []
    for layer, line in kept:
        if not layer.name:
            raise NetError(f"{source}:{line}: a {layer.type or 'typeless'} layer has no name")
        if not layer.type:
            raise NetError(f"{source}:{line}: layer {layer.name!r} has no type")
        name = caffe_name = layer.name
        if name in names:
            # Caffe never checks that layer names are unique (net.cpp, Init); HED and SSDLite repeat them.
            # The repeat gets ``name#k`` here and keeps its Caffe name in ``Layer.caffe_name``.
            k = 2
            while f"{layer.name}#{k}" in names:
                k += 1
            name = f"{layer.name}#{k}"
            layer = _renamed(layer, name)
        names.add(name)
        out_layers.append(
            Layer(name=name, type=layer.type, bottoms=list(layer.bottom), tops=list(layer.top),
                  param=layer, line=line, caffe_name=caffe_name)
        )
    inputs = _apply_input_shapes(out_layers, overrides, source)
    net = Net(name=net_param.name or "net", layers=out_layers, inputs=inputs, source=source, phase=phase,
              preprocess=preprocess)
    _check_bottoms(net)
    _rename_in_place(net)
    return net


def _python_data_shape(layer: caffe_pb2.LayerParameter) -> tuple[tuple[int, ...] | None, dict]:
    """The N,C,H,W a Python data layer feeds, where its ``param_str`` says (``batch_size``, ``im_shape``,
    ``crop_size``, ``channels``), and its ``mean`` as preprocessing; the dict is read as a literal, never run."""
    import ast

    text = layer.python_param.param_str.strip()
    try:
        value = ast.literal_eval(text if text.startswith("{") else "{" + text + "}") if text else {}
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = {}
    if not isinstance(value, dict):
        value = {}
    pre: dict = {}
    mean = value.get("mean")
    if isinstance(mean, (list, tuple)) and mean and all(isinstance(v, (int, float)) for v in mean):
        pre["mean_value"] = [float(v) for v in mean]
    hw = value.get("im_shape") or value.get("crop_size")
    if isinstance(hw, int):
        hw = (hw, hw)
    if not (isinstance(hw, (list, tuple)) and len(hw) == 2 and all(isinstance(v, int) and v > 0 for v in hw)):
        return None, pre
    batch = value.get("batch_size", 1)
    channels = value.get("channels", 3)
    if not (isinstance(batch, int) and batch > 0 and isinstance(channels, int) and channels > 0):
        return None, pre
    return (batch, channels, int(hw[0]), int(hw[1])), pre


def _input_subset(layer: caffe_pb2.LayerParameter, keep: list[int]) -> caffe_pb2.LayerParameter:
    """An Input layer with only the tops ``keep`` (and their shapes, when it gives one per top)."""
    new = caffe_pb2.LayerParameter()
    new.CopyFrom(layer)
    del new.top[:]
    new.top.extend(layer.top[i] for i in keep)
    shapes = list(layer.input_param.shape)
    if len(shapes) == len(layer.top) and len(shapes) > 1:
        del new.input_param.shape[:]
        for i in keep:
            new.input_param.shape.add().CopyFrom(shapes[i])
    return new


def _renamed(layer: caffe_pb2.LayerParameter, name: str) -> caffe_pb2.LayerParameter:
    copy = caffe_pb2.LayerParameter()
    copy.CopyFrom(layer)
    copy.name = name
    return copy


def _deploy_view(
    layers: list[tuple[caffe_pb2.LayerParameter, int | None]], source: str, overrides: dict
) -> tuple[list[tuple[caffe_pb2.LayerParameter, int | None]], dict]:
    """Data layers become the net input; loss and accuracy layers are dropped, with blobs only they used.

    A data top that only the dropped layers read (``label``) is no net input, so a separate label data layer
    (as in segmentation nets) disappears entirely and needs no shape.
    """
    kept: list[tuple[caffe_pb2.LayerParameter, int | None]] = []
    # data layer -> (its tops, their shapes or None, the preprocessing it declares, where it is)
    data: dict[int, tuple[list[str], list[tuple[int, ...]] | None, dict, str]] = {}
    dropped_reads: set[str] = set()
    for layer, line in layers:
        where = f"{source}:{line}" if line else source
        if layer.type in DATA_LAYER_TYPES and not layer.bottom:
            if not layer.top:
                continue
            if layer.type == "DummyData":
                shapes = [tuple(s.dim) for s in layer.dummy_data_param.shape]
                if not shapes and layer.dummy_data_param.num:
                    p = layer.dummy_data_param
                    shapes = [(p.num[i], p.channels[i], p.height[i], p.width[i]) for i in range(len(p.num))]
                data[id(layer)] = (list(layer.top)[: max(1, len(shapes))], shapes, {}, where)
            else:
                shape, pre = _data_layer_shape(layer, where)
                data[id(layer)] = ([layer.top[0]], None if shape is None else [shape], pre, where)
            kept.append((layer, line))
        elif layer.type == "Python" and not layer.bottom and layer.top:
            # A Python data layer (FCN's voc_layers.VOCSegDataLayer): its first top is the image input.
            shape, pre = _python_data_shape(layer)
            data[id(layer)] = ([layer.top[0]], None if shape is None else [shape], pre, where)
            kept.append((layer, line))
        elif layer.type == "Input":
            # Net-level inputs too: one that only a dropped loss layer reads (SRCNN's ``label``) goes away.
            data[id(layer)] = (list(layer.top), None, {}, where)
            kept.append((layer, line))
        elif is_loss_type(layer.type) or layer.type in TRAINING_ONLY_TYPES:
            dropped_reads.update(layer.bottom)
        else:
            kept.append((layer, line))

    read = {b for layer, _ in kept for b in layer.bottom}
    out: list[tuple[caffe_pb2.LayerParameter, int | None]] = []
    preprocess: dict = {}
    for layer, line in kept:
        if id(layer) not in data:
            out.append((layer, line))
            continue
        tops, shapes, pre, where = data[id(layer)]
        wanted = [i for i, top in enumerate(tops) if top in read or top not in dropped_reads]
        if not wanted:
            continue
        if layer.type == "Input":
            if len(wanted) < len(tops):
                layer = _input_subset(layer, wanted)
            out.append((layer, line))
            continue
        first = tops[wanted[0]]
        if shapes is None:
            if first not in overrides and None not in overrides:
                raise NetError(
                    f"{where}: cannot tell the input shape from {layer.type} layer {layer.name!r} "
                    "(no crop_size or size in it); pass --input-shape N,C,H,W"
                )
            shapes = [(0,)]
        elif len(shapes) > 1:
            shapes = [shapes[i] for i in wanted]
        if not preprocess:
            preprocess = pre
        new = caffe_pb2.LayerParameter(name=layer.name, type="Input")
        new.top.extend(tops[i] for i in wanted)
        if layer.HasField("transform_param"):  # Caffe's schema allows it on any layer: the deploy keeps it
            new.transform_param.CopyFrom(layer.transform_param)
        for shape in shapes:
            new.input_param.shape.add().dim.extend(shape)
        out.append((new, line))
    return out, preprocess


def _apply_input_shapes(layers: list[Layer], overrides: dict, source: str) -> dict[str, tuple[int, ...]]:
    inputs: dict[str, tuple[int, ...]] = {}
    first_input = True
    for layer in layers:
        if layer.type != "Input":
            continue
        shapes = layer.param.input_param.shape
        where = f"{source}:{layer.line}" if layer.line else source
        if len(shapes) not in (0, 1, len(layer.tops)):
            # input_layer.cpp: "Must specify 'shape' once, once per top blob, or not at all"
            raise NetError(
                f"{where}: Input layer {layer.name!r} has {len(layer.tops)} tops but {len(shapes)} shapes; "
                "give one shape, or one per top"
            )
        for i, top in enumerate(layer.tops):
            shape = None
            if top in overrides:
                shape = overrides[top]
            elif first_input and None in overrides:
                shape = overrides[None]
            first_input = False
            if shape is None:
                if not shapes:
                    raise NetError(f"{where}: Input layer {layer.name!r} declares no shape for {top!r}")
                # One shape may serve every top (Caffe's InputLayer allows 1 or one per top).
                shape = tuple(int(d) for d in shapes[i if len(shapes) > 1 else 0].dim)
            inputs[top] = shape
        del layer.param.input_param.shape[:]
        for top in layer.tops:
            layer.param.input_param.shape.add().dim.extend(inputs[top])
    unknown = [name for name in overrides if name is not None and name not in inputs]
    if unknown:
        raise NetError(f"--input-shape names {unknown}, but the net's inputs are {list(inputs)}")
    return inputs


def _check_bottoms(net: Net) -> None:
    produced: set[str] = set()
    for layer in net.layers:
        for bottom in layer.bottoms:
            if bottom not in produced:
                raise NetError(
                    f"{net.where(layer)}: layer {layer.name!r} reads bottom {bottom!r}, "
                    "which no earlier layer produces"
                )
        produced.update(layer.tops)


def _rename_in_place(net: Net) -> None:
    """Give every blob version one writer; the last writer of a Caffe blob keeps the Caffe name.

    Net inputs are the exception: the Input layer keeps the name (it is what the user feeds, and the key of
    ``net.inputs``), and in-place layers that rewrite an input get ``blob@layer`` names.
    """
    writers: dict[str, list[tuple[int, int]]] = {}
    for li, layer in enumerate(net.layers):
        for ti, top in enumerate(layer.tops):
            writers.setdefault(top, []).append((li, ti))
    # (layer index, top index) of the version that keeps the Caffe name
    keeper = {top: chain[0] if net.layers[chain[0][0]].type == "Input" else chain[-1]
              for top, chain in writers.items()}
    current: dict[str, str] = {}  # Caffe blob name -> name of its latest version so far
    for li, layer in enumerate(net.layers):
        layer.caffe_bottoms = list(layer.bottoms)
        layer.bottoms = [current.get(b, b) for b in layer.bottoms]
        layer.caffe_tops = list(layer.tops)
        new_tops = []
        for ti, top in enumerate(layer.tops):
            version = top if keeper[top] == (li, ti) else f"{top}@{layer.name}"
            current[top] = version
            new_tops.append(version)
        layer.tops = new_tops
        del layer.param.bottom[:]
        layer.param.bottom.extend(layer.bottoms)
        del layer.param.top[:]
        layer.param.top.extend(layer.tops)
