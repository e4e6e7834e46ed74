"""``--caffe-proto``: files of a Caffe fork read with the fork's own schema.

The fork is made here from ninport's protos/caffe.proto by text substitution: PoolingParameter's enum
``round_mode = 13`` becomes ``bool ceil_mode = 13`` (as in several forks, and in OpenCV's own schema, so
OpenCV is the reference for it), ConvolutionParameter and FillerParameter gain fields, PoolMethod gains a value,
ReLUParameter's ``negative_slope`` moves to another number, and LayerParameter gains SSD's ``permute_param``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from layer_harness import opencv_outputs, torch_blobs, write_net
from schema_text import upstream_text
from torch import nn

import ninport
import ninport.torch.registry as registry
from ninport.caffe import shapes
from ninport.caffe.fork import compile_schema, fork_param
from ninport.caffe.load import load_net, read_net
from ninport.errors import NetError, ParseError, RuntimeUnavailableError, UnsupportedLayerError

UPSTREAM = Path(__file__).resolve().parent.parent / "protos" / "caffe.proto"


def sub(pattern: str, replacement: str, text: str) -> str:
    out, count = re.subn(pattern, replacement, text, count=1)
    assert count == 1, pattern
    return out


@pytest.fixture(scope="module")
def fork_proto(tmp_path_factory) -> Path:
    text = upstream_text(UPSTREAM.read_text())
    text = sub(r"optional RoundMode round_mode = 13 \[default = CEIL\];",
               "optional bool ceil_mode = 13 [default = true];", text)
    text = sub(r"(message ConvolutionParameter \{)", r"\1\n  optional bool fancy_winograd = 901 [default = false];",
               text)
    text = sub(r"(message FillerParameter \{)", r"\1\n  optional float fork_gain = 902 [default = 1];", text)
    text = sub(r"(enum PoolMethod \{\n    MAX = 0;\n    AVE = 1;\n    STOCHASTIC = 2;)", r"\1\n    DEF = 3;", text)
    text = sub(r"optional float negative_slope = 1 \[default = 0\];",
               "optional float negative_slope = 77 [default = 0];", text)
    text = sub(r"(message LayerParameter \{)", r"\1\n  optional PermuteParameter permute_param = 903;", text)
    text += "\nmessage PermuteParameter {\n  repeated uint32 order = 1;\n}\n"
    path = tmp_path_factory.mktemp("fork") / "caffe.proto"
    path.write_text(text)
    return path


HEADER = 'name: "forked"\ninput: "data"\ninput_shape { dim: 2 dim: 3 dim: 7 dim: 7 }\n'
CONV = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
        "  convolution_param { num_output: 4 kernel_size: 2 weight_filler { type: 'xavier' fork_gain: 2 } } }\n")


def pool(name: str, ceil: str, bottom: str = "conv") -> str:
    extra = "" if ceil == "" else f" ceil_mode: {ceil}"
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"\n'
            f"  pooling_param {{ pool: MAX kernel_size: 3 stride: 2{extra} }} }}\n")


NET = HEADER + CONV + pool("floor", "false") + pool("ceil", "true") + pool("default", "")


def conv_weights(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(4, 3, 2, 2)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]


def test_without_the_fork_schema_the_error_suggests_it(tmp_path, run_cli):
    # ceil_mode and the other known forks' fields are in the superset schema; this fork's field is not.
    proto, _ = write_net(tmp_path, HEADER + 'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
                         "  convolution_param { num_output: 4 kernel_size: 2 fancy_winograd: true } }\n")
    result = run_cli("inspect", proto)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"{proto}:5:" in line and 'has no field named "fancy_winograd"' in line and "--caffe-proto" in line


def test_ceil_mode_is_translated_to_round_mode(tmp_path, fork_proto, run_cli):
    # 6×6 after the 2×2 conv; kernel 3, stride 2: floor → 2, ceil → 3 (and the fork's default is ceil).
    proto, _ = write_net(tmp_path, NET)
    net, found = load_net(proto, caffe_proto=fork_proto)
    assert found.blobs["floor"][2:] == (2, 2)
    assert found.blobs["ceil"][2:] == (3, 3)
    assert found.blobs["default"][2:] == (3, 3)
    notes = {(f.layer, f.kind) for f in net.fork_fields}
    assert ("floor", "translated") in notes and ("ceil", "translated") in notes
    result = run_cli("inspect", proto, "--caffe-proto", fork_proto, "--json")
    assert result.exit_code == 0, result.stderr


def test_fork_whose_default_is_floor(tmp_path, fork_proto):
    # A fork declaring ceil_mode with default false floors every pooling that does not say otherwise.
    floor_fork = tmp_path / "floor" / "caffe.proto"
    floor_fork.parent.mkdir()
    floor_fork.write_text(fork_proto.read_text().replace("ceil_mode = 13 [default = true]",
                                                         "ceil_mode = 13 [default = false]"))
    proto, _ = write_net(tmp_path, HEADER + CONV + pool("default", ""))
    _, found = load_net(proto, caffe_proto=floor_fork)
    assert found.blobs["default"][2:] == (2, 2)


def write_fork_caffemodel(path: Path, fork_proto: Path, weights) -> None:
    """A caffemodel written with the fork's schema, its pooling layers carrying ceil_mode."""
    schema = compile_schema(fork_proto)
    model = schema.message_class("NetParameter")()
    conv = model.layer.add(name="conv", type="Convolution")
    conv.convolution_param.num_output = 4
    conv.convolution_param.fancy_winograd = True  # in the caffemodel only: its layer parameters are not used
    for array in weights:
        blob = conv.blobs.add()
        blob.shape.dim.extend(array.shape)
        blob.data.extend(array.ravel().tolist())
    p = model.layer.add(name="floor", type="Pooling")
    p.pooling_param.ceil_mode = False
    path.write_bytes(model.SerializeToString())


