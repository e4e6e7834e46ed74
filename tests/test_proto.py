"""Checks on the Caffe schema: the committed caffe_pb2.py is up to date, and it is wire-compatible with BVLC Caffe.

Every expected number below is taken from BVLC/caffe master, src/caffe/proto/caffe.proto, not from protos/caffe.proto.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

import ninport.caffe.caffe_pb2 as caffe_pb2

REPO_ROOT = Path(__file__).resolve().parent.parent


def _number(message_cls, field_name: str) -> int:
    return message_cls.DESCRIPTOR.fields_by_name[field_name].number


def test_committed_caffe_pb2_matches_regenerated(tmp_path: Path) -> None:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tools import gen_proto

    fresh = gen_proto.generate(tmp_path)
    committed = REPO_ROOT / "ninport" / "caffe" / "caffe_pb2.py"
    assert fresh.read_bytes() == committed.read_bytes(), (
        "ninport/caffe/caffe_pb2.py is stale: run `python tools/gen_proto.py` and commit the result"
    )


@pytest.mark.parametrize(
    ("field_name", "number"),
    [
        ("convolution_param", 106),
        ("pooling_param", 121),
        ("batch_norm_param", 139),
        ("clip_param", 148),
        ("swish_param", 147),
        ("transform_param", 100),
        ("prelu_param", 131),
        ("input_param", 143),
        ("blobs", 7),
        ("phase", 10),
    ],
)
def test_layer_parameter_field_numbers(field_name: str, number: int) -> None:
    assert _number(caffe_pb2.LayerParameter, field_name) == number


def test_v1_layer_parameter() -> None:
    v1 = caffe_pb2.V1LayerParameter
    assert v1.CONVOLUTION == 4
    assert v1.POOLING == 17
    assert v1.INNER_PRODUCT == 14
    assert v1.DECONVOLUTION == 39
    assert v1.ABSVAL == 35
    assert _number(v1, "blobs_lr") == 7
    assert _number(v1, "weight_decay") == 8
    assert _number(v1, "type") == 5
    assert _number(v1, "convolution_param") == 10
    assert _number(v1, "pooling_param") == 19
    assert _number(v1, "param") == 1001
    assert _number(v1, "layer") == 1


def test_blob_proto_field_numbers() -> None:
    expected = {"num": 1, "channels": 2, "height": 3, "width": 4, "data": 5, "diff": 6, "shape": 7,
                "double_data": 8, "double_diff": 9}
    for name, number in expected.items():
        assert _number(caffe_pb2.BlobProto, name) == number, name


def test_blob_data_is_packed_on_the_wire() -> None:
    # Field 5, wire type 2 (length-delimited): tag byte 0x2a, then 4 bytes of little-endian float.
    assert caffe_pb2.BlobProto(data=[1.0]).SerializeToString() == b"\x2a\x04" + struct.pack("<f", 1.0)
    # BlobShape.dim is packed int64 at field 1: tag 0x0a, length 2, varints 3 and 4.
    assert caffe_pb2.BlobShape(dim=[3, 4]).SerializeToString() == b"\x0a\x02\x03\x04"
    # The legacy num field is a plain varint at field 1.
    assert caffe_pb2.BlobProto(num=2).SerializeToString() == b"\x08\x02"


def test_pooling_round_mode() -> None:
    field = caffe_pb2.PoolingParameter.DESCRIPTOR.fields_by_name["round_mode"]
    assert field.number == 13
    assert field.enum_type is not None and field.enum_type.name == "RoundMode"
    assert caffe_pb2.PoolingParameter.CEIL == 0
    assert caffe_pb2.PoolingParameter.FLOOR == 1
    assert field.has_default_value and field.default_value == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    # A message carrying FLOOR as raw varint 1 at field 13 decodes to FLOOR.
    assert caffe_pb2.PoolingParameter.FromString(b"\x68\x01").round_mode == caffe_pb2.PoolingParameter.FLOOR


def test_net_parameter_field_numbers() -> None:
    expected = {"name": 1, "layers": 2, "input": 3, "input_dim": 4, "input_shape": 8, "layer": 100}
    for name, number in expected.items():
        assert _number(caffe_pb2.NetParameter, name) == number, name


def test_text_parse_v1_layers() -> None:
    net = text_format.Parse(
        'layers { name: "c" type: CONVOLUTION convolution_param { num_output: 2 kernel_size: 3 } }',
        caffe_pb2.NetParameter(),
    )
    assert len(net.layers) == 1 and len(net.layer) == 0
    layer = net.layers[0]
    assert layer.name == "c"
    assert layer.type == caffe_pb2.V1LayerParameter.CONVOLUTION
    assert layer.convolution_param.num_output == 2
    assert list(layer.convolution_param.kernel_size) == [3]


def test_text_parse_v0_layers() -> None:
    net = text_format.Parse(
        'layers { layer { name: "c" type: "conv" num_output: 2 kernelsize: 3 } }',
        caffe_pb2.NetParameter(),
    )
    assert len(net.layers) == 1
    v0 = net.layers[0].layer
    assert v0.name == "c"
    assert v0.type == "conv"
    assert v0.num_output == 2
    assert v0.kernelsize == 3
    # Field numbers of the V0 message, from upstream.
    assert _number(caffe_pb2.V0LayerParameter, "kernelsize") == 8
    assert _number(caffe_pb2.V0LayerParameter, "blobs") == 50
    assert _number(caffe_pb2.V0LayerParameter, "hdf5_output_param") == 1001
