"""``convert --dynamic-hw``: one ONNX file for any input size, with Caffe's reshape at each size (ceil pooling,
padded AVE divisors, Deconvolution, Crop offsets), checked at three sizes against OpenCV, which reshapes the
Caffe net to each input; layers that pin the size are named."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ninport.caffe.load import read_net
from ninport.caffe.seeded import write_seeded_caffemodel
from ninport.torch.build import load_pt
from tests.layer_harness import opencv_outputs

# An FCN/HED-shaped net: every size rule that depends on H and W, and a Crop back to the input's size.
FCN = '''name: "tiny_fcn"
input: "data"
input_shape { dim: 1 dim: 3 dim: 20 dim: 22 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 5 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "flat" type: "Reshape" bottom: "pool2" top: "flat" reshape_param { shape { dim: 0 dim: 0 dim: -1 } } }
layer { name: "back" type: "Reshape" bottom: "flat" top: "back"
  reshape_param { shape { dim: 0 dim: 2 dim: 2 dim: -1 } axis: 0 num_axes: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "pool2" top: "up"
  convolution_param { num_output: 2 kernel_size: 8 stride: 4 bias_term: false } }
layer { name: "zoom" type: "Interp" bottom: "pool2" top: "zoom" interp_param { zoom_factor: 3 pad_beg: -1 } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "score" crop_param { axis: 2 offset: 3 } }
'''
SIZES = [(20, 22), (33, 17), (48, 40)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from ninport.convert import convert

    folder = tmp_path_factory.mktemp("dynamic_hw")
    proto = folder / "fcn.prototxt"
    proto.write_text(FCN)
    model = folder / "fcn.caffemodel"
    write_seeded_caffemodel(read_net(proto), model, layout="v2", seed=3)
    result = convert(proto, model, folder / "fcn.onnx", dynamic_hw=True)
    return proto, model, result


def test_the_graph_has_symbolic_height_and_width(converted):
    _, _, result = converted
    graph = onnx.load(result.onnx_path).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]
    assert result.dynamic_hw and len(result.sizes_checked) == 2


@pytest.mark.parametrize("size", SIZES)
def test_onnxruntime_matches_opencv_at_each_size(converted, size):
    proto, model, result = converted
    x = np.random.default_rng(size[0]).standard_normal((1, 3, *size)).astype(np.float32)
    session = ort.InferenceSession(result.onnx_path, providers=["CPUExecutionProvider"])
    (got,) = session.run(["score"], {"data": x})
    want = opencv_outputs(proto, model, {"data": x}, ["crop"])["crop"]
    assert got.shape == want.shape == (1, 2, *size)
    # The net's own float32 noise: the same net at float64 in torch (built for this size) against float32.
    import ninport

    static = ninport.load(proto, model, input_shape=f"1,3,{size[0]},{size[1]}")
    with torch.no_grad():
        f32 = static.forward_blobs(torch.from_numpy(x))["score"].numpy()
        f64 = static.double().forward_blobs(torch.from_numpy(x).double())["score"].numpy()
    floor = np.max(np.abs(f32 - f64)) / np.max(np.abs(f64))
    scale = np.max(np.abs(want))
    assert np.max(np.abs(got - want)) / scale <= max(20 * floor, 1e-6)
    assert np.max(np.abs(got - f64)) / np.max(np.abs(f64)) <= max(20 * floor, 1e-6)


def test_the_pt_file_keeps_any_size(converted):
    proto, model, result = converted
    module = load_pt(result.pt_path)
    x = torch.randn(2, 3, 31, 29)
    with torch.no_grad():
        blobs = module.forward_blobs(x)
    assert blobs["score"].shape == (2, 2, 31, 29)
    assert tuple(blobs["zoom"].shape[2:]) == tuple((d - 2) * 3 + 1 for d in blobs["pool2"].shape[2:])


def _write(tmp_path, text: str):
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    model = tmp_path / "net.caffemodel"
    write_seeded_caffemodel(read_net(proto), model, layout="v2", seed=0)
    return proto, model


def test_an_inner_product_pins_the_size_and_is_named(tmp_path, run_cli):
    text = FCN.split('layer { name: "flat"')[0] + (
        'layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 3 } }\n')
    proto, model = _write(tmp_path, text)
    result = run_cli("convert", proto, model, "-o", tmp_path / "x.onnx", "--dynamic-hw")
    assert result.exit_code != 0
    assert "layer 'fc' (InnerProduct) pins the input size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("x.*"))


def test_a_reshape_with_fixed_dims_pins_the_size(tmp_path, run_cli):
    text = FCN.split('layer { name: "flat"')[0] + (
        'layer { name: "fixed" type: "Reshape" bottom: "pool2" top: "fixed" '
        'reshape_param { shape { dim: 1 dim: 4 dim: 7 dim: 7 } } }\n')
    proto, model = _write(tmp_path, text.replace("dim: 20 dim: 22", "dim: 22 dim: 22"))
    result = run_cli("convert", proto, model, "-o", tmp_path / "x.onnx", "--dynamic-hw", "--json")
    assert result.exit_code != 0
    assert "layer 'fixed' (Reshape) pins the input size" in result.stderr


def test_the_cli_reports_the_sizes_it_checked(tmp_path, run_cli):
    proto, model = _write(tmp_path, FCN)
    result = run_cli("convert", proto, model, "-o", tmp_path / "fcn.onnx", "--dynamic-hw", "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["dynamic_hw"] is True
    assert [case["input"]["data"] for case in out["sizes_checked"]] == [[1, 3, 52, 86], [1, 3, 84, 54]]
