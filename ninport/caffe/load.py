"""From files on disk to a normalized ``Net`` with checked weights: the one entry point of ``ninport.caffe``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ninport.caffe import caffe_pb2
from ninport.caffe.aliasing import share_in_place_writes
from ninport.caffe.caffemodel import blob_is_legacy, blob_to_array
from ninport.caffe.checks import check_writers
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
    net = normalize(message, blocks, source, phase=phase, level=level, stages=stages,
                    input_shape=input_shape, deploy=deploy)
    net.fork_fields = fork_fields
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


def _fit(blob: caffe_pb2.BlobProto | WireBlob, expected: tuple[int, ...]) -> np.ndarray | None:
    """The blob as an array of the expected shape, or None when it does not fit.

    A legacy blob fits when its 4-D dims equal the expected shape padded with leading ones, which is the
    test Caffe's Blob::ShapeEquals makes when it loads weights.
    """
    if isinstance(blob, WireBlob):
        array, legacy, has_shape = blob.to_array(), blob.is_legacy, blob.shape is not None
    else:
        array, legacy, has_shape = blob_to_array(blob), blob_is_legacy(blob), blob.HasField("shape")
    if legacy:
        if len(expected) <= 4 and tuple(array.shape) == (1,) * (4 - len(expected)) + tuple(expected):
            return array.reshape(expected)
        return None
    if not has_shape:
        # Caffe's Blob::ToProto writes no shape message for a 0-axis blob (a scalar Scale factor).
        return array.reshape(expected) if array.size == int(np.prod(expected, dtype=np.int64)) else None
    return array if tuple(array.shape) == tuple(expected) else None


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
    for layer in net.layers:
        expected = shapes.layers[layer.name].params
        blobs = found.get(layer.name, [])
        what = f"layer {layer.name!r} ({layer.type}, {net.where(layer)})"
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
                have = list((blob.to_array() if isinstance(blob, WireBlob) else blob_to_array(blob)).shape)
                raise WeightsError(
                    f"{what} blob {index}: {net.source} needs shape {list(shape)}, {source} has {have}"
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
