"""``ninport verify``: one input through the torch module, the ONNX model in each runtime, and a reference
(OpenCV's Caffe importer or a pycaffe ``.npz``), compared blob by blob so the first layer where they part
is named.

Every float32 result is judged against a float64 forward of the torch module on the same input, relative to
the float32 module's own distance there (``ninport.parity``): the reference at every Caffe blob it holds (the
value pycaffe's ``net.blobs`` shows after ``forward()``, shared memory included), every ONNX runtime at every
blob version, on a verification copy of the ONNX model whose graph outputs include the blob tensors. The
user's files are only read.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ninport.caffe.aliasing import in_place_pairs, shares_memory
from ninport.errors import NinportError, ParseError, RuntimeUnavailableError
from ninport.onnx.float16 import FP16_RTOL
from ninport.parity import (
    DEFAULT_RTOL,
    NOISE_FACTOR,
    compare,
    distance,
    float64_module,
    forward_truth,
    judge,
    judge_floor,
)

RUNTIMES = ("onnxruntime", "onnxruntime-cuda", "openvino", "opencv-onnx")
# The seeded input keeps the net's item shape but at most this batch: two items still catch a layer that
# mixes the batch axis, and a train_val net's batch (NiN's is 89) would hold gigabytes of blobs per backend.
SEEDED_MAX_BATCH = 2
INSTALL = {
    "opencv": "pip install 'ninport[opencv]'",
    "opencv-onnx": "pip install 'ninport[opencv]'",
    "openvino": "pip install 'ninport[openvino]'",
    "onnxruntime": "pip install onnxruntime",
    "onnxruntime-cuda": "pip install ninport-gpu",
}


# --------------------------------------------------------------------------------------------------------
# The report


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass
class Comparison:
    """One blob on one backend against the float64 truth: its relative distance ``rel``, the float32 torch
    module's own distance there (``floor``) and the tolerance they make (``ninport.parity``)."""

    blob: str
    layer: str
    backend: str
    against: str
    max_abs: float
    rel: float
    cosine: float
    tolerance: float
    argmax: tuple[int, int] | None = None  # (items whose top class agrees, items) for a classifier output
    chain: tuple[str, ...] = ()  # for a Caffe blob's final value: every layer that wrote it (in-place chain)
    floor: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rel <= self.tolerance  # False for NaN

    def as_dict(self) -> dict:
        return {
            "blob": self.blob,
            "layer": self.layer,
            "backend": self.backend,
            "against": self.against,
            "max_abs": _finite_or_none(self.max_abs),
            "rel": _finite_or_none(self.rel),
            "floor": _finite_or_none(self.floor),
            "tolerance": _finite_or_none(self.tolerance),
            "cosine": _finite_or_none(self.cosine),
        }


@dataclass
class BackendStatus:
    """Whether a backend ran: ``ran``, ``unavailable`` (not installed, no device) or ``failed`` (its own error)."""

    name: str
    state: str
    detail: str = ""
    required: bool = False  # asked for by name: failing to run then fails the verdict

    @property
    def blocking(self) -> bool:
        return self.required and self.state != "ran"


@dataclass
class VerifyReport:
    net_name: str
    tolerance: float
    input: str
    reference: str | None
    rows: list[Comparison] = field(default_factory=list)
    backends: list[BackendStatus] = field(default_factory=list)
    fp16: bool = False
    fp16_tolerance: float = FP16_RTOL
    notes: list[str] = field(default_factory=list)

    @property
    def first_divergence(self) -> Comparison | None:
        return next((row for row in self.rows if not row.ok), None)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and self.first_divergence is None and not any(b.blocking for b in self.backends)

    def as_dict(self) -> dict:
        first = self.first_divergence
        return {
            "ok": self.ok,
            "tolerance": self.tolerance,
            "noise_factor": NOISE_FACTOR,
            "input": self.input,
            "reference": self.reference,
            "notes": list(self.notes),
            "first_divergence": None if first is None else
            {"blob": first.blob, "layer": first.layer, "backend": first.backend},
            "blobs": [row.as_dict() for row in self.rows],
        }


# --------------------------------------------------------------------------------------------------------
# Comparing two arrays


