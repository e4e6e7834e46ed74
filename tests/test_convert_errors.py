"""A conversion that fails exits non-zero with one clear line and leaves no output file behind."""

from __future__ import annotations

import pytest

from ninport.caffe import read_net
from ninport.caffe.caffemodel import write_caffemodel
from ninport.caffe.seeded import seed_weights

SMALL_NET = """
name: "small"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 5 } }
"""


def _assert_clean_failure(result, *needles: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _no_outputs(directory) -> None:
    leftovers = [p.name for p in directory.iterdir() if p.suffix in (".onnx", ".pt") or "tmp" in p.name]
    assert leftovers == []


@pytest.fixture()
def small(tmp_path):
    proto = tmp_path / "small.prototxt"
    proto.write_text(SMALL_NET)
    net = seed_weights(read_net(proto))
    return proto, net


def test_truncated_weights(run_cli, tmp_path, nin_prototxt, nin_weights_v1):
    cut = tmp_path / "cut.caffemodel"
    data = nin_weights_v1.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(*["convert", str(nin_prototxt), str(cut), "-o", str(out / "nin.onnx")])
    _assert_clean_failure(result, str(cut))
    _no_outputs(out)


def test_layer_without_weights(run_cli, tmp_path, small):
    proto, net = small
    weights = tmp_path / "partial.caffemodel"
    write_caffemodel(weights, [(x.name, x.type, x.blobs) for x in net.layers if x.blobs and x.name != "fc"])
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(*["convert", str(proto), str(weights), "-o", str(out / "m.onnx")])
    _assert_clean_failure(result, "'fc'", "no weights", str(weights))
    _no_outputs(out)


@pytest.mark.parametrize("bad_type", ["PriorBox", "Python"])
def test_unsupported_layer(run_cli, tmp_path, small, bad_type):
    # PriorBox (from the SSD fork) and Python (user code inside Caffe) cannot be converted: either
    # way the conversion stops before building anything and names every such layer.
    proto, net = small
    text = SMALL_NET + (
        f'layer {{ name: "odd1" type: "{bad_type}" bottom: "fc" top: "odd1" }}\n'
        f'layer {{ name: "odd2" type: "{bad_type}" bottom: "odd1" top: "odd2" }}\n'
        'layer { name: "odd3" type: "Frobnicate" bottom: "odd2" top: "odd3" }\n'
    )
    proto.write_text(text)
    weights = tmp_path / "w.caffemodel"
    write_caffemodel(weights, [(x.name, x.type, x.blobs) for x in net.layers if x.blobs])
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(*["convert", str(proto), str(weights), "-o", str(out / "m.onnx")])
    _assert_clean_failure(result, "odd1", "odd2", "odd3", "Frobnicate", bad_type)
    _no_outputs(out)


def test_cuda_unavailable_is_clear(run_cli, tmp_path, small):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu")
    proto, net = small
    weights = tmp_path / "w.caffemodel"
    write_caffemodel(weights, [(x.name, x.type, x.blobs) for x in net.layers if x.blobs])
    assert run_cli(*["convert", str(proto), str(weights), "-o", str(tmp_path / "m.onnx")]).exit_code == 0
    import numpy as np

    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 3, 8, 8), np.float32))
    result = run_cli(*["run", str(tmp_path / "m.onnx"), str(x), "--provider", "cuda"])
    _assert_clean_failure(result, "cuda", "pip install ninport-gpu")
    result = run_cli(*["run", str(tmp_path / "m.onnx"), str(x), "--provider", "auto", "--json"])
    assert result.exit_code == 0
    import json

    assert json.loads(result.stdout)["provider"] == "cpu"
