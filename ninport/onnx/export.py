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
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from ninport import __version__
from ninport.caffe.caffemodel import atomic_write_bytes
from ninport.errors import NinportError, ParityError

DEFAULT_OPSET = 17
# Models whose weights pass this size are written with their tensors in a side file ("external data"): one
# protobuf message cannot exceed 2 GB.
EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass
class Parity:
    """How far one backend's output is from a reference: max abs difference and that over max |reference|."""

    blob: str
    max_abs: float
    rel: float
    batch: int

    def as_dict(self) -> dict:
        return {"blob": self.blob, "max_abs": self.max_abs, "rel": self.rel, "batch": self.batch}


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
    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if reference.shape != other.shape:
        return float("inf"), float("inf")
    max_abs = float(np.max(np.abs(reference - other))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


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


def parameter_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def to_onnx_model(module, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
                  batch: int | None = None) -> onnx.ModelProto:
    """Trace ``module`` with the TorchScript-based exporter (fast and stable for these graphs).

    Every Caffe blob gets its own name in the graph (inputs, outputs and intermediate tensors), so a
    verification copy can expose any blob by name; the ``blob_aliases`` metadata maps blobs whose value is
    another blob's (an inference-time Dropout, a Split) to the tensor that holds it.
    """
    module = module.eval()
    args = module.example_inputs(batch=batch)
    wrapper = _EveryBlob(module).eval()  # the exporter restores the wrapper's mode afterwards: keep it eval
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "N"} for name in module.input_names + wrapper.blob_names}
    if getattr(module, "dynamic_hw", False):
        dynamic_axes = _dynamic_hw_axes(module, wrapper.blob_names, dynamic_axes or {})
    # Past protobuf's 2 GB the exporter cannot hand back one message: it writes a file with external data.
    large = parameter_bytes(module) > EXTERNAL_DATA_BYTES
    scratch = tempfile.TemporaryDirectory(prefix="ninport-export-") if large else None
    target = os.path.join(scratch.name, "model.onnx") if large else io.BytesIO()
    with warnings.catch_warnings():
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
                export_params=True,
                keep_initializers_as_inputs=False,
                dynamo=False,
            )
    if large:
        with scratch:
            model = onnx.load(target, load_external_data=True)
    else:
        model = onnx.load_from_string(target.getvalue())
    # Initializers are named after the wrapper's attribute ("net.conv1.weight"); give them the state dict's names.
    renames = {i.name: i.name[len("net.") :] for i in model.graph.initializer if i.name.startswith("net.")}
    for init in model.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
    aliases = _prune_to_outputs(model, module.output_names)
    if aliases:
        model.metadata_props.add(key="blob_aliases", value=json.dumps(aliases, sort_keys=True))
    return model


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
            _check_onnx(self.data)
            parity = check_parity(self.module, self.data, self.batches, self.tolerance)
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
    model = to_onnx_model(module, opset=opset, dynamic_batch=dynamic_batch, batch=trace_batch)
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
    if parameter_bytes(module) > EXTERNAL_DATA_BYTES:
        return _finish_external(module, model, path, opset, meta, check_batches, tolerance, data_location)
    data = model.SerializeToString()  # once: the checker, onnxruntime and the file all take these bytes
    if worker is None:
        # In-process, the checks come before the file is written, as export_onnx has always done.
        _check_onnx(data)
        parity = check_parity(module, data, check_batches, tolerance)
        atomic_write_bytes(path, data)
        return PendingExport(module, path, data, opset, meta, check_batches, tolerance, parity=parity)
    atomic_write_bytes(path, data)
    inputs = {}
    for index, batch in enumerate(check_batches):
        for name, tensor in zip(module.input_names, module.example_inputs(batch=batch, seed=batch)):
            inputs[f"{index}:{name}"] = tensor.numpy()
    worker.check(path, inputs, list(module.output_names), list(check_batches))
    return PendingExport(module, path, data, opset, meta, check_batches, tolerance, worker)


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


def _check_onnx(data: bytes) -> None:
    try:
        onnx.checker.check_model(data, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise NinportError(f"the exported ONNX graph fails onnx.checker: {str(exc).splitlines()[0]}") from None


def _torch_reference(module, batches) -> list[tuple[int, tuple, list[np.ndarray]]]:
    """The torch module's outputs on the seeded parity inputs: (batch, inputs, outputs) per batch."""
    module.eval()
    cases = []
    for batch in batches:
        inputs = module.example_inputs(batch=batch, seed=batch)
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        cases.append((batch, inputs, [t.numpy() for t in expected]))
    return cases


def _compare_outputs(module, cases, got, tolerance: float) -> list[Parity]:
    results = []
    for (batch, _, expected), outputs in zip(cases, got):
        for name, ref, out in zip(module.output_names, expected, outputs):
            max_abs, rel = compare(ref, out)
            results.append(Parity(name, max_abs, rel, batch))
            if not rel <= tolerance:
                raise ParityError(
                    f"onnxruntime and the torch module differ on blob {name!r} at batch {batch}: "
                    f"max abs {max_abs:.3g}, relative {rel:.3g} > {tolerance:g}"
                )
    return results


def check_parity(module, onnx_bytes: bytes, batches, tolerance: float) -> list[Parity]:
    """Run the ONNX model in onnxruntime (CPU) on seeded inputs and compare every output with torch."""
    from ninport.onnx.runtime import make_session

    # All torch runs first, then all onnxruntime runs: alternating them makes each runtime's idle threads
    # (torch's OpenMP pool, onnxruntime's spinning workers) compete with the other's on the same cores.
    cases = _torch_reference(module, batches)
    session = make_session(onnx_bytes, provider="cpu").session
    got = []
    for _, inputs, _ in cases:
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
