"""``ninport inspect``: the per-layer table of a Caffe net, with Caffe's shapes, parameters and MACs."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ninport.caffe.load import attach_weights, read_net
from ninport.caffe.net import Net
from ninport.caffe.shapes import NetShapes, infer_shapes


def spatial_trace(net: Net, shapes: NetShapes) -> list[tuple[str, int]]:
    """The spatial size (height) along the net: the input's, then each layer that changes it.

    For NiN at 224: 224 (data) → 54 (conv1) → 27 (pool0) → 13 (pool2) → 6 (pool3) → 1 (pool4).
    """
    trace: list[tuple[str, int]] = []
    for layer in net.layers:
        if not layer.tops:
            continue
        shape = shapes.blobs[layer.tops[0]]
        if len(shape) != 4:
            continue
        if not trace or trace[-1][1] != shape[2]:
            trace.append((layer.name, int(shape[2])))
    return trace


def format_trace(trace: list[tuple[str, int]]) -> str:
    return " → ".join(f"{size}" if i == 0 else f"{size} ({name})" for i, (name, size) in enumerate(trace))


def inspect_net(
    prototxt: str | os.PathLike,
    caffemodel: str | os.PathLike | None = None,
    input_shape: str | Sequence[int] | None = None,
    phase: str = "TEST",
    caffe_proto: str | os.PathLike | None = None,
) -> tuple[dict, Net, NetShapes]:
    """Describe a net as the JSON object ``ninport inspect --json`` prints, with the net and its shapes."""
    net = read_net(prototxt, phase=phase, input_shape=input_shape, caffe_proto=caffe_proto)
    shapes = infer_shapes(net)
    if caffemodel is not None:
        attach_weights(net, caffemodel, shapes, caffe_proto=caffe_proto)
    layers = []
    for layer in net.layers:
        ls = shapes.layers[layer.name]
        layers.append({
            "name": layer.name,
            "type": layer.type,
            "bottoms": list(layer.bottoms),
            "tops": list(layer.tops),
            "top_shapes": [list(shapes.blobs[t]) for t in layer.tops],
            "params": int(sum(_count(s) for s in ls.params)),
            "macs": int(ls.macs),
        })
    return {
        "name": net.name,
        "dialects": list(net.dialects.names) if net.dialects else [],
        "inputs": {name: list(shape) for name, shape in net.inputs.items()},
        "layers": layers,
        "total_params": int(shapes.params()),
        "total_macs": int(shapes.macs()),
    }, net, shapes


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_table(report: dict) -> str:
    rows = [("layer", "type", "bottoms → tops", "top shapes", "params", "MACs")]
    for layer in report["layers"]:
        rows.append((
            layer["name"],
            layer["type"],
            f"{', '.join(layer['bottoms']) or '-'} → {', '.join(layer['tops']) or '-'}",
            "  ".join("×".join(str(d) for d in s) or "scalar" for s in layer["top_shapes"]),
            f"{layer['params']:,}" if layer["params"] else "",
            _human(layer["macs"]) if layer["macs"] else "",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        cells = [c.ljust(w) if j < 4 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
