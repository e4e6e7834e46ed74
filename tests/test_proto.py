"""Checks on the Caffe schema: the committed caffe_pb2.py is up to date, and it is a wire-compatible superset of
BVLC Caffe's (upstream's text unchanged, the forks' fields in delimited sections).

Every expected number below is taken from BVLC/caffe master, src/caffe/proto/caffe.proto, or from the fork's
caffe.proto named beside it, not from protos/caffe.proto.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from google.protobuf.descriptor import FieldDescriptor
from schema_text import upstream_text

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


def _compile(text: str, tmp_path: Path) -> descriptor_pool.DescriptorPool:
    from grpc_tools import protoc

    proto = tmp_path / "caffe.proto"
    proto.write_text(text)
    out = tmp_path / "caffe.pb"
    include = Path(protoc.__file__).resolve().parent / "_proto"
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"-I{include}",
                           f"--descriptor_set_out={out}", str(proto)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)
    return pool


def _messages(descriptor):
    yield descriptor
    for nested in descriptor.nested_types:
        yield from _messages(nested)


def test_schema_is_a_superset_of_upstream(tmp_path: Path) -> None:
    """Every upstream message, field and enum value is in the superset with the same number, type and label."""
    upstream = _compile(upstream_text((REPO_ROOT / "protos" / "caffe.proto").read_text()), tmp_path)
    ours = caffe_pb2.DESCRIPTOR.pool
    file = upstream.FindFileByName("caffe.proto")
    assert len(file.message_types_by_name) > 40  # the stripped text is the whole upstream schema
    for top in file.message_types_by_name.values():
        for message in _messages(top):
            mine = ours.FindMessageTypeByName(message.full_name)
            for f in message.fields:
                g = mine.fields_by_name.get(f.name)
                assert g is not None, f"{message.full_name}.{f.name} missing"
                assert (g.number, g.type, g.is_repeated) == (f.number, f.type, f.is_repeated), g.full_name
                assert g.has_default_value == f.has_default_value and g.default_value == f.default_value
                if f.type == FieldDescriptor.TYPE_MESSAGE:
                    assert g.message_type.full_name == f.message_type.full_name
                if f.type == FieldDescriptor.TYPE_ENUM:
                    assert g.enum_type.full_name == f.enum_type.full_name
                if f.type != FieldDescriptor.TYPE_MESSAGE:  # packed encoding must agree
                    assert g.GetOptions().packed == f.GetOptions().packed, g.full_name
            for enum in message.enum_types:
                mine_enum = mine.enum_types_by_name[enum.name]
                for v in enum.values:
                    assert mine_enum.values_by_name[v.name].number == v.number, f"{enum.full_name}.{v.name}"
            # A fork field must never reuse an upstream number in the same message.
            upstream_numbers = {f.number for f in message.fields}
            extra = [g for g in mine.fields if g.name not in message.fields_by_name]
            assert not [g.name for g in extra if g.number in upstream_numbers], message.full_name


@pytest.mark.parametrize(
    ("message", "field_name", "number"),
    [
        # weiliu89/caffe (branch ssd), src/caffe/proto/caffe.proto
        ("LayerParameter", "permute_param", 202),
        ("LayerParameter", "prior_box_param", 203),
        ("LayerParameter", "detection_output_param", 204),
        ("LayerParameter", "norm_param", 206),
        ("PriorBoxParameter", "offset", 13),
        ("DetectionOutputParameter", "keep_top_k", 7),
        ("DetectionOutputParameter", "variance_encoded_in_target", 8),
        ("DetectionOutputParameter", "confidence_threshold", 9),
        # rbgirshick/caffe-fast-rcnn and daijifeng001/caffe-rfcn
        ("LayerParameter", "roi_pooling_param", 8266711),
        ("LayerParameter", "psroi_pooling_param", 10001),
        ("DropoutParameter", "scale_train", 2),
        # alexgkendall/caffe-segnet
        ("LayerParameter", "bn_param", 45),
        ("BNParameter", "bn_mode", 3),
        # farmingyard/ShuffleNet
        ("LayerParameter", "shuffle_channel_param", 164),
        # DeepLab v1's V1 field
        ("V1LayerParameter", "interp_param", 43),
    ],
)
def test_fork_field_numbers(message: str, field_name: str, number: int) -> None:
    assert _number(getattr(caffe_pb2, message), field_name) == number


def test_fork_values_parse_by_name() -> None:
    """A prototxt of each dialect's fields parses with the superset alone."""
    net = text_format.Parse(
        """
        layer { name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }
        layer { name: "d" type: "Dropout" dropout_param { dropout_ratio: 0.3 scale_train: false } }
        layer { name: "pb" type: "PriorBox" prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 flip: true
                clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5 } }
        layer { name: "det" type: "DetectionOutput" detection_output_param { num_classes: 21 share_location: true
                background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE
                keep_top_k: 200 confidence_threshold: 0.01 clip: true } }
        layer { name: "bn" type: "BN" bn_param { bn_mode: INFERENCE scale_filler { type: "constant" value: 1 } } }
        layer { name: "bn2" type: "BN" bn_param { slope_filler { type: "constant" value: 1 } momentum: 0.95
                frozen: true } }
        layer { name: "i" type: "Interp" interp_param { zoom_factor: 8 } }
        layers { name: "i1" type: INTERP interp_param { shrink_factor: 2 } }
        """,
        caffe_pb2.NetParameter(),
    )
    assert net.layer[0].pooling_param.HasField("ceil_mode") and not net.layer[0].pooling_param.ceil_mode
    assert not net.layer[1].dropout_param.scale_train
    assert list(net.layer[2].prior_box_param.variance) == pytest.approx([0.1, 0.1, 0.2, 0.2])
    det = net.layer[3].detection_output_param
    assert det.code_type == caffe_pb2.PriorBoxParameter.CENTER_SIZE and det.clip and det.nms_param.top_k == 400
    assert net.layer[4].bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE
    assert net.layer[5].bn_param.momentum == pytest.approx(0.95)
    assert net.layers[0].type == caffe_pb2.V1LayerParameter.INTERP == 41


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
