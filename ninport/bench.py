"""Inference runtimes side by side on one model: latency percentiles, throughput, and each runtime's share of
the machine's own SGEMM peak, all measured in one run with the runtimes interleaved (A B C, B C A, ...).

The peak is a large float32 matrix product in numpy, run in a helper process (so the BLAS thread count and
the OpenBLAS kernel choice are its own) and interleaved with the runtimes like one of them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ninport.errors import NinportError, RuntimeUnavailableError

RUNTIMES = ("onnxruntime", "openvino", "opencv", "torch")
GEMM = "sgemm"
DEFAULT_GEMM_SIZE = 2048

# The helper process that measures the SGEMM peak. It reads one line per product to run and answers with the
# seconds that product took; its first line describes the BLAS it runs on.
_GEMM_WORKER = r"""
import json, sys, time
import numpy as np
n = int(sys.argv[1])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
out = np.empty((n, n), dtype=np.float32)
info = {"numpy": np.__version__}
try:
    from threadpoolctl import threadpool_info
    info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                    for d in threadpool_info() if d.get("user_api") == "blas"]
except ImportError:
    info["blas"] = None
np.matmul(a, b, out=out)
print(json.dumps(info), flush=True)
for line in sys.stdin:
    if not line.strip():
        break
    t = time.perf_counter()
    np.matmul(a, b, out=out)
    print(time.perf_counter() - t, flush=True)
"""


class GemmPeak:
    """A float32 ``n×n @ n×n`` product in a helper process with ``threads`` BLAS threads: 2·n³ FLOPs a call.

    The helper's environment pins the BLAS thread count, and drops ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE``
    (both together): some machines set them to work around old OpenBLAS bugs, and they make a current
    OpenBLAS pick slower kernels, which would understate the peak. Idle BLAS threads are told to sleep soon
    after a product, so they do not spin on the cores the next runtime uses.
    """

    def __init__(self, threads: int, n: int = DEFAULT_GEMM_SIZE):
        self.n = n
        self.flops = 2.0 * n**3
        env = dict(os.environ)
        for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
            env.pop(key, None)
        for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[key] = str(threads)
        env["OPENBLAS_THREAD_TIMEOUT"] = "4"  # 2**4 cycles of spinning before an idle thread sleeps
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _GEMM_WORKER, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env,
        )
        first = self._proc.stdout.readline()
        if not first:
            err = self._proc.stderr.read().strip().splitlines()
            raise NinportError(f"the SGEMM helper process failed: {err[-1] if err else 'no output'}")
        self.info = json.loads(first)

    def __call__(self) -> float:
        """Run one product; returns the seconds it took inside the helper (no pipe overhead)."""
        self._proc.stdin.write("go\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise NinportError("the SGEMM helper process stopped unexpectedly")
        return float(line)

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write("\n")
                self._proc.stdin.flush()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()


# --------------------------------------------------------------------------------------------------------
# The model under test


@dataclass
class BenchModel:
    """What every runtime needs: the ONNX file, the Caffe files (when given), input and FLOPs per image."""

    onnx_path: str
    input_name: str
    item_shape: tuple[int, ...]  # one item of the batch: C, H, W
    flops_per_image: float
    output_names: list[str]
    prototxt: str | None = None  # a deploy prototxt OpenCV can read, derived from the normalized net
    caffemodel: str | None = None
    module_factory: Callable[[], object] | None = None  # builds the torch module on demand
    notes: list[str] = field(default_factory=list)


def _onnx_macs(model) -> int:
    """MACs of one item through the Conv, ConvTranspose, Gemm and MatMul nodes of an ONNX model (batch 1)."""
    import onnx
    from onnx import shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, tuple[int, ...]] = dict(inits)
    for value in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    macs = 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        if node.op_type == "Conv" and node.input[1] in shapes:
            weight = shapes[node.input[1]]
            macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type == "ConvTranspose" and node.input[1] in shapes and node.input[0] in shapes:
            weight = shapes[node.input[1]]
            macs += int(np.prod(shapes[node.input[0]])) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul") and node.input[0] in shapes:
            a = shapes[node.input[0]]
            transposed = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if transposed and len(a) >= 2 else a[-1]
            macs += int(np.prod(out)) * int(k)
    return macs


def prepare_model(model: str | os.PathLike, caffemodel: str | os.PathLike | None, workdir: str,
                  input_shape: str | None = None) -> BenchModel:
    """An ONNX file as given, or a prototxt + caffemodel exported to ONNX in ``workdir`` (the same graph
    ``ninport convert`` writes), with FLOPs per image from Caffe's shape rules (2 × MACs)."""
    model = os.fspath(model)
    if not os.path.exists(model):
        raise NinportError(f"{model}: no such file")
    if model.endswith(".onnx"):
        return _prepare_onnx(model, caffemodel)
    if caffemodel is None:
        raise NinportError(f"{model}: a prototxt needs its CAFFEMODEL to benchmark (or give an .onnx file)")
    from ninport.caffe.load import load_net
    from ninport.onnx.export import to_onnx_bytes
    from ninport.torch.build import build_module

    net, shapes = load_net(model, caffemodel, input_shape=input_shape)
    if len(net.inputs) != 1:
        raise NinportError(f"{model}: bench handles nets with one input, this one has {list(net.inputs)}")
    (input_name, shape), = net.inputs.items()
    batch = shapes.blobs[input_name][0] or 1
    flops = 2.0 * shapes.macs() / batch
    module = build_module(net, shapes)
    onnx_path = os.path.join(workdir, "model.onnx")
    with open(onnx_path, "wb") as f:
        f.write(to_onnx_bytes(module, batch=1))
    deploy = os.path.join(workdir, "deploy.prototxt")
    with open(deploy, "w") as f:
        f.write(net.to_prototxt())
    return BenchModel(onnx_path=onnx_path, input_name=input_name, item_shape=tuple(shape[1:]),
                      flops_per_image=flops, output_names=list(net.outputs), prototxt=deploy,
                      caffemodel=os.fspath(caffemodel), module_factory=lambda: module)


