"""``ninport verify``: blob-by-blob agreement of the torch module, ONNX runtimes and an independent reference,
each judged against a float64 forward relative to the float32 module's own noise floor.

References are made here by OpenCV's Caffe importer from the conftest's deploy prototxt (text derived from the
gist independently of ninport), so a pass means ninport agrees with another implementation of Caffe, and a
planted fault (a scaled blob, a perturbed layer, a corrupted ONNX weight) must be named where it was planted.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import ninport
from ninport.caffe.caffemodel import write_caffemodel
from ninport.caffe.load import load_net, read_net
from ninport.caffe.seeded import write_seeded_caffemodel
from ninport.verify import FP16_RTOL, compare_blobs, format_report, verify

NIN_SHAPE = "1,3,224,224"

TINY = """
name: "tiny"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# A ResNet-style block: Convolution → BatchNorm → Scale → ReLU in place, a shortcut summed by Eltwise.
RESNET = """
name: "resnet_block"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 16 input_dim: 16
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" batch_norm_param { use_global_stats: true } }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "sum" }
layer { name: "relu2" type: "ReLU" bottom: "sum" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def final_writers(prototxt_text: str) -> dict[str, str]:
    """Caffe blob → the last layer writing it, read from the text by regex (one top per layer here)."""
    out = {}
    for block in re.split(r"\blayers?\s*\{", prototxt_text)[1:]:
        name = re.search(r'\bname:\s*"([^"]+)"', block).group(1)
        for top in re.findall(r'\btop:\s*"([^"]+)"', block):
            out[top] = name
    return out


def opencv_reference(prototxt, caffemodel, x: np.ndarray, with_input: bool = True) -> dict[str, np.ndarray]:
    """Every Caffe blob of the net as OpenCV computes it: pycaffe's ``net.blobs`` for the same input."""
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    known = set(net.getLayerNames())
    writers = final_writers(open(prototxt).read())
    # OpenCV may name a layer with weights after its top blob.
    names = [layer if layer in known else blob for blob, layer in writers.items()]
    net.setInput(x)
    blobs = dict(zip(writers, net.forward(names)))
    if with_input:
        blobs["data"] = x
    return blobs


@pytest.fixture(scope="module")
def nin_x() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((1, 3, 224, 224)).astype(np.float32)


@pytest.fixture(scope="module")
def nin_ref(nin_deploy_prototxt, nin_weights_v1, nin_x) -> dict[str, np.ndarray]:
    return opencv_reference(nin_deploy_prototxt, nin_weights_v1, nin_x)


@pytest.fixture(scope="module")
def nin_ref_npz(tmp_path_factory, nin_ref):
    path = tmp_path_factory.mktemp("ref") / "caffe_blobs.npz"
    np.savez(path, **nin_ref)
    return path


@pytest.fixture(scope="module")
def nin_report(nin_prototxt, nin_weights_v1):
    return verify(nin_prototxt, nin_weights_v1, input_shape=NIN_SHAPE, reference="opencv",
                  runtimes="onnxruntime,openvino,opencv-onnx")


@pytest.fixture(scope="module")
def nin_module(nin_prototxt, nin_weights_v1):
    return ninport.load(nin_prototxt, nin_weights_v1, input_shape=NIN_SHAPE)


@pytest.fixture
def tiny(tmp_path):
    prototxt = tmp_path / "tiny.prototxt"
    prototxt.write_text(TINY)
    weights = tmp_path / "tiny.caffemodel"
    write_seeded_caffemodel(read_net(prototxt), weights, layout="v2", seed=3)
    return prototxt, weights


# ---------------------------------------------------------------------------------------------------------
# The metrics, by hand


def test_compare_blobs_hand_numbers():
    max_abs, rel, cosine = compare_blobs(np.array([1.0, -2.0, 4.0]), np.array([1.0, -2.0, 4.04]))
    assert max_abs == pytest.approx(0.04)
    assert rel == pytest.approx(0.01)  # 0.04 / max |reference| = 0.04 / 4
    assert cosine == pytest.approx((1 + 4 + 16.16) / (math.sqrt(21) * math.sqrt(1 + 4 + 4.04**2)))
    assert compare_blobs(np.zeros(3), np.zeros(3)) == (0.0, 0.0, 1.0)
    assert compare_blobs(np.ones(4), np.ones(5))[1] == math.inf
    assert math.isnan(compare_blobs(np.ones(3), np.array([1.0, np.nan, 1.0]))[1])
    # the same values in another shape (a runtime keeping 1×1 spatial dims) compare flat
    assert compare_blobs(np.ones((2, 3)), np.ones((2, 3, 1, 1)))[0] == 0.0


