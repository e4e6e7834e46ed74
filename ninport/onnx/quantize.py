"""Reduced-precision copies of a float32 ONNX model (INT8, bfloat16, float16), each checked against the float32
model blob by blob and on the final scores before it is written.

INT8 is static QDQ quantization (onnxruntime.quantization: per-channel int8 weights, uint8 activations),
calibrated on inputs prepared with the model's own Caffe preprocessing (the ONNX metadata ninport writes).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from ninport.errors import NinportError, ParseError, RuntimeUnavailableError

PRECISIONS = ("int8", "bf16", "fp16")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_COUNT = 200  # calibration inputs
DEFAULT_EVAL_COUNT = 500  # verification inputs
_BATCH = 16


@dataclass
class BlobDelta:
    """One blob of the reduced model against float32: the largest difference over max |fp32| (``rel``) and the
    root-mean-square difference over the blob's root-mean-square (``rms_rel``)."""

    blob: str
    max_abs: float
    rel: float
    rms_rel: float

    def as_dict(self) -> dict:
        return {"blob": self.blob, "max_abs": self.max_abs, "rel": self.rel, "rms_rel": self.rms_rel}


@dataclass
class Agreement:
    """The final scores of one runtime running the reduced model against the float32 model in onnxruntime."""

    runtime: str
    top1: float  # share of inputs where both models rank the same class first
    top5: float  # mean share of the float32 top-5 classes that the reduced model also puts in its top 5
    max_rel: float  # largest score difference over max |fp32 score|
    accuracy_fp32: float | None = None  # top-1 % on the labelled verification inputs
    accuracy: float | None = None

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "top1_agreement": self.top1, "top5_agreement": self.top5,
                "max_rel": self.max_rel, "accuracy_fp32": self.accuracy_fp32, "accuracy": self.accuracy}


@dataclass
class QuantizeResult:
    model: str
    output: str
    precision: str
    calibration: str  # where the calibration inputs came from (int8), in words
    seeded: bool  # True when no data was given: calibration and checks ran on seeded inputs
    verification: str  # where the verification inputs came from, in words
    verified_on: int
    blobs: list[BlobDelta] = field(default_factory=list)
    agreement: list[Agreement] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "model": self.model, "output": self.output, "precision": self.precision,
            "calibration": self.calibration, "seeded_inputs": self.seeded, "verification": self.verification,
            "verified_on": self.verified_on, "blobs": [b.as_dict() for b in self.blobs],
            "agreement": [a.as_dict() for a in self.agreement], "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out, "seconds": round(self.seconds, 3), "notes": self.notes,
        }


@dataclass
class Inputs:
    """Calibration and verification inputs, already through the model's preprocessing."""

    calibration: np.ndarray
    verification: np.ndarray
    labels: np.ndarray | None  # of the verification inputs
    calibration_source: str
    verification_source: str
    seeded: bool


# --------------------------------------------------------------------------------------------------------
# The model


def _load(path: str) -> onnx.ModelProto:
    if not os.path.exists(path):
        raise ParseError(f"{path}: no such file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ParseError(f"{path}: not a readable ONNX file ({str(exc).splitlines()[0] if str(exc) else exc})") \
            from None
    if any(i.data_location == TensorProto.EXTERNAL for i in model.graph.initializer):
        raise NinportError(f"{path}: the model keeps its weights in external data; quantize handles models "
                           "under 2 GB only")
    kinds = [i.data_type for i in model.graph.initializer]
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}:
        raise NinportError(f"{path}: the model is already quantized; give the float32 model")
    if kinds and kinds.count(TensorProto.FLOAT) < max(kinds.count(TensorProto.FLOAT16),
                                                      kinds.count(TensorProto.BFLOAT16)):
        raise NinportError(f"{path}: the model's weights are not float32; give the float32 model")
    return model


