"""Fork files read without --caffe-proto: the dialect named from the fields and types a file uses, clashes between
forks resolved by those fields, ceil_mode mapped onto round_mode, and fork caffemodels whose parameters use the
fork's own field numbers read for their weights alone (by the blob field numbers, ninport/caffe/wire.py)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from layer_harness import write_net

from ninport.caffe import caffe_pb2, dialects
from ninport.caffe.load import load_net, read_net
from ninport.caffe.wire import read_weights
from ninport.errors import NetError

HEADER = 'name: "fork"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 9 dim: 9 }\n'


def pool(name: str, extra: str, bottom: str = "data") -> str:
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}" '
            f"pooling_param {{ pool: MAX kernel_size: 2 stride: 2 {extra} }} }}\n")


def test_ceil_mode_becomes_round_mode(tmp_path):
    # 9 wide, kernel 2, stride 2: floor gives 4, ceil 5 (Caffe's default, and the fork's default too).
    proto, _ = write_net(tmp_path, HEADER + pool("floor", "ceil_mode: false") + pool("ceil", "ceil_mode: true")
                         + pool("plain", ""))
    net, shapes = load_net(proto)
    assert shapes.blobs["floor"][2:] == (4, 4)
    assert shapes.blobs["ceil"][2:] == (5, 5)
    assert shapes.blobs["plain"][2:] == (5, 5)
    floor = net.layer("floor").param.pooling_param
    assert floor.round_mode == caffe_pb2.PoolingParameter.FLOOR and not floor.HasField("ceil_mode")
    assert net.dialects.names == ["ceil_mode ports"]
    assert {f.layer for f in net.fork_fields} == {"floor", "ceil"}
    assert next(f for f in net.fork_fields if f.layer == "floor").line == 4


def test_ceil_mode_in_v1_layers(tmp_path):
    text = HEADER + ('layers { name: "p" type: POOLING bottom: "data" top: "p" '
                     "pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false } }\n")
    proto, _ = write_net(tmp_path, text)
    _, shapes = load_net(proto)
    assert shapes.blobs["p"][2:] == (4, 4)


def test_ceil_mode_and_round_mode_together_are_refused(tmp_path, run_cli):
    proto, _ = write_net(tmp_path, HEADER + pool("p", "ceil_mode: false round_mode: CEIL"))
    result = run_cli("inspect", str(proto))
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and f"{proto}:4" in line and "'p'" in line and "ceil_mode" in line


SSD_LAYERS = (
    'layer { name: "norm" type: "Normalize" bottom: "data" top: "norm" norm_param { across_spatial: false } }\n'
    'layer { name: "perm" type: "Permute" bottom: "norm" top: "perm" permute_param { order: 0 order: 2 order: 3 '
    "order: 1 } }\n"
    'layer { name: "prior" type: "PriorBox" bottom: "data" bottom: "data" top: "prior" prior_box_param { '
    "min_size: 4 variance: 0.1 } }\n"
)


def test_inspect_names_the_ssd_dialect(tmp_path, run_cli):
    proto, _ = write_net(tmp_path, HEADER + SSD_LAYERS + pool("p", "ceil_mode: false"))
    result = run_cli("inspect", str(proto))
    assert result.exit_code == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("dialect:"))
    assert "SSD" in line and "ceil_mode ports" in line and "norm: type Normalize" in line
    report = json.loads(run_cli("inspect", str(proto), "--json").stdout)
    assert report["dialects"] == ["SSD", "ceil_mode ports"]


def test_upstream_file_has_no_dialect(tmp_path, run_cli):
    proto, _ = write_net(tmp_path, HEADER + pool("p", "round_mode: FLOOR"))
    result = run_cli("inspect", str(proto))
    assert "dialect: upstream BVLC Caffe" in result.stdout
    assert json.loads(run_cli("inspect", str(proto), "--json").stdout)["dialects"] == []


def bn(name: str, fields: str) -> str:
    return f'layer {{ name: "{name}" type: "BN" bottom: "data" top: "{name}" bn_param {{ {fields} }} }}\n'


INTERP = 'layer { name: "up" type: "Interp" bottom: "data" top: "up" interp_param { zoom_factor: 2 } }\n'


@pytest.mark.parametrize(("text", "expected"), [
    (bn("bn", "bn_mode: INFERENCE"), "SegNet/ENet"),  # SegNet's field 3
    (bn("bn", "scale_filler { type: 'constant' value: 1 } shift_filler { type: 'constant' }"), "SegNet/ENet"),
    (bn("bn", "slope_filler { type: 'constant' value: 1 } momentum: 0.95"), "PSPNet/DeepLab"),  # PSPNet's 3
    (bn("bn", "frozen: true") , "PSPNet/DeepLab"),
    (bn("bn", "") + INTERP, "PSPNet/DeepLab"),  # no BN field: the file's other layers decide
    (bn("bn", ""), "SegNet/ENet"),  # nothing to go by: the default
])
def test_bn_dialect_is_told_by_the_fields(tmp_path, text, expected):
    proto, _ = write_net(tmp_path, HEADER + text)
    net = read_net(proto)
    assert net.dialects.layers["bn"] == expected
    assert expected in net.dialects.names


def test_bn_fields_of_two_forks_are_refused(tmp_path):
    proto, _ = write_net(tmp_path, HEADER + bn("bn", "bn_mode: INFERENCE momentum: 0.9"))
    with pytest.raises(NetError, match="PSPNet/DeepLab and SegNet/ENet") as caught:
        read_net(proto)
    assert str(caught.value).startswith(f"{proto}:4: layer 'bn'")


def test_upsample_kind_is_told_by_its_bottoms(tmp_path):
    text = HEADER + (
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" pooling_param { pool: MAX '
        "kernel_size: 2 stride: 2 } }\n"
        'layer { name: "unpool" type: "Upsample" bottom: "pool" bottom: "mask" top: "unpool" upsample_param { '
        "scale: 2 upsample_h: 9 upsample_w: 9 } }\n"
        'layer { name: "nearest" type: "Upsample" bottom: "data" top: "nearest" upsample_param { scale: 2 } }\n'
    )
    proto, _ = write_net(tmp_path, text)
    net = read_net(proto)
    assert net.dialects.layers == {"unpool": "SegNet/ENet", "nearest": "YOLO ports"}


def test_deeplab_v1_interp_enum(tmp_path):
    text = HEADER + ('layers { name: "up" type: INTERP bottom: "data" top: "up" '
                     "interp_param { zoom_factor: 8 } }\n")
    proto, _ = write_net(tmp_path, text)
    net = read_net(proto)
    up = net.layer("up")
    assert up.type == "Interp" and up.param.interp_param.zoom_factor == 8
    assert net.dialects.names == ["PSPNet/DeepLab"]


def test_rcnn_fields_parse(tmp_path):
    text = HEADER + (
        'layer { name: "roi" type: "ROIPooling" bottom: "data" bottom: "data" top: "roi" '
        "roi_pooling_param { pooled_w: 7 pooled_h: 7 spatial_scale: 0.0625 } }\n"
        'layer { name: "ps" type: "PSROIPooling" bottom: "data" bottom: "data" top: "ps" '
        "psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 } }\n"
        'layer { name: "sh" type: "ShuffleChannel" bottom: "data" top: "sh" shuffle_channel_param { group: 3 } }\n'
    )
    proto, _ = write_net(tmp_path, text)
    net = read_net(proto)
    assert net.layer("roi").param.roi_pooling_param.spatial_scale == pytest.approx(0.0625)
    assert net.layer("ps").param.psroi_pooling_param.group_size == 7
    assert net.dialects.names == ["R-CNN", "ShuffleNet/MobileNet"]


def test_refused_fork_value_is_one_line(tmp_path, run_cli, monkeypatch):
    # The table of fork values no converter honours (dialects.REFUSED): a row refuses in one line, with file,
    # line, layer and field. (The row here is the test's own; the table's rows change as converters arrive.)
    monkeypatch.setattr(dialects, "REFUSED", [dialects.Refusal("Dropout", "dropout_param.scale_train", False,
                                                               "not honoured (test row)")])
    text = HEADER + ('layer { name: "drop" type: "Dropout" bottom: "data" top: "data" '
                     "dropout_param { dropout_ratio: 0.3 scale_train: false } }\n")
    proto, _ = write_net(tmp_path, text)
    result = run_cli("inspect", str(proto))
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "'drop'" in line and "scale_train: false" in line and f"{proto}:4" in line


# ---- a fork caffemodel: parameters under the fork's numbers, weights by the blob numbers --------------------------


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def _field(number: int, wire: int, payload: bytes) -> bytes:
    tag = _varint(number << 3 | wire)
    return tag + (_varint(len(payload)) + payload if wire == 2 else payload)


def test_fork_caffemodel_with_the_forks_field_numbers(tmp_path):
    """The layer parameters of a PSPNet/OpenCV-numbered caffemodel land on numbers that mean other things in the
    superset (interp_param at 143 is upstream's input_param, bn_param at 152, OpenCV's prior_box_param at 150, a
    bool ceil_mode at 13 where round_mode is): the weights still come through, untouched."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(size=(4,)).astype(np.float32)
    conv = caffe_pb2.LayerParameter(name="conv", type="Convolution")
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    for array in (weight, bias):
        blob = conv.blobs.add()
        blob.shape.dim.extend(array.shape)
        blob.data.extend(array.ravel().tolist())
    # PSPNet's InterpParameter (height 1, width 2, varints) at 143; its BNParameter (slope_filler message 1,
    # momentum float 3) at 152; OpenCV's PriorBoxParameter (min_size float 1) at 150.
    interp = _field(1, 0, _varint(65)) + _field(2, 0, _varint(65))
    bn_param = _field(1, 2, _field(1, 2, b"constant")) + _field(3, 5, struct.pack("<f", 0.9))
    prior = _field(1, 5, struct.pack("<f", 30.0))
    fork_bits = _field(143, 2, interp) + _field(152, 2, bn_param) + _field(150, 2, prior)
    pool = caffe_pb2.LayerParameter(name="pool", type="Pooling").SerializeToString()
    pool += _field(121, 2, _field(13, 0, _varint(1)) + _field(1, 0, _varint(0)))  # ceil_mode: true at 13
    model = caffe_pb2.NetParameter(name="fork").SerializeToString()
    model += _field(100, 2, conv.SerializeToString() + fork_bits) + _field(100, 2, pool)
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(model)

    found = read_weights(path)
    assert list(found) == ["conv"]
    np.testing.assert_array_equal(found["conv"][0].to_array(), weight)
    np.testing.assert_array_equal(found["conv"][1].to_array(), bias)

    text = HEADER + ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                     "convolution_param { num_output: 4 kernel_size: 3 } }\n") + pool_text()
    proto, _ = write_net(tmp_path, text)
    net, _ = load_net(proto, path)
    np.testing.assert_array_equal(net.layer("conv").blobs[0], weight)