# ---------------------------------------------------------------------------------------------------------
# NiN: passes against OpenCV, every runtime agrees with torch at every blob


def test_nin_passes_against_opencv(nin_report, nin_module):
    report = nin_report
    assert report.ok, format_report(report)
    assert report.first_divergence is None
    states = {b.name: b.state for b in report.backends}
    assert states == {"torch": "ran", "opencv": "ran", "onnxruntime": "ran", "openvino": "ran", "opencv-onnx": "ran"}
    versions = [top for _, _, tops in nin_module.plan for top in tops]
    caffe_blobs = {nin_module.caffe_blob_names[v] for v in versions}
    assert all(r.against == "float64" for r in report.rows)
    # the float32 module at every blob version: its distance is the floor every other row shows there
    torch_rows = {r.blob: r for r in report.rows if r.backend == "torch"}
    assert list(torch_rows) == versions
    assert all(0 < r.rel == r.floor < 1e-5 for r in torch_rows.values())
    for row in report.rows:
        assert row.floor == torch_rows[row.blob].floor
        # the float32 module fails only past NOISE_CEILING, which no rounding explains
        assert row.tolerance == (1e-3 if row.backend == "torch" else max(1e-5, 10 * row.floor))
    # the reference holds Caffe's blobs only (the value after each in-place chain): 16 of them in NiN
    opencv_rows = [r for r in report.rows if r.backend == "opencv"]
    assert {r.blob for r in opencv_rows} == caffe_blobs and len(caffe_blobs) == 16
    for runtime in ("onnxruntime", "openvino", "opencv-onnx"):
        rows = [r for r in report.rows if r.backend == runtime]
        assert [r.blob for r in rows] == versions  # every blob version, in execution order
        assert all(r.ok and r.cosine > 0.999999 for r in rows)
        assert rows[-1].argmax == (1, 1)
    assert max(r.rel for r in report.rows) <= 1e-5
    # "conv1" is compared after relu0 and made by the chain conv1 → relu0
    conv1 = next(r for r in opencv_rows if r.blob == "conv1")
    assert conv1.layer == "relu0" and conv1.chain == ("conv1", "relu0")
    # OpenCV cannot read the V1 train_val as given (two data layers write "data"), and the report says so
    assert any("normalized copy" in note and "OpenCV cannot read" in note for note in report.notes)


def test_nin_rows_in_execution_order(nin_report, nin_module):
    position = {top: i for i, (_, _, tops) in enumerate(nin_module.plan) for top in tops}
    order = [position[r.blob] for r in nin_report.rows]
    assert order == sorted(order)
    text = format_report(nin_report)
    assert "OK:" in text and "floor (torch fp32)" in text and "opencv" in text and "openvino" in text


def test_cli_json_shape_and_exit_0(run_cli, nin_prototxt, nin_weights_v1):
    result = run_cli("verify", nin_prototxt, nin_weights_v1, "--input-shape", NIN_SHAPE, "--runtimes",
                     "onnxruntime", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"ok", "tolerance", "noise_factor", "input", "reference", "notes", "first_divergence",
                           "blobs"}
    assert report["ok"] is True and report["tolerance"] == 1e-5 and report["first_divergence"] is None
    assert all(set(row) == {"blob", "layer", "backend", "against", "max_abs", "rel", "floor", "tolerance", "cosine"}
               for row in report["blobs"])
    assert {row["backend"] for row in report["blobs"]} == {"torch", "opencv", "onnxruntime"}
    assert len(report["blobs"]) == 29 + 16 + 29  # 29 torch blob versions, 16 Caffe blobs of OpenCV, 29 versions
    assert any("OpenCV cannot read" in note for note in report["notes"])


# ---------------------------------------------------------------------------------------------------------
# Planted faults are named where they were planted


def test_npz_reference_passes(run_cli, nin_prototxt, nin_weights_v1, nin_ref_npz):
    # The input comes from the .npz's "data" blob, as a pycaffe dump carries it.
    result = run_cli("verify", nin_prototxt, nin_weights_v1, "--reference", nin_ref_npz, "--runtimes", "none")
    assert result.exit_code == 0, result.output
    assert f"input the input blob(s) of {nin_ref_npz}" in result.output


