"""Every runtime behind ``ninport.runtimes`` computes the net's numbers, blob by blob, and onnxruntime's provider
choice says what it does: the CPU build is an error for ``--provider cuda``, and a GPU build that cannot start
falls back under ``auto`` with one line naming what is missing, onnxruntime's own log kept off the terminal.

Numbers are judged against a float64 forward of the torch module, relative to the float32 module's own error on
the same blob (the net's noise floor); the I/O-binding path runs on the CPU device with seeded weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from ninport import runtimes
from ninport.errors import NinportError, RuntimeUnavailableError

NET = """
name: "small_nin"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 24 dim: 24 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 16 kernel_size: 5 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "cccp1" type: "Convolution" bottom: "pool1" top: "cccp1"
        convolution_param { num_output: 12 kernel_size: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "cccp1" top: "cccp1" }
layer { name: "conv2" type: "Convolution" bottom: "cccp1" top: "conv2"
        convolution_param { num_output: 10 kernel_size: 3 pad: 1 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 7 } }
"""
BLOBS = ["conv1", "pool1", "cccp1", "pool2"]  # intermediate blobs asked for as extra outputs
CAFFE_BLOBS = ["pool1", "pool2"]  # OpenCV's Caffe net fuses the in-place ReLUs into their convolutions


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch

    import ninport
    from ninport.caffe.load import read_net
    from ninport.caffe.seeded import write_seeded_caffemodel

    directory = tmp_path_factory.mktemp("runtimes")
    prototxt = directory / "net.prototxt"
    prototxt.write_text(NET)
    caffemodel = directory / "net.caffemodel"
    write_seeded_caffemodel(read_net(prototxt), caffemodel, layout="v2", seed=11)
    module = ninport.load(prototxt, caffemodel)
    onnx_path = directory / "net.onnx"
    ninport.export_onnx(module, onnx_path)
    x = np.random.default_rng(5).standard_normal((2, 3, 24, 24)).astype(np.float32)
    with torch.no_grad():
        f32 = {k: v.numpy() for k, v in module.forward_blobs(torch.from_numpy(x)).items()}
        f64 = {k: v.numpy() for k, v in copy.deepcopy(module).double().forward_blobs(
            torch.from_numpy(x.astype(np.float64))).items()}
    return {"prototxt": prototxt, "caffemodel": caffemodel, "onnx": onnx_path, "module": module, "x": x,
            "f32": f32, "f64": f64}


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    got = np.asarray(got, np.float64).reshape(ref.shape)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def _tolerance(small: dict, blob: str) -> float:
    """Eight times the float32 module's own error on this blob (at least float32's epsilon): the noise floor of
    a float32 forward of this net. The check must be able to fail: a 1e-4 relative fault is far above it."""
    floor = max(_rel(small["f32"][blob], small["f64"][blob]), float(np.finfo(np.float32).eps))
    tolerance = 8 * floor
    assert tolerance < 1e-5, f"{blob}: noise floor {floor:.2g} too high for a meaningful check"
    return tolerance


CASES = [("onnxruntime", "onnx", BLOBS), ("openvino", "onnx", BLOBS), ("opencv-onnx", "onnx", BLOBS),
         ("opencv-caffe", "caffe", CAFFE_BLOBS), ("torch", "module", [])]


@pytest.mark.parametrize(("kind", "source", "blobs"), CASES, ids=[c[0] for c in CASES])
def test_every_runtime_computes_the_net(small, kind, source, blobs):
    if runtimes.availability(kind):
        pytest.skip(runtimes.availability(kind))
    model = {"onnx": small["onnx"], "caffe": (small["prototxt"], small["caffemodel"]),
             "module": small["module"]}[source]
    runtime = runtimes.load(kind, model, provider="cpu", threads=1, extra_outputs=blobs)
    assert runtime.provider == "cpu" and runtime.kind == kind and runtime.input_names == ["data"]
    assert runtime.version().split()[0].lower() in ("onnxruntime", "openvino", "opencv", "torch")
    out = runtime.run({"data": small["x"]})
    assert set(out) == {"fc", *blobs}
    for blob in ["fc", *blobs]:
        ref = small["f64"][blob]
        error = _rel(out[blob], ref)
        tolerance = _tolerance(small, blob)
        assert error <= tolerance, f"{kind} {blob}: relative error {error:.3g} > {tolerance:.3g}"
        planted = np.asarray(out[blob], np.float64).reshape(ref.shape) + 1e-4 * np.abs(ref).max()
        assert _rel(planted, ref) > tolerance
    # Asking for a subset returns just that.
    assert set(runtime.run({"data": small["x"]}, ["fc"])) == {"fc"}


def test_extra_outputs_must_exist(small):
    with pytest.raises(NinportError, match="no tensor named 'nope'"):
        runtimes.load("onnxruntime", small["onnx"], provider="cpu", extra_outputs=["nope"])


def test_io_binding_on_the_cpu_device(small):
    """The GPU path's I/O binding, run on the CPU device: outputs stay as device values, are the plain run's
    numbers exactly, and the float64 forward's within the noise floor; a binding runs again without rebinding."""
    runtime = runtimes.load("onnxruntime", small["onnx"], provider="cpu", threads=1, extra_outputs=["pool2"])
    plain = runtime.run({"data": small["x"]}, ["fc", "pool2"])
    binding = runtime.bind({"data": small["x"]}, ["fc", "pool2"], device="cpu")
    for _ in range(2):
        values = runtime.run_bound(binding)
        assert [v.device_name().lower() for v in values] == ["cpu", "cpu"]
        for name, value in zip(["fc", "pool2"], values):
            array = value.numpy()
            np.testing.assert_array_equal(array, plain[name])
            assert _rel(array, small["f64"][name]) <= _tolerance(small, name)
    assert np.abs(plain["fc"]).max() > 0.01  # seeded weights, not zeros: the comparison means something
    # The session-level call used by run/evaluate on a GPU, here on the CPU device.
    (fc,) = runtime.session.run_bound({"data": small["x"]}, ["fc"], device="cpu")
    np.testing.assert_array_equal(fc.numpy(), plain["fc"])


