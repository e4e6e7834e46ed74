"""``tools/gpu_check.py`` on this CPU-only machine: it says there is no GPU and exits with its own code before
converting anything; with a GPU but the CPU build of onnxruntime it names the missing piece; and its check and
timing steps, run on the CPU device, compare every blob and catch a planted fault.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "gpu_check.py"
sys.path.insert(0, str(TOOL.parent))
import gpu_check  # noqa: E402 - the tool is a script in tools/

NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 20 dim: 20 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "cccp1" type: "Convolution" bottom: "pool1" top: "cccp1"
        convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "pool2" type: "Pooling" bottom: "cccp1" top: "pool2" pooling_param { pool: AVE global_pooling: true } }
"""


@pytest.fixture
def no_gpu():
    code, why = gpu_check.gpu_status()
    if code != gpu_check.EXIT_NO_GPU:
        pytest.skip("this machine has a GPU")
    return why


def test_without_a_gpu_it_says_so_and_exits_3(no_gpu):
    proc = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == gpu_check.EXIT_NO_GPU == 3
    assert proc.stdout == "no GPU: no NVIDIA driver (libcuda.so.1 not found)\n"
    assert proc.stderr == ""  # no traceback, no conversion progress: nothing ran
    proc = subprocess.run([sys.executable, str(TOOL), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and '"reason": "no GPU: no NVIDIA driver' in proc.stdout


def test_a_gpu_without_the_gpu_build_exits_4(monkeypatch, capsys):
    import onnxruntime as ort

    from ninport.runtimes import onnxruntime as ort_runtime

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu")
    monkeypatch.setattr(ort_runtime, "_driver_problem", lambda: None)  # as if the driver answered
    assert gpu_check.main([]) == gpu_check.EXIT_NO_ORT_GPU == 4
    out = capsys.readouterr().out
    assert out.startswith("a GPU is here but onnxruntime cannot use it: onnxruntime ")
    assert "no CUDAExecutionProvider (the GPU install is: pip install ninport-gpu)" in out and out.count("\n") == 1


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpu_check") / "small.prototxt"
    path.write_text(NET)
    return path


def test_the_check_steps_on_the_cpu_device(small):
    report = gpu_check.run_check(small, batches=(1, 3), repeat=1, device="cpu", providers=("cpu",),
                                 precisions=("fp32",), say=lambda _m: None)
    rows = {row["runtime"]: row for row in report["rows"]}
    assert set(rows) == {"torch-cpu", "onnxruntime-cpu"}
    ort_row = rows["onnxruntime-cpu"]
    # conv1@conv1, conv1, pool1, cccp1, pool2: every blob of the net
    assert ort_row["blobs"] == 5 and ort_row["ok"] is True and ort_row["error"] <= ort_row["tolerance"] < 1e-4
    speeds = {(t["runtime"], t["batch"]) for t in report["throughput"] if t["images_per_s"] > 0}
    assert speeds == {("onnxruntime-cpu", 1), ("onnxruntime-cpu", 3), ("torch-cpu", 1), ("torch-cpu", 3)}
    assert report["peaks"]["fp32"] > 0 and report["ok"] is True
    text = gpu_check.format_report(report)
    assert "onnxruntime-cpu" in text and "batch 3" in text and " ok" in text


def test_a_planted_fault_is_caught_at_its_blob(small, monkeypatch):
    """A 1e-4 relative error added to one blob of the runtime under check fails the check at that blob."""
    from ninport import runtimes

    real = runtimes.load
    calls = []

    def load(kind, model, **kw):
        runtime = real(kind, model, **kw)
        calls.append(kw)
        if len(calls) == 2:  # the runtime under check (the first load is the CPU reference)
            run = runtime.run

            def faulty(feeds, outputs=None):
                out = run(feeds, outputs)
                out["pool1"] = out["pool1"] + np.float32(1e-4) * np.abs(out["pool1"]).max()
                return out

            runtime.run = faulty
        return runtime

    monkeypatch.setattr(runtimes, "load", load)
    report = gpu_check.run_check(small, batches=(1,), repeat=1, device="cpu", providers=("cpu",),
                                 precisions=("fp32",), say=lambda _m: None)
    row = next(r for r in report["rows"] if r["runtime"] == "onnxruntime-cpu")
    assert row["ok"] is False and row["first_divergence"] == "pool1" and report["ok"] is False
    assert "FAILS from blob pool1" in gpu_check.format_report(report)