def _graph_input(model: onnx.ModelProto, path: str) -> tuple[str, list]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise NinportError(f"{path}: quantize handles models with one input, this one has {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N") for d in dims]
    if len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise NinportError(f"{path}: input {inputs[0].name!r} has shape {shape}; quantize needs fixed sizes past "
                           "the batch axis")
    return inputs[0].name, shape


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


# --------------------------------------------------------------------------------------------------------
# Inputs: a data set, a folder of images, or seeded


def prepare_inputs(path: str, model: onnx.ModelProto, calibrate: str | None = None, images: str | None = None,
                   count: int = DEFAULT_COUNT, eval_count: int = DEFAULT_EVAL_COUNT, seed: int = 0) -> Inputs:
    """Calibration and verification inputs for ``model`` with its own Caffe preprocessing.

    ``calibrate``: ``DATASET[:PATH]`` (``ninport.reproduce.datasets``): calibration on a seeded choice of the
    train split, verification on the first ``eval_count`` test images. ``images``: a folder of images (or
    .npy tensors), used for both. Neither: seeded images of uniform 0..255 pixels through the preprocessing.
    """
    if calibrate and images:
        raise NinportError("give --calibrate or --images, not both")
    if count < 1 or eval_count < 1:
        raise NinportError(f"--count and --eval-count must be positive, got {count} and {eval_count}")
    name, shape = _graph_input(model, path)
    metadata = _metadata(model)
    if calibrate:
        return _dataset_inputs(path, shape, metadata, calibrate, count, eval_count, seed)
    if images:
        return _folder_inputs(shape, metadata, images, count, eval_count)
    return _seeded_inputs(shape, metadata, count, eval_count, seed)


def _dataset_inputs(path, shape, metadata, spec: str, count: int, eval_count: int, seed: int) -> Inputs:
    from ninport.reproduce.datasets import open_dataset
    from ninport.reproduce.evaluate import LoadedModel, make_transform

    name, _, data = spec.partition(":")
    data = data or None
    test = open_dataset(name, data, "test")
    holder = LoadedModel(session=None, input_name="", input_shape=shape, output_name="", metadata=metadata,
                         description=path, base_dir=os.path.dirname(os.path.abspath(path)))
    transform, _ = make_transform(holder, test.image_shape)
    rng = np.random.default_rng(seed)
    try:
        train = open_dataset(name, data, "train")
    except NinportError:
        train = None
    if train is not None and len(train) > 0:
        picks = np.sort(rng.choice(len(train), size=min(count, len(train)), replace=False))
        calibration = transform(_take(train, picks))
        calib_source = f"{len(picks)} images of {train.name} train (seed {seed})"
        eval_start = 0
    else:  # only a test split here: calibrate on its first images, verify on the ones after
        eval_start = min(count, len(test) - 1)
        calibration = transform(test.images(0, eval_start))
        calib_source = f"the first {eval_start} images of {test.name} test (no train split here)"
    stop = min(eval_start + eval_count, len(test))
    verification = transform(test.images(eval_start, stop))
    return Inputs(calibration=calibration, verification=verification, labels=test.labels[eval_start:stop],
                  calibration_source=calib_source,
                  verification_source=f"{test.name} test images {eval_start}..{stop - 1} (labelled)", seeded=False)


def _take(ds, picks: np.ndarray) -> np.ndarray:
    if ds.array is not None:
        return ds.array[picks]
    return np.concatenate([ds.images(int(i), int(i) + 1) for i in picks])