def _prepare_onnx(path: str, caffemodel) -> BenchModel:
    import onnx

    try:
        proto = onnx.load(path)
    except Exception as exc:
        raise NinportError(f"{path}: not a readable ONNX file ({exc})") from None
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise NinportError(f"{path}: bench handles models with one input, this one has {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    item = tuple(d.dim_value for d in dims[1:])
    if not item or not all(item):
        raise NinportError(f"{path}: input {inputs[0].name!r} needs fixed sizes past the batch axis")
    notes = []
    if caffemodel is not None:
        notes.append("CAFFEMODEL is ignored with an .onnx model: OpenCV reads the ONNX file")
    pt_path = os.path.splitext(path)[0] + ".pt"
    factory = None
    if os.path.exists(pt_path):
        def factory():
            from ninport.torch.build import load_pt

            return load_pt(pt_path)
    else:
        notes.append(f"torch needs {os.path.basename(pt_path)} beside the ONNX file (ninport convert writes it)")
    return BenchModel(onnx_path=path, input_name=inputs[0].name, item_shape=item,
                      flops_per_image=2.0 * _onnx_macs(proto), output_names=[o.name for o in proto.graph.output],
                      module_factory=factory, notes=notes)


# --------------------------------------------------------------------------------------------------------
# Runtimes (from ninport.runtimes): each becomes a callable that runs one batch


class Runner:
    """One runtime set up for the model; ``prepare(batch)`` before timing calls of ``run(x)``."""

    def __init__(self, name: str, runtime, input_name: str):
        self.name = name
        self.runtime = runtime
        self.input_name = input_name

    def prepare(self, batch: int) -> None:
        self.runtime.prepare(batch)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return list(self.runtime.run({self.input_name: x}).values())


def load_runner(name: str, model: BenchModel, threads: int, precision: str = "fp32") -> Runner:
    """The runtime ``name`` of ``RUNTIMES`` loaded for ``model``: onnxruntime on the CPU, OpenVINO's CPU plugin in
    float32 (or ``precision``), OpenCV on the Caffe files when there are some (else on the ONNX file), the torch
    module."""
    from ninport import runtimes

    if name == "onnxruntime":
        runtime = runtimes.load("onnxruntime", model.onnx_path, provider="cpu", threads=threads)
    elif name == "openvino":
        runtime = runtimes.load("openvino", model.onnx_path, threads=threads, precision=precision)
    elif name == "opencv":
        if model.prototxt and model.caffemodel:
            runtime = runtimes.load("opencv-caffe", (model.prototxt, model.caffemodel), threads=threads)
        else:
            runtime = runtimes.load("opencv-onnx", model.onnx_path, threads=threads)
    elif name == "torch":
        if model.module_factory is None:
            raise RuntimeUnavailableError(model.notes[-1] if model.notes else "no torch module for this model")
        runtime = runtimes.load("torch", model.module_factory, provider="cpu", threads=threads)
    else:
        raise NinportError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    return Runner(name, runtime, model.input_name)


OPENVINO_PRECISIONS = ("fp32", "bf16", "fp16")
# Runtimes that run a second ONNX model given with --compare (a quantized copy); OpenCV and torch do not.
COMPARE_RUNTIMES = ("onnxruntime", "openvino")


def check_runtimes(runtimes: Sequence[str]) -> None:
    """Each entry is a runtime name, or ``openvino:PRECISION`` (its inference precision hint)."""
    for spec in runtimes:
        name, _, precision = spec.partition(":")
        if name not in RUNTIMES:
            raise NinportError(f"unknown runtime(s) {[spec]}; choose from {', '.join(RUNTIMES)} "
                               f"(openvino:bf16 for a precision)")
        if precision and (name != "openvino" or precision not in OPENVINO_PRECISIONS):
            raise NinportError(f"{spec!r}: only openvino takes a precision, one of {', '.join(OPENVINO_PRECISIONS)}")


def make_runner(spec: str, model: BenchModel, threads: int) -> Runner:
    """A runner for ``NAME`` or ``openvino:PRECISION``, reported under the spec as given."""
    name, _, precision = spec.partition(":")
    runner = load_runner(name, model, threads, precision=precision or "fp32")
    runner.name = spec
    return runner


def compare_model(model: BenchModel, path: str) -> BenchModel:
    """``model`` with its ONNX file swapped for ``path`` (same input, FLOPs counted on the original)."""
    import dataclasses

    if not os.path.exists(path):
        raise NinportError(f"{path}: no such file")
    return dataclasses.replace(model, onnx_path=os.fspath(path), prototxt=None, caffemodel=None,
                               module_factory=None, notes=[])


# --------------------------------------------------------------------------------------------------------
# Timing


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
    }


