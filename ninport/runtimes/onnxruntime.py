"""onnxruntime on the CPU, CUDA or TensorRT execution provider, chosen at load time and reported as it runs.

A GPU provider that cannot start is named in one line (what is missing); onnxruntime's own multi-line log
output while it tries is captured and kept off the terminal. CUDA batches go through I/O binding.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ninport.errors import NinportError, RuntimeUnavailableError
from ninport.runtimes.base import Runtime, cast_feeds, read_onnx, with_outputs

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"
_EP = {"cuda": CUDA, "tensorrt": TENSORRT, "cpu": CPU}
_SHORT = {v: k for k, v in _EP.items()}
_OPT_LEVELS = ("disable", "basic", "extended", "all")
GPU_INSTALL = "pip install ninport-gpu"


def _ort():
    import onnxruntime as ort

    # Warnings (unused initializers, fallback notes) are noise for a converted model; errors stay on.
    ort.set_default_logger_severity(3)
    return ort


# --------------------------------------------------------------------------------------------------------
# Why a GPU provider cannot start


def installed_builds() -> list[str]:
    """The onnxruntime distributions installed here (``onnxruntime``, ``onnxruntime-gpu``, ...)."""
    from importlib import metadata

    names = set()
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        if name == "onnxruntime" or (name.startswith("onnxruntime-") and name in ("onnxruntime-gpu",
                                                                               "onnxruntime-openvino",
                                                                               "onnxruntime-directml")):
            names.add(name)
    return sorted(names)


def _driver_problem() -> str | None:
    """None when the NVIDIA driver answers with at least one device, else what is wrong."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    code = lib.cuInit(0)
    if code != 0:
        return f"the NVIDIA driver does not start (cuInit error {code})"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no CUDA device"
    return None


def gpu_problem(provider: str) -> str | None:
    """None when onnxruntime can try ``provider`` (``cuda``/``tensorrt``) here, else one line saying what is missing."""
    ort = _ort()
    builds = installed_builds()
    if "onnxruntime" in builds and "onnxruntime-gpu" in builds:
        return ("both onnxruntime and onnxruntime-gpu are installed and overwrite each other's files; keep one: "
                "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu[cuda,cudnn]'")
    if _EP[provider] not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no {_EP[provider]} (the GPU install is: {GPU_INSTALL})"
    return _driver_problem()


def cuda_available() -> bool:
    """True when onnxruntime has the CUDA provider and a CUDA device answers."""
    return gpu_problem("cuda") is None


_preloaded = False


def preload_gpu_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels (onnxruntime-gpu's ``cuda``/``cudnn`` extras) before a GPU
    session, so a host with only the NVIDIA driver works. ``onnxruntime.preload_dlls`` exists from 1.21 on;
    what it cannot find is left for the session to report."""
    global _preloaded
    ort = _ort()
    if _preloaded or not hasattr(ort, "preload_dlls"):
        return
    _preloaded = True
    with capture_native_stderr(), contextlib.redirect_stdout(open(os.devnull, "w")) as devnull:
        try:
            ort.preload_dlls()
        except Exception:  # a missing library shows up when the session starts, with its name
            pass
        finally:
            devnull.close()


@contextlib.contextmanager
def capture_native_stderr():
    """Route file descriptor 2 (where onnxruntime's C++ logger writes) to a temporary file while the block
    runs; yields a list that holds the captured text afterwards."""
    captured: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to hide
        yield captured
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield captured
        finally:
            with contextlib.suppress(ValueError, OSError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", "replace"))
            captured.extend(str(w.message) for w in caught)


def _start_failure(provider: str, log: str) -> str:
    """One line from onnxruntime's log saying why ``provider`` did not start."""
    missing = re.findall(r"(lib[\w.+-]+\.so[\w.]*|[\w.+-]+\.dll)\S*: cannot open shared object file", log)
    missing += re.findall(r"Error loading \"?([^\"\s]+)\"?", log)
    if missing:
        return f"{_EP[provider]} did not start: {', '.join(dict.fromkeys(missing))} not found"
    for line in log.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if _EP[provider] in line or "Failed" in line or "error" in line.lower():
            return f"{_EP[provider]} did not start: {line[:300]}"
    return f"{_EP[provider]} did not start"


# --------------------------------------------------------------------------------------------------------
# Sessions


@dataclass
class Session:
    """An onnxruntime session and what it runs on."""

    session: object  # onnxruntime.InferenceSession
    provider: str  # "tensorrt", "cuda" or "cpu": what actually runs the graph
    threads: int
    from_cache: bool = False  # the graph came from ``optimized_cache``, already optimized

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    @property
    def device(self) -> str:
        return "cpu" if self.provider == "cpu" else "cuda"

    def run(self, feeds: dict, outputs: list[str] | None = None) -> list:
        """Run one batch; returns host arrays in the order of ``outputs`` (default: every graph output). On a
        GPU, inputs go through I/O binding (see ``run_bound``)."""
        names = list(outputs or self.output_names)
        if self.device == "cuda":
            return [v.numpy() for v in self.run_bound(feeds, names, device="cuda")]
        return self.session.run(names, feeds)

    def run_bound(self, feeds: dict, outputs: Sequence[str], device: str | None = None) -> list:
        """Run with I/O binding: each input is copied once to ``device`` (``cuda`` or ``cpu``) and every output
        is allocated there and stays there: the result is a list of ``onnxruntime.OrtValue`` (``.numpy()``
        copies one to the host). Chained GPU work and throughput runs then pay no device-to-host copies."""
        binding = self.bind(feeds, outputs, device)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()

    def bind(self, feeds: dict, outputs: Sequence[str], device: str | None = None):
        """An ``IOBinding`` with ``feeds`` copied to ``device`` and ``outputs`` allocated there; run it again and
        again with ``session.run_with_iobinding`` (the inputs stay bound, nothing is copied per run)."""
        ort = _ort()
        device = device or self.device
        binding = self.session.io_binding()
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)
            binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, device, 0)
        return binding


