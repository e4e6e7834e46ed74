"""The fast paths compute what the plain paths compute, and ``ninport bench`` reports what it says it does.

No timing is asserted: the benchmarks measure; these tests check that a cached onnxruntime session gives
the fresh session's outputs, that the interleaving visits every runtime alike, and the report's structure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ninport.errors import NinportError

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 20 dim: 20 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "cccp1" type: "Convolution" bottom: "pool1" top: "cccp1"
        convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "cccp1" top: "cccp1" }
layer { name: "pool2" type: "Pooling" bottom: "cccp1" top: "pool2" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 4 } }
"""
# conv1: 20 -> 9 (8 ch), pool1: 9 -> 4 (ceil((9-3)/2)+1 = 4), cccp1: 4x4x5, pool2: 1x1x5, fc: 4.
TINY_MACS = 9 * 9 * 8 * (3 * 3 * 3) + 4 * 4 * 5 * 8 + 5 * 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from ninport.caffe.load import read_net
    from ninport.caffe.seeded import write_seeded_caffemodel

    directory = tmp_path_factory.mktemp("tiny")
    prototxt = directory / "tiny.prototxt"
    prototxt.write_text(TINY)
    caffemodel = directory / "tiny.caffemodel"
    write_seeded_caffemodel(read_net(prototxt), caffemodel, layout="v2", seed=3)
    return {"prototxt": prototxt, "caffemodel": caffemodel, "dir": directory}


@pytest.fixture(scope="module")
def tiny_onnx(tiny: dict[str, Path]) -> Path:
    import ninport

    module = ninport.load(tiny["prototxt"], tiny["caffemodel"])
    path = tiny["dir"] / "tiny.onnx"
    ninport.export_onnx(module, path)
    ninport.save_pt(module, tiny["dir"] / "tiny.pt")
    return path


# ------------------------------------------------------------------------------------------------------------
# The optimized-graph cache of make_session


def _outputs(session, x: np.ndarray) -> list[np.ndarray]:
    return session.session.run(None, {"data": x})


def test_cached_session_gives_the_fresh_sessions_outputs(tiny_onnx: Path, tmp_path: Path):
    from ninport.onnx.runtime import make_session

    x = np.random.default_rng(0).standard_normal((3, 3, 20, 20), dtype=np.float32)
    fresh = make_session(tiny_onnx, provider="cpu")
    first = make_session(tiny_onnx, provider="cpu", optimized_cache=tmp_path / "cache")
    cached_files = list((tmp_path / "cache").iterdir())
    second = make_session(tiny_onnx, provider="cpu", optimized_cache=tmp_path / "cache")
    assert not fresh.from_cache and not first.from_cache and second.from_cache
    assert len(cached_files) == 1 and cached_files[0].suffix == ".onnx"
    assert not [p for p in cached_files if "partial" in p.name]
    reference = _outputs(fresh, x)
    for session in (first, second):
        for ref, out in zip(reference, _outputs(session, x)):
            assert out.shape == ref.shape
            np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6 * float(np.abs(ref).max()))


def test_cache_is_keyed_by_model_bytes_and_level(tiny_onnx: Path, tmp_path: Path):
    from ninport.onnx.runtime import make_session

    data = tiny_onnx.read_bytes()
    cache = tmp_path / "cache"
    assert not make_session(data, provider="cpu", optimized_cache=cache).from_cache
    assert make_session(data, provider="cpu", optimized_cache=cache).from_cache
    assert not make_session(data, provider="cpu", optimized_cache=cache, optimization="basic").from_cache
    assert len(list(cache.iterdir())) == 2
    # A changed model file is a new entry, never the stale graph.
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(data)
    assert not make_session(copy, provider="cpu", optimized_cache=cache).from_cache
    assert make_session(copy, provider="cpu", optimized_cache=cache).from_cache
    os.utime(copy, ns=(1, 1))
    assert not make_session(copy, provider="cpu", optimized_cache=cache).from_cache


def test_cache_must_be_a_directory(tiny_onnx: Path, tmp_path: Path):
    from ninport.onnx.runtime import make_session

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(NinportError, match="must be a directory"):
        make_session(tiny_onnx, provider="cpu", optimized_cache=not_a_dir)


# ------------------------------------------------------------------------------------------------------------
# The bench library


def test_interleave_rotates_the_order_and_skips_warmup():
    from ninport.bench import interleave

    calls: list[str] = []

    def participant(name: str):
        def call() -> float:
            calls.append(name)
            return float(len(calls))

        return call

    samples = interleave({n: participant(n) for n in "ABC"}, repeat=3, warmup=1)
    assert calls == list("ABC" "BCA" "CAB" "ABC")
    assert {k: len(v) for k, v in samples.items()} == {"A": 3, "B": 3, "C": 3}
    assert samples["A"] == [6.0, 8.0, 10.0]  # the call numbers of A after the warm-up round