def test_npz_reference_with_scaled_blob(run_cli, tmp_path, nin_prototxt, nin_weights_v1, nin_ref):
    scaled = dict(nin_ref)
    scaled["cccp3"] = scaled["cccp3"] * 1.01
    path = tmp_path / "scaled.npz"
    np.savez(path, **scaled)
    result = run_cli("verify", nin_prototxt, nin_weights_v1, "--reference", path, "--runtimes", "none", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["first_divergence"] == {"blob": "cccp3", "layer": "relu5", "backend": "pycaffe"}
    bad = [row for row in report["blobs"] if row["rel"] > row["tolerance"]]
    assert [row["blob"] for row in bad] == ["cccp3"]
    assert bad[0]["rel"] == pytest.approx(0.01, rel=1e-3)  # 1.01 x against the float64 x

    text = run_cli("verify", nin_prototxt, nin_weights_v1, "--reference", path, "--runtimes", "none")
    assert text.exit_code == 1
    assert "DIVERGES: first at blob 'cccp3'" in text.output
    table = text.output.split("\n\n")[1].splitlines()
    assert table[0].split()[:3] == ["blob", "layer", "backend"]
    assert table[1].split()[0] == "cccp3"  # the table starts at the first divergence
    assert not any(line.split()[0] in ("conv1", "pool0", "conv2") for line in table[1:])


def test_perturbed_layer_is_first_divergence(tmp_path, nin_prototxt, nin_weights_v1, nin_ref_npz):
    net, _ = load_net(nin_prototxt, nin_weights_v1)
    layers = []
    for layer in net.layers:
        if layer.blobs:
            blobs = [b.copy() for b in layer.blobs]
            if layer.name == "cccp4":
                blobs[0] *= 1.02
            layers.append((layer.name, layer.type, blobs))
    perturbed = tmp_path / "perturbed.caffemodel"
    write_caffemodel(perturbed, layers, layout="v1")
    # The reference is OpenCV on the unperturbed weights.
    report = verify(nin_prototxt, perturbed, reference=nin_ref_npz, runtimes="onnxruntime")
    first = report.first_divergence
    assert not report.ok
    assert (first.blob, first.backend, first.chain) == ("cccp4", "pycaffe", ("cccp4", "relu6"))
    before = report.rows[: report.rows.index(first)]
    assert before and all(r.ok for r in before)
    # onnxruntime agrees with the (perturbed) torch module everywhere
    assert all(r.ok for r in report.rows if r.backend == "onnxruntime")


def test_corrupted_onnx_weight_is_named(tmp_path, nin_module, nin_prototxt, nin_weights_v1, nin_x):
    from ninport.onnx.export import to_onnx_bytes

    model = onnx.load_from_string(to_onnx_bytes(nin_module))
    init = next(i for i in model.graph.initializer if i.name == "cccp5.weight")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.02, init.name))
    path = tmp_path / "corrupt.onnx"
    onnx.save(model, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    report = verify(nin_prototxt, nin_weights_v1, input=nin_x[0], reference=None, onnx_path=path,
                    runtimes=["onnxruntime"])
    assert report.input == "arrays given by the caller"
    first = report.first_divergence
    assert (first.blob, first.layer, first.backend) == ("cccp5@cccp5", "cccp5", "onnxruntime")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the user's file is only read


# ---------------------------------------------------------------------------------------------------------
# float16


def test_fp16_runtimes_against_float32(nin_prototxt, nin_weights_v1):
    report = verify(nin_prototxt, nin_weights_v1, input_shape=NIN_SHAPE, reference=None, runtimes="onnxruntime",
                    fp16=True)
    assert report.ok, format_report(report)
    assert report.fp16 and {r.backend for r in report.rows} == {"torch", "onnxruntime-fp16"}
    worst = max(r.rel for r in report.rows if r.backend != "torch")
    # Really half precision (float32 lands near 1e-6), yet well inside the float16 tolerance.
    assert 1e-4 < worst < FP16_RTOL
    assert report.rows[-1].argmax == (1, 1)
    # judged at the float32 tolerance instead, the same rows fail
    for row in report.rows:
        row.tolerance = max(1e-5, 10 * row.floor)
    assert not report.ok and report.first_divergence.backend == "onnxruntime-fp16"


def test_to_float16_keeps_float32_io(tiny):
    from ninport.onnx.export import to_onnx_bytes
    from ninport.onnx.float16 import is_float16, to_float16
    from ninport.onnx.runtime import make_session

    prototxt, weights = tiny
    module = ninport.load(prototxt, weights)
    model = onnx.load_from_string(to_onnx_bytes(module))
    half = to_float16(model)
    assert is_float16(half) and not is_float16(model)
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer
               if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.name for o in half.graph.output] == ["prob"]
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    (full,) = make_session(model.SerializeToString(), provider="cpu").run({"data": x})
    (got,) = make_session(half.SerializeToString(), provider="cpu").run({"data": x})
    assert got.dtype == np.float32
    assert 0 < np.abs(got - full).max() < 1e-2


