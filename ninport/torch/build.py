"""Build, save and reload PyTorch modules of Caffe nets.

The ``.pt`` file is a plain dictionary of tensors and strings (loadable with ``torch.load(...,
weights_only=True)``, no pickled classes): the state dict keyed by Caffe layer names, the normalized prototxt
text that rebuilds the module, and the preprocessing the data layer declared.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Sequence

import numpy as np
import torch

from ninport.caffe.load import attach_weights, read_net
from ninport.caffe.net import Net
from ninport.caffe.prototxt import parse_text
from ninport.caffe.shapes import NetShapes, infer_shapes
from ninport.caffe.upgrade import normalize
from ninport.errors import ParseError
from ninport.torch.module import CaffeNet
from ninport.torch.registry import preflight

PT_FORMAT = "ninport.pt/1"


def build_module(net: Net, shapes: NetShapes | None = None, dynamic_hw: bool = False) -> CaffeNet:
    """A ``CaffeNet`` for a normalized ``Net`` (weights from its blobs), in eval mode.

    When the net carries weights, torch's own random initialization of each layer is skipped: the caffemodel's
    values replace it at once, and for a VGG-16-sized net drawing 138 M random numbers costs seconds. The
    parameters share memory with the blobs where those are writable float32 arrays (see ``LayerContext``).
    ``dynamic_hw``: the module takes any input height and width (check the net first with
    ``ninport.caffe.dynamic.check_dynamic_hw``).
    """
    shapes = shapes or infer_shapes(net)
    if any(layer.blobs for layer in net.layers):
        _own_weights(net)
        with _no_random_init():
            module = CaffeNet(net, shapes, dynamic_hw=dynamic_hw)
    else:
        module = CaffeNet(net, shapes, dynamic_hw=dynamic_hw)
    return module.eval()


_COPY_CHUNK = 4 << 20  # floats: 16 MB


def _own_weights(net: Net) -> None:
    """Give every blob that is a view of a mapped caffemodel (the wire reader's) its own aligned float32 copy,
    which the module's parameter then shares, and drop the mapped pages each copy was read from.

    Packed floats in a caffemodel sit at any byte offset, so the views are mostly misaligned and cannot be
    parameters themselves. Copying blob by blob and releasing the file pages behind each one keeps the
    process at one copy of the weights, not the mapped file plus the copies.
    """
    for layer in net.layers:
        for index, array in enumerate(layer.blobs):
            if not isinstance(array, np.ndarray):
                continue
            if array.dtype == np.float32 and array.flags.writeable and array.flags.aligned \
                    and array.flags.c_contiguous:
                continue
            if not array.flags.c_contiguous or array.dtype != np.float32:
                layer.blobs[index] = np.array(array, dtype=np.float32, order="C", copy=True)
                _release_mapped(array)
                continue
            # In pieces, so that at most one piece of the file is mapped in beside the copy.
            copy = np.empty(array.shape, dtype=np.float32)
            source, target = array.reshape(-1), copy.reshape(-1)
            for start in range(0, source.size, _COPY_CHUNK):
                piece = source[start: start + _COPY_CHUNK]
                target[start: start + _COPY_CHUNK] = piece
                _release_mapped(piece)
            layer.blobs[index] = copy


def _release_mapped(array: np.ndarray) -> None:
    """Tell the kernel this process no longer needs the pages of the mapping under ``array`` (they stay in the
    page cache and fault back in from the file if the array is read again)."""
    base = array
    while isinstance(base, np.ndarray | memoryview):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    if not isinstance(base, mmap.mmap) or not hasattr(base, "madvise") or array.nbytes == 0:
        return
    start_address = np.frombuffer(base, dtype=np.uint8, count=1).ctypes.data
    offset = array.ctypes.data - start_address
    page = mmap.PAGESIZE
    first = offset // page * page
    try:
        base.madvise(mmap.MADV_DONTNEED, first, offset + array.nbytes - first)
    except (OSError, ValueError):  # advice only
        pass


class _no_random_init:
    """Make ``torch.nn.init``'s random fills (and ``reset_parameters`` of the layer classes) no-ops for the
    duration: the tensors are still allocated, only left unfilled, since the caffemodel overwrites them."""

    _names = ("kaiming_uniform_", "kaiming_normal_", "uniform_", "normal_", "xavier_uniform_", "xavier_normal_",
              "trunc_normal_")

    def __enter__(self):
        self._saved = {name: getattr(torch.nn.init, name) for name in self._names}
        for name in self._names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._saved.items():
            setattr(torch.nn.init, name, fn)


def load(
    prototxt: str | os.PathLike,
    caffemodel: str | os.PathLike | None = None,
    input_shape: str | Sequence[int] | None = None,
    phase: str = "TEST",
    caffe_proto: str | os.PathLike | None = None,
) -> CaffeNet:
    """Read a prototxt and caffemodel of any Caffe vintage and return the equivalent ``nn.Module``.

    ``caffe_proto``: the schema of a Caffe fork, for files that use fields upstream Caffe lacks.
    """
    net = read_net(prototxt, phase=phase, input_shape=input_shape, caffe_proto=caffe_proto)
    preflight(net)  # every unconvertible layer at once, before shapes or weights are looked at
    shapes = infer_shapes(net)
    if caffemodel is not None:
        attach_weights(net, caffemodel, shapes, caffe_proto=caffe_proto)
    return build_module(net, shapes)


def save_pt(module: CaffeNet, path: str | os.PathLike) -> None:
    """Write ``module`` as a pickle-free ``.pt`` file, whole or not at all."""
    payload = {
        "format": PT_FORMAT,
        "prototxt": module.prototxt,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
        "preprocess": json.dumps(module.preprocess, sort_keys=True),
        "caffe_blob_names": json.dumps(module.caffe_blob_names),
        "source": str(module.source),
        "weights_source": str(module.weights_source or ""),
        "dynamic_hw": bool(getattr(module, "dynamic_hw", False)),
    }
    # Straight to a temporary file beside ``path`` (torch writes each tensor from its own memory, no in-memory
    # copy of the whole file), then renamed: whole or not at all.
    path = os.fspath(path)
    tmp = f"{path}.partial-{os.getpid()}"
    try:
        # Through a file object: torch names the archive's root folder after a path's file name, and the
        # temporary name would make the bytes differ from run to run.
        with open(tmp, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_pt(path: str | os.PathLike) -> CaffeNet:
    """Rebuild a module saved by ``save_pt`` (or ``ninport convert``) without unpickling any code."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ParseError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ParseError(f"{path}: not a ninport .pt file ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != PT_FORMAT:
        raise ParseError(f"{path}: not a ninport .pt file (no {PT_FORMAT!r} marker)")
    from ninport.caffe import caffe_pb2

    message = parse_text(payload["prototxt"], caffe_pb2.NetParameter(), f"{path}:prototxt")
    net = normalize(message, None, payload.get("source") or path)
    caffe_names = json.loads(payload.get("caffe_blob_names", "{}"))
    for layer in net.layers:
        layer.caffe_tops = [caffe_names.get(t, t) for t in layer.tops]
    net.preprocess = json.loads(payload.get("preprocess", "{}"))
    net.weights_source = payload.get("weights_source") or None
    module = build_module(net, dynamic_hw=bool(payload.get("dynamic_hw", False)))
    module.load_state_dict(payload["state_dict"], strict=True)
    return module
