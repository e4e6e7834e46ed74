"""``ninport convert``: prototxt + caffemodel → a checked ONNX file and a pickle-free PyTorch file."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ninport.caffe.load import attach_weights, read_net
from ninport.caffe.shapes import infer_shapes
from ninport.errors import NinportError
from ninport.inspect import spatial_trace
from ninport.outputs import (
    atomic_write_bytes,
    check_outputs,
    make_folder,
    protecting,
    publish,
    remove_quietly,
    temp_path,
)


@dataclass
class ConvertResult:
    onnx_path: str
    pt_path: str
    trace: list[tuple[str, int]]
    params: int
    macs: int
    inputs: dict[str, tuple[int, ...]]
    outputs: list[str]
    parity: list = field(default_factory=list)
    seconds: float = 0.0
    opset: int = 17
    dynamic_batch: bool = True
    fp16: bool = False
    dynamic_hw: bool = False
    # --dynamic-hw: the probe input sizes checked against Caffe's reshape, with the worst relative error.
    sizes_checked: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "onnx": self.onnx_path,
            "pt": self.pt_path,
            "trace": [{"layer": name, "size": size} for name, size in self.trace],
            "params": self.params,
            "macs": self.macs,
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "outputs": self.outputs,
            "parity": [p.as_dict() for p in self.parity],
            "seconds": round(self.seconds, 3),
            "opset": self.opset,
            "dynamic_batch": self.dynamic_batch,
            "fp16": self.fp16,
            "dynamic_hw": self.dynamic_hw,
            "sizes_checked": self.sizes_checked,
        }


def _hash_in_background(prototxt, caffemodel) -> Callable[[], dict[str, str]]:
    """Start hashing the source files (the ONNX metadata records their sha256); the returned function waits
    for the digests. hashlib and file reads release the GIL, so this overlaps the torch import for free."""
    import hashlib
    import threading

    digests: dict[str, str] = {}

    def work() -> None:
        for key, path in (("caffe_prototxt_sha256", prototxt), ("caffe_caffemodel_sha256", caffemodel)):
            try:
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                        digest.update(chunk)
                digests[key] = digest.hexdigest()
            except OSError:  # a missing file is reported by the reader, in its own words
                pass

    thread = threading.Thread(target=work, name="ninport-hash", daemon=True)
    thread.start()

    def wait() -> dict[str, str]:
        thread.join()
        return dict(digests)

    return wait


def default_output(caffemodel: str | os.PathLike) -> str:
    stem = os.path.splitext(os.path.basename(os.fspath(caffemodel)))[0]
    return f"{stem}.onnx"


def convert(
    prototxt: str | os.PathLike,
    caffemodel: str | os.PathLike,
    output: str | os.PathLike | None = None,
    input_shape: str | Sequence[int] | None = None,
    phase: str = "TEST",
    opset: int = 17,
    static_batch: bool = False,
    tolerance: float = 1e-5,
    caffe_proto: str | os.PathLike | None = None,
    fp16: bool = False,
    dynamic_hw: bool = False,
) -> ConvertResult:
    """Convert a Caffe model; write ``OUT.onnx`` and ``OUT.pt`` only when both are built and checked.

    ``dynamic_hw``: H and W become symbolic in the ONNX graph and the module takes any size, checked at two
    other sizes against modules built for them; a layer that pins the size is named in the error.

    Every output path (the ONNX file, the .pt and the .onnx.data beside it) is checked against the inputs
    before any work: none may resolve to an input file, and ``output`` may not be a directory.
    """
    start = time.perf_counter()
    output = os.fspath(output) if output else default_output(caffemodel)
    pt_path = os.path.splitext(output)[0] + ".pt"
    folder = os.path.dirname(output)
    from ninport.onnx.export import external_data_name

    data_file = os.path.join(folder or ".", external_data_name(output))
    check_outputs([output, pt_path, data_file], [prototxt, caffemodel, caffe_proto])
    # Two cores against one import floor: a helper process imports onnx and onnxruntime (and later checks the
    # ONNX file) and a thread hashes the source files for the metadata, while this process imports torch.
    from ninport.onnx.runtime import start_check_worker

    worker = start_check_worker()
    digests = _hash_in_background(prototxt, caffemodel)
    from ninport.onnx.export import start_export
    from ninport.torch.build import build_module, save_pt
    from ninport.torch.registry import preflight

    hidden = hidden_pt = None
    done = False
    guard = protecting([prototxt, caffemodel, caffe_proto])
    guard.__enter__()
    try:
        net = read_net(prototxt, phase=phase, input_shape=input_shape, caffe_proto=caffe_proto)
        preflight(net)  # every unconvertible layer at once, before shapes or weights are looked at
        unread = [name for name in net.outputs if name in net.inputs]
        if unread:
            # Caffe keeps an input nobody reads as a net output; ONNX export drops such a pass-through.
            raise NinportError(f"{net.source}: input(s) {unread} are read by no layer (Caffe returns them as "
                               "outputs); ninport cannot export an input as an output: remove them or read them")
        shapes = infer_shapes(net)
        probes = []
        if dynamic_hw:
            from ninport.caffe.dynamic import check_dynamic_hw

            probes = check_dynamic_hw(net, shapes)
        attach_weights(net, caffemodel, shapes, caffe_proto=caffe_proto)
        module = build_module(net, shapes, dynamic_hw=dynamic_hw)
        make_folder(folder)
        # Export to hidden names beside the outputs first, so that a failing .pt write leaves no lone .onnx.
        hidden, hidden_pt = temp_path(output), temp_path(pt_path)
        # A model over 2 GB keeps its tensors in OUT.onnx.data, named for the final file from the start.
        try:
            pending = start_export(module, hidden, opset=opset, dynamic_batch=not static_batch,
                                   tolerance=tolerance, metadata=digests(), worker=worker,
                                   data_location=external_data_name(output))
        except RuntimeError as exc:
            if static_batch:
                raise
            # A layer that cuts or fixes the batch axis (a Slice along axis 0) runs at its declared batch only.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NinportError(f"{prototxt}: the net does not run at batch 1 as a dynamic batch needs ({first}); "
                               "convert with --static-batch") from None
        save_pt(module, hidden_pt)  # while the helper checks the ONNX file and runs it in onnxruntime
        result = pending.finish()
        sizes_checked = []
        if dynamic_hw:
            from ninport.onnx.export import check_any_size

            sizes_checked = check_any_size(module, net, probes, hidden, tolerance)
        if fp16 and "external_data" in result.metadata:
            raise NinportError("--fp16 is not supported for models over 2 GB (external data)")
        if fp16:
            result.parity = _to_float16(module, hidden, static_batch)
        publish(hidden_pt, pt_path)
        publish(hidden, output)
        done = True
    finally:
        if not done and hidden is not None and os.path.exists(data_file):
            remove_quietly(data_file)
        remove_quietly(hidden, hidden_pt)
        guard.__exit__(None, None, None)
        if worker is not None:
            worker.close()
    return ConvertResult(
        onnx_path=output,
        pt_path=pt_path,
        trace=spatial_trace(net, shapes),
        params=shapes.params(),
        macs=shapes.macs(),
        inputs=dict(net.inputs),
        outputs=net.outputs,
        parity=result.parity,
        seconds=time.perf_counter() - start,
        opset=opset,
        dynamic_batch=not static_batch,
        fp16=fp16,
        dynamic_hw=dynamic_hw,
        sizes_checked=sizes_checked,
    )


def _to_float16(module, path: str, static_batch: bool) -> list:
    """Rewrite the checked float32 file at ``path`` as float16 (float32 at the inputs and outputs), after
    checking the half-precision graph against the torch module at a tolerance suited to float16."""
    import onnx

    from ninport.onnx.export import check_parity
    from ninport.onnx.float16 import FP16_RTOL, to_float16

    half = to_float16(onnx.load(path)).SerializeToString()
    declared = next(iter(module.input_shapes.values()))[0] if module.input_shapes else 1
    parity = check_parity(module, half, (declared,) if static_batch else (1, 2), FP16_RTOL)
    atomic_write_bytes(path, half)
    return parity
