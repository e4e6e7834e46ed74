"""The runtime interface and the one entry point, ``load(kind, model, ...)``.

A runtime is loaded once per model and then run many times; ``prepare(batch)`` lets a runtime that compiles per
shape (OpenVINO) do that work before timing starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from ninport.errors import NinportError, RuntimeUnavailableError

# kind -> (module under ninport.runtimes, class name, python module it needs, install command)
_REGISTRY: dict[str, tuple[str, str, str, str]] = {
    "onnxruntime": ("onnxruntime", "OnnxRuntime", "onnxruntime", "pip install ninport"),
    "openvino": ("openvino", "OpenVino", "openvino", "pip install 'ninport[openvino]'"),
    "opencv-onnx": ("opencv", "OpenCvOnnx", "cv2", "pip install 'ninport[opencv]'"),
    "opencv-caffe": ("opencv", "OpenCvCaffe", "cv2", "pip install 'ninport[opencv]'"),
    "torch": ("torch", "TorchModule", "torch", "pip install ninport"),
}
KINDS = tuple(_REGISTRY)
# onnxruntime's execution providers by their short names; ``auto`` is CUDA when it starts, else the CPU.
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
# What the runtime computes in besides the file's own types. fp32: the file as it is (a quantized file stays
# quantized); fp16: a half-precision copy of the graph (onnxruntime) or engine (TensorRT) or OpenVINO's f16 hint;
# bf16: OpenVINO's bf16 hint (onnxruntime runs bf16 only from a bf16 file).
PRECISIONS = ("fp32", "fp16", "bf16")


def _stderr_line(message: str) -> None:
    print(message, file=sys.stderr)


class Runtime:
    """One model loaded in one runtime.

    ``run(feeds, outputs)`` maps input names to arrays and returns ``{output name: array}`` for the names asked
    (all graph outputs and extra outputs when ``outputs`` is None). ``provider`` is what actually runs the
    graph (``cpu``, ``cuda``, ``tensorrt``), not what was asked for.
    """

    kind = ""
    provider = "cpu"
    precision = "fp32"
    input_names: list[str]
    output_names: list[str]

    @property
    def name(self) -> str:
        """The label reports use: the kind, with the provider when it is not the CPU."""
        return self.kind if self.provider == "cpu" else f"{self.kind}-{self.provider}"

    def version(self) -> str:
        raise NotImplementedError

    def prepare(self, batch: int) -> None:  # noqa: B027 - most runtimes need no per-batch work
        """Get ready for inputs of this batch size (compile for the shape where the runtime wants that)."""

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - nothing to release for most runtimes
        pass


def availability(kind: str) -> str | None:
    """None when ``kind`` can be loaded here, else one line saying what is missing and how to install it."""
    if kind not in _REGISTRY:
        raise NinportError(f"unknown runtime {kind!r}; choose from {', '.join(KINDS)}")
    module, _, needs, install = _REGISTRY[kind]
    if importlib.util.find_spec(needs) is None:
        return f"{needs} is not installed; install it with {install}"
    return None


def load(
    kind: str,
    model: str | os.PathLike | bytes | object,
    *,
    provider: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    extra_outputs: Sequence[str] = (),
    warn: Callable[[str], None] | None = None,
    **options,
) -> Runtime:
    """Load ``model`` into the runtime ``kind``.

    ``model``: an ONNX file or its bytes for the ONNX runtimes; ``(prototxt, caffemodel)`` for ``opencv-caffe``;
    an ``nn.Module``, a ``.pt`` file or a function that builds the module for ``torch``.
    ``provider`` (onnxruntime only): ``auto``, ``cpu``, ``cuda`` or ``tensorrt``; an explicit GPU provider that
    cannot start is an error, ``auto`` falls back to the CPU and says why in one line through ``warn``.
    ``extra_outputs``: tensor (blob) names to return besides the graph outputs, for per-blob checks.
    ``options``: runtime-specific (onnxruntime: ``optimization``, ``optimized_cache``, ``trt_cache``).
    """
    if kind not in _REGISTRY:
        raise NinportError(f"unknown runtime {kind!r}; choose from {', '.join(KINDS)}")
    if provider not in PROVIDERS:
        raise NinportError(f"--provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    if precision not in PRECISIONS:
        raise NinportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    missing = availability(kind)
    if missing:
        raise RuntimeUnavailableError(missing)
    module_name, class_name, _, _ = _REGISTRY[kind]
    cls = getattr(importlib.import_module(f"ninport.runtimes.{module_name}"), class_name)
    return cls(model, provider=provider, precision=precision, threads=threads or os.cpu_count() or 1,
               extra_outputs=list(extra_outputs), warn=warn or _stderr_line, **options)


# --------------------------------------------------------------------------------------------------------
# Helpers the ONNX runtimes share


def read_onnx(model: str | os.PathLike | bytes):
    """The ``onnx.ModelProto`` of a path or bytes, with a one-line error for a file that is not ONNX."""
    import onnx

    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    path = os.fspath(model)
    if not os.path.exists(path):
        raise NinportError(f"{path}: no such file")
    try:
        return onnx.load(path)
    except Exception as exc:  # onnx raises protobuf's and its own errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NinportError(f"{path}: not a readable ONNX file ({first})") from None


def with_outputs(model, names: Sequence[str]):
    """A copy of ``model`` whose graph also outputs the tensors ``names`` (each once, in the order given).

    The type and shape of an added output come from shape inference; a tensor it cannot follow is declared
    float with an unknown shape.
    """
    import onnx
    from onnx import helper, shape_inference

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    wanted = [n for n in dict.fromkeys(names) if n not in have]
    if not wanted:
        return copy
    try:
        inferred = shape_inference.infer_shapes(copy)
        types = {v.name: v for v in inferred.graph.value_info}
    except Exception:  # a model shape inference cannot follow still runs; the types are then unknown
        types = {}
    produced = {out for node in copy.graph.node for out in node.output} | {i.name for i in copy.graph.input}
    unknown = [n for n in wanted if n not in produced]
    if unknown:
        raise NinportError(f"no tensor named {', '.join(map(repr, unknown))} in the ONNX graph")
    for name in wanted:
        value = types.get(name)
        if value is None:
            value = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        # (an inferred shape is kept: OpenCV's importer wants one, and a symbolic batch stays symbolic)
        copy.graph.output.append(value)
    return copy


def cast_feeds(feeds: dict[str, np.ndarray], types: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """Each feed as a contiguous array in the element type its input declares (float16 graphs take float16)."""
    out = {}
    for name, array in feeds.items():
        array = np.asarray(array)
        want = types.get(name)
        if want is not None and array.dtype != want:
            array = array.astype(want)
        out[name] = np.ascontiguousarray(array)
    return out
