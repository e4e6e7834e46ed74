"""Inference sessions: onnxruntime with the CUDA provider when there is one, the CPU otherwise.

The provider is chosen at run time and reported. Threads and the graph optimization level are set on purpose
(intra-op threads = the machine's cores, one inter-op thread, all graph optimizations), and the optimized
graph can be cached in a directory so later sessions load it instead of optimizing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass

from ninport.errors import NinportError, RuntimeUnavailableError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass
class Session:
    session: object  # onnxruntime.InferenceSession
    provider: str  # "cuda" or "cpu": what actually runs the graph
    threads: int
    from_cache: bool = False  # the graph came from ``optimized_cache``, already optimized

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict, outputs: list[str] | None = None) -> list:
        """Run one batch. On CUDA, inputs go through I/O binding (see ``run_bound``); on the CPU a plain run
        is already copy-free."""
        names = outputs or self.output_names
        if self.provider == "cuda":
            return self.run_bound(feeds, names, device="cuda")
        return self.session.run(names, feeds)

    def run_bound(self, feeds: dict, outputs: list[str], device: str = "cuda") -> list:
        """Run with I/O binding: each input is copied once from a page-locked host buffer to ``device``
        (``cuda_pinned`` staging makes that copy asynchronous-capable DMA), outputs land in host memory.

        Without binding, onnxruntime copies every input from pageable memory and synchronises per tensor; for
        ``run``/``evaluate`` batches on a GPU that copy is a large share of the time.
        """
        import numpy as np
        import onnxruntime as ort

        binding = self.session.io_binding()
        keep = []  # the OrtValues must outlive the run
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            if device == "cuda":
                staged = ort.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, "cuda_pinned", 0)
                staged.update_inplace(array)
                value = ort.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, "cuda", 0)
                value.update_inplace(staged.numpy())
                keep.append(staged)
            else:
                value = ort.OrtValue.ortvalue_from_numpy(array, device, 0)
            keep.append(value)
            binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def cuda_available() -> bool:
    """True when onnxruntime was built with CUDA (onnxruntime-gpu) and a CUDA device answers."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False
    try:
        import ctypes

        lib = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except OSError:
        return False


def make_session(
    model: str | os.PathLike | bytes,
    provider: str = "auto",
    threads: int | None = None,
    optimization: str = "all",
    optimized_cache: str | os.PathLike | None = None,
) -> Session:
    """An onnxruntime session for ``model`` (a path or the model's bytes) on the chosen provider.

    ``provider``: ``auto`` (CUDA when available, else CPU), ``cuda`` (an error without a GPU) or ``cpu``.
    ``optimized_cache``: a directory for optimized graphs. The first session for a model writes its optimized
    graph there; later ones (same model, level, provider, onnxruntime version and CPU) load that file with
    optimizations off, skipping the optimization work. The cached graph is only valid on this machine: at
    level ``all`` onnxruntime bakes in CPU-specific layouts, hence the CPU in the key.
    """
    import onnxruntime as ort

    if provider not in ("auto", "cuda", "cpu"):
        raise NinportError(f"--provider must be auto, cuda or cpu, got {provider!r}")
    if optimization not in _OPT_LEVELS:
        raise NinportError(f"optimization must be one of {_OPT_LEVELS}, got {optimization!r}")
    has_cuda = cuda_available()
    if provider == "cuda" and not has_cuda:
        why = ("onnxruntime has no CUDA execution provider (pip install 'ninport[gpu]')"
               if CUDA not in ort.get_available_providers() else "no CUDA device found")
        raise RuntimeUnavailableError(f"--provider cuda: {why}; use --provider auto or cpu")
    use_cuda = provider == "cuda" or (provider == "auto" and has_cuda)
    options = ort.SessionOptions()
    threads = threads or os.cpu_count() or 1
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    options.log_severity_level = 3
    providers = [CUDA, CPU] if use_cuda else [CPU]
    if isinstance(model, os.PathLike | str):
        model = os.fspath(model)
        if not os.path.exists(model):
            raise NinportError(f"{model}: no such file")
    where = model if isinstance(model, str) else "the model"
    cached = written = None
    if optimized_cache is not None:
        cached = _cache_path(optimized_cache, model, optimization, "cuda" if use_cuda else "cpu", ort.__version__)
        if os.path.exists(cached):
            model, where = cached, cached
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        else:
            written = f"{cached}.partial-{os.getpid()}"
            options.optimized_model_filepath = written
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NinportError(f"{where}: onnxruntime cannot load it: {first}") from None
    finally:
        if written and os.path.exists(written):
            os.replace(written, cached)  # whole or not at all: other sessions only ever see a finished file
    active = session.get_providers()[0]
    return Session(session=session, provider="cuda" if active == CUDA else "cpu", threads=threads,
                   from_cache=model == cached)


def _cache_path(directory: str | os.PathLike, model: str | bytes, optimization: str, provider: str,
                version: str) -> str:
    """Where the optimized graph of ``model`` lives in the cache directory, keyed by everything it depends on."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NinportError(f"{directory}: the optimized-graph cache must be a directory")
    os.makedirs(directory, exist_ok=True)
    if isinstance(model, str):
        stat = os.stat(model)
        source = {"path": os.path.realpath(model), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    else:
        source = {"sha256": hashlib.sha256(model).hexdigest()}
    key = json.dumps({"model": source, "level": optimization, "provider": provider, "onnxruntime": version,
                      "cpu": _cpu_name(), "machine": platform.machine()}, sort_keys=True)
    return os.path.join(directory, hashlib.sha256(key.encode()).hexdigest()[:32] + ".onnx")


def _cpu_name() -> str:
    """The CPU's model name and instruction-set flags (what onnxruntime's kernel choice depends on)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name = line.split(":", 1)[0].strip()
                if name in ("model name", "flags") and name not in found:
                    found[name] = line.split(":", 1)[1].strip()
                if len(found) == 2:
                    break
    except OSError:
        pass
    return " | ".join(found.values()) or platform.processor()