def _folder_inputs(shape, metadata, folder: str, count: int, eval_count: int) -> Inputs:
    from ninport.run import IMAGE_EXTENSIONS, load_input, make_preprocess

    if not os.path.isdir(folder):
        raise ParseError(f"{folder}: --images needs a folder of images")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith((*IMAGE_EXTENSIONS, ".npy")))
    if not files:
        raise ParseError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) or .npy tensors in it")
    pre = make_preprocess(shape, metadata)
    arrays = []
    for f in files[: max(count, eval_count)]:
        array = load_input(f, pre)
        if tuple(array.shape[1:]) != tuple(shape[1:]):
            raise ParseError(f"{f}: shape {list(array.shape[1:])}, the model takes {shape[1:]}")
        arrays.append(array)
    stacked = np.concatenate(arrays).astype(np.float32)
    return Inputs(calibration=stacked[:count], verification=stacked[:eval_count], labels=None,
                  calibration_source=f"{min(count, len(stacked))} files of {folder}",
                  verification_source=f"{min(eval_count, len(stacked))} files of {folder} (the calibration "
                                      "files themselves, unlabelled)", seeded=False)


def _seeded_inputs(shape, metadata, count: int, eval_count: int, seed: int) -> Inputs:
    from ninport.run import make_preprocess

    pre = make_preprocess(shape, metadata, warn=lambda _msg: None)
    rng = np.random.default_rng(seed)

    def make(n: int) -> np.ndarray:
        pixels = rng.integers(0, 256, size=(n, *shape[1:])).astype(np.float32)
        if pre.mean is not None:
            mean = pre.mean
            if mean.ndim == 3:  # a mean image: its centre, as Caffe crops it
                top, left = (mean.shape[1] - shape[2]) // 2, (mean.shape[2] - shape[3]) // 2
                mean = mean[:, top: top + shape[2], left: left + shape[3]]
            else:
                mean = mean.reshape(-1, 1, 1)
            pixels = pixels - mean
        return (pixels * pre.scale).astype(np.float32)

    calibration = make(count)
    verification = make(eval_count)
    words = "seeded inputs (uniform 0..255 pixels through the model's preprocessing), NOT real data"
    return Inputs(calibration=calibration, verification=verification, labels=None,
                  calibration_source=f"{count} {words}", verification_source=f"{eval_count} other {words}",
                  seeded=True)


# --------------------------------------------------------------------------------------------------------
# The three precisions


def _int8(source: str, target: str, inputs: Inputs, input_name: str, method: str, workdir: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            data = inputs.calibration
            # Equal batches: the histogram calibrators (percentile, entropy) stack them.
            size = _BATCH if len(data) >= _BATCH else len(data)
            self.batches = iter([{input_name: data[i: i + size]} for i in range(0, len(data) - size + 1, size)])

        def get_next(self):
            return next(self.batches, None)

    prepared = os.path.join(workdir, "prepared.onnx")
    # Shape inference and onnxruntime's basic graph optimizations first, as onnxruntime's tools advise.
    quant_pre_process(source, prepared, skip_symbolic_shape=True)
    quantize_static(
        prepared, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        nodes_to_exclude=_constant_arithmetic(onnx.load(prepared, load_external_data=False)),
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                          "entropy": CalibrationMethod.Entropy}[method],
        extra_options={"CalibTensorRangeSymmetric": False},
    )