def pool_text() -> str:
    return pool("pool", "ceil_mode: false", bottom="conv")


SSD_TEST_FILE = """name: "ssd_test"
layer { name: "data" type: "AnnotatedData" top: "data" top: "label" include { phase: TEST }
  transform_param { mean_value: 127.5 mean_value: 127.5 mean_value: 127.5 scale: 0.007843
    resize_param { prob: 1 resize_mode: WARP height: 12 width: 12 interp_mode: LINEAR } }
  data_param { source: "test_lmdb" batch_size: 8 backend: LMDB }
  annotated_data_param { batch_sampler { } label_map_file: "labelmap.prototxt" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "eval" type: "DetectionEvaluate" bottom: "conv" bottom: "label" top: "eval" include { phase: TEST }
  detection_evaluate_param { num_classes: 21 background_label_id: 0 overlap_threshold: 0.5 evaluate_difficult_gt: false
    name_size_file: "test_name_size.txt" } }
"""


def test_ssd_test_file_reads_as_published(tmp_path):
    """An SSD test file: AnnotatedData with SSD's transform fields becomes the input, DetectionEvaluate is dropped."""
    proto, _ = write_net(tmp_path, SSD_TEST_FILE)
    net, shapes = load_net(proto, input_shape="1,3,12,12")
    assert [x.type for x in net.layers] == ["Input", "Convolution"]
    assert shapes.blobs["conv"] == (1, 4, 10, 10)