def test_fp16_runs_a_half_precision_graph(small):
    runtime = runtimes.load("onnxruntime", small["onnx"], provider="cpu", precision="fp16")
    assert runtime.precision == "fp16" and "fp16" in runtime.version()
    out = runtime.run({"data": small["x"]})["fc"]
    error = _rel(out, small["f64"]["fc"])
    # half precision (11-bit significand): clearly worse than float32, within a small multiple of 2^-11
    assert 1e-5 < error < 40 * 2.0 ** -11


# --------------------------------------------------------------------------------------------------------
# Provider choice on this CPU-only machine


@pytest.fixture
def cpu_build():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu")
    return ort


def test_cuda_on_the_cpu_build_is_an_error(small, cpu_build, capfd):
    for provider in ("cuda", "tensorrt"):
        with pytest.raises(RuntimeUnavailableError) as info:
            runtimes.load("onnxruntime", small["onnx"], provider=provider)
        message = str(info.value)
        assert "\n" not in message and f"--provider {provider}" in message
        assert "pip install ninport-gpu" in message
    assert capfd.readouterr().err == ""


def test_auto_on_the_cpu_build_is_quietly_the_cpu(small, cpu_build, capfd):
    said = []
    runtime = runtimes.load("onnxruntime", small["onnx"], provider="auto", warn=said.append)
    assert runtime.provider == "cpu" and said == []
    assert capfd.readouterr().err == ""


@pytest.fixture
def pretend_gpu_build(monkeypatch, cpu_build):
    """onnxruntime-gpu as seen from Python (the provider listed, the distribution installed) on a host where it
    cannot start: what a GPU install on a machine without the driver or the CUDA libraries looks like."""
    from ninport.runtimes import onnxruntime as ort_runtime

    listed = cpu_build.get_available_providers()
    monkeypatch.setattr(cpu_build, "get_available_providers", lambda: ["CUDAExecutionProvider", *listed])
    monkeypatch.setattr(ort_runtime, "installed_builds", lambda: ["onnxruntime-gpu"])
    return ort_runtime


def test_auto_falls_back_naming_the_missing_driver(small, pretend_gpu_build, capfd):
    if pretend_gpu_build._driver_problem() is None:
        pytest.skip("this machine has an NVIDIA driver with a device")
    said = []
    runtime = runtimes.load("onnxruntime", small["onnx"], provider="auto", warn=said.append)
    assert runtime.provider == "cpu"
    assert said == ["running on the CPU: no NVIDIA driver (libcuda.so.1 not found)"]
    with pytest.raises(RuntimeUnavailableError, match=r"^--provider cuda: no NVIDIA driver"):
        runtimes.load("onnxruntime", small["onnx"], provider="cuda")
    assert capfd.readouterr().err == ""