def _constant_arithmetic(model: onnx.ModelProto) -> list[str]:
    """Elementwise nodes that scale or shift by a constant: the export's Caffe corrections (the AVE pooling
    divisor map of clipped windows, Scale/Bias constants). Quantizing their constant to 8 bits would turn an
    exact correction into an error of up to half a step, so they stay float32."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in ("Mul", "Add", "Div", "Sub") and n.name and any(i in constants for i in n.input)]


def round_to_bfloat16(array: np.ndarray) -> np.ndarray:
    """float32 → the upper 16 bits of the nearest bfloat16 (round half to even), as uint16.

    bfloat16 is float32 with the low 16 mantissa bits dropped; rounding adds 0x7FFF plus the lowest kept bit
    before the shift. NaN stays NaN (its top bits keep a set mantissa bit)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(array)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def to_bfloat16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose float32 weights are stored as bfloat16, each followed by a Cast to float32.

    The file is half the size; onnxruntime computes in float32 on the rounded weights; OpenVINO, told
    ``INFERENCE_PRECISION_HINT=bf16`` (the file's ``ninport_precision`` metadata says so), computes in bf16.
    """
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or len(init.dims) < 2:
            continue  # biases and shape-like tensors stay float32: they are small
        array = numpy_helper.to_array(init)
        name = init.name
        stored = f"{name}.bf16"
        init.ClearField("float_data")
        init.data_type = TensorProto.BFLOAT16
        init.raw_data = round_to_bfloat16(array).tobytes()
        init.name = stored
        casts.append(helper.make_node("Cast", [stored], [name], to=TensorProto.FLOAT, name=f"{name}/to_fp32"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    try:
        onnx.checker.check_model(out, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise NinportError(f"the bfloat16 copy of the model is not valid ONNX: {str(exc).splitlines()[0]}") from None
    return out


# --------------------------------------------------------------------------------------------------------
# Running: small local runners (onnxruntime, OpenVINO), with every blob as an extra output


def _blob_names(fp32: onnx.ModelProto, reduced: onnx.ModelProto) -> dict[str, str]:
    """Caffe blobs of the float32 graph (tensors the export named after them, in execution order) → the
    tensor of the reduced graph that holds the same blob. In a QDQ graph that is the blob's DequantizeLinear
    output: the value the next layer reads (a ReLU there is folded into the quantized range)."""
    produced = {o for n in reduced.graph.node for o in n.output}
    inits = {i.name for i in fp32.graph.initializer}
    names: dict[str, str] = {}
    for node in fp32.graph.node:
        if node.op_type in ("Constant", "Shape", "Gather", "Unsqueeze", "Concat", "Cast"):
            continue
        for out in node.output:
            if out.startswith("/") or out in inits or out in names:
                continue  # exporter-made names (/pool2/...) are not Caffe blobs
            for candidate in (f"{out}_DequantizeLinear_Output", out):
                if candidate in produced:
                    names[out] = candidate
                    break
    return names


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> bytes:
    """The model's bytes with ``names`` as extra graph outputs (their float type from shape inference)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(copy)
        types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    except Exception:  # inference is only for the types; float32 is the usual answer
        types = {}
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None))
    return copy.SerializeToString()


def _run(kind: str, model, input_name: str, outputs: list[str], data: np.ndarray,
         precision: str = "fp32") -> list[np.ndarray]:
    """``outputs`` of ``model`` (a path or bytes) on ``data`` in the runtime ``kind`` (``ninport.runtimes``),
    batch by batch; a runtime compiled for a static batch gets the last batch zero-padded."""
    from ninport import runtimes

    runtime = runtimes.load(kind, model, provider="cpu", precision=precision, warn=lambda _msg: None)
    try:
        runtime.prepare(_BATCH)
        pieces: list[list[np.ndarray]] = [[] for _ in outputs]
        for i in range(0, len(data), _BATCH):
            chunk = data[i: i + _BATCH]
            count = len(chunk)
            if count < _BATCH:
                chunk = np.concatenate([chunk, np.zeros((_BATCH - count, *chunk.shape[1:]), np.float32)])
            result = runtime.run({input_name: chunk}, outputs)
            for j, name in enumerate(outputs):
                pieces[j].append(np.asarray(result[name], dtype=np.float32)[:count])
    finally:
        runtime.close()
    return [np.concatenate(p) for p in pieces]


def _run_ort(model_bytes: bytes, input_name: str, outputs: list[str], data: np.ndarray) -> list[np.ndarray]:
    return _run("onnxruntime", model_bytes, input_name, outputs, data)


def compare_blob(name: str, reference: np.ndarray, other: np.ndarray) -> BlobDelta:
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(other, dtype=np.float64).reshape(ref.shape)
    diff = np.abs(ref - out)
    scale = float(np.max(np.abs(ref))) or 1.0
    rms = float(np.sqrt(np.mean(ref * ref))) or 1.0
    return BlobDelta(name, float(diff.max()) if diff.size else 0.0, float(diff.max() / scale) if diff.size else 0.0,
                     float(np.sqrt(np.mean(diff * diff)) / rms) if diff.size else 0.0)