def test_convert_with_the_fork_schema_matches_opencv(tmp_path, fork_proto, run_cli):
    # OpenCV's own Caffe schema has ceil_mode = 13, so it reads the fork's prototxt as the fork means it.
    proto, _ = write_net(tmp_path, NET)
    model = tmp_path / "forked.caffemodel"
    weights = conv_weights()
    write_fork_caffemodel(model, fork_proto, weights)
    x = np.random.default_rng(5).normal(size=(2, 3, 7, 7)).astype(np.float32)
    cv_model = write_net(tmp_path, NET, [("conv", "Convolution", weights)], name="upstream_weights")[1]
    reference = opencv_outputs(proto, cv_model, {"data": x}, ["floor", "ceil", "default"])
    assert reference["floor"].shape[2:] == (2, 2) and reference["ceil"].shape[2:] == (3, 3)
    net, found = load_net(proto, model, caffe_proto=fork_proto)
    module = ninport.build_module(net, found)
    blobs = torch_blobs(module, {"data": x})
    for name, ref in reference.items():
        np.testing.assert_allclose(blobs[name], ref, rtol=0, atol=1e-5 * np.abs(ref).max(), err_msg=name)
    result = run_cli("convert", proto, model, "--caffe-proto", fork_proto, "-o", tmp_path / "forked.onnx")
    assert result.exit_code == 0, result.stderr
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "forked.onnx"), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"data": x})))
    for name, ref in reference.items():
        np.testing.assert_allclose(outs[name], ref, rtol=0, atol=1e-5 * np.abs(ref).max(), err_msg=name)


def test_fork_only_field_in_a_converted_layer_is_an_error(tmp_path, fork_proto, run_cli):
    text = NET.replace("num_output: 4 kernel_size: 2", "num_output: 4 kernel_size: 2\n    fancy_winograd: true")
    proto, _ = write_net(tmp_path, text)
    result = run_cli("inspect", proto, "--caffe-proto", fork_proto)
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message
    assert f"{proto}:6: layer 'conv' (Convolution) field convolution_param.fancy_winograd" in message


def test_fork_only_enum_value_in_a_converted_layer_is_an_error(tmp_path, fork_proto):
    proto, _ = write_net(tmp_path, NET.replace("pool: MAX kernel_size: 3 stride: 2 ceil_mode: true",
                                               "pool: DEF kernel_size: 3 stride: 2"))
    with pytest.raises(NetError, match=r":9: layer 'ceil' \(Pooling\) field pooling_param.pool: DEF = 3 is not"):
        read_net(proto, caffe_proto=fork_proto)


def test_training_only_fork_fields_are_ignored(tmp_path, fork_proto):
    # fork_gain sits in a weight_filler of the conv layer: fillers do not change inference.
    proto, _ = write_net(tmp_path, NET)
    net = read_net(proto, caffe_proto=fork_proto)
    gain = [f for f in net.fork_fields if f.path.endswith("fork_gain")]
    assert gain and gain[0].harmless and gain[0].layer == "conv"


