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
        return self.session.run(outputs or self.output_names, feeds)


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
