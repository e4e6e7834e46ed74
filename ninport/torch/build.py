"""Build, save and reload PyTorch modules of Caffe nets.

The ``.pt`` file is a plain dictionary of tensors and strings (loadable with ``torch.load(...,
weights_only=True)``, no pickled classes): the state dict keyed by Caffe layer names, the normalized prototxt
text that rebuilds the module, and the preprocessing the data layer declared.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence

import torch

from ninport.caffe.caffemodel import atomic_write_bytes
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
    """A ``CaffeNet`` for a normalized ``Net`` (weights copied from its blobs), in eval mode.

    ``dynamic_hw``: the module takes any input height and width (check the net first with
    ``ninport.caffe.dynamic.check_dynamic_hw``)."""
    module = CaffeNet(net, shapes or infer_shapes(net), dynamic_hw=dynamic_hw)
    return module.eval()


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
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


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
