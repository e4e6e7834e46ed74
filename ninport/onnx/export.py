"""Export a ``CaffeNet`` to ONNX, check it, prove it in onnxruntime, then keep it.

The graph's input and output names are Caffe blob names (``data`` in, ``pool4`` out for NiN); weights are
initializers, not inputs; the batch axis is dynamic unless asked otherwise. The file appears only after
``onnx.checker`` (full check) and one onnxruntime run agree with the torch module.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import helper

from ninport import __version__
from ninport.caffe.caffemodel import _varint, atomic_write_bytes
from ninport.errors import NinportError, ParityError
from ninport.parity import distance, parameter_bytes

DEFAULT_OPSET = 17
# Models whose weights pass this size are written with their tensors in a side file ("external data"): one
# protobuf message cannot exceed 2 GB.
EXTERNAL_DATA_BYTES = 1_800_000_000
# Past this size the weights are not handed to the exporter: the graph is traced without them and the file is
# written with the weights streamed from the module's memory (``write_streamed``). Below it the exporter folds
# constants on the weights as usual (e.g. BatchNorm's statistics), which small nets keep.
STREAMED_EXPORT_BYTES = 64_000_000


@dataclass
class Parity:
    """How far onnxruntime's output is from the float64 truth (max abs difference and that over max |truth|),
    beside the float32 torch module's own relative distance (the floor) and the tolerance they make
    (``ninport.parity``)."""

    blob: str
    max_abs: float
    rel: float
    batch: int
    floor: float = 0.0
    tolerance: float = 0.0

    def as_dict(self) -> dict:
        return {"blob": self.blob, "max_abs": self.max_abs, "rel": self.rel, "batch": self.batch,
                "floor": self.floor, "tolerance": self.tolerance}


@dataclass
class ExportResult:
    path: str
    opset: int
    parity: list[Parity] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def compare(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Max abs difference, and that divided by the reference's largest magnitude."""
    if np.shape(reference) != np.shape(other):
        return float("inf"), float("inf")
    return distance(reference, other)