# --------------------------------------------------------------------------------------------------------
# A helper process for ``ninport convert``: it imports onnx and onnxruntime while the converter imports torch,
# then checks the written ONNX file (onnx.checker, full check) and runs it on the parity inputs while the
# converter computes the torch side and writes the .pt: two cores at work instead of one.

_WORKER_CODE = "from ninport.onnx.runtime import _check_worker_main; _check_worker_main()"


class CheckWorker:
    """The converter's side of the helper process. ``check`` sends one request, ``result`` waits for it.

    Only file paths cross the pipe (one JSON line each way); the inputs and outputs go through ``.npz``
    files in a private temporary directory.
    """

    def __init__(self) -> None:
        import subprocess
        import sys
        import tempfile
        import weakref

        self.tmpdir = tempfile.mkdtemp(prefix="ninport-check-")
        self._stderr = open(os.path.join(self.tmpdir, "stderr"), "w+")  # closed by _shutdown
        env = dict(os.environ)
        # The helper must import this very ninport, wherever it was imported from.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        # A conversion that fails before it reaches the checks drops the worker: the helper still ends.
        self._shutdown = weakref.finalize(self, _shutdown, self.proc, self._stderr, self.tmpdir)

    def check(self, model_path: str, inputs: dict[str, object], output_names: list[str], batches: list[int]) -> None:
        """Ask for a full onnx.checker check of ``model_path`` and one onnxruntime run per batch.

        ``inputs`` maps ``"{batch index}:{input name}"`` to arrays; outputs come back under
        ``"{batch index}:{output index}"``.
        """
        import json

        import numpy as np

        inputs_path = os.path.join(self.tmpdir, "inputs.npz")
        np.savez(inputs_path, **{f"i{k.replace(':', '_', 1)}": v for k, v in inputs.items()})
        request = {"model": model_path, "inputs": inputs_path, "input_keys": list(inputs),
                   "outputs": os.path.join(self.tmpdir, "outputs.npz"), "output_names": output_names,
                   "batches": len(batches)}
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError:  # the helper is gone; result() says so and the caller checks in-process
            pass

    def result(self) -> dict:
        """The helper's answer: ``{"ok": True, "outputs": {key: array}}`` or ``{"error": kind, "message": ...}``;
        ``{"error": "crashed", ...}`` when the helper itself failed (the caller then checks in-process)."""
        import json

        import numpy as np

        line = self.proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            tail = self._stderr.read().strip().splitlines()
            return {"error": "crashed", "message": tail[-1] if tail else "the check process stopped"}
        reply = json.loads(line)
        if reply.get("ok"):
            with np.load(reply["outputs"]) as data:
                reply["outputs"] = {key[1:].replace("_", ":", 1): data[key] for key in data.files}
        return reply

    def close(self) -> None:
        self._shutdown()


def _shutdown(proc, stderr, tmpdir: str) -> None:
    """End the helper (closing its stdin ends its loop), then remove its files."""
    import shutil
    import subprocess

    if proc.poll() is None:
        try:
            proc.stdin.close()  # ends the helper's request loop
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, stderr):
        if stream is not None and not stream.closed:
            try:
                stream.close()
            except OSError:  # unflushed bytes for a helper that died
                pass
    shutil.rmtree(tmpdir, ignore_errors=True)


def start_check_worker() -> CheckWorker | None:
    """Start the helper process now (before torch is imported), or None where a helper cannot run."""
    if os.environ.get("NINPORT_CHECK_IN_PROCESS"):
        return None
    try:
        return CheckWorker()
    except OSError:
        return None


def _check_worker_main() -> None:
    """The helper process: import everything first, then answer requests until stdin closes."""
    import json
    import sys

    import numpy as np
    import onnx
    import onnx.checker
    import onnxruntime  # noqa: F401 - imported now, while the converter imports torch

    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = _check_request(request, np, onnx)
        except Exception as exc:  # a bug or a broken runtime: the converter falls back to checking in-process
            reply = {"error": "crashed", "message": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    # Nothing is left to write or clean up here, and tearing down onnxruntime and numpy takes ~0.15 s that
    # the converter would spend waiting for this process to end.
    os._exit(0)


def _check_request(request: dict, np, onnx) -> dict:
    try:
        onnx.checker.check_model(request["model"], full_check=True)
    except onnx.checker.ValidationError as exc:
        return {"error": "checker", "message": str(exc).splitlines()[0]}
    try:
        session = make_session(request["model"], provider="cpu", threads=1).session  # torch has the other core
    except NinportError as exc:
        return {"error": "ninport", "message": str(exc)}
    outputs = {}
    with np.load(request["inputs"]) as data:
        arrays = {key: data[f"i{key.replace(':', '_', 1)}"] for key in request["input_keys"]}
    for index in range(request["batches"]):
        feeds = {key.split(":", 1)[1]: value for key, value in arrays.items() if key.split(":", 1)[0] == str(index)}
        for j, value in enumerate(session.run(request["output_names"], feeds)):
            outputs[f"o{index}_{j}"] = value
    np.savez(request["outputs"], **outputs)
    return {"ok": True, "outputs": request["outputs"]}
