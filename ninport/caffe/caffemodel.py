"""Read and write Caffe binary files: weights (``.caffemodel``) and mean images (``.binaryproto``).

Blobs come in two layouts: the legacy one with ``num/channels/height/width`` (always 4-D) and the current one
with a ``shape`` message; either may hold ``data`` (float32) or ``double_data`` (float64). Readers return
numpy arrays; writers produce either layout so tests can feed ninport every form Caffe ever wrote.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from ninport.caffe import caffe_pb2
from ninport.caffe.prototxt import regular_file
from ninport.errors import ParseError
from ninport.outputs import atomic_write_bytes

# Caffe's V1LayerParameter.LayerType enum names, keyed by the V2 type string (upgrade_proto.cpp).
V1_TYPE_NAMES = {
    "AbsVal": "ABSVAL",
    "Accuracy": "ACCURACY",
    "ArgMax": "ARGMAX",
    "BNLL": "BNLL",
    "Concat": "CONCAT",
    "ContrastiveLoss": "CONTRASTIVE_LOSS",
    "Convolution": "CONVOLUTION",
    "Deconvolution": "DECONVOLUTION",
    "Data": "DATA",
    "Dropout": "DROPOUT",
    "DummyData": "DUMMY_DATA",
    "EuclideanLoss": "EUCLIDEAN_LOSS",
    "Eltwise": "ELTWISE",
    "Exp": "EXP",
    "Flatten": "FLATTEN",
    "HDF5Data": "HDF5_DATA",
    "HDF5Output": "HDF5_OUTPUT",
    "HingeLoss": "HINGE_LOSS",
    "Im2col": "IM2COL",
    "ImageData": "IMAGE_DATA",
    "InfogainLoss": "INFOGAIN_LOSS",
    "InnerProduct": "INNER_PRODUCT",
    "LRN": "LRN",
    "MemoryData": "MEMORY_DATA",
    "MultinomialLogisticLoss": "MULTINOMIAL_LOGISTIC_LOSS",
    "MVN": "MVN",
    "Pooling": "POOLING",
    "Power": "POWER",
    "ReLU": "RELU",
    "Sigmoid": "SIGMOID",
    "SigmoidCrossEntropyLoss": "SIGMOID_CROSS_ENTROPY_LOSS",
    "Silence": "SILENCE",
    "Softmax": "SOFTMAX",
    "SoftmaxWithLoss": "SOFTMAX_LOSS",
    "Split": "SPLIT",
    "Slice": "SLICE",
    "TanH": "TANH",
    "WindowData": "WINDOW_DATA",
    "Threshold": "THRESHOLD",
}


# protobuf's own limit on one message: a larger binary file cannot be a caffemodel or binaryproto.
MAX_MESSAGE_BYTES = (2 << 30) - 1


def _read_bytes(path: str | os.PathLike, what: str) -> bytes:
    path = os.fspath(path)
    size = regular_file(path, what, MAX_MESSAGE_BYTES)
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as exc:
        raise ParseError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def read_caffemodel(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Read a binary NetParameter. Python's protobuf has no 64 MB cap, so files up to 2 GB load."""
    data = _read_bytes(path, "caffemodel")
    net = caffe_pb2.NetParameter()
    if not data:
        raise ParseError(f"{os.fspath(path)}: empty file, not a caffemodel")
    try:
        net.ParseFromString(data)
    except DecodeError as exc:
        raise ParseError(f"{os.fspath(path)}: not a valid caffemodel (truncated or corrupt: {exc})") from None
    # Random bytes can decode as a message made only of unknown fields; a real caffemodel has named layers.
    # A V0 model names its layers inside the wrapped V0 message (``layers { layer { name } }``).
    names = [layer.name for layer in net.layer] + [layer.name or layer.layer.name for layer in net.layers]
    if not any(names):
        raise ParseError(f"{os.fspath(path)}: not a valid caffemodel (no named layers in it)")
    return net