def compare_blobs(reference: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    """Max abs difference, that over the reference's largest magnitude, and the cosine similarity
    (``ninport.parity.compare``)."""
    return compare(reference, other)


def argmax_agreement(reference: np.ndarray, other: np.ndarray) -> tuple[int, int] | None:
    """For a classifier output (N×C or N×C×1×1, C > 1): how many items have the same top class."""
    ref = np.asarray(reference)
    got = np.asarray(other)
    if ref.ndim < 2 or ref.shape[1] < 2 or any(d != 1 for d in ref.shape[2:]) or got.size != ref.size:
        return None
    ref = ref.reshape(ref.shape[0], -1)
    got = got.reshape(ref.shape)
    return int(np.sum(ref.argmax(1) == got.argmax(1))), int(ref.shape[0])


# --------------------------------------------------------------------------------------------------------
# Inputs


def _read_npz(path: str, what: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise ParseError(f"{path}: no such file ({what})")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except Exception as exc:
        raise ParseError(f"{path}: not a .npz of arrays ({what}): {exc}") from None


def read_input(path: str, input_names: list[str], input_shapes: dict[str, tuple[int, ...]],
               preprocess_metadata: dict[str, str], warn: Callable[[str], None]) -> dict[str, np.ndarray]:
    """``--input``: a .npy tensor (C×H×W or N×C×H×W), a .npz keyed by input name, or an image file that gets
    Caffe's test-time preprocessing (as ``ninport run`` does)."""
    from ninport.run import IMAGE_EXTENSIONS, make_preprocess

    lower = path.lower()
    if lower.endswith(".npz"):
        arrays = _read_npz(path, "--input")
        missing = [n for n in input_names if n not in arrays]
        if missing:
            raise ParseError(f"{path}: no array for input(s) {missing}; it has {sorted(arrays)}")
        return {n: arrays[n].astype(np.float32, copy=False) for n in input_names}
    if len(input_names) != 1:
        raise NinportError(f"the net has inputs {input_names}: give --input as a .npz keyed by those names")
    name = input_names[0]
    if not os.path.exists(path):
        raise ParseError(f"{path}: no such file (--input)")
    if lower.endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ParseError(f"{path}: not a .npy array ({exc})") from None
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == len(input_shapes[name]) - 1:
            array = array[None]
        return {name: array}
    if lower.endswith(IMAGE_EXTENSIONS):
        shape = input_shapes[name]
        if len(shape) != 4:
            raise NinportError(f"input {name!r} has shape {list(shape)}; an image needs an N,C,H,W input")
        pre = make_preprocess(shape, preprocess_metadata, warn=warn)
        return {name: pre.image(path)[None]}
    raise ParseError(f"{path}: --input must be a .npy/.npz tensor or an image ({', '.join(IMAGE_EXTENSIONS)})")


# --------------------------------------------------------------------------------------------------------
# The reference


def opencv_caveats(net) -> list[str]:
    """Layers OpenCV's Caffe importer is known to compute differently from Caffe, so a divergence there may
    be OpenCV's; a pycaffe .npz is then the better reference."""
    notes = []
    for layer in net.layers:
        p = layer.param
        what = None
        if layer.type == "LRN" and abs(p.lrn_param.k - 1.0) > 0:
            what = f"k={p.lrn_param.k:g} (OpenCV uses k=1)"
        elif layer.type == "Log" and (p.log_param.base != -1 or p.log_param.scale != 1 or p.log_param.shift != 0):
            what = "base/scale/shift (OpenCV ignores them)"
        elif layer.type == "Swish" and p.swish_param.beta != 1:
            what = f"beta={p.swish_param.beta:g} (OpenCV ignores it)"
        elif layer.type == "Deconvolution" and any(d != 1 for d in p.convolution_param.dilation):
            what = "dilation (OpenCV gets the output shape wrong)"
        if what:
            notes.append(f"reference opencv: layer {layer.name!r} ({layer.type}) has {what}; a divergence there "
                         "may be OpenCV's: prefer --reference REF.npz from pycaffe")
    return notes


def _opencv_layer_map(cvnet, layers) -> dict[str, str]:
    """Caffe layer name → the name OpenCV gives it. OpenCV keeps Caffe's layer order (one OpenCV layer per
    Caffe layer) but may rename a layer after its top, so layers are paired by position and type, or else
    by name."""
    cv_names = list(cvnet.getLayerNames())
    cv_types = [cvnet.getLayer(n).type for n in cv_names]
    aliases = {"ConvolutionDepthwise": "Convolution"}
    if len(cv_names) == len(layers) and all(aliases.get(x.type, x.type) == t for x, t in zip(layers, cv_types)):
        return {layer.name: cv for layer, cv in zip(layers, cv_names)}
    known = set(cv_names)
    out = {}
    for layer in layers:
        for candidate in (layer.name, *layer.tops):
            if candidate in known and candidate not in out.values():
                out[layer.name] = candidate
                break
    return out


def opencv_blobs(net, caffemodel: str, feeds: dict[str, np.ndarray],
                 prototxt: str | None = None) -> tuple[dict[str, np.ndarray], str | None]:
    """Every Caffe blob (its final value) as OpenCV's Caffe importer computes it, keyed by Caffe name, and
    why the user's own file could not be used (None when it was).

    OpenCV reads the user's ``prototxt`` as given, with the user's caffemodel, which it matches by layer name
    itself; only when it cannot (a fork's fields, Data layers it has no layer for, a TRAIN phase) does it read
    the normalized net as V2 text (phase rules applied, an Input layer, in-place versions named apart).
    """
    import cv2

    weights = np.fromfile(caffemodel, np.uint8)
    why = "no prototxt file given"
    if prototxt is not None:
        try:
            return _opencv_forward(cv2.dnn.readNetFromCaffe(prototxt, caffemodel), net, feeds), None
        except (cv2.error, NinportError) as exc:
            why = _one_line(str(exc), 200)
    try:
        cvnet = cv2.dnn.readNetFromCaffe(np.frombuffer(net.to_prototxt().encode(), np.uint8), weights)
        return _opencv_forward(cvnet, net, feeds), why
    except cv2.error as exc:
        raise NinportError(f"OpenCV cannot run the net: {_one_line(str(exc))}") from None


def _opencv_forward(cvnet, net, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    layers = [layer for layer in net.layers if layer.type != "Input"]
    # OpenCV's Winograd 3×3 convolution trades float32 accuracy for speed (1.6e-5 relative on a ResNet-style
    # block where im2col+GEMM, Caffe's own way, lands at 3e-7): as a reference, it convolves as Caffe does.
    if hasattr(cvnet, "enableWinograd"):
        cvnet.enableWinograd(False)
    for name, array in feeds.items():
        cvnet.setInput(np.ascontiguousarray(array, dtype=np.float32), name)
    names = _opencv_layer_map(cvnet, layers)
    wanted = [layer for layer in layers
              if layer.name in names and any(t == c for t, c in zip(layer.tops, layer.caffe_tops))]
    if not wanted:
        raise NinportError("OpenCV exposes none of the net's blobs")
    outputs = cvnet.forwardAndRetrieve([names[layer.name] for layer in wanted])
    blobs: dict[str, np.ndarray] = {}
    for layer, values in zip(wanted, outputs):
        for top, caffe_top, value in zip(layer.tops, layer.caffe_tops, values):
            if top == caffe_top:
                blobs[top] = np.asarray(value)
    return blobs


def _one_line(message: str, limit: int = 400) -> str:
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_text(exc: BaseException, limit: int = 400) -> str:
    return _one_line(str(exc), limit) or type(exc).__name__


# --------------------------------------------------------------------------------------------------------
# ONNX runtimes


def blob_tensors(model, blobs: Sequence[str]) -> dict[str, str]:
    """Blob name → the graph tensor holding its value: the tensor of the same name, or the one the
    ``blob_aliases`` metadata points to (a blob whose Identity node the export removed)."""
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        aliases = json.loads(meta.get("blob_aliases", "{}"))
    except json.JSONDecodeError:
        aliases = {}
    produced = {o for node in model.graph.node for o in node.output} | {i.name for i in model.graph.input}
    out = {}
    for blob in blobs:
        tensor = blob if blob in produced else aliases.get(blob)
        if tensor in produced:
            out[blob] = tensor
    return out


def verification_copy(model, tensors: Sequence[str]):
    """A copy of ``model`` whose graph outputs also list ``tensors`` (with their inferred types)."""
    import onnx
    from onnx import TensorProto, helper

    from ninport.onnx.float16 import is_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy)
        types = {vi.name: vi for vi in inferred.graph.value_info}
    except Exception:  # a model over 2 GB or one shape inference cannot follow: declare untyped-shape outputs
        types = {}
    fallback = TensorProto.FLOAT16 if is_float16(model) else TensorProto.FLOAT
    have = {o.name for o in copy.graph.output} | {i.name for i in copy.graph.input}
    for name in tensors:
        if name in have:
            continue
        have.add(name)
        copy.graph.output.append(types.get(name) or helper.make_tensor_value_info(name, fallback, None))
    return copy


class _Runtime:
    """One runtime of ``ninport.runtimes`` for verify: ``load`` a model file, then ``run`` feeds → the named
    tensors."""

    def __init__(self, name: str, kind: str, provider: str = "cpu"):
        self.name, self.kind, self.provider = name, kind, provider
        self.loaded = None

    def version(self) -> str:
        return self.loaded.version()

    def load(self, path: str) -> None:
        from ninport import runtimes

        # An explicit provider: a GPU that cannot start is this runtime's failure, not a silent CPU run.
        self.loaded = runtimes.load(self.kind, path, provider=self.provider)

    def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        return self.loaded.run(feeds, names)


_KINDS = {"onnxruntime": ("onnxruntime", "cpu"), "onnxruntime-cuda": ("onnxruntime", "cuda"),
          "openvino": ("openvino", "cpu"), "opencv-onnx": ("opencv-onnx", "cpu")}


def _make_runtime(name: str) -> tuple[_Runtime | None, str]:
    """The runtime, or None and why it is unavailable (with the install command)."""
    from ninport import runtimes

    if name not in _KINDS:
        raise NinportError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    kind, provider = _KINDS[name]
    missing = runtimes.availability(kind)
    if missing:
        return None, missing.split("; install it with")[0] + f"; install it with {INSTALL[name]}"
    if provider != "cpu":
        from ninport.runtimes.onnxruntime import gpu_problem

        problem = gpu_problem(provider)
        if problem:
            return None, problem
    return _Runtime(name, kind, provider), ""


def parse_runtimes(runtimes: str | Sequence[str] | None) -> tuple[list[str], bool]:
    """The runtimes to run and whether they were named explicitly (``None`` = all, each optional)."""
    if runtimes is None:
        return list(RUNTIMES), False
    names = [r.strip() for r in (runtimes.split(",") if isinstance(runtimes, str) else runtimes) if r.strip()]
    if names in (["none"], []):
        return [], True
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown:
        raise NinportError(f"unknown runtime(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    return list(dict.fromkeys(names)), True


# --------------------------------------------------------------------------------------------------------
# Putting it together


@dataclass
class _BlobInfo:
    """Where a blob version sits: its position in execution order, the layer that wrote it, and for a
    Caffe blob's final value the in-place chain that led to it."""

    position: tuple[int, int]
    layer: str
    caffe_name: str
    final: bool
    chain: tuple[str, ...]


def _blob_infos(net) -> dict[str, _BlobInfo]:
    infos: dict[str, _BlobInfo] = {}
    chains: dict[str, list[str]] = {}  # Caffe name → layers that wrote it, in order
    for index, layer in enumerate(net.layers):
        for top_index, (top, caffe_top) in enumerate(zip(layer.tops, layer.caffe_tops)):
            chain = chains.setdefault(caffe_top, [])
            chain.append(layer.name)
            infos[top] = _BlobInfo((index, top_index), layer.name, caffe_top, top == caffe_top, tuple(chain))
    return infos


def _reference_kind(reference: str | None) -> tuple[str | None, bool]:
    """("opencv" | "npz" | None, named explicitly)."""
    if reference is None or str(reference).lower() == "none":
        return None, True
    if reference == "auto":
        try:
            import cv2  # noqa: F401
        except ImportError:
            return None, False
        return "opencv", False
    if reference == "opencv":
        return "opencv", True
    if str(reference).lower().endswith(".npz"):
        return "npz", True
    raise NinportError(f"--reference must be opencv, none or a .npz of Caffe blobs, got {reference!r}")


def verify(
    prototxt: str | os.PathLike,
    caffemodel: str | os.PathLike,
    input: str | os.PathLike | np.ndarray | dict | None = None,  # noqa: A002  (the CLI's --input)
    reference: str | os.PathLike | None = "auto",
    onnx_path: str | os.PathLike | None = None,
    runtimes: str | Sequence[str] | None = None,
    rtol: float = DEFAULT_RTOL,
    *,
    input_shape: str | Sequence[int] | dict | None = None,
    phase: str = "TEST",
    caffe_proto: str | os.PathLike | None = None,
    fp16: bool = False,
    fp16_rtol: float = FP16_RTOL,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    warn: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> VerifyReport:
    """Run one input through every backend and compare every blob (see the module docstring).

    ``input``: a path (``.npy``, ``.npz`` keyed by input name, or an image), an array, or a dict of arrays.
    ``reference``: ``"auto"`` (OpenCV when installed, else none), ``"opencv"``, a ``.npz`` of blobs keyed by
    Caffe blob name (pycaffe's ``{k: v.data for k, v in net.blobs.items()}``; its input blobs are used as the
    input when ``input`` is not given), or ``None``. ``runtimes``: names from ``RUNTIMES`` (``None`` = all of
    them, a missing one then reported unavailable instead of raising). ``fp16``: run the runtimes on a
    float16 copy of the ONNX model, judged with ``fp16_rtol`` against the float32 torch module.
    """
    import torch

    from ninport.caffe.load import attach_weights, read_net
    from ninport.caffe.shapes import infer_shapes
    from ninport.torch.build import build_module
    from ninport.torch.registry import preflight

    say = progress or (lambda _msg: None)
    prototxt, caffemodel = os.fspath(prototxt), os.fspath(caffemodel)
    if not rtol > 0 or not fp16_rtol > 0:
        raise NinportError("tolerances must be positive")
    runtime_names, runtimes_named = parse_runtimes(runtimes)
    if onnx_path is not None and not os.path.exists(onnx_path):
        raise ParseError(f"{os.fspath(onnx_path)}: no such file (--onnx)")
    ref_kind, ref_named = _reference_kind(None if reference is None else os.fspath(reference))
    if ref_kind == "opencv" and ref_named:
        try:
            import cv2  # noqa: F401
        except ImportError:
            raise RuntimeUnavailableError(f"--reference opencv: OpenCV is not installed; install it with "
                                          f"{INSTALL['opencv']}") from None
    if runtimes_named:
        for name in runtime_names:
            runner, why = _make_runtime(name)
            if runner is None and name != "onnxruntime-cuda":
                raise RuntimeUnavailableError(f"runtime {name}: {why}")
    ref_blobs: dict[str, np.ndarray] = {}
    ref_label = None
    if ref_kind == "npz":
        ref_label = os.fspath(reference)
        ref_blobs = _read_npz(ref_label, "--reference")

    # The net, at the shape of the input when one is given.
    net = read_net(prototxt, phase=phase, input_shape=input_shape, caffe_proto=caffe_proto)
    preflight(net)
    input_names = list(net.inputs)
    feeds: dict[str, np.ndarray] | None = None
    if isinstance(input, np.ndarray | dict):
        arrays = input if isinstance(input, dict) else {input_names[0]: input} if len(input_names) == 1 else None
        if arrays is None or any(n not in arrays for n in input_names):
            raise NinportError(f"the net has inputs {input_names}: give a dict of arrays keyed by those names")
        feeds = {n: np.asarray(arrays[n], dtype=np.float32) for n in input_names}
        feeds = {n: a[None] if a.ndim == len(net.inputs[n]) - 1 else a for n, a in feeds.items()}
        input_desc = "arrays given by the caller"
    elif input is not None:
        feeds = read_input(os.fspath(input), input_names, dict(net.inputs), _preprocess_metadata(net), warn)
        input_desc = os.fspath(input)
    elif ref_kind == "npz":
        missing = [n for n in input_names if n not in ref_blobs]
        if missing:
            raise NinportError(f"{ref_label} holds no blob for the net's input(s) {missing}, so the input its blobs "
                               "were computed from is unknown: give that input with --input")
        feeds = {n: ref_blobs[n].astype(np.float32, copy=False) for n in input_names}
        input_desc = f"the input blob(s) of {ref_label}"
    if feeds is not None:
        if any(tuple(feeds[n].shape) != tuple(net.inputs[n]) for n in input_names):
            net = read_net(prototxt, phase=phase, input_shape={n: tuple(feeds[n].shape) for n in input_names},
                           caffe_proto=caffe_proto)
        if input is not None and ref_blobs:
            for n in input_names:
                if n in ref_blobs and not (ref_blobs[n].shape == feeds[n].shape and np.array_equal(ref_blobs[n],
                                                                                                   feeds[n])):
                    raise NinportError(f"--input differs from blob {n!r} of {ref_label}, which is the input the "
                                       "reference was computed from; leave out --input to use it")
    elif input_shape is None:
        batches = {shape[0] for shape in net.inputs.values() if shape}
        if len(batches) == 1 and batches.pop() > SEEDED_MAX_BATCH:
            net = read_net(prototxt, phase=phase, input_shape={n: (SEEDED_MAX_BATCH, *s[1:])
                                                               for n, s in net.inputs.items()},
                           caffe_proto=caffe_proto)
    shapes = infer_shapes(net)
    attach_weights(net, caffemodel, shapes, caffe_proto=caffe_proto)
    module = build_module(net, shapes).eval()
    if feeds is None:
        feeds = {n: t.numpy() for n, t in zip(module.input_names, module.example_inputs(seed=seed))}
        shape_text = "; ".join(f"{n} {'×'.join(map(str, a.shape))}" for n, a in feeds.items())
        input_desc = f"seeded N(0,1) {shape_text} (seed {seed})"

    report = VerifyReport(net_name=net.name, tolerance=rtol, input=input_desc, reference=None,
                          fp16=fp16, fp16_tolerance=fp16_rtol)
    infos = _blob_infos(net)
    versions = [top for _, _, tops in module.plan for top in tops]
    outputs = set(module.output_names)
    keyed: list[tuple[tuple, Comparison]] = []
    detection_layers = {layer.name for layer in net.layers if layer.type == "DetectionOutput"}

    def canonical(blob: str, array: np.ndarray) -> np.ndarray:
        """A DetectionOutput top is a set of rows: compared in one canonical order (ninport.caffe.ssd)."""
        if infos[blob].layer in detection_layers:
            from ninport.caffe.ssd import detection_rows

            return detection_rows(array)
        return array
    say("torch")
    inputs = [np.ascontiguousarray(feeds[n]) for n in module.input_names]
    with torch.no_grad():
        torch_blobs = module.forward_blobs(*[torch.from_numpy(x) for x in inputs])
    torch_blobs = {k: v.detach().numpy() for k, v in torch_blobs.items()}
    report.backends.append(BackendStatus("torch", "ran", "float32, judged against the same module in float64"))
    say("torch float64")
    try:
        truth = forward_truth(module, inputs, blobs=True, module64=float64_module(module))
    except (RuntimeError, TypeError, ValueError) as exc:  # a layer with no float64 path: no floor to judge by
        report.notes.append(f"the float64 forward failed ({_error_text(exc, 200)}): every blob is judged against "
                            "the float32 torch module, with --rtol alone")
        truth = dict(torch_blobs)
    floors = {blob: distance(canonical(blob, truth[blob]), canonical(blob, torch_blobs[blob]))[1]
              for blob in versions}

    def add(blob: str, backend: str, order: int, got: np.ndarray, tolerance: float, label: str | None = None,
            at: str | None = None) -> None:
        """``got`` for blob version ``blob`` against the truth; ``label``/``at``: the Caffe name a reference row
        shows and the version whose place in the net it takes (a shared blob's last write)."""
        info = infos[at or blob]
        want, got = canonical(at or blob, truth[blob]), canonical(at or blob, got)
        if backend == "torch":
            verdict = judge_floor(want, got, tolerance, cosine=True)
        else:
            verdict = judge(want, floors[blob], got, tolerance, cosine=True)
        argmax = argmax_agreement(want, got) if blob in outputs else None
        final = info.final if at is None else infos[at].final
        keyed.append(((info.position, order), Comparison(
            blob=label or blob, layer=info.layer, backend=backend, against="float64", max_abs=verdict.max_abs,
            rel=verdict.rel, cosine=verdict.cosine, tolerance=verdict.tolerance, argmax=argmax,
            chain=info.chain if final else (info.layer,), floor=verdict.floor)))

    for blob in versions:
        add(blob, "torch", 0, torch_blobs[blob], rtol)

    # The reference, at each Caffe blob it holds.
    expected: dict[str, str] = {}  # Caffe name → the blob version whose value the reference holds there
    if ref_kind == "opencv":
        ref_label = "opencv"
        report.notes.extend(opencv_caveats(net))
        say("reference opencv")
        own_file = phase == "TEST" and caffe_proto is None and not net.fork_fields
        try:
            import cv2

            ref_blobs, why = opencv_blobs(net, caffemodel, feeds, prototxt if own_file else None)
            source = prototxt if why is None else "ninport's normalized copy of the prototxt"
            if why is not None:
                reason = why if own_file else f"phase {phase}" if phase != "TEST" else "a fork's fields"
                report.notes.append(f"reference opencv read ninport's normalized copy of {prototxt}: OpenCV cannot "
                                    f"read the file as given ({reason})")
            report.backends.append(BackendStatus("opencv", "ran", f"reference: OpenCV {cv2.__version__} Caffe "
                                                 f"importer reading {source}", ref_named))
        except NinportError as exc:
            report.backends.append(BackendStatus("opencv", "failed", str(exc), ref_named))
            ref_blobs = {}
        # OpenCV keeps each layer's own output: it does not share a Split's memory with its bottom.
        expected = {info.caffe_name: blob for blob, info in infos.items() if info.final}
    elif ref_kind == "npz":
        report.backends.append(BackendStatus("pycaffe", "ran", f"reference: {ref_label}, blobs keyed by Caffe "
                                             "name as pycaffe's net.blobs holds them after forward()", True))
        expected = pycaffe_versions(net)
        matched = [b for b in ref_blobs if b in expected and b not in input_names]
        ignored = [b for b in ref_blobs if b not in expected and b not in input_names]
        if not matched:
            raise NinportError(f"{ref_label} holds none of the net's blobs (it has {sorted(ref_blobs)[:8]}…); "
                               "its keys must be Caffe blob names")
        if ignored:
            report.notes.append(f"{len(ignored)} blob(s) of {ref_label} are not in the net and were not compared "
                                f"(e.g. Caffe's automatic splits): {', '.join(ignored[:5])}"
                                + ("…" if len(ignored) > 5 else ""))
        shared = [c for c, v in expected.items() if c in ref_blobs and infos[v].caffe_name != c]
        if shared:
            report.notes.append("compared as pycaffe holds them (memory shared with a blob written in place later): "
                                + ", ".join(f"{c} = {expected[c]}" for c in shared[:5])
                                + ("…" if len(shared) > 5 else ""))
    report.reference = ref_label
    backend = "pycaffe" if ref_kind == "npz" else ref_label
    for caffe_name, blob in expected.items():
        if caffe_name in ref_blobs and caffe_name not in input_names and blob in truth:
            add(blob, backend, 1, ref_blobs[caffe_name], rtol, label=caffe_name)
    ref_blobs = {}

    # Each ONNX runtime at every blob version.
    if runtime_names:
        _run_runtimes(report, module, onnx_path, runtime_names, runtimes_named, fp16, feeds, versions, add, say)
    keyed.sort(key=lambda item: item[0])
    report.rows = [row for _, row in keyed]
    if len(report.rows) == len(versions):  # the torch module's own rows only
        report.notes.append("nothing but the float32 torch module was compared: give a reference or a runtime "
                            "that is installed")
        report.rows = []
    return report


def pycaffe_versions(net) -> dict[str, str]:
    """Caffe blob name → the blob version whose values pycaffe's ``net.blobs[name].data`` holds after
    ``forward()``.

    Split, Flatten, Reshape and a one-top Slice share their bottom's memory in Caffe (``ShareData`` in their
    ``Reshape``), so a layer writing in place into any of those blobs later changes what all of them hold: the
    name then shows that last write. ``ninport.caffe.aliasing`` applies the same rule to what layers read.
    """
    readers: dict[str, int] = {}
    for layer in net.layers:
        for b in set(layer.bottoms):
            readers[b] = readers.get(b, 0) + 1
    root: dict[str, str] = {}  # version → the version owning its memory
    last_write: dict[str, str] = {}  # memory root → the version its last in-place writer made
    final: dict[str, str] = {name: name for name in net.inputs}
    for layer in net.layers:
        if shares_memory(layer):
            for top in layer.tops:
                root[top] = root.get(layer.bottoms[0], layer.bottoms[0])
        for bottom, top in in_place_pairs(layer):
            root[top] = root.get(bottom, bottom)
            if readers.get(bottom, 0) == 1:  # as in aliasing.py: Caffe's only accepted in-place form
                last_write[root[top]] = top
        final.update(zip(layer.caffe_tops, layer.tops))
    return {caffe: last_write.get(root.get(v, v), v) for caffe, v in final.items()}


def _preprocess_metadata(net) -> dict[str, str]:
    """The data layer's transform as the ``preprocess_*`` keys ``ninport.run.make_preprocess`` reads."""
    out = {}
    for key in ("mean_file", "mean_value", "scale"):
        if key in net.preprocess:
            value = net.preprocess[key]
            out[f"preprocess_{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def _load_onnx(module, onnx_path, fp16: bool):
    """The ONNX model to check (the user's file or an in-memory export, as float16 when asked), whether it
    is float16, and whether it was made here (so it is not the user's file any more)."""
    import onnx

    from ninport.onnx.export import to_onnx_bytes
    from ninport.onnx.float16 import is_float16, to_float16

    if onnx_path is not None:
        onnx_path = os.fspath(onnx_path)
        if not os.path.exists(onnx_path):
            raise ParseError(f"{onnx_path}: no such file (--onnx)")
        try:
            model = onnx.load(onnx_path)
        except Exception as exc:
            raise ParseError(f"{onnx_path}: not an ONNX file ({_one_line(str(exc), 200)})") from None
        names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        missing = [n for n in module.input_names if n not in names]
        if missing:
            raise NinportError(f"{onnx_path}: has inputs {names}, the net's are {module.input_names}")
    else:
        model = onnx.load_from_string(to_onnx_bytes(module))
    if fp16 and not is_float16(model):
        return to_float16(model), True, True
    return model, is_float16(model), False


def _run_runtimes(report: VerifyReport, module, onnx_path, names, named: bool, fp16: bool, feeds, versions, add,
                  say) -> None:
    import onnx

    say("ONNX export" if onnx_path is None else f"ONNX file {onnx_path}")
    try:
        model, half, converted = _load_onnx(module, onnx_path, fp16)
    except Exception as exc:
        if onnx_path is not None:
            raise
        # ninport's own export failing fails the verdict whichever runtimes were asked for.
        report.backends.append(BackendStatus("onnx export", "failed", _error_text(exc), required=True))
        return
    report.fp16 = half
    tolerance = report.fp16_tolerance if half else report.tolerance
    suffix = "-fp16" if half else ""
    tensors = blob_tensors(model, versions)
    missing = [b for b in versions if b not in tensors]
    if missing:
        report.notes.append(f"{len(missing)} blob version(s) have no tensor of their name in the ONNX graph and "
                            f"were not compared on the runtimes: {', '.join(missing[:5])}"
                            + ("…" if len(missing) > 5 else ""))
    graph_outputs = [o.name for o in model.graph.output]
    output_blobs = {b: t for b, t in tensors.items() if t in graph_outputs}
    input_names = {i.name for i in model.graph.input}
    for graph_input in model.graph.input:
        if graph_input.name not in feeds:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim]
        have = feeds[graph_input.name].shape
        if len(dims) != len(have) or any(d is not None and d != h for d, h in zip(dims, have)):
            where = onnx_path or "the exported model"
            shown = ",".join("?" if d is None else str(d) for d in dims)
            raise NinportError(f"{where}: input {graph_input.name!r} has shape {shown}, the input given is "
                               f"{','.join(map(str, have))}; pass --input-shape to match the file")
    # Feed each graph input in its declared type (a float16 file made elsewhere may take float16).
    onnx_feeds = {i.name: feeds[i.name].astype(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type),
                                               copy=False)
                  for i in model.graph.input if i.name in feeds}
    fetch = sorted({t for t in tensors.values() if t not in input_names})
    with tempfile.TemporaryDirectory(prefix="ninport-verify-") as tmp:
        original = onnx_path
        if original is None or converted:
            original = os.path.join(tmp, "model.onnx")
            onnx.save(model, original)
        copy_path = os.path.join(tmp, "verify.onnx")
        onnx.save(verification_copy(model, fetch), copy_path)
        for order, name in enumerate(names, start=1):
            runner, why = _make_runtime(name)
            backend = name + suffix
            if runner is None:
                # (a runtime named explicitly was checked for at the start; CUDA absent is never a failure)
                report.backends.append(BackendStatus(backend, "unavailable", why))
                continue
            say(backend)
            # The file as shipped gives the outputs: a runtime optimizes it differently from the copy, whose
            # extra outputs keep intermediate tensors alive.
            try:
                runner.load(original)
                values = runner.run(onnx_feeds, sorted(set(output_blobs.values())))
            except Exception as exc:  # each runtime has its own exception types; its message is the report
                report.backends.append(BackendStatus(backend, "failed", _error_text(exc), named))
                continue
            detail = ""
            try:
                runner.load(copy_path)
                values = {**runner.run(onnx_feeds, fetch), **values}
            except Exception as exc:
                detail = f"; intermediate blobs unavailable: {_error_text(exc, 200)}"
            report.backends.append(BackendStatus(backend, "ran", runner.version() + detail, named))
            for blob in versions:
                tensor = tensors.get(blob)
                if tensor is None:
                    continue
                got = feeds[tensor] if tensor in feeds else values.get(tensor)
                if got is None:
                    continue
                add(blob, backend, 1 + order, got, tolerance)


# --------------------------------------------------------------------------------------------------------
# Text output


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    return f"{value:.2e}"


def _layer_text(row: Comparison) -> str:
    return "+".join(row.chain) if len(row.chain) > 1 else row.layer


def _argmax_text(row: Comparison) -> str:
    return f"{row.argmax[0]}/{row.argmax[1]}" if row.argmax else ""


def format_rows(rows: Sequence[Comparison]) -> str:
    """The long table: one line per (blob, backend), each distance beside the floor and the tolerance."""
    header = ("blob", "layer", "backend", "max abs", "rel", "floor", "tolerance", "cosine", "argmax", "")
    lines = [header]
    for row in rows:
        lines.append((row.blob, _layer_text(row), row.backend, _fmt(row.max_abs), _fmt(row.rel), _fmt(row.floor),
                      _fmt(row.tolerance), "nan" if math.isnan(row.cosine) else f"{row.cosine:.7f}",
                      _argmax_text(row), "ok" if row.ok else "DIVERGES"))
    return _columns(lines)


def format_summary(report: VerifyReport) -> str:
    """The wide table: one line per blob, its floor (the float32 torch module's own distance from float64)
    and the relative distance of each other backend in a column."""
    backends = [b.name for b in report.backends
                if b.name != "torch" and any(row.backend == b.name for row in report.rows)]
    by_blob: dict[tuple[str, str], dict[str, Comparison]] = {}
    for row in report.rows:
        by_blob.setdefault((row.blob, _layer_text(row)), {})[row.backend] = row
    lines = [("blob", "layer", "floor (torch fp32)", *backends, "argmax")]
    for (blob, layer), cells in by_blob.items():
        argmax = "  ".join(f"{b} {_argmax_text(r)}" for b, r in cells.items() if r.argmax and b != "torch")
        any_row = next(iter(cells.values()))
        floor = cells["torch"].rel if "torch" in cells else any_row.floor
        lines.append((blob, layer, _fmt(floor) + ("" if "torch" not in cells or cells["torch"].ok else " ✗"),
                      *[(_fmt(cells[b].rel) + ("" if cells[b].ok else " ✗")) if b in cells else "—"
                        for b in backends], argmax))
    return _columns(lines)


def _columns(lines: list[tuple[str, ...]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def format_report(report: VerifyReport) -> str:
    """What ``ninport verify`` prints without --json."""
    out = [f"net {report.net_name!r}, input {report.input}"]
    for status in report.backends:
        text = {"ran": "ran", "unavailable": "unavailable", "failed": "FAILED"}[status.state]
        out.append(f"  {status.name}: {text}" + (f" ({status.detail})" if status.detail else ""))
    out.extend(f"note: {note}" for note in report.notes)
    tol = (f"distance from the float64 forward <= max(rtol {report.tolerance:g}, {NOISE_FACTOR:g} × floor)")
    if report.fp16:
        tol += f" (float16 runtimes: rtol {report.fp16_tolerance:g})"
    first = report.first_divergence
    if first is None:
        out.append("")
        out.append(format_summary(report) if report.rows else "(nothing compared)")
        out.append("")
        blocking = [b for b in report.backends if b.blocking]
        if blocking:
            out.append(f"FAILED: {', '.join(b.name for b in blocking)} did not run; {tol}")
        elif report.rows:
            judged = [r for r in report.rows if r.backend != "torch"] or report.rows
            worst = max(judged, key=lambda r: r.rel / r.tolerance)
            out.append(f"OK: {len(report.rows)} comparisons, {tol}; closest to its tolerance: {worst.blob} on "
                       f"{worst.backend} ({_fmt(worst.rel)} of {_fmt(worst.tolerance)}, floor {_fmt(worst.floor)})")
        else:
            out.append("FAILED: nothing was compared")
        return "\n".join(out)
    start = report.rows.index(first)
    out.append("")
    out.append(format_rows(report.rows[start:]))
    out.append("")
    chain = ""
    if len(first.chain) > 1:
        chain = f" (the value after the in-place chain {' → '.join(first.chain)})"
    out.append(f"DIVERGES: first at blob {first.blob!r}, layer {first.layer!r}{chain}, backend {first.backend} "
               f"vs float64: max abs {_fmt(first.max_abs)}, relative {_fmt(first.rel)} > {_fmt(first.tolerance)} "
               f"(floor {_fmt(first.floor)}; {tol}), cosine {first.cosine:.7f}")
    return "\n".join(out)