def test_percentiles_by_hand():
    from ninport.bench import percentiles

    stats = percentiles([0.001 * v for v in range(1, 101)])  # 1..100 ms
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["min_ms"] == pytest.approx(1.0)


def test_flops_from_onnx_equal_twice_caffes_macs(tiny: dict[str, Path], tiny_onnx: Path):
    from ninport.bench import prepare_model

    from_caffe = prepare_model(tiny["prototxt"], tiny["caffemodel"], str(tiny["dir"]))
    from_onnx = prepare_model(tiny_onnx, None, str(tiny["dir"]))
    assert from_caffe.flops_per_image == 2 * TINY_MACS
    assert from_onnx.flops_per_image == 2 * TINY_MACS
    assert from_onnx.item_shape == (3, 20, 20) and from_onnx.module_factory is not None


def test_gemm_helper_drops_the_openblas_workarounds(monkeypatch: pytest.MonkeyPatch):
    import subprocess
    import sys

    from ninport.bench import GemmPeak

    pytest.importorskip("threadpoolctl")
    probe = "from threadpoolctl import threadpool_info; import numpy; " \
            "print([d.get('architecture') for d in threadpool_info() if d.get('internal_api') == 'openblas'])"
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    expected = subprocess.run([sys.executable, "-c", probe], env=clean, capture_output=True, text=True).stdout
    forced = subprocess.run([sys.executable, "-c", probe], env={**clean, "OPENBLAS_CORETYPE": "Prescott"},
                            capture_output=True, text=True).stdout
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Prescott")
    gemm = GemmPeak(threads=1, n=64)
    try:
        seconds = gemm()
        blas = gemm.info.get("blas") or []
    finally:
        gemm.close()
    assert seconds > 0 and gemm.flops == 2 * 64**3
    got = str([lib.get("architecture") for lib in blas if lib.get("internal_api") == "openblas"])
    assert got == expected.strip()
    if expected.strip() != "[]":
        assert forced.strip() != expected.strip()  # the variable does change the kernel: the check can fail


# ------------------------------------------------------------------------------------------------------------
# The command