def make_session(
    model: str | os.PathLike | bytes,
    provider: str = "auto",
    threads: int | None = None,
    optimization: str = "all",
    optimized_cache: str | os.PathLike | None = None,
    warn: Callable[[str], None] | None = None,
    trt_options: dict | None = None,
    cuda_options: dict | None = None,
) -> Session:
    """An onnxruntime session for ``model`` (a path or the model's bytes) on the chosen provider.

    ``provider``: ``auto`` (CUDA when it starts, else the CPU), ``cuda`` or ``tensorrt`` (an error naming what
    is missing when it cannot start), or ``cpu``. ``auto`` falls back silently on the CPU build of onnxruntime
    (nothing was asked of a GPU), and with one line through ``warn`` when a GPU build is there but cannot start.
    ``optimized_cache``: a directory for optimized graphs. The first session for a model writes its optimized
    graph there; later ones (same model, level, provider, onnxruntime version and CPU) load that file with
    optimizations off. The cached graph is only valid on this machine: at level ``all`` onnxruntime bakes in
    CPU-specific layouts, hence the CPU in the key.
    """
    ort = _ort()
    warn = warn or (lambda message: print(message, file=sys.stderr))
    if provider not in ("auto", "cpu", "cuda", "tensorrt"):
        raise NinportError(f"--provider must be auto, cpu, cuda or tensorrt, got {provider!r}")
    if optimization not in _OPT_LEVELS:
        raise NinportError(f"optimization must be one of {_OPT_LEVELS}, got {optimization!r}")
    if isinstance(model, os.PathLike | str):
        model = os.fspath(model)
        if not os.path.exists(model):
            raise NinportError(f"{model}: no such file")
    wanted = "cuda" if provider == "auto" else provider
    if wanted != "cpu":
        problem = gpu_problem(wanted)
        if problem and provider != "auto":
            raise RuntimeUnavailableError(f"--provider {provider}: {problem}; use --provider auto or cpu")
        if problem:
            if installed_builds() != ["onnxruntime"]:  # a GPU build is here: say why it is not used
                warn(f"running on the CPU: {problem}")
            wanted = "cpu"
    if wanted != "cpu":
        preload_gpu_libraries()
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
    providers: list = [CPU]
    cuda = (CUDA, dict(cuda_options or {}))
    if wanted == "cuda":
        providers = [cuda, CPU]
    elif wanted == "tensorrt":
        providers = [(TENSORRT, dict(trt_options or {})), cuda, CPU]
    where = model if isinstance(model, str) else "the model"
    cached = written = None
    if optimized_cache is not None:
        cached = _cache_path(optimized_cache, model, optimization, wanted, ort.__version__)
        if os.path.exists(cached):
            model, where = cached, cached
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        else:
            written = f"{cached}.partial-{os.getpid()}"
            options.optimized_model_filepath = written
    # Only a GPU provider's start is captured: its failure is where onnxruntime prints pages; a CPU session is quiet
    # at this log level, and swapping the process's stderr would also swallow other threads' output meanwhile.
    log: list[str] = []
    try:
        with capture_native_stderr() if wanted != "cpu" else contextlib.nullcontext(log) as log:
            session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NinportError(f"{where}: onnxruntime cannot load it: {first}") from None
    finally:
        if written and os.path.exists(written):
            os.replace(written, cached)  # whole or not at all: other sessions only ever see a finished file
    active = _SHORT.get(session.get_providers()[0], "cpu")
    if wanted != "cpu" and active != wanted:
        why = _start_failure(wanted, "\n".join(log))
        if provider != "auto":
            raise RuntimeUnavailableError(f"--provider {provider}: {why}; use --provider auto or cpu")
        warn(f"running on the CPU: {why}")
    return Session(session=session, provider=active, threads=threads, from_cache=model == cached)


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
# The runtime interface


