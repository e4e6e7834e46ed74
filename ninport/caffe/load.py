"""From files on disk to a normalized ``Net`` with checked weights: the one entry point of ``ninport.caffe``."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from ninport.caffe import caffe_pb2, dialects
from ninport.caffe.aliasing import share_in_place_writes
from ninport.caffe.checks import _cut, check_writers
from ninport.caffe.fork import ForkField
from ninport.caffe.net import Net
from ninport.caffe.prototxt import read_prototxt
from ninport.caffe.shapes import NetShapes, infer_shapes
from ninport.caffe.upgrade import normalize, v2_layers
from ninport.caffe.wire import WireBlob, read_weights
from ninport.errors import ParseError, WeightsError


def read_net(
    prototxt: str | os.PathLike,
    phase: str = "TEST",
    input_shape: str | Sequence[int] | dict | None = None,
    deploy: bool = True,
    level: int | None = None,
    stages: Sequence[str] | None = None,
    caffe_proto: str | os.PathLike | None = None,
) -> Net:
    """Read a prototxt of any Caffe vintage into a normalized ``Net`` (no weights).

    ``caffe_proto`` is a Caffe fork's schema to read the file with (see ``ninport.caffe.fork``); the fields
    it had to look at are kept in ``net.fork_fields``.
    """
    source = os.fspath(prototxt)
    fork_fields = []
    if caffe_proto is not None:
        from ninport.caffe.fork import read_fork_prototxt

        message, blocks, fork_fields = read_fork_prototxt(source, caffe_proto)
    else:
        message, blocks = read_prototxt(source, caffe_pb2.NetParameter())
    # The superset schema read the known forks' fields; map those with an upstream meaning onto it.
    starts = {"layer": [b.line for b in blocks if b.keyword == "layer"],
              "layers": [b.line for b in blocks if b.keyword == "layers"]}
    lines = {(key, i): line for key, found in starts.items() for i, line in enumerate(found)}
    rewrites = dialects.to_upstream_vocabulary(message, source, lines)
    net = normalize(message, blocks, source, phase=phase, level=level, stages=stages,
                    input_shape=input_shape, deploy=deploy)
    net.fork_fields = fork_fields + [ForkField(path, "translated", note, layer, "Pooling", line)
                                     for layer, path, note, line in rewrites]
    net.dialects = dialects.recognise([(x.name, x.type, x.param) for x in net.layers],
                                      [(layer, path) for layer, path, _, _ in rewrites],
                                      {x.name: net.where(x) for x in net.layers})
    dialects.check_refused([(x.name, x.type, x.param, net.where(x)) for x in net.layers])
    check_writers(net)  # Caffe's "produced by multiple sources" and no-in-place rules, on Caffe's names
    share_in_place_writes(net)  # Caffe's Split/Flatten/Reshape tops share memory with their bottom
    return net


def weights_by_layer(model: caffe_pb2.NetParameter, source: str) -> dict[str, list[caffe_pb2.BlobProto]]:
    """The blobs of each named layer in a caffemodel, whatever its layout (V0, V1 or V2)."""
    out: dict[str, list[caffe_pb2.BlobProto]] = {}
    for layer, _ in v2_layers(model, None, source):
        if layer.blobs and layer.name not in out:
            out[layer.name] = list(layer.blobs)
    return out


def _declared(blob: caffe_pb2.BlobProto | WireBlob) -> tuple[tuple[int, ...] | None, tuple[int, ...]]:
    """(legacy num/channels/height/width when any is set, else None; the ``shape`` dims, () when absent)."""
    if isinstance(blob, WireBlob):
        return blob.legacy_dims, tuple(blob.shape or ())
    fields = ("num", "channels", "height", "width")
    legacy = tuple(int(getattr(blob, f)) for f in fields) if any(blob.HasField(f) for f in fields) else None
    return legacy, tuple(int(d) for d in blob.shape.dim)


def _values(blob: caffe_pb2.BlobProto | WireBlob) -> np.ndarray:
    """The flat values; ``double_data`` wins when it holds any (Blob::FromProto)."""
    if isinstance(blob, WireBlob):
        return blob.array
    if len(blob.double_data):
        return np.asarray(blob.double_data, dtype=np.float64)
    return np.asarray(blob.data, dtype=np.float32)


def _fit(blob: caffe_pb2.BlobProto | WireBlob, expected: tuple[int, ...]) -> np.ndarray | None:
    """The blob's values in the net's shape ``expected``, or None when Caffe would refuse to copy it.

    Caffe's ``Blob::ShapeEquals`` (caffe/src/caffe/blob.cpp) decides: when any legacy dim is set, the legacy
    num/channels/height/width must equal the net's shape padded in front with 1s to 4 axes (a net blob of
    more than 4 axes never matches); otherwise the ``shape`` dims must equal it exactly, and a blob without a
    ``shape`` message is a 0-axis blob. ``Blob::FromProto`` then needs exactly that many values; nothing is
    reshaped or copied before both hold.
    """
    legacy, shape = _declared(blob)
    if legacy is not None:
        fits = len(expected) <= 4 and legacy == (1,) * (4 - len(expected)) + tuple(expected)
    else:
        fits = shape == tuple(expected)
    if not fits:
        return None
    values = _values(blob)
    count = math.prod(expected)
    if values.size != count:
        raise ParseError(f"the blob holds {values.size:,} values, its {_describe(blob)} declares {count:,}")
    return values.reshape(expected)


def _describe(blob: caffe_pb2.BlobProto | WireBlob) -> str:
    legacy, shape = _declared(blob)
    if legacy is not None:
        return f"legacy num/channels/height/width {_cut(str(list(legacy)))}"
    return f"shape {_cut(str(list(shape)))}" if shape else "no shape (a 0-axis blob)"


def attach_weights(net: Net, caffemodel: str | os.PathLike, shapes: NetShapes | None = None,
                   caffe_proto: str | os.PathLike | None = None) -> Net:
    """Match a caffemodel's blobs to the net's layers by name, reshape legacy dims, and check every shape.

    ``caffe_proto``: read the caffemodel with a Caffe fork's schema (see ``read_net``).
    """
    source = os.fspath(caffemodel)
    if caffe_proto is not None:
        from ninport.caffe.fork import read_fork_caffemodel

        model = read_fork_caffemodel(source, caffe_proto)
        try:
            found = weights_by_layer(model, source)
        except Exception as exc:  # a decodable but nonsensical file
            raise ParseError(f"{source}: cannot read layers from the caffemodel ({exc})") from None
    else:
        # The wire-format reader: numpy views of the mapped file, no per-float objects (ninport.caffe.wire).
        found = read_weights(source)
    shapes = shapes or infer_shapes(net)
    # Caffe's Net::CopyTrainedLayersFrom (net.cpp) copies each caffemodel layer into the *first* net layer of
    # that name; a later layer with the same name gets nothing from the file and keeps its filler values.
    first_of: dict[str, str] = {}
    for layer in net.layers:
        first_of.setdefault(layer.caffe_name, layer.name)
    for layer in net.layers:
        expected = shapes.layers[layer.name].params
        what = f"layer {layer.name!r} ({layer.type}, {net.where(layer)})"
        if first_of[layer.caffe_name] != layer.name:
            if expected:
                raise WeightsError(
                    f"{what} repeats the name {layer.caffe_name!r}: Caffe copies weights only into the first "
                    "layer of a name and leaves this one at its random filler values; rename it to load weights"
                )
            continue
        blobs = found.get(layer.caffe_name, [])
        if expected and not blobs:
            raise WeightsError(f"{what} has no weights in {source}: it needs {len(expected)} blob(s)")
        if len(blobs) != len(expected):
            raise WeightsError(
                f"{what}: the prototxt needs {len(expected)} blob(s) "
                f"{[list(s) for s in expected]}, {source} has {len(blobs)}"
            )
        arrays = []
        for index, (blob, shape) in enumerate(zip(blobs, expected)):
            try:
                array = _fit(blob, shape)
            except ParseError as exc:
                raise WeightsError(f"{what} blob {index} in {source}: {exc}") from None
            if array is None:
                raise WeightsError(
                    f"{what} blob {index}: {net.source} needs shape {list(shape)}, {source} has {_describe(blob)} "
                    "(Caffe's Blob::ShapeEquals refuses it)"
                )
            # asarray: a float32 blob stays a read-only view of the mapped file (torch copies it when it
            # builds the module); keeps 0-D blobs 0-D.
            arrays.append(np.asarray(array, dtype=np.float32, order="C"))
        layer.blobs = arrays
    net.weights_source = source
    return net


def load_net(
    prototxt: str | os.PathLike,
    caffemodel: str | os.PathLike | None = None,
    phase: str = "TEST",
    input_shape: str | Sequence[int] | dict | None = None,
    deploy: bool = True,
    caffe_proto: str | os.PathLike | None = None,
) -> tuple[Net, NetShapes]:
    """Read a prototxt (and weights, when given) into a checked ``Net`` and the shapes of all its blobs."""
    net = read_net(prototxt, phase=phase, input_shape=input_shape, deploy=deploy, caffe_proto=caffe_proto)
    shapes = infer_shapes(net)
    if caffemodel is not None:
        attach_weights(net, caffemodel, shapes, caffe_proto=caffe_proto)
    return net, shapes