def test_bench_json_structure(run_cli, tiny: dict[str, Path]):
    result = run_cli("bench", tiny["prototxt"], tiny["caffemodel"], "--batch", "1,3", "--repeat", "3",
                     "--warmup", "1", "--gemm-size", "128", "--threads", "1", "--settle", "0", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["flops_per_image"] == 2 * TINY_MACS and report["threads"] == 1 and report["settle_s"] == 0
    ran = {r["runtime"] for r in report["results"]}
    assert {"onnxruntime", "torch"} <= ran
    assert ran | set(report["skipped"]) == {"onnxruntime", "openvino", "opencv", "torch"}
    assert set(report["sgemm"]["by_batch"]) == {"1", "3"}
    for peak in report["sgemm"]["by_batch"].values():
        assert peak["best_gflops"] >= peak["p50_gflops"] > 0
    for row in report["results"]:
        assert row["batch"] in (1, 3)
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_s"] > 0 and row["gflops"] > 0 and row["share_of_peak"] > 0
        # Every runtime is judged against the float64 torch forward, beside the float32 module's own distance.
        assert row["reference"] == "float64 torch" and 0 < row["floor"] < 1e-5, row
        assert row["max_rel_diff"] <= max(1e-5, 10 * row["floor"]) and row["parity_ok"] is True, row
    assert len(report["results"]) == 2 * len(ran)


def test_bench_text_and_onnx_only(run_cli, tiny_onnx: Path):
    result = run_cli("bench", tiny_onnx, "--batch", "2", "--repeat", "2", "--warmup", "0", "--gemm-size", "64",
                     "--runtimes", "onnxruntime,torch", "--settle", "0.01")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "batch 2: SGEMM peak" in out and "GFLOP/s" in out
    assert "onnxruntime" in out and "torch" in out and "opencv" not in out  # torch from the .pt beside


@pytest.mark.parametrize("args, message", [
    (("--runtimes", "onnxruntime,tensorrt"), "unknown runtime(s) ['tensorrt']"),
    (("--batch", "0"), "batch sizes must be positive"),
])
def test_bench_bad_options_are_one_line(run_cli, tiny: dict[str, Path], args, message):
    result = run_cli("bench", tiny["prototxt"], tiny["caffemodel"], *args)
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bench_prototxt_needs_weights(run_cli, tiny: dict[str, Path]):
    result = run_cli("bench", tiny["prototxt"])
    assert result.exit_code == 1 and "needs its CAFFEMODEL" in result.stderr


# ------------------------------------------------------------------------------------------------------------
# ninport convert's helper process (checks and onnxruntime run in parallel with the torch side)


def _convert(tiny: dict[str, Path], out: Path, monkeypatch: pytest.MonkeyPatch, in_process: bool, **kwargs):
    from ninport.convert import convert

    if in_process:
        monkeypatch.setenv("NINPORT_CHECK_IN_PROCESS", "1")
    else:
        monkeypatch.delenv("NINPORT_CHECK_IN_PROCESS", raising=False)
    return convert(tiny["prototxt"], tiny["caffemodel"], out, **kwargs)


def test_helper_process_gives_the_in_process_result(tiny: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    fast = _convert(tiny, tmp_path / "a" / "m.onnx", monkeypatch, in_process=False)
    slow = _convert(tiny, tmp_path / "b" / "m.onnx", monkeypatch, in_process=True)
    assert (tmp_path / "a" / "m.onnx").read_bytes() == (tmp_path / "b" / "m.onnx").read_bytes()
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    # The same checks ran (the figures may differ in the last bits: the helper runs each side on one thread).
    assert [(p.blob, p.batch) for p in fast.parity] == [(p.blob, p.batch) for p in slow.parity]
    assert [p.batch for p in fast.parity] == [1, 2]
    assert all(0 <= p.rel <= 1e-5 for p in fast.parity + slow.parity)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["m.onnx", "m.pt"]


def test_parity_failure_through_the_helper_leaves_nothing(tiny: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    from ninport.errors import ParityError

    out = tmp_path / "out"
    monkeypatch.setattr("ninport.parity.tolerance", lambda floor, rtol=1e-5: -1.0)  # nothing passes
    with pytest.raises(ParityError, match="at batch 1"):
        _convert(tiny, out / "m.onnx", monkeypatch, in_process=False)
    assert list(out.iterdir()) == []


def test_helper_reports_checker_failures(tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    from ninport.onnx.runtime import start_check_worker

    # A Relu reading a tensor nothing defines: onnx.checker refuses it.
    graph = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    worker = start_check_worker()
    if worker is None:
        pytest.skip("NINPORT_CHECK_IN_PROCESS is set")
    try:
        worker.check(str(path), {"0:x": np.zeros(1, np.float32)}, ["y"], [1])
        reply = worker.result()
    finally:
        worker.close()
    assert reply["error"] == "checker" and "nowhere" in reply["message"]


def test_a_dead_helper_falls_back_to_checking_in_process(tiny: dict[str, Path], tmp_path: Path):
    import ninport
    from ninport.onnx.export import start_export
    from ninport.onnx.runtime import CheckWorker

    module = ninport.load(tiny["prototxt"], tiny["caffemodel"])
    worker = CheckWorker()
    worker.proc.kill()
    worker.proc.wait()
    try:
        result = start_export(module, tmp_path / "m.onnx", worker=worker).finish()
    finally:
        worker.close()
    assert [p.batch for p in result.parity] == [1, 2] and all(p.rel <= 1e-5 for p in result.parity)
    assert not os.path.exists(worker.tmpdir)


def test_bound_run_equals_plain_run(tmp_path):
    # The I/O-binding path that CUDA sessions take, exercised on the CPU device: same numbers as a plain run.
    import torch

    import ninport
    from ninport.onnx.runtime import make_session

    proto = tmp_path / "n.prototxt"
    proto.write_text(
        'input: "data"\ninput_shape { dim: 2 dim: 3 dim: 8 dim: 8 }\n'
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
        '        convolution_param { num_output: 4 kernel_size: 3 } }\n'
        'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
    )
    from ninport.caffe.load import read_net
    from ninport.caffe.seeded import write_seeded_caffemodel

    write_seeded_caffemodel(read_net(proto), tmp_path / "n.caffemodel", seed=4)  # real weights, not zeros
    model = ninport.load(proto, tmp_path / "n.caffemodel")
    ninport.export_onnx(model, tmp_path / "n.onnx")
    session = make_session(tmp_path / "n.onnx", provider="cpu")
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    (plain,) = session.run({"data": x})
    (bound,) = [v.numpy() for v in session.run_bound({"data": x}, ["c"], device="cpu")]  # OrtValues stay on device
    np.testing.assert_array_equal(plain, bound)
    # and both are the convolution of x: about half the rectified outputs positive, equal to the torch module's
    assert 0.2 < float(np.mean(bound > 0)) < 0.8
    expected = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(bound, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))
