"""Read a caffemodel's weights straight off the protobuf wire format, over an ``mmap``, at disk speed.

Only the fields that carry weights are decoded (layer names, types and ``BlobProto``s); every packed float
run becomes a numpy view of the mapped file, so no per-float Python object and no second copy is made.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ninport.caffe.prototxt import regular_file
from ninport.errors import ParseError

# Field numbers from protos/caffe.proto (the same as BVLC Caffe's src/caffe/proto/caffe.proto).
NET_LAYERS_V1 = 2  # NetParameter.layers: V1LayerParameter (legacy)
NET_LAYER = 100  # NetParameter.layer: LayerParameter
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7  # LayerParameter
V1_V0LAYER, V1_NAME, V1_TYPE, V1_BLOBS = 1, 4, 5, 6  # V1LayerParameter (type is the LayerType enum)
V0_NAME, V0_TYPE, V0_BLOBS = 1, 2, 50  # V0LayerParameter, wrapped in V1's field 1
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4  # BlobProto legacy 4-D dims
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA, BLOB_DOUBLE_DIFF = 5, 6, 7, 8, 9
SHAPE_DIM = 1  # BlobShape.dim (packed int64)
MAX_FIELD_NUMBER = (1 << 29) - 1  # protobuf's largest field number; a parser refuses a larger one as corrupt

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5

_FLOAT32 = np.dtype("<f4")
_FLOAT64 = np.dtype("<f8")


class _Corrupt(Exception):
    """Raised inside the scanner; ``read_weights`` turns it into one ParseError line naming the file."""


@dataclass
class WireBlob:
    """One ``BlobProto``: its values as a flat array, and the shape it declares.

    ``array`` is float32 (``data``) or float64 (``double_data``, which wins when present, as in
    ``blob_to_array``). When the values were stored packed in one run (what Caffe writes), ``array`` is a
    read-only view of the mapped file: it keeps the mapping alive by itself, and reads the file's pages on
    first touch. Rewriting the file in place while views are alive changes them; replacing it by a rename (as
    ninport's writers do) does not.
    """

    array: np.ndarray
    shape: tuple[int, ...] | None  # BlobShape dims when the blob has a ``shape`` field
    legacy_dims: tuple[int, int, int, int] | None  # num, channels, height, width when any of them is set
    layer_type: str | int | None = None  # V2/V0 type string, or the V1 LayerType enum number

    @property
    def is_legacy(self) -> bool:
        """True for a blob described only by legacy 4-D dims (the same test as ``blob_is_legacy``)."""
        return self.shape is None and self.legacy_dims is not None

    def to_array(self) -> np.ndarray:
        """The values in the declared shape: ``shape``, else the legacy 4-D dims, else 0-d for one value,
        else flat."""
        shape = self.shape if self.shape is not None else self.legacy_dims
        if shape is None:
            # Caffe's Blob::ToProto writes no shape at all for a 0-axis blob (PReLU's channel_shared slope).
            return self.array.reshape(()) if self.array.size == 1 else self.array
        if any(d < 0 for d in shape) or math.prod(shape) != self.array.size:
            raise ParseError(f"blob declares shape {list(shape)} but holds {self.array.size} values")
        return self.array.reshape(shape)


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Corrupt(f"varint runs past the end of its message at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Corrupt(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field number, wire type, value or payload start, payload end)`` for one message's fields.

    For varints the third item is the value; for the other wire types it is where the payload starts.
    """
    while pos < end:
        key_at = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if not 0 < number <= MAX_FIELD_NUMBER:
            raise _Corrupt(f"field number {number} at byte {key_at} is outside protobuf's range")
        if wire == VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == LENGTH:
            length, pos = _varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise _Corrupt(f"field {number} at byte {pos} claims {length} bytes, past the end of its message")
            yield number, wire, pos, stop
            pos = stop
        elif wire == FIXED32 or wire == FIXED64:
            stop = pos + (4 if wire == FIXED32 else 8)
            if stop > end:
                raise _Corrupt(f"field {number} at byte {pos} runs past the end of its message")
            yield number, wire, pos, stop
            pos = stop
        elif wire == START_GROUP:  # proto2 groups: nothing in caffe.proto uses them, but they must be skipped
            pos = _skip_group(buf, pos, end, number)
        else:
            raise _Corrupt(f"invalid wire type {wire} at byte {pos}")


def _skip_group(buf, pos: int, end: int, number: int) -> int:
    while pos < end:
        key, pos = _varint(buf, pos, end)
        inner, wire = key >> 3, key & 7
        if not 0 < inner <= MAX_FIELD_NUMBER:
            raise _Corrupt(f"field number {inner} at byte {pos} is outside protobuf's range")
        if wire == END_GROUP:
            if inner != number:
                raise _Corrupt(f"group {number} closed by {inner} at byte {pos}")
            return pos
        if wire == VARINT:
            _, pos = _varint(buf, pos, end)
        elif wire == LENGTH:
            length, pos = _varint(buf, pos, end)
            pos += length
        elif wire == FIXED32:
            pos += 4
        elif wire == FIXED64:
            pos += 8
        elif wire == START_GROUP:
            pos = _skip_group(buf, pos, end, inner)
        else:
            raise _Corrupt(f"invalid wire type {wire} at byte {pos}")
    raise _Corrupt(f"group {number} not closed before the end of its message")


def _unpacked_run(buf, pos: int, end: int, tag: int, width: int, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """Decode a run of consecutive unpacked fixed-width values (tag byte, then ``width`` bytes each) at once.

    ``pos`` points at the first value's payload (its tag already read). Returns the values and where the run
    stops. Old writers emitted repeated floats this way, one tag per value; numpy finds the run's length.
    """
    stride = width + 1
    values = [np.frombuffer(buf, dtype=np.uint8, count=width, offset=pos)]
    pos += width
    count = (end - pos) // stride
    if count:
        rows = np.frombuffer(buf, dtype=np.uint8, count=count * stride, offset=pos).reshape(count, stride)
        breaks = np.flatnonzero(rows[:, 0] != tag)
        run = int(breaks[0]) if breaks.size else count
        values.append(rows[:run, 1:].reshape(-1))
        pos += run * stride
    return np.concatenate(values).view(dtype), pos


def _join(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    if not parts:
        return np.empty(0, dtype=dtype)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts)  # protobuf appends every occurrence of a repeated field


def _packed(buf, start: int, stop: int, dtype: np.dtype, number: int) -> np.ndarray:
    size = stop - start
    if size % dtype.itemsize:
        raise _Corrupt(f"packed field {number} at byte {start} is {size} bytes, not a multiple of {dtype.itemsize}")
    return np.frombuffer(buf, dtype=dtype, count=size // dtype.itemsize, offset=start)


def _dims(buf, start: int, stop: int) -> list[int]:
    """BlobShape.dim: packed or unpacked int64 varints (two's complement for negatives)."""
    dims: list[int] = []
    for number, wire, a, b in _fields(buf, start, stop):
        if number != SHAPE_DIM:
            continue
        if wire == VARINT:
            dims.append(_signed64(a))
        elif wire == LENGTH:
            pos = a
            while pos < b:
                value, pos = _varint(buf, pos, b)
                dims.append(_signed64(value))
    return dims


def _signed64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _blob(buf, start: int, end: int, layer_type) -> WireBlob:
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    legacy: dict[int, int] = {}
    shape: list[int] | None = None
    pos = start
    while pos < end:
        key_at = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if not 0 < number <= MAX_FIELD_NUMBER:
            raise _Corrupt(f"field number {number} at byte {key_at} is outside protobuf's range")
        if wire == LENGTH:
            length, pos = _varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise _Corrupt(f"field {number} at byte {pos} claims {length} bytes, past the end of its message")
            if number == BLOB_DATA:
                floats.append(_packed(buf, pos, stop, _FLOAT32, number))
            elif number == BLOB_DOUBLE_DATA:
                doubles.append(_packed(buf, pos, stop, _FLOAT64, number))
            elif number in (BLOB_DIFF, BLOB_DOUBLE_DIFF):  # unread, but a packed run must be whole values
                _packed(buf, pos, stop, _FLOAT32 if number == BLOB_DIFF else _FLOAT64, number)
            elif number == BLOB_SHAPE:
                shape = (shape or []) + _dims(buf, pos, stop)  # repeated occurrences of a message merge
            pos = stop
        elif wire == VARINT:
            value, pos = _varint(buf, pos, end)
            if number in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH):
                legacy[number] = value
        elif wire == FIXED32 or wire == FIXED64:
            width = 4 if wire == FIXED32 else 8
            if pos + width > end:
                raise _Corrupt(f"field {number} at byte {pos} runs past the end of its message")
            if (number, wire) in ((BLOB_DATA, FIXED32), (BLOB_DOUBLE_DATA, FIXED64)):
                # Unpacked repeated values (one tag per value), as old writers emitted them.
                dtype, target = (_FLOAT32, floats) if wire == FIXED32 else (_FLOAT64, doubles)
                if pos - key_at == 1:
                    values, pos = _unpacked_run(buf, pos, end, key, width, dtype)
                else:  # an over-long tag cannot be matched byte-wise: take this one value alone
                    values, pos = np.frombuffer(buf, dtype=dtype, count=1, offset=pos), pos + width
                target.append(values)
            else:
                pos += width
        elif wire == START_GROUP:
            pos = _skip_group(buf, pos, end, number)
        else:
            raise _Corrupt(f"invalid wire type {wire} at byte {key_at}")
    array = _join(doubles, _FLOAT64) if doubles else _join(floats, _FLOAT32)
    legacy_dims = None
    if legacy:
        # The legacy dims are int32 in BVLC's older schema and int64 in newer ones; both fit a signed 64-bit value.
        legacy_dims = tuple(_signed64(legacy.get(n, 0)) for n in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH))
    return WireBlob(array=array, shape=tuple(shape) if shape is not None else None, legacy_dims=legacy_dims,
                    layer_type=layer_type)


def _text(buf, start: int, stop: int) -> str:
    try:
        return bytes(buf[start:stop]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt(f"string at byte {start} is not UTF-8") from None


@dataclass
class _LayerSpans:
    name: str
    layer_type: str | int | None
    blobs: list[tuple[int, int]]  # (start, end) of each BlobProto, decoded by the caller
    named: bool  # any name in the message (V1's own or its V0's), the test read_caffemodel makes


def _layer(buf, start: int, end: int, v1: bool) -> _LayerSpans:
    """One layer message: its name, type and the spans of its BlobProtos."""
    name_field, type_field, blobs_field = (V1_NAME, V1_TYPE, V1_BLOBS) if v1 else (LAYER_NAME, LAYER_TYPE, LAYER_BLOBS)
    name = ""
    layer_type: str | int | None = None
    blobs: list[tuple[int, int]] = []
    v0_spans: list[tuple[int, int]] = []
    rest: list[tuple[int, int]] = []  # the raw bytes of every other field, for the schema check below
    prev = start  # fields are contiguous: each one's raw bytes run from the previous end to its own end
    for number, wire, a, b in _fields(buf, start, end):
        raw, prev = (prev, b), b
        if not ((number == blobs_field or (v1 and number == V1_V0LAYER)) and wire == LENGTH):
            rest.append(raw)
        if number == name_field and wire == LENGTH:
            name = _text(buf, a, b)
        elif number == type_field and wire == (VARINT if v1 else LENGTH):
            layer_type = a if v1 else _text(buf, a, b)
        elif number == blobs_field and wire == LENGTH:
            blobs.append((a, b))
        elif v1 and number == V1_V0LAYER and wire == LENGTH:
            v0_spans.append((a, b))  # a message field seen twice merges: read every occurrence in order
    _check_schema(buf, rest, "V1LayerParameter" if v1 else "LayerParameter")
    if not v0_spans:
        return _LayerSpans(name, layer_type, blobs, bool(name))
    # A V0 layer wrapped in V1's field 1: ninport's upgrade (like Caffe's UpgradeV0LayerParameter in
    # upgrade_proto.cpp) takes the name, type and blobs from the V0 message and ignores V1's own.
    v1_name, name, layer_type, blobs = name, "", None, []
    for span in v0_spans:
        for number, wire, a, b in _fields(buf, *span):
            if number == V0_NAME and wire == LENGTH:
                name = _text(buf, a, b)
            elif number == V0_TYPE and wire == LENGTH:
                layer_type = _text(buf, a, b)
            elif number == V0_BLOBS and wire == LENGTH:
                blobs.append((a, b))
    return _LayerSpans(name, layer_type, blobs, bool(v1_name or name))


def _check_schema(buf, spans: list[tuple[int, int]], message: str) -> None:
    """Parse the given raw fields (everything but the blobs: a few hundred bytes) with Caffe's schema, so that a
    file protobuf (and so Caffe) would refuse as corrupt is refused here too, blobs unread."""
    if not spans:
        return
    from google.protobuf.message import DecodeError

    from ninport.caffe import caffe_pb2

    try:
        getattr(caffe_pb2, message)().ParseFromString(b"".join(bytes(buf[a:b]) for a, b in spans))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise _Corrupt(f"a {message} that protobuf refuses ({exc})") from None


def _map(path: str) -> mmap.mmap | bytes:
    # Only regular files: a pipe or a device would block or never end. Mapped, so the size is the file's and
    # every declared length below is checked against it before anything is read.
    regular_file(path, "caffemodel")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ParseError(f"{path}: empty file, not a caffemodel")
            try:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # a file system without mmap: read it instead
                return f.read(size)
    except OSError as exc:
        raise ParseError(f"{path}: cannot read the caffemodel ({exc.strerror or exc})") from None


def _scan(source: str) -> Iterator[tuple[_LayerSpans, list[WireBlob], bool]]:
    """Yield ``(layer, its blobs, whether it is a legacy layers entry)`` for each layer, in file order."""
    buf = _map(source)
    rest: list[tuple[int, int]] = []
    prev = 0
    try:
        for number, wire, a, b in _fields(buf, 0, len(buf)):
            raw, prev = (prev, b), b
            if wire != LENGTH or number not in (NET_LAYER, NET_LAYERS_V1):
                rest.append(raw)
                continue
            legacy = number == NET_LAYERS_V1
            layer = _layer(buf, a, b, v1=legacy)
            yield layer, [_blob(buf, s, e, layer.layer_type) for s, e in layer.blobs], legacy
        _check_schema(buf, rest, "NetParameter")
    except _Corrupt as exc:
        raise ParseError(f"{source}: not a valid caffemodel (truncated or corrupt: {exc})") from None


def iter_layers(path: str | os.PathLike) -> Iterator[tuple[str, str | int | None, list[WireBlob]]]:
    """Yield ``(layer name, type, blobs)`` for each layer in file order, decoding one layer at a time.

    The arrays are views of the mapping (see ``WireBlob``), so a file of many GB is read page by page as its
    arrays are used, never whole. Corrupt or truncated input raises ``ParseError`` naming the file.
    """
    for layer, blobs, _ in _scan(os.fspath(path)):
        yield layer.name, layer.layer_type, blobs


def read_weights(path: str | os.PathLike) -> dict[str, list[WireBlob]]:
    """The blobs of each named layer of a caffemodel in any layout (V0, V1, V2), as ``WireBlob``s.

    The same choice as ``ninport.caffe.load.weights_by_layer``: legacy ``layers`` entries are considered before
    ``layer`` ones, and the first layer of a name that has blobs wins.
    """
    source = os.fspath(path)
    v1: dict[str, list[WireBlob]] = {}
    v2: dict[str, list[WireBlob]] = {}
    named = False
    for layer, blobs, legacy in _scan(source):
        named = named or layer.named
        target = v1 if legacy else v2
        if blobs and layer.name not in target:
            target[layer.name] = blobs
    if not named:
        # Random bytes can decode as a message of unknown fields only; a real caffemodel names its layers.
        raise ParseError(f"{source}: not a valid caffemodel (no named layers in it)")
    for name, blobs in v2.items():
        v1.setdefault(name, blobs)
    return v1


__all__ = ["WireBlob", "iter_layers", "read_weights"]
