"""NiN end to end: the gist's train_val.prototxt with seeded weights, converted and compared with OpenCV.

OpenCV's Caffe importer (opencv-python-headless < 5) is the independent reference; it cannot read the
train_val file (it ignores phase rules), so it gets the deploy prototxt the conftest derives by text.
"""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import ninport
from ninport.convert import convert

TOL = 1e-5


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    assert ref.shape == got.shape, (ref.shape, got.shape)
    return float(np.max(np.abs(ref - got)) / np.max(np.abs(ref)))


def opencv_forward(prototxt, caffemodel, x: np.ndarray, blob: str = "pool4") -> np.ndarray:
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(x)
    return net.forward(blob)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    # Pixel-like values, as a mean-subtracted BGR batch would be.
    return np.random.default_rng(7).uniform(-120, 130, (4, 3, 224, 224)).astype(np.float32)


@pytest.fixture(scope="module")
def converted_v1(tmp_path_factory, nin_prototxt, nin_weights_v1):
    out = tmp_path_factory.mktemp("convert") / "nin.onnx"
    return convert(nin_prototxt, nin_weights_v1, out)


@pytest.fixture(scope="module")
def module_v1(nin_prototxt, nin_weights_v1):
    return ninport.load(nin_prototxt, nin_weights_v1)


@pytest.fixture(scope="module")
def opencv_ref(nin_deploy_prototxt, nin_weights_v1, images):
    return opencv_forward(nin_deploy_prototxt, nin_weights_v1, images)


def test_convert_reports_trace_and_params(converted_v1):
    assert [size for _, size in converted_v1.trace] == [224, 54, 27, 13, 6, 1]
    assert [name for name, _ in converted_v1.trace][1:] == ["conv1", "pool0", "pool2", "pool3", "pool4"]
    assert converted_v1.params == 7_595_176
    assert converted_v1.outputs == ["pool4"]
    assert all(p.rel <= TOL for p in converted_v1.parity)
    assert {p.batch for p in converted_v1.parity} == {1, 2}


@pytest.mark.parametrize("batch", [1, 4])
def test_onnxruntime_equals_opencv(converted_v1, images, opencv_ref, batch):
    session = ort.InferenceSession(converted_v1.onnx_path, providers=["CPUExecutionProvider"])
    (got,) = session.run(["pool4"], {"data": images[:batch]})
    assert got.shape == (batch, 1000, 1, 1)
    assert rel_err(opencv_ref[:batch], got) <= TOL


def test_torch_module_equals_opencv(module_v1, images, opencv_ref):
    with torch.no_grad():
        got = module_v1(torch.from_numpy(images)).numpy()
    assert rel_err(opencv_ref, got) <= TOL


def test_deploy_prototxt_with_v2_weights(tmp_path, nin_deploy_prototxt, nin_weights_v2, images):
    result = convert(nin_deploy_prototxt, nin_weights_v2, tmp_path / "deploy.onnx")
    assert [size for _, size in result.trace] == [224, 54, 27, 13, 6, 1]
    ref = opencv_forward(nin_deploy_prototxt, nin_weights_v2, images[:2])
    session = ort.InferenceSession(result.onnx_path, providers=["CPUExecutionProvider"])
    (got,) = session.run(["pool4"], {"data": images[:2]})
    assert rel_err(ref, got) <= TOL
    module = ninport.load_pt(result.pt_path)
    with torch.no_grad():
        assert rel_err(ref, module(torch.from_numpy(images[:2])).numpy()) <= TOL


def test_layers_reachable_by_caffe_name(module_v1):
    assert isinstance(module_v1.get_submodule("cccp7-1024"), torch.nn.Conv2d)
    assert module_v1.get_submodule("cccp8-1024").out_channels == 1000
    keys = set(module_v1.state_dict())
    assert {"conv1.weight", "conv1.bias", "cccp7-1024.weight", "cccp8-1024.bias"} <= keys
    # 12 learnable layers, weight + bias each; nothing else in the state dict
    assert len(keys) == 24