def test_renumbered_field_is_moved_by_name(tmp_path, fork_proto):
    # The fork keeps negative_slope under number 77; by number it would be lost, by name it is kept.
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(1, 3, 2, 2)
    text = ('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 2 dim: 2 }\n'
            'layer { name: "leaky" type: "ReLU" bottom: "data" top: "leaky" relu_param { negative_slope: 0.25 } }\n')
    proto, _ = write_net(tmp_path, text)
    net = read_net(proto, caffe_proto=fork_proto)
    assert net.layer("leaky").param.relu_param.negative_slope == 0.25
    assert [f.kind for f in net.fork_fields] == ["translated"]
    module = ninport.build_module(net)
    np.testing.assert_allclose(torch_blobs(module, {"data": x})["leaky"], np.where(x > 0, x, 0.25 * x), atol=1e-7)


PERMUTE_NET = (
    'input: "data"\ninput_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
    'layer { name: "perm" type: "Permute" bottom: "data" top: "perm"\n'
    "  permute_param { order: 0 order: 2 order: 3 order: 1 } }\n"
)


@pytest.fixture
def clean_registry():
    registry.converters()
    saved = dict(registry.CONVERTERS), dict(registry.NOTES), dict(shapes.RULES)
    yield
    for target, value in zip((registry.CONVERTERS, registry.NOTES, shapes.RULES), saved):
        target.clear()
        target.update(value)


def test_fork_layer_type_needs_a_plugin_and_the_plugin_reads_fork_fields(tmp_path, fork_proto, clean_registry):
    proto, _ = write_net(tmp_path, PERMUTE_NET)
    # With the fork's schema the file reads; Permute is no type ninport converts, so its fork-only fields are
    # kept, not judged, and the preflight names the layer.
    with pytest.raises(UnsupportedLayerError, match=r"unsupported layer type\(s\) Permute: 'perm' \(Permute, .*:3\)"):
        registry.preflight(read_net(proto, caffe_proto=fork_proto))

    def order(layer):
        return list(fork_param(layer.param, fork_proto).permute_param.order)

    class Permute(nn.Module):
        def __init__(self, dims):
            super().__init__()
            self.dims = dims

        def forward(self, x):
            return x.permute(self.dims)

    ninport.register_layer("Permute", shape=lambda layer, b: [tuple(b[0][i] for i in order(layer))])(
        lambda ctx: Permute(order(ctx.layer)))
    net, found = load_net(proto, caffe_proto=fork_proto)
    assert found.blobs["perm"] == (2, 4, 5, 3)
    x = np.random.default_rng(2).normal(size=(2, 3, 4, 5)).astype(np.float32)
    module = ninport.build_module(net, found)
    np.testing.assert_array_equal(torch_blobs(module, {"data": x})["perm"], x.transpose(0, 2, 3, 1))


def test_broken_fork_schema_names_the_file(tmp_path):
    bad = tmp_path / "caffe.proto"
    bad.write_text('syntax = "proto2";\npackage caffe;\nmessage NetParameter { optional strin name = 1; }\n')
    with pytest.raises(ParseError, match=rf"{re.escape(str(bad))}: protoc cannot compile the fork's schema: .*strin"):
        compile_schema(bad)


def test_schema_without_net_parameter_is_rejected(tmp_path):
    other = tmp_path / "other.proto"
    other.write_text('syntax = "proto2";\npackage caffe;\nmessage Foo { optional int32 x = 1; }\n')
    with pytest.raises(ParseError, match="not a Caffe schema"):
        compile_schema(other)


def test_missing_grpc_tools_names_the_extra(tmp_path, fork_proto, monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc_tools", None)  # makes ``import grpc_tools`` fail
    copy = tmp_path / "caffe.proto"
    copy.write_text(fork_proto.read_text() + "\n// another version of the file\n")
    with pytest.raises(RuntimeUnavailableError, match=r"pip install 'ninport\[fork\]'"):
        compile_schema(copy)


def test_unreadable_caffemodel_with_the_fork_schema_is_one_error(tmp_path, fork_proto, run_cli):
    proto, _ = write_net(tmp_path, NET)
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\xff\xff\xff\x0f not a protobuf")
    result = run_cli("inspect", proto, junk, "--caffe-proto", fork_proto)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {junk}: not a valid caffemodel")
