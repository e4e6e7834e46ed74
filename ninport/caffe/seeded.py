"""Seeded weights for any net: what the tests and ``tools/make_weights.py`` write instead of real models.

The values are drawn so activations keep a useful magnitude through deep nets (He-style scaling by fan-in),
which makes float comparisons between backends meaningful; they carry no trained knowledge.
"""

from __future__ import annotations

import os

import numpy as np

from ninport.caffe.caffemodel import write_caffemodel
from ninport.caffe.net import Net
from ninport.caffe.shapes import NetShapes, infer_shapes


def seeded_blobs(layer_type: str, shapes: list[tuple[int, ...]], rng: np.random.Generator) -> list[np.ndarray]:
    if layer_type == "BatchNorm":
        channels = shapes[0]
        factor = np.array([rng.uniform(0.5, 2.0)], dtype=np.float32)
        # Caffe stores running sums scaled by the factor; dividing by it gives the statistics.
        mean = rng.normal(0.0, 0.5, channels).astype(np.float32) * factor
        var = rng.uniform(0.5, 2.0, channels).astype(np.float32) * factor
        return [mean, var, factor]
    if layer_type == "BN":
        # The forks' BN: scale and shift (SegNet/ENet), then mean and a positive variance (PSPNet).
        values = [rng.uniform(0.5, 1.5, shapes[0]), rng.normal(0.0, 0.1, shapes[1])]
        if len(shapes) == 4:
            values += [rng.normal(0.0, 0.5, shapes[2]), rng.uniform(0.5, 2.0, shapes[3])]
        return [v.astype(np.float32) for v in values]
    out = []
    for i, shape in enumerate(shapes):
        if i == 0 and len(shape) >= 2:
            fan_in = int(np.prod(shape[1:])) if layer_type != "Deconvolution" else int(np.prod(shape[2:])) * shape[0]
            if layer_type == "InnerProduct" and len(shape) == 2:
                fan_in = shape[1]
            out.append(rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape).astype(np.float32))
        elif layer_type in ("Scale", "PReLU") and i == 0:
            out.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        else:
            out.append(rng.normal(0.0, 0.1, shape).astype(np.float32))
    return out


def seed_weights(net: Net, shapes: NetShapes | None = None, seed: int = 0) -> Net:
    """Fill every learnable layer of ``net`` with seeded weights of the shapes Caffe expects."""
    shapes = shapes or infer_shapes(net)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        expected = shapes.layers[layer.name].params
        layer.blobs = seeded_blobs(layer.type, expected, rng) if expected else []
    return net


def write_seeded_caffemodel(net: Net, path: str | os.PathLike, layout: str = "v2", seed: int = 0) -> Net:
    """Seed ``net`` and write its weights as a caffemodel in the ``v1`` or ``v2`` layout."""
    seed_weights(net, seed=seed)
    write_caffemodel(path, [(layer.name, layer.type, layer.blobs) for layer in net.layers if layer.blobs],
                     layout=layout, name=net.name)
    return net