def model_metadata(module, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a runtime user needs to feed the model: sources and their hashes, and the declared preprocessing."""
    meta = {
        "ninport_version": __version__,
        "caffe_net_name": module.net_name,
        "caffe_prototxt": os.path.basename(str(module.source)),
        "channel_order": "BGR",
        "preprocess": json.dumps(module.preprocess, sort_keys=True),
        "input_names": json.dumps(module.input_names),
        "output_names": json.dumps(module.output_names),
    }
    extra = extra or {}
    # A caller that hashed the files already (``ninport convert`` does it while torch imports) passes the
    # digests in ``extra``; they keep their place in the order either way.
    if module.source and os.path.exists(str(module.source)):
        meta["caffe_prototxt_sha256"] = extra.get("caffe_prototxt_sha256") or sha256_of(module.source)
    if module.weights_source:
        meta["caffe_caffemodel"] = os.path.basename(str(module.weights_source))
        if os.path.exists(str(module.weights_source)):
            meta["caffe_caffemodel_sha256"] = extra.get("caffe_caffemodel_sha256") or sha256_of(module.weights_source)
    for key in ("crop_size", "mean_file", "mean_value", "scale", "mirror"):
        if key in module.preprocess:
            value = module.preprocess[key]
            meta[f"preprocess_{key}"] = json.dumps(value) if not isinstance(value, str) else value
    meta.update(extra)
    return meta


class _EveryBlob(torch.nn.Module):
    """Exports a CaffeNet with every blob version as a graph output, so each ONNX tensor that holds a Caffe
    blob carries that blob's name; ``to_onnx_bytes`` then keeps only the real outputs."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.blob_names = [top for _, _, tops in net.plan for top in tops]

    def forward(self, *inputs):
        blobs = self.net.forward_blobs(*inputs)
        return tuple(blobs[name] for name in self.blob_names)


def _prune_to_outputs(model: onnx.ModelProto, keep: list[str]) -> dict[str, str]:
    """Keep only ``keep`` as graph outputs, drop nodes nothing reads any more, and return the aliases
    (blob name → the tensor holding the same value) of blobs whose Identity node went away."""
    graph = model.graph
    outputs = [o for o in graph.output if o.name in keep]
    outputs.sort(key=lambda o: keep.index(o.name))
    del graph.output[:]
    graph.output.extend(outputs)
    # One sweep from the outputs back: ONNX nodes are in topological order, so a node is live exactly when a
    # live node after it (or a graph output) reads one of its outputs.
    needed = {o.name for o in graph.output}
    dead: list[int] = []
    aliases: dict[str, str] = {}
    for index in range(len(graph.node) - 1, -1, -1):
        node = graph.node[index]
        if any(o in needed for o in node.output):
            needed.update(node.input)
            continue
        dead.append(index)
        if node.op_type == "Identity":
            aliases[node.output[0]] = node.input[0]
    for index in dead:  # descending, so earlier indices stay valid
        del graph.node[index]
    # Deleting in place (rather than rebuilding the lists) keeps protobuf from copying every weight.
    for index in range(len(graph.initializer) - 1, -1, -1):
        if graph.initializer[index].name not in needed:
            del graph.initializer[index]
    # Resolve chains (a → b → c) so every alias points at a tensor that exists.
    for name in list(aliases):
        target = aliases[name]
        while target in aliases:
            target = aliases[target]
        aliases[name] = target
    return aliases


def _dynamic_hw_axes(module, blob_names: list[str], axes: dict) -> dict:
    """``--dynamic-hw``: H and W of every 4-D input are symbolic (``H``/``W``, or ``NAME_H``/``NAME_W`` when
    several inputs have them), and every blob's axes from 2 on, whose sizes follow from them."""
    spatial = [name for name in module.input_names if len(module.input_shapes[name]) == 4]
    out = {name: dict(axes.get(name, {})) for name in set(axes) | set(module.input_names) | set(blob_names)}
    for name in spatial:
        prefix = "" if len(spatial) == 1 else f"{name}_"
        out[name].update({2: f"{prefix}H", 3: f"{prefix}W"})
    for name in blob_names:
        for axis in range(2, len(module.blob_shapes.get(name, ()))):
            out[name][axis] = f"{name}_d{axis}"
    return {name: value for name, value in out.items() if value}


def to_onnx_bytes(module, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, batch: int | None = None) -> bytes:
    """``to_onnx_model``, serialized."""
    return to_onnx_model(module, opset=opset, dynamic_batch=dynamic_batch, batch=batch).SerializeToString()


def to_onnx_model(module, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                  batch: int | None = None) -> onnx.ModelProto:
    """The model with its weights as initializers (see ``export_graph``)."""
    model, weights = export_graph(module, opset=opset, dynamic_batch=dynamic_batch, batch=batch,
                                  weights_apart=False)
    return model


def export_graph(module, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, batch: int | None = None,
                 weights_apart: bool = False) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Trace ``module`` with the TorchScript-based exporter (fast and stable for these graphs).

    Every Caffe blob gets its own name in the graph (inputs, outputs and intermediate tensors), so a
    verification copy can expose any blob by name; the ``blob_aliases`` metadata maps blobs whose value is
    another blob's (an inference-time Dropout, a Split) to the tensor that holds it.

    ``weights_apart``: trace without the weights (``export_params=False``) and return them beside the graph,
    as numpy views of the module's parameters, for ``write_streamed``; the exporter then never holds a copy
    of them (it would hold two: its protobuf and the serialized bytes). Otherwise the dict is empty.
    """
    module = module.eval()
    args = module.example_inputs(batch=batch)
    wrapper = _EveryBlob(module).eval()  # the exporter restores the wrapper's mode afterwards: keep it eval
    dynamic_axes = None
    if dynamic_batch:
        fixed = set(getattr(module, "batchless_inputs", ()))
        dynamic_axes = {name: {0: "N"} for name in module.input_names + wrapper.blob_names if name not in fixed}
    if getattr(module, "dynamic_hw", False):
        dynamic_axes = _dynamic_hw_axes(module, wrapper.blob_names, dynamic_axes or {})
    # Past protobuf's 2 GB the exporter cannot hand back one message: it writes a file with external data.
    large = parameter_bytes(module) > EXTERNAL_DATA_BYTES and not weights_apart
    scratch = tempfile.TemporaryDirectory(prefix="ninport-export-") if large else None
    target = os.path.join(scratch.name, "model.onnx") if large else io.BytesIO()
    with warnings.catch_warnings(), _shape_inference_without_weights(weights_apart):
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                args,
                target,
                input_names=module.input_names,
                output_names=wrapper.blob_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                export_params=not weights_apart,
                keep_initializers_as_inputs=weights_apart,
                dynamo=False,
            )
    if large:
        with scratch:
            model = onnx.load(target, load_external_data=True)
    else:
        model = onnx.load_from_string(target.getvalue())
    weights: dict[str, np.ndarray] = {}
    if weights_apart:
        # The parameters came out as graph inputs named like the wrapper's state dict: take them off the
        # inputs and keep their values (views of the parameters) to be written after the graph.
        state = wrapper.state_dict()
        inputs = [i for i in model.graph.input if i.name not in state]
        weights = {i.name: state[i.name].detach().contiguous().numpy() for i in model.graph.input
                   if i.name in state}
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    # Initializers are named after the wrapper's attribute ("net.conv1.weight"); give them the state dict's names.
    names = [i.name for i in model.graph.initializer] + list(weights)
    renames = {name: name[len("net.") :] for name in names if name.startswith("net.")}
    for init in model.graph.initializer:
        init.name = renames.get(init.name, init.name)
    weights = {renames.get(name, name): array for name, array in weights.items()}
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
    aliases = _prune_to_outputs(model, module.output_names)
    read = {name for node in model.graph.node for name in node.input}
    weights = {name: array for name, array in weights.items() if name in read}
    if aliases:
        model.metadata_props.add(key="blob_aliases", value=json.dumps(aliases, sort_keys=True))
    return model, weights


class _shape_inference_without_weights:
    """While active, the TorchScript exporter's whole-graph ONNX shape inference gets no weight values.

    That pass (``torch._C._jit_pass_onnx_graph_shape_type_inference``, torch/onnx/_internal/torchscript_exporter/
    utils.py) turns every weight into an ONNX tensor to infer types it already knows from the traced graph: for
    a VGG-16-sized net that is ~10 s and a transient copy of the weights. The weights are graph inputs with
    their shapes when traced apart, so the inference loses nothing it needs; the exported graph is the same
    (tests/test_quantize.py compares it with the regular export)."""

    def __init__(self, active: bool):
        self.active = active

    def __enter__(self):
        if self.active:
            self._saved = torch._C._jit_pass_onnx_graph_shape_type_inference
            saved = self._saved

            def without_weights(graph, params_dict, opset):
                return saved(graph, {}, opset)

            torch._C._jit_pass_onnx_graph_shape_type_inference = without_weights
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            torch._C._jit_pass_onnx_graph_shape_type_inference = self._saved


# Field numbers of onnx.proto, read from the schema itself: ModelProto.graph, GraphProto.initializer and
# TensorProto.raw_data.
_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_DATA_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _length_field(number: int, length: int) -> bytes:
    """The tag (wire type 2, length-delimited) and length prefix of a field of ``length`` bytes."""
    return _varint(number << 3 | 2) + _varint(length)


def write_streamed(path: str | os.PathLike, model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> int:
    """Write ``model`` with ``weights`` as initializers to ``path`` (whole or not at all), streaming each
    weight's bytes from its own memory: the file is never held in memory, nor are the weights copied.

    Protocol buffers let a message's fields come in any order and repeated fields in several pieces, so the
    file is the model's other fields, then the graph field: its length, the graph without these initializers,
    then one ``initializer`` entry per weight, each a small TensorProto header followed by its ``raw_data``.
    Returns the file's size.
    """
    if sys.byteorder != "little":  # raw_data is little-endian by the ONNX spec
        raise NinportError("streamed ONNX writing needs a little-endian machine")
    head = onnx.ModelProto()
    head.CopyFrom(model)  # small: the big weights are not in this graph
    head.ClearField("graph")
    graph_bytes = model.graph.SerializeToString()
    entries = []
    graph_length = len(graph_bytes)
    for name, array in weights.items():
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        header = onnx.TensorProto(name=name, dims=list(array.shape),
                                  data_type=helper.np_dtype_to_tensor_dtype(array.dtype)).SerializeToString()
        raw = _length_field(_RAW_DATA_FIELD, array.nbytes)
        tensor_length = len(header) + len(raw) + array.nbytes
        prefix = _length_field(_INITIALIZER_FIELD, tensor_length) + header + raw
        entries.append((prefix, array))
        graph_length += len(prefix) + array.nbytes
    path = os.fspath(path)
    tmp = f"{path}.partial-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(head.SerializeToString())
            f.write(_length_field(_GRAPH_FIELD, graph_length))
            f.write(graph_bytes)
            for prefix, array in entries:
                f.write(prefix)
                f.write(memoryview(array.reshape(-1)).cast("B"))
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return size


def export_onnx(
    module,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    check_batches: tuple[int, ...] | None = None,
    tolerance: float = 1e-5,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export, check and prove ``module`` as an ONNX file at ``path`` (see the module docstring)."""
    return start_export(module, path, opset=opset, dynamic_batch=dynamic_batch, check_batches=check_batches,
                        tolerance=tolerance, metadata=metadata).finish()


class PendingExport:
    """An exported file whose checks may still be running in a helper process; ``finish`` waits for them,
    compares onnxruntime with torch, and returns the result or raises. Until then the file is not proven."""

    def __init__(self, module, path: str, data: bytes, opset: int, meta: dict[str, str], batches, tolerance: float,
                 worker=None, parity: list[Parity] | None = None):
        self.module, self.path, self.data, self.opset, self.meta = module, path, data, opset, meta
        self.batches, self.tolerance, self.worker, self.parity = list(batches), tolerance, worker, parity

    def finish(self) -> ExportResult:
        worker, self.worker = self.worker, None
        parity = self.parity
        if parity is None and worker is not None:
            # While the helper runs onnxruntime on one core, torch takes the other: two runtimes with a full
            # thread pool each on the same cores make OpenMP's barriers wait on descheduled threads.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                cases = _torch_reference(self.module, self.batches)
            finally:
                torch.set_num_threads(threads)
            reply = worker.result()
            if reply.get("ok"):
                outputs = reply["outputs"]
                got = [[outputs[f"{i}:{j}"] for j in range(len(self.module.output_names))] for i in range(len(cases))]
                parity = _compare_outputs(self.module, cases, got, self.tolerance)
            elif reply["error"] == "checker":
                raise NinportError(f"the exported ONNX graph fails onnx.checker: {reply['message']}")
            elif reply["error"] == "ninport":
                raise NinportError(reply["message"].replace(self.path, "the model"))  # as for in-memory bytes
        if parity is None:  # no helper, or the helper failed for reasons of its own: check here
            source = self.data or self.path  # a streamed export is checked from its file
            _check_onnx(source)
            parity = check_parity(self.module, source, self.batches, self.tolerance)
        return ExportResult(path=self.path, opset=self.opset, parity=parity, metadata=self.meta)


def start_export(
    module,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    check_batches: tuple[int, ...] | None = None,
    tolerance: float = 1e-5,
    metadata: dict[str, str] | None = None,
    worker=None,
    data_location: str | None = None,
) -> PendingExport:
    """Export ``module`` and write it to ``path``; with a ``worker`` (``ninport.onnx.runtime.CheckWorker``)
    the full check and the onnxruntime run start in that process and ``finish`` collects them, so the caller
    can do other work (write the .pt) meanwhile. Without one, ``finish`` checks in this process.

    ``path`` holds the file before it is proven: callers write to a temporary name and rename after
    ``finish`` (as ``ninport convert`` does), and remove it if ``finish`` raises.
    """
    if opset < 17:
        raise NinportError(f"opset {opset} is too old; ninport exports opset 17 or newer")
    path = os.fspath(path)
    declared = next(iter(module.input_shapes.values()))[0] if module.input_shapes else 1
    trace_batch = 1 if dynamic_batch else declared
    size = parameter_bytes(module)
    streamed = STREAMED_EXPORT_BYTES < size <= EXTERNAL_DATA_BYTES
    model, weights = export_graph(module, opset=opset, dynamic_batch=dynamic_batch, batch=trace_batch,
                                  weights_apart=streamed)
    release_freed_memory()  # the tracer's transient graphs
    meta = model_metadata(module, metadata)
    meta.update({p.key: p.value for p in model.metadata_props})
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "ninport"
    model.producer_version = __version__
    model.doc_string = f"Caffe net {module.net_name!r} converted by ninport {__version__}"
    if check_batches is None:
        check_batches = (1, 2) if dynamic_batch else (declared,)
    if size > EXTERNAL_DATA_BYTES:
        return _finish_external(module, model, path, opset, meta, check_batches, tolerance, data_location)
    if streamed:
        write_streamed(path, model, weights)
        del model, weights
        data = b""  # the checks read the file
        if worker is None:
            try:
                _check_onnx(path)
                parity = check_parity(module, path, check_batches, tolerance)
            except BaseException:
                os.unlink(path)
                raise
            return PendingExport(module, path, data, opset, meta, check_batches, tolerance, parity=parity)
        _start_worker_check(worker, module, path, check_batches)
        return PendingExport(module, path, data, opset, meta, check_batches, tolerance, worker)
    data = model.SerializeToString()  # once: the checker, onnxruntime and the file all take these bytes
    if worker is None:
        # In-process, the checks come before the file is written, as export_onnx has always done.
        _check_onnx(data)
        parity = check_parity(module, data, check_batches, tolerance)
        atomic_write_bytes(path, data)
        return PendingExport(module, path, data, opset, meta, check_batches, tolerance, parity=parity)
    atomic_write_bytes(path, data)
    _start_worker_check(worker, module, path, check_batches)
    return PendingExport(module, path, data, opset, meta, check_batches, tolerance, worker)


def _start_worker_check(worker, module, path: str, check_batches) -> None:
    inputs = {}
    for index, batch in enumerate(check_batches):
        for name, tensor in zip(module.input_names, module.example_inputs(batch=batch, seed=batch)):
            inputs[f"{index}:{name}"] = tensor.numpy()
    worker.check(path, inputs, list(module.output_names), list(check_batches))


def external_data_name(onnx_path: str | os.PathLike) -> str:
    """The side file that holds a large model's tensors, named after the ONNX file it belongs to."""
    return f"{os.path.basename(os.fspath(onnx_path))}.data"


def _finish_external(module, model, path: str, opset: int, meta, batches, tolerance: float,
                     data_location: str | None) -> PendingExport:
    """Write a model too large for one protobuf message: tensors in ``data_location`` beside ``path``, then
    check both files by path. On failure both files are removed."""
    location = data_location or external_data_name(path)
    folder = os.path.dirname(path) or "."
    data_path = os.path.join(folder, location)
    partial = f"{path}.partial-{os.getpid()}"
    try:
        onnx.save_model(model, partial, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=0)
        os.replace(partial, path)
        try:
            onnx.checker.check_model(path, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise NinportError(f"the exported ONNX graph fails onnx.checker: {str(exc).splitlines()[0]}") from None
        parity = check_parity(module, path, batches, tolerance)
    except BaseException:
        for leftover in (partial, path, data_path):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise
    meta = dict(meta, external_data=location)
    return PendingExport(module, path, b"", opset, meta, batches, tolerance, parity=parity)


def _check_onnx(data: bytes | str) -> None:
    try:
        onnx.checker.check_model(data, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise NinportError(f"the exported ONNX graph fails onnx.checker: {str(exc).splitlines()[0]}") from None


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc's malloc_trim): after a big export or forward the
    allocator keeps them, and the process's peak would count them again under the next step."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _torch_reference(module, batches) -> list[tuple[int, tuple, list[np.ndarray], list[np.ndarray]]]:
    """The torch module's outputs on the seeded parity inputs, in float32 and (the truth) in float64:
    (batch, inputs, float32 outputs, float64 outputs) per batch."""
    from ninport.parity import LEAN_BYTES, float64_module, forward_truth

    module.eval()
    module64 = None  # a big net's truth runs a layer at a time (ninport.parity.forward_truth) instead
    if parameter_bytes(module) <= LEAN_BYTES:
        try:
            module64 = float64_module(module)
        except (RuntimeError, TypeError, ValueError):
            module64 = None
    cases = []
    for batch in batches:
        release_freed_memory()
        inputs = module.example_inputs(batch=batch, seed=batch)
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        outputs = [t.numpy() for t in expected]
        release_freed_memory()
        try:
            truth = forward_truth(module, [t.numpy() for t in inputs], module64=module64)
            truths = [truth[n] for n in module.output_names]
        except (RuntimeError, TypeError, ValueError):  # a layer with no float64 path: judged by rtol alone
            truths = outputs
        cases.append((batch, inputs, outputs, truths))
    return cases


def _compare_outputs(module, cases, got, tolerance: float) -> list[Parity]:
    """onnxruntime against the float64 truth, with the float32 module's distance as the floor
    (``ninport.parity``); ``tolerance`` is the fixed relative floor (``--rtol``)."""
    from ninport.parity import NOISE_FACTOR, distance, judge

    results = []
    for (batch, _, expected, truths), outputs in zip(cases, got):
        for name, ref, truth, out in zip(module.output_names, expected, truths, outputs):
            floor = distance(truth, ref)[1]
            verdict = judge(truth, floor, out, tolerance)
            results.append(Parity(name, verdict.max_abs, verdict.rel, batch, floor, verdict.tolerance))
            if not verdict.ok:
                raise ParityError(
                    f"onnxruntime is off on blob {name!r} at batch {batch}: relative distance {verdict.rel:.3g} "
                    f"from a float64 forward > {verdict.tolerance:.3g} = max(rtol {tolerance:g}, "
                    f"{NOISE_FACTOR:g} × the float32 torch module's own {floor:.3g}); max abs {verdict.max_abs:.3g}"
                )
    return results


def check_parity(module, onnx_bytes: bytes | str, batches, tolerance: float) -> list[Parity]:
    """Run the ONNX model in onnxruntime (CPU) on seeded inputs and compare every output with torch."""
    from ninport.onnx.runtime import make_session

    # All torch runs first, then all onnxruntime runs: alternating them makes each runtime's idle threads
    # (torch's OpenMP pool, onnxruntime's spinning workers) compete with the other's on the same cores.
    cases = _torch_reference(module, batches)
    session = make_session(onnx_bytes, provider="cpu").session
    got = []
    for _, inputs, _, _ in cases:
        feeds = {name: t.numpy() for name, t in zip(module.input_names, inputs)}
        got.append(session.run(module.output_names, feeds))
    return _compare_outputs(module, cases, got, tolerance)


def check_any_size(module, net, probes: list[dict[str, tuple[int, ...]]], onnx_model: bytes | str,
                   tolerance: float) -> list[dict]:
    """``--dynamic-hw``: at each probe size, a module built for that size alone (Caffe's reshape, exact by
    construction) against the any-size module, blob by blob, and against onnxruntime's outputs.

    Raises a ParityError naming the first layer whose top differs, and the size.
    """
    from ninport.caffe.dynamic import net_at_size
    from ninport.caffe.shapes import infer_shapes
    from ninport.onnx.runtime import make_session
    from ninport.torch.build import build_module

    session = make_session(onnx_model, provider="cpu").session
    producers = {top: name for name, _, tops in module.plan for top in tops}
    report = []
    for index, sizes in enumerate(probes):
        other = net_at_size(net, sizes)
        static = build_module(other, infer_shapes(other))
        inputs = static.example_inputs(seed=100 + index)
        size = "×".join(str(d) for d in next(iter(sizes.values()))[2:])
        with torch.no_grad():
            want = static.forward_blobs(*inputs)
            have = module.forward_blobs(*inputs)
        for name, _, tops in static.plan:
            for top in tops:
                _, rel = compare(want[top].numpy(), have[top].numpy())
                if not rel <= tolerance:
                    raise ParityError(
                        f"layer {name!r}: with --dynamic-hw its top {top!r} differs from Caffe's reshape at input "
                        f"{size} (relative {rel:.3g}); this layer cannot take any size"
                    )
        feeds = {name: t.numpy() for name, t in zip(module.input_names, inputs)}
        outs = session.run(module.output_names, feeds)
        worst = 0.0
        for name, got in zip(module.output_names, outs):
            _, rel = compare(want[name].numpy(), got)
            if not rel <= tolerance:
                raise ParityError(
                    f"onnxruntime with symbolic H and W differs from Caffe's reshape on blob {name!r} (from layer "
                    f"{producers.get(name, '?')!r}) at input {size}: relative {rel:.3g} > {tolerance:g}"
                )
            worst = max(worst, rel)
        report.append({"input": {k: list(v) for k, v in sizes.items()}, "rel": worst})
    return report