def agreement(runtime: str, reference: np.ndarray, scores: np.ndarray, labels: np.ndarray | None) -> Agreement:
    """Top-1 and top-5 agreement of ``scores`` with ``reference`` (N×classes), and accuracy with labels."""
    ref = reference.reshape(len(reference), -1)
    out = scores.reshape(len(scores), -1)
    k = min(5, ref.shape[1])
    ref_top = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    out_top = np.argsort(-out, axis=1, kind="stable")[:, :k]
    top1 = float(np.mean(ref_top[:, 0] == out_top[:, 0]))
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ref_top, out_top)])
    max_rel = float(np.max(np.abs(ref - out)) / (float(np.max(np.abs(ref))) or 1.0))
    acc32 = acc = None
    if labels is not None:
        acc32 = 100.0 * float(np.mean(ref_top[:, 0] == labels))
        acc = 100.0 * float(np.mean(out_top[:, 0] == labels))
    return Agreement(runtime, top1, float(overlap), max_rel, acc32, acc)


# --------------------------------------------------------------------------------------------------------
# The command's library function


def quantize(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    precision: str = "int8",
    calibrate: str | None = None,
    images: str | None = None,
    count: int = DEFAULT_COUNT,
    eval_count: int = DEFAULT_EVAL_COUNT,
    method: str = "minmax",
    seed: int = 0,
    say: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Write a ``precision`` copy of the float32 ONNX model at ``model_path`` to ``output`` once it has run
    and been compared with float32 (see the module docstring). ``output`` appears whole or not at all."""
    from ninport.caffe.caffemodel import atomic_write_bytes

    start = time.perf_counter()
    say = say or (lambda _msg: None)
    model_path, output = os.fspath(model_path), os.fspath(output)
    if precision not in PRECISIONS:
        raise NinportError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if method not in CALIBRATION_METHODS:
        raise NinportError(f"--method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if os.path.exists(output) and os.path.exists(model_path) and os.path.samefile(output, model_path):
        raise NinportError(f"{output}: the output would overwrite the input model; choose another -o")
    if os.path.isdir(output):
        raise NinportError(f"{output}: is a folder; -o names the ONNX file to write")
    folder = os.path.dirname(output) or "."
    if not os.path.isdir(folder):
        raise NinportError(f"{output}: folder {folder!r} does not exist")
    fp32 = _load(model_path)
    input_name, _ = _graph_input(fp32, model_path)
    inputs = prepare_inputs(model_path, fp32, calibrate, images, count, eval_count, seed)
    notes: list[str] = []
    if inputs.seeded:
        notes.append("no data given: calibrated and verified on seeded inputs, not real images; ranges and "
                     "agreement may differ on real data (pass --calibrate DATASET[:PATH] or --images DIR)")
    with tempfile.TemporaryDirectory(prefix="ninport-quantize-") as workdir:
        target = os.path.join(workdir, "reduced.onnx")
        say(f"{precision}: building the reduced model")
        if precision == "int8":
            _int8(model_path, target, inputs, input_name, method, workdir)
            reduced = onnx.load(target)
            calibration = f"{inputs.calibration_source}, {method} ranges"
        elif precision == "fp16":
            from ninport.onnx.float16 import to_float16

            reduced = to_float16(fp32)
            calibration = "none needed (float16 weights and activations)"
        else:
            reduced = to_bfloat16(fp32)
            calibration = "none needed (bfloat16 weights)"
        del reduced.metadata_props[:]
        for key, value in _metadata(fp32).items():
            reduced.metadata_props.add(key=key, value=value)
        reduced.metadata_props.add(key="ninport_precision", value=precision)
        reduced.metadata_props.add(key="ninport_quantized_from", value=os.path.basename(model_path))
        if precision == "int8":
            reduced.metadata_props.add(key="ninport_calibration", value=calibration)
        if precision == "bf16":
            reduced.metadata_props.add(key="openvino_inference_precision_hint", value="bf16")
        data = reduced.SerializeToString()

        say(f"verifying on {len(inputs.verification)} inputs against float32")
        outputs = [o.name for o in fp32.graph.output]
        pairs = _blob_names(fp32, reduced)
        blobs = [b for b in pairs if b not in outputs]
        ref_all = _run_ort(_with_outputs(fp32, blobs), input_name, outputs + blobs, inputs.verification)
        ref = ref_all[0]
        got = _run_ort(data, input_name, outputs[:1], inputs.verification)[0]  # the model as shipped
        if not np.all(np.isfinite(got)):
            raise NinportError(f"the {precision} model gives non-finite outputs on the verification inputs; "
                               "nothing written")
        reduced_names = [pairs.get(b, b) for b in blobs]
        got_blobs = _run_ort(_with_outputs(reduced, reduced_names), input_name, reduced_names,
                             inputs.verification)
        deltas = [compare_blob(b, r, g) for b, r, g in zip(blobs, ref_all[len(outputs):], got_blobs)]
        deltas.append(compare_blob(outputs[0], ref, got))
        agreements = [agreement("onnxruntime", ref, got, inputs.labels)]
        with open(target, "wb") as f:
            f.write(data)
        openvino_precision = {"int8": "fp32", "bf16": "bf16", "fp16": "fp32"}[precision]
        try:
            ov_out = _run("openvino", target, input_name, outputs[:1], inputs.verification, openvino_precision)
            label = "openvino" + (" (bf16 compute)" if openvino_precision == "bf16" else "")
            agreements.append(agreement(label, ref, ov_out[0], inputs.labels))
        except RuntimeUnavailableError as exc:
            notes.append(f"openvino not checked: {exc}")
        if precision == "bf16":
            notes.append("onnxruntime computes this file in float32 on the bf16-rounded weights (no speed-up); "
                         "OpenVINO with INFERENCE_PRECISION_HINT=bf16 computes in bf16 (AVX-512 BF16 / AMX)")
        atomic_write_bytes(output, data)
    return QuantizeResult(
        model=model_path, output=output, precision=precision, calibration=calibration, seeded=inputs.seeded,
        verification=inputs.verification_source, verified_on=len(inputs.verification), blobs=deltas,
        agreement=agreements, bytes_in=os.path.getsize(model_path), bytes_out=len(data),
        seconds=time.perf_counter() - start, notes=notes,
    )


def format_result(result: QuantizeResult) -> str:
    lines = [f"{result.precision}: {result.model} → {result.output} ({result.bytes_in / 1e6:.2f} MB → "
             f"{result.bytes_out / 1e6:.2f} MB) in {result.seconds:.1f} s"]
    if result.seeded:
        lines.append("WARNING: no data given; calibration and verification used SEEDED inputs, not real images")
    lines.append(f"calibration: {result.calibration}")
    lines.append(f"verified against float32 on {result.verification}")
    lines.append(f"  {'blob':<24} {'max abs':>10} {'rel (max)':>10} {'rel (rms)':>10}   (onnxruntime, vs fp32)")
    for b in result.blobs:
        lines.append(f"  {b.blob:<24} {b.max_abs:10.3g} {b.rel:10.3g} {b.rms_rel:10.3g}")
    for a in result.agreement:
        text = (f"  {a.runtime}: top-1 agreement {a.top1:.2%}, top-5 overlap {a.top5:.2%}, "
                f"scores max rel {a.max_rel:.3g}")
        if a.accuracy is not None:
            text += f"; top-1 accuracy fp32 {a.accuracy_fp32:.2f} % → {a.accuracy:.2f} % " \
                    f"({a.accuracy - a.accuracy_fp32:+.2f} points)"
        lines.append(text)
    for note in result.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def result_json(result: QuantizeResult) -> str:
    return json.dumps(result.as_dict())