def test_weights_copied_exactly(module_v1, nin_deploy_prototxt, nin_weights_v1):
    # OpenCV reads the same caffemodel on its own; the tensors must be bit-identical.
    net = cv2.dnn.readNetFromCaffe(str(nin_deploy_prototxt), str(nin_weights_v1))
    # OpenCV names a layer after its top blob when they differ (conv4-1024 writes conv4).
    for name, cv_name in (("conv1", "conv1"), ("cccp4", "cccp4"), ("conv4-1024", "conv4"), ("cccp8-1024", "cccp8")):
        weight = net.getParam(cv_name, 0)
        bias = net.getParam(cv_name, 1).reshape(-1)
        module = module_v1.get_submodule(name)
        assert module.weight.dtype == torch.float32
        np.testing.assert_array_equal(module.weight.detach().numpy(), weight.reshape(module.weight.shape))
        np.testing.assert_array_equal(module.bias.detach().numpy(), bias)


def test_every_blob_reachable(module_v1, images, nin_deploy_prototxt, nin_weights_v1):
    with torch.no_grad():
        blobs = module_v1.forward_blobs(torch.from_numpy(images[:1]))
    # "conv1" is Caffe's blob after the in-place ReLU; "conv1@conv1" the convolution before it.
    assert torch.all(blobs["conv1"] >= 0)
    assert torch.any(blobs["conv1@conv1"] < 0)
    ref = opencv_forward(nin_deploy_prototxt, nin_weights_v1, images[:1], "pool2")
    assert rel_err(ref, blobs["pool2"].numpy()) <= TOL


def test_module_is_trainable(nin_prototxt, nin_weights_v1):
    model = ninport.load(nin_prototxt, nin_weights_v1, input_shape="2,3,224,224")
    model.train()
    x = torch.randn(2, 3, 224, 224)
    out = model(x).flatten(1)
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([1, 2]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert model.get_submodule("conv1").weight.grad.abs().sum() > 0
    # Dropout is active in training and the identity in eval mode.
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_pt_file_is_pickle_free_and_rebuilds(converted_v1, module_v1, images):
    payload = torch.load(converted_v1.pt_path, weights_only=True)
    assert set(payload["state_dict"]) == set(module_v1.state_dict())
    rebuilt = ninport.load_pt(converted_v1.pt_path)
    x = torch.from_numpy(images[:2])
    with torch.no_grad():
        assert torch.equal(rebuilt(x), module_v1(x))
    assert rebuilt.get_submodule("cccp7-1024").in_channels == 1024


def test_onnx_graph_properties(converted_v1, nin_prototxt, nin_weights_v1):
    model = onnx.load(converted_v1.onnx_path)
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["data"]
    assert [o.name for o in model.graph.output] == ["pool4"]
    initializers = {i.name for i in model.graph.initializer}
    assert len(initializers) >= 24 and not initializers & {i.name for i in model.graph.input}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["caffe_prototxt_sha256"] == hashlib.sha256(nin_prototxt.read_bytes()).hexdigest()
    assert meta["caffe_caffemodel_sha256"] == hashlib.sha256(nin_weights_v1.read_bytes()).hexdigest()
    assert json.loads(meta["preprocess_crop_size"]) == 224
    assert meta["preprocess_mean_file"].endswith("imagenet-train-mean")
    assert meta["channel_order"] == "BGR"
    assert meta["ninport_version"] == ninport.__version__


def test_static_batch(tmp_path, nin_prototxt, nin_weights_v1):
    result = convert(nin_prototxt, nin_weights_v1, tmp_path / "s.onnx", input_shape="3,3,224,224",
                     static_batch=True)
    model = onnx.load(result.onnx_path)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert {p.batch for p in result.parity} == {3}


def test_convert_cli_prints_trace(run_cli, tmp_path, nin_prototxt, nin_weights_v1):
    out = tmp_path / "cli.onnx"
    result = run_cli(*["convert", str(nin_prototxt), str(nin_weights_v1), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "224 → 54 (conv1) → 27 (pool0) → 13 (pool2) → 6 (pool3) → 1 (pool4)" in result.output
    assert "7,595,176" in result.output
    assert out.exists() and out.with_suffix(".pt").exists()
    result = run_cli(*["convert", str(nin_prototxt), str(nin_weights_v1), "-o", str(out), "--json"])
    report = json.loads(result.stdout)
    assert report["params"] == 7_595_176 and report["outputs"] == ["pool4"]
    assert [t["size"] for t in report["trace"]] == [224, 54, 27, 13, 6, 1]
