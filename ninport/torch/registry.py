"""The registry of layer converters: Caffe type name → function building the torch module for one layer.

Built-in converters live one family per file in ``ninport/torch/layers/``. Users add their own with
``ninport.register_layer("MyType")`` or through the ``ninport.layers`` entry-point group; replacing a
built-in needs ``override=True``, so nothing is replaced by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ninport.caffe.net import Layer, Net
from ninport.caffe.shapes import LayerShapes, NetShapes, Shape
from ninport.errors import NetError, UnsupportedLayerError


@dataclass
class LayerContext:
    """What a converter may know besides the layer: the shapes around it and its expected weight shapes."""

    layer: Layer
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]
    shapes: LayerShapes
    where: str

    def weight(self, index: int) -> torch.Tensor:
        """Blob ``index`` as a float32 tensor: the caffemodel's values, or zeros when the net has no weights
        yet (a module rebuilt before its state dict is loaded)."""
        expected = self.shapes.params[index]
        if self.layer.blobs:
            return torch.from_numpy(np.array(self.layer.blobs[index], dtype=np.float32, copy=True))
        return torch.zeros(expected, dtype=torch.float32)

    def unsupported(self, what: str) -> NetError:
        return NetError(f"{self.where}: layer {self.layer.name!r} ({self.layer.type}): {what} is not supported")


Converter = Callable[[LayerContext], nn.Module]
CONVERTERS: dict[str, Converter] = {}
_entry_points_loaded = False


def register_layer(layer_type: str, override: bool = False) -> Callable[[Converter], Converter]:
    """Register a converter for Caffe layer type ``layer_type``.

    The converter receives a ``LayerContext`` and returns an ``nn.Module`` whose ``forward`` takes the
    layer's bottoms as tensors and returns its top (or a tuple, one per top).
    """

    def decorate(fn: Converter) -> Converter:
        if layer_type in CONVERTERS and not override:
            raise ValueError(f"a converter for {layer_type!r} is already registered; pass override=True to replace it")
        CONVERTERS[layer_type] = fn
        return fn

    return decorate


def _load_builtins_and_plugins() -> None:
    global _entry_points_loaded
    import ninport.torch.layers  # noqa: F401  (registers the built-in converters)

    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="ninport.layers"):
        ep.load()


def converters() -> dict[str, Converter]:
    _load_builtins_and_plugins()
    return CONVERTERS


def preflight(net: Net) -> None:
    """Fail before building anything if any layer type has no converter; list every such layer."""
    from ninport.caffe.shapes import RULES

    known = converters()
    missing = [(layer.name, layer.type, net.where(layer)) for layer in net.layers
               if layer.type != "Input" and (layer.type not in known or layer.type not in RULES)]
    if missing:
        raise UnsupportedLayerError(missing)


def build_layer(layer: Layer, net: Net, shapes: NetShapes) -> nn.Module:
    ctx = LayerContext(
        layer=layer,
        bottom_shapes=[shapes.blobs[b] for b in layer.bottoms],
        top_shapes=[shapes.blobs[t] for t in layer.tops],
        shapes=shapes.layers[layer.name],
        where=net.where(layer),
    )
    return converters()[layer.type](ctx)