# ---------------------------------------------------------------------------------------------------------
# A ResNet-style net: BatchNorm, Scale, Eltwise


def test_resnet_style_net(tmp_path):
    prototxt = tmp_path / "resnet.prototxt"
    prototxt.write_text(RESNET)
    weights = tmp_path / "resnet.caffemodel"
    write_seeded_caffemodel(read_net(prototxt), weights, layout="v2", seed=5)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ref = tmp_path / "ref.npz"
    np.savez(ref, **opencv_reference(prototxt, weights, x))
    report = verify(prototxt, weights, reference=ref, runtimes="onnxruntime,openvino")
    assert report.ok, format_report(report)
    module = ninport.load(prototxt, weights)
    versions = [top for _, _, tops in module.plan for top in tops]
    for runtime in ("onnxruntime", "openvino"):
        assert [r.blob for r in report.rows if r.backend == runtime] == versions
    assert {r.blob for r in report.rows if r.backend == "pycaffe"} == {"conv1", "conv2", "sum", "pool", "fc", "prob"}
    assert any(len(r.chain) == 4 for r in report.rows)  # conv1 → bn1 → scale1 → relu1


# ---------------------------------------------------------------------------------------------------------
# Inputs


def test_input_npy_is_what_runs(run_cli, tmp_path, tiny):
    prototxt, weights = tiny
    x = np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ref = tmp_path / "ref.npz"
    np.savez(ref, **opencv_reference(prototxt, weights, x, with_input=False))
    result = run_cli("verify", prototxt, weights, "--input", tmp_path / "x.npy", "--reference", ref)
    assert result.exit_code == 0, result.output
    np.save(tmp_path / "other.npy", x + 0.5)
    result = run_cli("verify", prototxt, weights, "--input", tmp_path / "other.npy", "--reference", ref,
                     "--runtimes", "none", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["first_divergence"]["blob"] == "conv1"


def test_input_image(run_cli, tmp_path, tiny):
    from PIL import Image

    prototxt, weights = tiny
    image = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(image)
    result = run_cli("verify", prototxt, weights, "--input", image, "--runtimes", "onnxruntime")
    assert result.exit_code == 0, result.output
    assert f"input {image}" in result.output and "opencv" in result.output and "floor" in result.output


def test_input_contradicting_reference(run_cli, tmp_path, tiny):
    prototxt, weights = tiny
    x = np.zeros((2, 3, 8, 8), np.float32)
    np.save(tmp_path / "x.npy", x + 1)
    np.savez(tmp_path / "ref.npz", **opencv_reference(prototxt, weights, x))
    result = run_cli("verify", prototxt, weights, "--input", tmp_path / "x.npy", "--reference",
                     tmp_path / "ref.npz")
    assert result.exit_code == 1
    assert "--input differs from blob 'data'" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# Runtimes and references that are missing or fail


def test_missing_runtime_names_the_extra(run_cli, monkeypatch, tiny):
    prototxt, weights = tiny
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    result = run_cli("verify", prototxt, weights, "--runtimes", "onnxruntime,openvino")
    assert result.exit_code == 1
    assert "pip install 'ninport[openvino]'" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    # Not asked for by name: reported, and the others still prove the model.
    report = verify(prototxt, weights, reference=None)
    status = {b.name: b for b in report.backends}
    assert status["openvino"].state == "unavailable" and "ninport[openvino]" in status["openvino"].detail
    assert status["onnxruntime-cuda"].state == "unavailable"
    assert report.ok


def test_missing_opencv_reference(run_cli, monkeypatch, tiny):
    prototxt, weights = tiny
    monkeypatch.setitem(sys.modules, "cv2", None)
    result = run_cli("verify", prototxt, weights, "--reference", "opencv")
    assert result.exit_code == 1
    assert "pip install 'ninport[opencv]'" in result.stderr
    report = verify(prototxt, weights, runtimes="onnxruntime")  # reference auto: none without OpenCV
    assert report.reference is None and {r.backend for r in report.rows} == {"torch", "onnxruntime"}


def test_runtime_that_cannot_load_reports_its_error(monkeypatch, tiny):
    prototxt, weights = tiny

    def refuse(path):
        raise cv2.error("OpenCV(4.x) onnx_importer.cpp: error: (-2) Node [Foo]: parse error")

    monkeypatch.setattr(cv2.dnn, "readNetFromONNX", refuse)
    report = verify(prototxt, weights, reference=None, runtimes=None)
    status = {b.name: b for b in report.backends}
    assert status["opencv-onnx"].state == "failed" and "parse error" in status["opencv-onnx"].detail
    assert report.ok  # not asked for by name: reported, not failed
    named = verify(prototxt, weights, reference=None, runtimes="onnxruntime,opencv-onnx")
    assert not named.ok and named.first_divergence is None
    assert "FAILED: opencv-onnx" in format_report(named)


# ---------------------------------------------------------------------------------------------------------
# A pycaffe .npz means what pycaffe means

SHARED = """
name: "shared"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 6
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "split" type: "Split" bottom: "conv" top: "a" top: "b" }
layer { name: "relu" type: "ReLU" bottom: "a" top: "a" }
layer { name: "pool" type: "Pooling" bottom: "b" top: "pb" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def _conv3x3_pad1(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Caffe's Convolution (kernel 3, pad 1, stride 1) restated in numpy, float64."""
    n, c, h, wd = x.shape
    padded = np.zeros((n, c, h + 2, wd + 2))
    padded[:, :, 1:-1, 1:-1] = x
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", padded[:, :, i : i + h, j : j + wd], w[:, :, i, j])
    return out + b[None, :, None, None]


@pytest.fixture
def shared_net(tmp_path):
    prototxt = tmp_path / "shared.prototxt"
    prototxt.write_text(SHARED)
    weights = tmp_path / "shared.caffemodel"
    net = write_seeded_caffemodel(read_net(prototxt), weights, layout="v2", seed=8)
    x = np.random.default_rng(9).standard_normal((1, 3, 6, 6)).astype(np.float32)
    w, b = net.layer("conv").blobs
    raw = _conv3x3_pad1(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    return prototxt, weights, x, raw


def test_npz_reference_shared_memory_as_pycaffe(tmp_path, shared_net):
    prototxt, weights, x, raw = shared_net
    # split_layer.cpp shares every top's data with the bottom: ReLU in place on "a" rewrites conv, a and b,
    # so after forward() pycaffe holds the rectified values under all three names, and pool reads them too.
    relu = np.maximum(raw, 0)
    pooled = relu.reshape(1, 4, 3, 2, 3, 2).max(axis=(3, 5))
    path = tmp_path / "pycaffe.npz"
    np.savez(path, data=x, conv=relu, a=relu, b=relu, pb=pooled)
    report = verify(prototxt, weights, reference=path, runtimes="none")
    assert report.ok, format_report(report)
    assert {r.blob for r in report.rows if r.backend == "pycaffe"} == {"conv", "a", "b", "pb"}
    assert any("conv = a" in note for note in report.notes)
    # A dump holding the unrectified convolution under "conv" is not what pycaffe shows: named at conv.
    np.savez(path, data=x, conv=raw, a=relu, b=relu, pb=pooled)
    report = verify(prototxt, weights, reference=path, runtimes="none")
    assert (report.first_divergence.blob, report.first_divergence.backend) == ("conv", "pycaffe")


def test_npz_reference_without_input_blob(run_cli, tmp_path, shared_net):
    prototxt, weights, x, raw = shared_net
    path = tmp_path / "partial.npz"
    np.savez(path, conv=np.maximum(raw, 0))  # people often save only some blobs
    result = run_cli("verify", prototxt, weights, "--reference", path)
    assert result.exit_code == 1
    assert "holds no blob for the net's input(s) ['data']" in result.stderr and "--input" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    np.save(tmp_path / "x.npy", x)
    result = run_cli("verify", prototxt, weights, "--reference", path, "--input", tmp_path / "x.npy")
    assert result.exit_code == 0, result.output


def test_opencv_reads_the_users_file(tiny):
    prototxt, weights = tiny
    report = verify(prototxt, weights, reference="opencv", runtimes="none")
    assert report.ok and not report.notes
    status = {b.name: b for b in report.backends}
    assert status["opencv"].detail.endswith(f"reading {prototxt}")