def test_a_provider_that_does_not_start_is_one_line(small, pretend_gpu_build, monkeypatch, capfd):
    """The driver answers but the provider does not come up (here: the CPU build cannot make a CUDA session, as
    onnxruntime-gpu cannot without its CUDA libraries): onnxruntime's complaint is captured and summed up."""
    monkeypatch.setattr(pretend_gpu_build, "_driver_problem", lambda: None)
    monkeypatch.setattr(pretend_gpu_build, "preload_gpu_libraries", lambda: None)
    said = []
    runtime = runtimes.load("onnxruntime", small["onnx"], provider="auto", warn=said.append)
    assert runtime.provider == "cpu" and len(said) == 1
    assert said[0].startswith("running on the CPU: CUDAExecutionProvider did not start") and "\n" not in said[0]
    np.testing.assert_allclose(runtime.run({"data": small["x"]})["fc"], small["f32"]["fc"], rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeUnavailableError, match=r"^--provider cuda: CUDAExecutionProvider did not start"):
        runtimes.load("onnxruntime", small["onnx"], provider="cuda")
    assert capfd.readouterr().err == ""  # onnxruntime's own lines went to the capture, not the terminal


def test_both_builds_installed_is_named(small, pretend_gpu_build, monkeypatch):
    monkeypatch.setattr(pretend_gpu_build, "installed_builds", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with pytest.raises(RuntimeUnavailableError, match="both onnxruntime and onnxruntime-gpu are installed"):
        runtimes.load("onnxruntime", small["onnx"], provider="cuda")
    said = []
    assert runtimes.load("onnxruntime", small["onnx"], warn=said.append).provider == "cpu"
    assert len(said) == 1 and "both onnxruntime and onnxruntime-gpu" in said[0]


def test_missing_cuda_libraries_are_named():
    """The summary of a real onnxruntime-gpu failure (the log text is the shape onnxruntime 1.2x prints)."""
    from ninport.runtimes.onnxruntime import _start_failure

    log = ("\x1b[1;31m2026-12-01 10:00:00.0 [E:onnxruntime:Default, provider_bridge_ort.cc:2251 "
           "TryGetProviderInfo_CUDA]"
           " /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:1844 onnxruntime::Provider& "
           "onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library "
           "libonnxruntime_providers_cuda.so with error: libcudnn.so.9: cannot open shared object file: No such "
           "file or directory\x1b[m\n\x1b[0;93m2026-12-01 10:00:00.1 [W:onnxruntime:Default, onnxruntime_pybind_"
           "state.cc:1013 CreateExecutionProviderFactoryInstance] Failed to create CUDAExecutionProvider.\x1b[m\n")
    assert _start_failure("cuda", log) == "CUDAExecutionProvider did not start: libcudnn.so.9 not found"
    assert _start_failure("cuda", "").endswith("did not start")


def test_bad_requests_are_one_line(small, monkeypatch):
    with pytest.raises(NinportError, match="unknown runtime 'tvm'"):
        runtimes.load("tvm", small["onnx"])
    with pytest.raises(NinportError, match="--provider must be one of"):
        runtimes.load("onnxruntime", small["onnx"], provider="rocm")
    with pytest.raises(NinportError, match="precision must be one of"):
        runtimes.load("onnxruntime", small["onnx"], precision="int4")
    with pytest.raises(NinportError, match="no such file"):
        runtimes.load("onnxruntime", Path(small["onnx"]).with_name("absent.onnx"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert runtimes.availability("openvino") == ("openvino is not installed; install it with "
                                                 "pip install 'ninport[openvino]'")
    with pytest.raises(RuntimeUnavailableError, match="openvino is not installed"):
        runtimes.load("openvino", small["onnx"])


def test_openvino_bf16_hint_computes_in_bf16(small):
    if runtimes.availability("openvino"):
        pytest.skip(runtimes.availability("openvino"))
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        pytest.skip("this CPU has no bf16 instructions; OpenVINO then computes in float32")
    runtime = runtimes.load("openvino", small["onnx"], precision="bf16")
    assert runtime.version().endswith("bf16")
    error = _rel(runtime.run({"data": small["x"]})["fc"], small["f64"]["fc"])
    # bf16 keeps 8 significant bits: far above float32's floor, within a small multiple of 2^-8
    assert _tolerance(small, "fc") < error < 20 * 2.0 ** -8
    with pytest.raises(NinportError, match="bf16 only from a bf16 model"):
        runtimes.load("onnxruntime", small["onnx"], precision="bf16")
