"""The wire-format caffemodel reader gives exactly what the protobuf reader gives, on every layout and encoding.

The reference is the protobuf path (``read_caffemodel`` + ``weights_by_layer`` + ``blob_to_array``), which
decodes with Google's own parser; hand-made files are encoded here byte by byte where protobuf's writer would
not produce the form under test (unpacked repeated floats and dims).
"""

from __future__ import annotations

import gc
import struct
from pathlib import Path

import numpy as np
import pytest

from ninport.caffe import caffe_pb2
from ninport.caffe.caffemodel import blob_is_legacy, blob_to_array, read_caffemodel
from ninport.caffe.load import weights_by_layer
from ninport.caffe.wire import iter_layers, read_weights
from ninport.errors import ParseError


def protobuf_weights(path: Path) -> dict[str, list[tuple[np.ndarray, bool]]]:
    model = read_caffemodel(path)
    return {name: [(blob_to_array(b), blob_is_legacy(b)) for b in blobs]
            for name, blobs in weights_by_layer(model, str(path)).items()}


def assert_same_as_protobuf(path: Path) -> dict:
    expected = protobuf_weights(path)
    got = read_weights(path)
    assert list(got) == list(expected)
    for name, blobs in expected.items():
        assert len(got[name]) == len(blobs), name
        for wire_blob, (array, legacy) in zip(got[name], blobs):
            out = wire_blob.to_array()
            assert out.dtype == array.dtype, name
            assert out.shape == array.shape, name
            assert np.array_equal(out, array), name
            assert wire_blob.is_legacy == legacy, name
    return got


# A tiny protobuf encoder, written from the wire-format rules (varint keys, length-delimited payloads), so the
# hand-made files do not depend on the reader under test.
def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint((number << 3) | wire)


def length_field(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def string_field(number: int, text: str) -> bytes:
    return length_field(number, text.encode())


def unpacked_floats(number: int, values) -> bytes:
    return b"".join(key(number, 5) + struct.pack("<f", v) for v in values)


def unpacked_doubles(number: int, values) -> bytes:
    return b"".join(key(number, 1) + struct.pack("<d", v) for v in values)


def packed_floats(number: int, values) -> bytes:
    return length_field(number, np.asarray(values, dtype="<f4").tobytes())


def rng_values(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=n).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------
# The NiN fixtures


def test_nin_v1_weights_match_protobuf(nin_weights_v1: Path):
    got = assert_same_as_protobuf(nin_weights_v1)
    conv1 = got["conv1"][0]
    assert conv1.legacy_dims == (96, 3, 11, 11) and conv1.shape is None
    assert conv1.layer_type == caffe_pb2.V1LayerParameter.CONVOLUTION


def test_nin_v2_weights_match_protobuf(nin_weights_v2: Path):
    got = assert_same_as_protobuf(nin_weights_v2)
    assert got["conv1"][0].shape == (96, 3, 11, 11) and got["conv1"][0].legacy_dims is None
    assert got["conv1"][1].shape == (96,)
    assert got["conv1"][0].layer_type == "Convolution"


def test_packed_data_are_read_only_views_that_keep_the_file_mapped(nin_weights_v2: Path):
    blob = read_weights(nin_weights_v2)["cccp1"][0]
    array = blob.array
    assert array.dtype == np.float32 and not array.flags.owndata and not array.flags.writeable
    expected = blob_to_array(weights_by_layer(read_caffemodel(nin_weights_v2), "")["cccp1"][0]).ravel()
    del blob
    gc.collect()
    assert np.array_equal(array, expected)  # the view alone keeps the mapping alive


def test_iter_layers_yields_file_order_with_types(nin_weights_v1: Path):
    names = [name for name, _, _ in iter_layers(nin_weights_v1)]
    model = read_caffemodel(nin_weights_v1)
    assert names == [layer.name for layer in model.layers]


# ------------------------------------------------------------------------------------------------------------
# Hand-made files: every encoding the reader must accept


def write(tmp_path: Path, data: bytes, name: str = "m.caffemodel") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_unpacked_floats_and_dims(tmp_path: Path):
    values = rng_values(24, 1)
    shape = length_field(7, b"".join(key(1, 0) + varint(d) for d in (2, 3, 4)))  # unpacked BlobShape.dim
    blob = shape + unpacked_floats(5, values[:10]) + packed_floats(5, values[10:20]) + unpacked_floats(5, values[20:])
    layer = string_field(1, "ip") + string_field(2, "InnerProduct") + length_field(7, blob)
    path = write(tmp_path, length_field(100, layer))
    got = assert_same_as_protobuf(path)
    assert got["ip"][0].shape == (2, 3, 4)
    assert np.array_equal(got["ip"][0].to_array().ravel(), values)  # packed and unpacked runs append in order


def test_double_data_wins_over_data(tmp_path: Path):
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="scale", type="Scale")
    blob = layer.blobs.add()
    blob.shape.dim.extend([3])
    blob.double_data.extend([1.0 + 1e-12, -2.5, 1e300])
    only_float = layer.blobs.add()
    only_float.data.extend([0.5, 0.25])
    path = write(tmp_path, net.SerializeToString())
    got = assert_same_as_protobuf(path)
    assert got["scale"][0].array.dtype == np.float64 and got["scale"][0].to_array()[0] == 1.0 + 1e-12
    assert got["scale"][1].shape is None and got["scale"][1].legacy_dims is None


def test_unpacked_double_data(tmp_path: Path):
    values = [0.1, -3.0, 7.25, 1e-300]
    dims = b"".join(key(n, 0) + varint(d) for n, d in ((4, 4), (2, 1), (1, 1), (3, 1)))  # any field order
    layer = string_field(1, "b") + length_field(7, dims + unpacked_doubles(8, values))
    got = assert_same_as_protobuf(write(tmp_path, length_field(100, layer)))
    assert got["b"][0].legacy_dims == (1, 1, 1, 4) and got["b"][0].array.dtype == np.float64


