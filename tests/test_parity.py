"""The parity rule (``ninport.parity``) on deep BatchNorm nets: they convert and verify with default settings,
and a 1e-3 or 1e-4 relative change planted in one layer's weights is still named as the first divergence.

The nets come from ``tests/parity_nets.py`` (a 28-layer MobileNet-style net with BatchNorm factors 0.5 and
1000, a 50-layer ResNet-style net); the independent reference is OpenCV's Caffe importer on the unchanged files.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from parity_nets import mobilenet_prototxt, resnet_prototxt, weight_layers, write_net

import ninport
from ninport.caffe.caffemodel import write_caffemodel
from ninport.caffe.load import load_net, read_net
from ninport.errors import ParityError
from ninport.parity import NOISE_CEILING, distance, judge, judge_floor, tolerance
from ninport.verify import format_report, verify

# The layer the faults are planted in: deep in the ResNet-style net (stage 4, 10th block of 16).
PLANTED = "res4c_branch2b"


@pytest.fixture(scope="session")
def mobilenet(tmp_path_factory):
    return write_net(mobilenet_prototxt(), tmp_path_factory.mktemp("mobilenet"), "mobilenet")


@pytest.fixture(scope="session")
def resnet(tmp_path_factory):
    return write_net(resnet_prototxt(), tmp_path_factory.mktemp("resnet"), "resnet")


@pytest.fixture(scope="session")
def resnet_x():
    return np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="session")
def resnet_opencv_npz(resnet, resnet_x, tmp_path_factory):
    """Every Caffe blob of the unchanged ResNet-style net as OpenCV's Caffe importer computes it, plus the input:
    what a pycaffe dump of the same net would hold."""
    prototxt, weights = resnet
    cvnet = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    net = read_net(prototxt)
    finals: dict[str, str] = {}
    for layer in net.layers:
        for top in layer.caffe_tops:
            if layer.type != "Input":
                finals[top] = layer.name
    cvnet.enableWinograd(False)  # im2col+GEMM, as Caffe convolves
    cvnet.setInput(resnet_x)
    known = set(cvnet.getLayerNames())
    names = [layer if layer in known else blob for blob, layer in finals.items()]
    blobs = dict(zip(finals, cvnet.forward(names)))
    path = tmp_path_factory.mktemp("resnet_ref") / "caffe_blobs.npz"
    np.savez(path, data=resnet_x, **blobs)
    return path


def test_the_nets_are_as_described():
    assert weight_layers(mobilenet_prototxt()) == 28
    text = resnet_prototxt()
    assert weight_layers(text) == 54 and text.count('_branch1" type: "Convolution"') == 4  # 50 + 4 projections
    assert text.count('type: "BatchNorm"') == text.count('type: "Scale"') == 53


def test_rule_by_hand():
    truth = np.array([1.0, -2.0, 4.0])
    assert distance(truth, np.array([1.0, -2.0, 4.04], np.float32))[1] == pytest.approx(0.01, rel=1e-6)
    assert tolerance(1e-8) == 1e-5 and tolerance(3e-6) == pytest.approx(3e-5) and tolerance(3e-6, rtol=1e-4) == 1e-4
    assert judge(truth, 1e-6, truth * (1 + 9e-6)).ok and not judge(truth, 1e-6, truth * (1 + 1.1e-5)).ok
    assert not judge(truth, 1e-6, truth * np.nan).ok
    assert judge_floor(truth, truth * (1 + 5e-4)).ok and not judge_floor(truth, truth * (1 + 2 * NOISE_CEILING)).ok


@pytest.mark.parametrize("net", ["mobilenet", "resnet"])
def test_deep_bn_net_converts_and_verifies_by_default(request, run_cli, tmp_path, net):
    prototxt, weights = request.getfixturevalue(net)
    out = tmp_path / f"{net}.onnx"
    result = run_cli("convert", prototxt, weights, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    parity = json.loads(result.stdout)["parity"]
    assert parity and all(0 <= p["rel"] <= p["tolerance"] and p["tolerance"] == max(1e-5, 10 * p["floor"])
                          for p in parity)
    result = run_cli("verify", prototxt, weights, "--onnx", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    backends = {row["backend"] for row in report["blobs"]}
    assert {"torch", "opencv", "onnxruntime", "openvino"} <= backends
    assert all(row["floor"] > 0 for row in report["blobs"] if row["blob"] != "data")
    # OpenCV read the user's own file (no note about a normalized copy)
    assert not any("normalized copy" in note for note in report["notes"])


def _planted_onnx(module, path, layer: str, change: float):
    from ninport.onnx.export import to_onnx_bytes

    model = onnx.load_from_string(to_onnx_bytes(module))
    init = next(i for i in model.graph.initializer if i.name == f"{layer}.weight")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1 + change), init.name))
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("change", [1e-3, 1e-4])
def test_planted_fault_in_onnx_is_named(tmp_path, resnet, resnet_x, change):
    prototxt, weights = resnet
    module = ninport.load(prototxt, weights)
    path = _planted_onnx(module, tmp_path / "planted.onnx", PLANTED, change)
    report = verify(prototxt, weights, input=resnet_x, reference=None, onnx_path=path, runtimes="onnxruntime")
    first = report.first_divergence
    assert first is not None, format_report(report)
    assert (first.blob, first.layer, first.backend) == (f"{PLANTED}@{PLANTED}", PLANTED, "onnxruntime")
    assert first.rel == pytest.approx(change, rel=0.05)
    before = report.rows[: report.rows.index(first)]
    assert len(before) > 100 and all(r.ok for r in before)


@pytest.mark.parametrize("change", [1e-3, 1e-4])
def test_planted_fault_in_weights_is_named_against_opencv(tmp_path, resnet, resnet_opencv_npz, change):
    prototxt, weights = resnet
    net, _ = load_net(prototxt, weights)
    layers = []
    for layer in net.layers:
        if layer.blobs:
            blobs = [b.copy() for b in layer.blobs]
            if layer.name == PLANTED:
                blobs[0] *= np.float32(1 + change)
            layers.append((layer.name, layer.type, blobs))
    planted = tmp_path / "planted.caffemodel"
    write_caffemodel(planted, layers, layout="v2")
    # The reference is OpenCV on the unchanged weights, fed through the .npz as a pycaffe dump.
    report = verify(prototxt, planted, reference=resnet_opencv_npz, runtimes="none")
    first = report.first_divergence
    assert first is not None, format_report(report)
    assert (first.blob, first.backend, first.chain[0]) == (PLANTED, "pycaffe", PLANTED)
    before = report.rows[: report.rows.index(first)]
    assert len(before) > 50 and all(r.ok for r in before)
    # and with the unchanged weights, the same reference passes
    assert verify(prototxt, weights, reference=resnet_opencv_npz, runtimes="none").ok


def test_convert_check_catches_planted_output_fault(tmp_path, mobilenet):
    from ninport.onnx.export import check_parity, to_onnx_bytes

    prototxt, weights = mobilenet  # its softmax is not saturated: a change of fc reaches prob
    module = ninport.load(prototxt, weights)
    path = _planted_onnx(module, tmp_path / "planted.onnx", "fc", 1e-4)
    (clean,) = check_parity(module, to_onnx_bytes(module), (1,), 1e-5)
    assert clean.rel <= clean.tolerance and clean.tolerance == max(1e-5, 10 * clean.floor)
    with pytest.raises(ParityError, match="float64"):
        check_parity(module, path.read_bytes(), (1,), 1e-5)
    # --rtol is the fixed floor: a looser one lets the same fault through
    (loose,) = check_parity(module, path.read_bytes(), (1,), 1e-2)
    assert loose.rel > 1e-5


def test_convert_rtol_option(run_cli, tmp_path, mobilenet):
    prototxt, weights = mobilenet
    result = run_cli("convert", prototxt, weights, "-o", tmp_path / "m.onnx", "--rtol", "0")
    assert result.exit_code != 0 and "--rtol must be positive" in result.stderr
    assert not (tmp_path / "m.onnx").exists()
    result = run_cli("convert", prototxt, weights, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    assert "floor" in result.output and "vs float64 torch" in result.output


def test_lean_float64_forward_equals_the_float64_copy(monkeypatch, mobilenet):
    # A big net's truth runs a layer at a time, its InnerProduct weights made float64 a slice of rows at a
    # time: forced here on a small net (every net "big", slices of one row), it gives the whole float64 copy's
    # numbers, every blob and the outputs.
    import ninport
    import ninport.parity as parity

    module = ninport.load(*mobilenet)
    x = np.random.default_rng(5).standard_normal((2, *module.input_shapes["data"][1:])).astype(np.float32)
    whole = parity.forward_truth(module, [x], blobs=True, module64=parity.float64_module(module))
    monkeypatch.setattr(parity, "LEAN_BYTES", 0)
    monkeypatch.setattr(parity, "_LINEAR_CHUNK_BYTES", 8 * module.get_submodule("fc").weight.shape[1])
    monkeypatch.setattr(parity, "_CONV_CHUNK_BYTES", 1)  # convolutions summed one input channel at a time
    sliced = []
    real_conv = parity._conv2d64
    monkeypatch.setattr(parity, "_conv2d64", lambda layer, *xs: sliced.append(layer) or real_conv(layer, *xs))
    lean = parity.forward_truth(module, [x], blobs=True)
    assert len(sliced) >= 10  # the pointwise convolutions took the sliced path (depthwise ones cannot)
    assert set(lean) == set(whole)
    for name, value in whole.items():
        assert lean[name].dtype == np.float64
        np.testing.assert_allclose(lean[name], value, rtol=1e-12, atol=1e-12 * float(np.abs(value).max()))
    outputs = parity.forward_truth(module, [x])
    assert set(outputs) == set(module.output_names)
    for name in module.output_names:
        np.testing.assert_allclose(outputs[name], whole[name], rtol=1e-12)
    # and the rows really went a slice at a time: a wrong slice (the first row twice) changes the result
    real = parity._linear64

    def shifted(layer, x):
        out = real(layer, x)
        out[..., 1] = out[..., 0]
        return out

    monkeypatch.setattr(parity, "_linear64", shifted)
    monkeypatch.setattr(parity, "_LINEAR_CHUNK_BYTES", 0)
    broken = parity.forward_truth(module, [x], blobs=True)
    assert not np.allclose(broken["fc"], whole["fc"])