def blob_to_array(blob: caffe_pb2.BlobProto, legacy_ok: bool = True) -> np.ndarray:
    """A BlobProto as a numpy array in its declared shape (legacy 4-D dims when it has no ``shape``)."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    elif legacy_ok and any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = None
    if len(blob.double_data):
        values = np.array(blob.double_data, dtype=np.float64)
    else:
        values = np.array(blob.data, dtype=np.float32)
    if shape is None:
        # No shape at all is how Caffe's Blob::ToProto writes a 0-axis blob.
        return values.reshape(()) if values.size == 1 else values
    if any(d < 0 for d in shape) or math.prod(shape) != values.size:
        raise ParseError(f"blob declares shape {list(shape)} but holds {values.size} values")
    return values.reshape(shape)


def blob_is_legacy(blob: caffe_pb2.BlobProto) -> bool:
    return not blob.HasField("shape") and any(blob.HasField(f) for f in ("num", "channels", "height", "width"))


def read_binaryproto(path: str | os.PathLike) -> np.ndarray:
    """Read a mean image (``.binaryproto``): a single BlobProto, usually 1×C×H×W."""
    data = _read_bytes(path, "binaryproto")
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(data)
        array = blob_to_array(blob)
    except (DecodeError, ParseError) as exc:
        raise ParseError(f"{os.fspath(path)}: not a valid binaryproto ({exc})") from None
    if array.size == 0:
        raise ParseError(f"{os.fspath(path)}: binaryproto holds no values")
    return array


def _packed_floats(field_number: int, values: np.ndarray) -> bytes:
    """Encode a packed repeated float field by hand: far faster than filling it value by value."""
    payload = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def array_to_blob(array: np.ndarray, legacy: bool = False) -> caffe_pb2.BlobProto:
    """A numpy array as a BlobProto; ``legacy=True`` writes 4-D num/channels/height/width dims (V1 style)."""
    array = np.asarray(array, dtype=np.float32)
    blob = caffe_pb2.BlobProto()
    if legacy:
        if array.ndim > 4:
            raise ValueError(f"a legacy blob holds at most 4 dims, got shape {list(array.shape)}")
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(int(d) for d in array.shape)
    # BlobProto.data is field 5 (packed float), per caffe.proto.
    blob.MergeFromString(_packed_floats(5, array.ravel()))
    return blob


def write_caffemodel(
    path: str | os.PathLike,
    layers: Iterable[tuple[str, str, Sequence[np.ndarray]]],
    layout: str = "v2",
    name: str = "",
) -> None:
    """Write ``(layer name, V2 type, blobs)`` triples as a caffemodel in the ``v2`` or legacy ``v1`` layout."""
    if layout not in ("v1", "v2"):
        raise ValueError(f"layout must be 'v1' or 'v2', got {layout!r}")
    net = caffe_pb2.NetParameter()
    if name:
        net.name = name
    for layer_name, layer_type, blobs in layers:
        if layout == "v2":
            layer = net.layer.add()
            layer.type = layer_type
        else:
            layer = net.layers.add()
            enum_name = V1_TYPE_NAMES.get(layer_type)
            if enum_name is None:
                raise ValueError(f"layer type {layer_type} has no V1 enum; write it in the v2 layout")
            layer.type = caffe_pb2.V1LayerParameter.LayerType.Value(enum_name)
        layer.name = layer_name
        for array in blobs:
            layer.blobs.append(array_to_blob(array, legacy=layout == "v1"))
    atomic_write_bytes(path, net.SerializeToString())


def write_binaryproto(path: str | os.PathLike, array: np.ndarray, legacy: bool = True) -> None:
    """Write a mean image; Caffe's ``compute_image_mean`` writes the legacy 4-D layout, so that is the default."""
    atomic_write_bytes(path, array_to_blob(array, legacy=legacy).SerializeToString())


__all__ = [
    "V1_TYPE_NAMES",
    "array_to_blob",
    "blob_is_legacy",
    "blob_to_array",
    "read_binaryproto",
    "read_caffemodel",
    "write_binaryproto",
    "write_caffemodel",
    "atomic_write_bytes",
]