def test_data_and_diff_mixed_with_unknown_fields(tmp_path: Path):
    values = rng_values(6, 2)
    blob = (packed_floats(6, rng_values(6, 3))  # diff: skipped
            + key(99, 0) + varint(12345)  # an unknown varint
            + key(98, 1) + b"\x00" * 8  # an unknown fixed64
            + packed_floats(5, values)
            + length_field(7, length_field(1, varint(6))))
    layer = (string_field(1, "x") + length_field(106, b"\x08\x03")  # a convolution_param to skip
             + string_field(3, "data") + length_field(7, blob))
    path = write(tmp_path, string_field(1, "net") + length_field(100, layer))
    got = assert_same_as_protobuf(path)
    assert np.array_equal(got["x"][0].array, values)


def test_v0_layers_wrapped_in_v1(tmp_path: Path):
    net = caffe_pb2.NetParameter()
    entry = net.layers.add()
    entry.bottom.append("data")
    entry.layer.name = "conv1"
    entry.layer.type = "conv"
    for seed, dims in ((4, (4, 3, 2, 2)), (5, (1, 1, 1, 4))):
        blob = entry.layer.blobs.add()
        blob.num, blob.channels, blob.height, blob.width = dims
        blob.data.extend(rng_values(int(np.prod(dims)), seed))
    path = write(tmp_path, net.SerializeToString())
    got = assert_same_as_protobuf(path)
    assert got["conv1"][0].layer_type == "conv" and got["conv1"][0].legacy_dims == (4, 3, 2, 2)


def test_first_layer_with_blobs_wins_and_legacy_entries_first(tmp_path: Path):
    net = caffe_pb2.NetParameter()
    v2_empty = net.layer.add(name="a", type="InnerProduct")  # no blobs: does not claim the name
    del v2_empty
    v2 = net.layer.add(name="a", type="InnerProduct")
    v2.blobs.add().data.extend([1.0, 2.0])
    v2_again = net.layer.add(name="a", type="InnerProduct")
    v2_again.blobs.add().data.extend([9.0])
    only_v2 = net.layer.add(name="b", type="Bias")
    only_v2.blobs.add().data.extend([3.0])
    v1 = net.layers.add(name="b", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    v1.blobs.add().data.extend([4.0, 5.0, 6.0])
    path = write(tmp_path, net.SerializeToString())
    got = assert_same_as_protobuf(path)
    assert list(got["a"][0].array) == [1.0, 2.0]
    assert list(got["b"][0].array) == [4.0, 5.0, 6.0]  # the legacy entry is considered first


def test_negative_and_large_dims(tmp_path: Path):
    blob = key(1, 0) + varint(-1) + key(2, 0) + varint(2) + packed_floats(5, [1.0, 2.0])
    layer = string_field(1, "odd") + length_field(7, blob)
    got = read_weights(write(tmp_path, length_field(100, layer)))
    assert got["odd"][0].legacy_dims == (-1, 2, 0, 0)
    model = read_caffemodel(tmp_path / "m.caffemodel")
    assert model.layer[0].blobs[0].num == -1 and model.layer[0].blobs[0].height == 0  # unset reads as 0


# ------------------------------------------------------------------------------------------------------------
# Bad input: one ParseError line naming the file, exactly where the protobuf path fails too


def test_every_truncation_fails_like_protobuf(tmp_path: Path):
    net = caffe_pb2.NetParameter(name="t")
    for i, layout in enumerate(("v2", "v1", "v2")):
        if layout == "v2":
            layer = net.layer.add(name=f"l{i}", type="Convolution")
            blob = layer.blobs.add()
            blob.shape.dim.extend([2, 3])
        else:
            layer = net.layers.add(name=f"l{i}", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
            blob = layer.blobs.add()
            blob.num, blob.channels, blob.height, blob.width = 1, 1, 2, 3
        blob.data.extend(rng_values(6, i))
    data = net.SerializeToString()
    path = tmp_path / "cut.caffemodel"
    outcomes = {"both fail": 0, "both read": 0}
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        try:
            expected = protobuf_weights(path)
        except ParseError:
            expected = None
        if expected is None:
            with pytest.raises(ParseError) as info:
                read_weights(path)
            message = str(info.value)
            assert message.startswith(f"{path}: not a valid caffemodel") and "\n" not in message
            outcomes["both fail"] += 1
        else:
            assert_same_as_protobuf(path)
            outcomes["both read"] += 1
    assert outcomes["both fail"] > len(data) // 2 and outcomes["both read"] >= 1


@pytest.mark.parametrize("data, why", [
    (b"", "empty file"),
    (length_field(100, string_field(1, "a") + length_field(7, length_field(5, b"\x00" * 6))), "not a multiple of 4"),
    (length_field(100, string_field(1, "a")) + b"\x0f", "invalid wire type"),
    (b"\x08\x96\x01" * 5, "no named layers"),
    (length_field(100, string_field(1, "a") + length_field(7, b"\x2d\x00\x00")), "past the end"),
])
def test_corrupt_files_raise_one_line(tmp_path: Path, data: bytes, why: str):
    path = write(tmp_path, data)
    with pytest.raises(ParseError) as info:
        read_weights(path)
    assert str(info.value).startswith(str(path)) and why in str(info.value)
    with pytest.raises(ParseError):
        protobuf_weights(path)  # protobuf's parser refuses the same bytes


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(ParseError, match="no such file"):
        read_weights(tmp_path / "nope.caffemodel")
    with pytest.raises(ParseError, match="is a directory"):
        read_weights(tmp_path)
