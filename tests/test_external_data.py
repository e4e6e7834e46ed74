"""Models past protobuf's 2 GB are written with their tensors in a side file (ONNX external data).

A real 2 GB model is too slow for the suite, so the size threshold is lowered for a small net: the same path
runs (export to a file, tensors moved to ``OUT.onnx.data``, checks by path, atomic naming in convert).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import ninport
import ninport.errors
import ninport.onnx.export as export
from ninport.caffe import read_net
from ninport.caffe.seeded import write_seeded_caffemodel
from ninport.convert import convert

NET = """
name: "wide"
input: "data"
input_shape { dim: 2 dim: 3 dim: 16 dim: 16 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 32 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 64 } }
"""


@pytest.fixture()
def wide(tmp_path, monkeypatch):
    """The small net with seeded weights, and the external-data threshold lowered below its size."""
    proto = tmp_path / "wide.prototxt"
    proto.write_text(NET)
    weights = tmp_path / "wide.caffemodel"
    write_seeded_caffemodel(read_net(proto), weights, seed=1)
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 10_000)
    return proto, weights


def test_convert_writes_external_data(tmp_path, wide):
    proto, weights = wide
    out = tmp_path / "out" / "wide.onnx"
    result = convert(proto, weights, out)
    data = out.parent / "wide.onnx.data"
    assert data.exists() and out.exists()
    # The graph file holds no tensor values; the side file holds them all (float32).
    n_params = 32 * 3 * 9 + 32 + 64 * 32 * 14 * 14 + 64
    assert out.stat().st_size < 20_000 and data.stat().st_size >= 4 * n_params
    model = onnx.load(str(out), load_external_data=False)
    assert all(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert sorted(p.name for p in tmp_path.joinpath("out").iterdir()) == ["wide.onnx", "wide.onnx.data", "wide.pt"]
    assert all(p.rel <= 1e-5 for p in result.parity)
    module = ninport.load(proto, weights)
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["fc"], {"data": x})
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_failed_large_conversion_leaves_nothing(tmp_path, wide, monkeypatch):
    proto, weights = wide
    # A tolerance no float computation meets makes the parity check fail after the files were written.
    monkeypatch.setattr("ninport.parity.tolerance", lambda floor, rtol=1e-5: -1.0)
    out = tmp_path / "out" / "wide.onnx"
    try:
        convert(proto, weights, out)
    except ninport.errors.ParityError:
        pass
    else:
        raise AssertionError("the parity check should have failed")
    assert list((tmp_path / "out").iterdir()) == []