def _rel_diff(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    """The largest relative distance (``ninport.parity.distance``) over the outputs."""
    from ninport.parity import distance

    return max((distance(ref, out)[1] for ref, out in zip(reference, other)), default=0.0)


class _Truth:
    """The float64 forward of the torch module (``ninport.parity``) and the float32 module's own distance from
    it, per batch input: what the diff column judges every runtime against."""

    def __init__(self, model: BenchModel):
        from ninport.parity import float64_module

        self.module = model.module_factory().eval()
        self.module64 = float64_module(self.module)

    def outputs(self, x: np.ndarray) -> tuple[list[np.ndarray], float]:
        import torch

        from ninport.parity import forward_truth

        truth = forward_truth(self.module, [x], module64=self.module64)
        with torch.no_grad():
            out = self.module(torch.from_numpy(x))
        out = out if isinstance(out, tuple) else (out,)
        truths = [truth[name] for name in self.module.output_names]
        return truths, _rel_diff(truths, [o.numpy() for o in out])


def interleave(participants: dict[str, Callable[[], float]], repeat: int, warmup: int,
               settle: float = 0.0) -> dict[str, list[float]]:
    """Call each participant ``warmup`` times, then ``repeat`` rounds of one call each, the order rotating
    every round so no participant always follows the same one. Returns the seconds of each timed call
    (a participant returns its own duration, e.g. the SGEMM helper's).

    ``settle`` is an untimed pause after each call: runtimes leave their worker threads spinning after a run
    (onnxruntime for ~65 ms, OpenMP for ~10 ms here), which would slow whichever participant comes next.
    """
    names = list(participants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeat):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = participants[name]()
            if round_index >= warmup:
                samples[name].append(seconds)
            if settle:
                time.sleep(settle)
    return samples


def _timed(fn: Callable[[], object]) -> Callable[[], float]:
    def call() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return call


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def run_bench(
    model: str | os.PathLike,
    caffemodel: str | os.PathLike | None = None,
    batches: Sequence[int] = (1, 16),
    threads: int | None = None,
    runtimes: Sequence[str] = RUNTIMES,
    repeat: int = 20,
    warmup: int = 2,
    gemm_size: int = DEFAULT_GEMM_SIZE,
    input_shape: str | None = None,
    settle: float = 0.1,
    progress: Callable[[str], None] | None = None,
    compare: dict[str, str] | None = None,
) -> dict:
    """Benchmark ``runtimes`` on one model; see the module docstring. Returns the report as a dict.

    ``compare``: label → another ONNX file of the same net (e.g. ``ninport quantize``'s INT8 copy), run by the
    ONNX runtimes among ``runtimes`` in the same interleaved rounds, reported as ``runtime [label]``.
    """
    threads = threads or os.cpu_count() or 1
    check_runtimes(runtimes)
    for label, path in (compare or {}).items():
        if not os.path.exists(path):
            raise NinportError(f"--compare {label}={path}: no such file")
    if not batches or any(b < 1 for b in batches):
        raise NinportError(f"batch sizes must be positive, got {list(batches)}")
    if repeat < 1:
        raise NinportError(f"--repeat must be at least 1, got {repeat}")
    with tempfile.TemporaryDirectory(prefix="ninport-bench-") as workdir:
        bench_model = prepare_model(model, caffemodel, workdir, input_shape=input_shape)
        report = bench_prepared(bench_model, batches=batches, threads=threads, runtimes=runtimes, repeat=repeat,
                                warmup=warmup, gemm_size=gemm_size, settle=settle, progress=progress,
                                compare=compare)
    report["model"] = os.fspath(model)
    report["caffemodel"] = os.fspath(caffemodel) if caffemodel else None
    return report


def bench_prepared(
    bench_model: BenchModel,
    batches: Sequence[int] = (1, 16),
    threads: int | None = None,
    runtimes: Sequence[str] = RUNTIMES,
    repeat: int = 20,
    warmup: int = 2,
    gemm_size: int = DEFAULT_GEMM_SIZE,
    settle: float = 0.1,
    progress: Callable[[str], None] | None = None,
    compare: dict[str, str] | None = None,
) -> dict:
    """``run_bench`` on a model already prepared (e.g. the files ``ninport convert`` wrote)."""
    threads = threads or os.cpu_count() or 1
    check_runtimes(runtimes)
    say = progress or (lambda _msg: None)
    runners: dict[str, Runner] = {}
    skipped: dict[str, str] = {}
    plan = [(spec, spec, bench_model) for spec in runtimes]
    notes = list(bench_model.notes)
    if compare:
        notes.append("max rel diff of a --compare model is on seeded N(0,1) inputs, which may lie outside an INT8 "
                     "copy's calibrated ranges; `ninport quantize` reports agreement on calibrated inputs")
    for label, path in (compare or {}).items():
        other = compare_model(bench_model, path)
        plan += [(f"{spec} [{label}]", spec, other) for spec in runtimes
                 if spec.partition(":")[0] in COMPARE_RUNTIMES]
    for name, spec, model in plan:
        try:
            runners[name] = make_runner(spec, model, threads)
        except RuntimeUnavailableError as exc:
            skipped[name] = str(exc)
        except Exception as exc:  # a runtime that cannot load this model is reported, not fatal
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            skipped[name] = f"cannot load the model: {first}"
    if not runners:
        raise RuntimeUnavailableError(f"no runtime could run the model: {skipped}")
    gemm = GemmPeak(threads, gemm_size)
    try:
        results, peaks = _measure(bench_model, runners, gemm, batches, repeat, warmup, settle, say)
    finally:
        gemm.close()
    return {
        "model": bench_model.onnx_path,
        "caffemodel": bench_model.caffemodel,
        "threads": threads,
        "repeat": repeat,
        "settle_s": settle,
        "flops_per_image": bench_model.flops_per_image,
        "machine": machine_info(),
        "sgemm": {"n": gemm_size, "flops": gemm.flops, "blas": gemm.info, "by_batch": peaks},
        "results": results,
        "skipped": skipped,
        "notes": notes,
    }


def _measure(model: BenchModel, runners: dict[str, Runner], gemm: GemmPeak, batches, repeat, warmup, settle,
             say) -> tuple[list[dict], dict]:
    from ninport.parity import DEFAULT_RTOL, tolerance

    rng = np.random.default_rng(0)
    results: list[dict] = []
    peaks: dict[str, dict] = {}
    truth = _Truth(model) if model.module_factory is not None else None
    for batch in batches:
        x = rng.standard_normal((batch, *model.item_shape), dtype=np.float32)
        # Each runtime's distance from the float64 torch forward, beside the float32 module's own (the floor);
        # without a torch module (an .onnx alone), from the first runtime's output, with no floor.
        reference, floor = truth.outputs(x) if truth is not None else (None, None)
        diffs: dict[str, float] = {}
        for name, runner in runners.items():
            runner.prepare(batch)
            out = runner.run(x)
            if reference is None:
                reference = out
            diffs[name] = _rel_diff(reference, out)
        say(f"batch {batch}: {repeat} interleaved rounds of {', '.join([GEMM, *runners])}")
        participants = {GEMM: gemm}
        participants.update({name: _timed(lambda r=runner, x=x: r.run(x)) for name, runner in runners.items()})
        samples = interleave(participants, repeat, warmup, settle)
        gemm_p50 = float(np.median(samples[GEMM]))
        peak = gemm.flops / gemm_p50 / 1e9
        peaks[str(batch)] = {"p50_gflops": peak, "best_gflops": gemm.flops / min(samples[GEMM]) / 1e9}
        for name in runners:
            stats = percentiles(samples[name])
            median = stats["p50_ms"] / 1e3
            gflops = model.flops_per_image * batch / median / 1e9
            results.append({
                "runtime": name,
                "batch": batch,
                **stats,
                "images_per_s": batch / median,
                "gflops": gflops,
                "share_of_peak": gflops / peak,
                "max_rel_diff": diffs[name],
                "floor": floor,
                "parity_ok": None if floor is None else bool(diffs[name] <= tolerance(floor, DEFAULT_RTOL)),
                "reference": "float64 torch" if truth is not None else next(iter(runners)),
            })
    return results, peaks


def format_report(report: dict) -> str:
    """The report as a text table per batch size, with ratios to the first runtime."""
    lines = [
        f"model: {report['model']}" + (f" + {report['caffemodel']}" if report["caffemodel"] else ""),
        f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; threads: {report['threads']}; "
        f"{report['flops_per_image'] / 1e9:.3f} GFLOP per image; {report['repeat']} interleaved rounds, "
        f"{report['settle_s'] * 1e3:.0f} ms pause after each call",
    ]
    blas = report["sgemm"]["blas"].get("blas") or []
    kernel = ", ".join(f"{b.get('internal_api')} {b.get('version')} {b.get('architecture')}" for b in blas)
    for batch, peak in report["sgemm"]["by_batch"].items():
        rows = [r for r in report["results"] if str(r["batch"]) == batch]
        if not rows:
            continue
        base = rows[0]
        lines.append("")
        lines.append(f"batch {batch}: SGEMM peak {peak['p50_gflops']:.1f} GFLOP/s (median; best "
                     f"{peak['best_gflops']:.1f}; n={report['sgemm']['n']}{'; ' + kernel if kernel else ''})")
        width = max(12, *(len(r["runtime"]) for r in rows))
        lines.append(f"  {'runtime':<{width}} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>8} {'GFLOP/s':>8} "
                     f"{'of peak':>8} {'vs ' + base['runtime']:>15}  {'rel diff vs ' + base['reference']:>24} "
                     f"{'floor':>8}")
        for r in rows:
            ratio = r["images_per_s"] / base["images_per_s"]
            lines.append(f"  {r['runtime']:<{width}} {r['p50_ms']:9.2f} {r['p90_ms']:9.2f} {r['p99_ms']:9.2f} "
                         f"{r['images_per_s']:8.1f} {r['gflops']:8.1f} {r['share_of_peak']:8.0%} "
                         f"{ratio:14.2f}×  {r['max_rel_diff']:24.2g} "
                         + (f"{r['floor']:8.2g}" + ("" if r["parity_ok"] else " ✗") if r.get("floor") is not None
                            else f"{'—':>8}"))
    for name, why in report["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