class OnnxRuntime(Runtime):
    """onnxruntime behind the ``Runtime`` interface. ``precision="fp16"`` runs a float16 copy of the graph
    (``ninport.onnx.float16``); TensorRT instead builds fp16 engines from the float32 graph. ``cuda_options`` go
    to the CUDA provider as they are (e.g. ``{"use_tf32": 0}`` for a strict float32 check)."""

    kind = "onnxruntime"

    def __init__(self, model, *, provider: str, precision: str, threads: int, extra_outputs: list[str],
                 warn: Callable[[str], None], optimization: str = "all",
                 optimized_cache: str | os.PathLike | None = None, trt_cache: str | os.PathLike | None = None,
                 cuda_options: dict | None = None):
        if precision == "bf16":
            raise NinportError("onnxruntime computes in bf16 only from a bf16 model file; load that as fp32")
        self.precision = precision
        self.extra_outputs = extra_outputs
        source = model
        if extra_outputs or (precision == "fp16" and provider != "tensorrt"):
            proto = read_onnx(model)
            if precision == "fp16" and provider != "tensorrt":
                from ninport.onnx.float16 import is_float16, to_float16

                if not is_float16(proto):
                    proto = to_float16(proto)
            if extra_outputs:
                proto = with_outputs(proto, extra_outputs)
            source = proto.SerializeToString()
        trt_options = None
        if provider == "tensorrt":
            trt_options = {"trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": trt_cache is not None}
            if trt_cache is not None:
                trt_options["trt_engine_cache_path"] = os.fspath(trt_cache)
        self.session = make_session(source, provider=provider, threads=threads, optimization=optimization,
                                    optimized_cache=optimized_cache, warn=warn, trt_options=trt_options,
                                    cuda_options=cuda_options)
        self.provider = self.session.provider
        self.threads = threads
        inputs = self.session.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.input_shapes = {i.name: list(i.shape) for i in inputs}  # symbolic dims are names (str)
        self.output_names = self.session.output_names
        self._types = {i.name: _np_type(i.type) for i in inputs}

    def version(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}, {self.provider.upper()}, {self.precision}"

    def run(self, feeds, outputs=None):
        names = list(outputs or self.output_names)
        values = self.session.run(cast_feeds(feeds, self._types), names)
        return {n: _float32(v) for n, v in zip(names, values)}

    def bind(self, feeds, outputs=None, device: str | None = None):
        """An I/O binding with inputs copied to the device once and outputs resident there (see
        ``Session.bind``); run it with ``run_bound``."""
        return self.session.bind(cast_feeds(feeds, self._types), list(outputs or self.output_names), device)

    def run_bound(self, binding) -> list:
        """Run a binding from ``bind``; the outputs stay on the device as ``OrtValue``s."""
        self.session.session.run_with_iobinding(binding)
        return binding.get_outputs()


def _np_type(ort_type: str):
    return {"tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(float)": np.float32,
            "tensor(int64)": np.int64, "tensor(int32)": np.int32}.get(ort_type)


def _float32(value: np.ndarray) -> np.ndarray:
    """float16 results as float32 (comparisons and softmax want it); everything else as it is."""
    return value.astype(np.float32) if value.dtype == np.float16 else value
