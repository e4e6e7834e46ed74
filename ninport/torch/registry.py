"""The registry of layer converters: Caffe type name → function building the torch module for one layer.

Built-in converters live one family per file in ``ninport/torch/layers/``. Users add their own with
``ninport.register_layer("MyType")`` or through the ``ninport.layers`` entry-point group; replacing a
built-in needs ``override=True``, so nothing is replaced by accident.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ninport.caffe.net import Layer, Net
from ninport.caffe.shapes import LayerShapes, NetShapes, Shape
from ninport.errors import NetError, NinportError, UnsupportedLayerError


@dataclass
class LayerContext:
    """What a converter may know besides the layer: the shapes around it and its expected weight shapes."""

    layer: Layer
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]
    shapes: LayerShapes
    where: str
    # ``convert --dynamic-hw``: the module must take any height and width (Caffe's reshape at each size), so
    # nothing may be precomputed from the spatial sizes above.
    dynamic_hw: bool = False

    def weight(self, index: int) -> torch.Tensor:
        """Blob ``index`` as a float32 tensor: the caffemodel's values, or zeros when the net has no weights
        yet (a module rebuilt before its state dict is loaded)."""
        expected = self.shapes.params[index]
        if self.layer.blobs:
            array = self.layer.blobs[index]
            # A writable, aligned float32 array (the wire reader's copy-on-write mapping of the caffemodel)
            # becomes the parameter itself: no second copy of the weights. Anything else is copied.
            if (isinstance(array, np.ndarray) and array.dtype == np.float32 and array.flags.writeable
                    and array.flags.aligned and array.flags.c_contiguous):
                return torch.from_numpy(array)
            return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))
        return torch.zeros(expected, dtype=torch.float32)

    def unsupported(self, what: str) -> NetError:
        return NetError(f"{self.where}: layer {self.layer.name!r} ({self.layer.type}): {what} is not supported")


Converter = Callable[[LayerContext], nn.Module]
# A shape rule takes the layer and its bottom shapes; it returns a ``LayerShapes`` (tops, weight shapes, MACs)
# or, for a layer without weights, just the list of top shapes.
ShapeRule = Callable[[Layer, list[Shape]], "LayerShapes | Sequence[Shape]"]

CONVERTERS: dict[str, Converter] = {}
# A short note per converted type (what it supports or does not), shown by ``ninport layers``.
NOTES: dict[str, str] = {}
# The notes of the converters that ship with ninport, kept even if a plugin overrides one.
BUILTIN_NOTES: dict[str, str] = {}
# Built-in shape rules a plugin replaced (override=True), so the table of ninport alone can still be made.
REPLACED_RULES: dict[str, Callable] = {}
_builtins_loaded = False
_entry_points_loaded = False


def _ensure_builtins() -> None:
    """Import the built-in converters before any plugin registers, so that a plugin claiming a built-in type
    without ``override=True`` fails at its own registration, whatever the import order."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    try:
        import ninport.torch.layers  # noqa: F401  (registers the built-in converters)
    except BaseException:
        _builtins_loaded = False
        raise


def _builtin_fn(fn) -> bool:
    return (getattr(fn, "__module__", None) or "").startswith("ninport.torch.layers.")


def is_builtin(layer_type: str) -> bool:
    """Whether the converter registered for ``layer_type`` is one of ninport's own."""
    fn = CONVERTERS.get(layer_type)
    return fn is not None and _builtin_fn(fn)


_BUILTIN_RULE_MODULES = ("ninport.caffe.shapes", "ninport.caffe.fork_shapes", "ninport.caffe.ssd")


def builtin_rule_types() -> set[str]:
    """Types with a shape rule that ships with ninport (``ninport.caffe.shapes``), overridden or not."""
    from ninport.caffe.shapes import RULES

    own = {t for t, fn in RULES.items() if getattr(fn, "__module__", "") in _BUILTIN_RULE_MODULES}
    return own | set(REPLACED_RULES)


def _as_rule(layer_type: str, fn: ShapeRule) -> Callable[[Layer, list[Shape]], LayerShapes]:
    def rule(layer: Layer, bottoms: list[Shape]) -> LayerShapes:
        out = fn(layer, bottoms)
        if isinstance(out, LayerShapes):
            return out
        try:
            return LayerShapes([tuple(int(d) for d in top) for top in out])
        except TypeError:
            raise NetError(
                f"layer {layer.name!r}: the shape rule registered for {layer_type!r} returned {out!r}, "
                "not a LayerShapes or a list of top shapes"
            ) from None

    rule.__name__ = getattr(fn, "__name__", "rule")
    rule.__wrapped__ = fn  # type: ignore[attr-defined]
    return rule


def register_layer(
    layer_type: str,
    override: bool = False,
    shape: ShapeRule | None = None,
    notes: str | None = None,
) -> Callable[[Converter], Converter]:
    """Register a converter for Caffe layer type ``layer_type`` (use as a decorator).

    The converter receives a ``LayerContext`` and returns an ``nn.Module`` whose ``forward`` takes the
    layer's bottoms as tensors and returns its top (or a tuple, one per top). ``shape`` is the type's shape
    rule, needed unless ninport already has one for the type (see ``ninport layers``). ``notes`` is a short
    line on what the converter supports and restricts, for the support table. Replacing an existing converter
    or shape rule (built-in or not) needs ``override=True``.
    """
    from ninport.caffe.shapes import RULES

    def decorate(fn: Converter) -> Converter:
        _ensure_builtins()
        if layer_type in CONVERTERS and not override:
            where = "built into ninport" if is_builtin(layer_type) else "already registered"
            raise ValueError(
                f"a converter for {layer_type!r} is {where}; pass override=True to register_layer to replace it"
            )
        if shape is not None and layer_type in RULES and not override:
            raise ValueError(
                f"a shape rule for {layer_type!r} is already registered; pass override=True to replace it"
            )
        if shape is not None:
            old = RULES.get(layer_type)
            if old is not None and getattr(old, "__module__", "") in _BUILTIN_RULE_MODULES:
                REPLACED_RULES.setdefault(layer_type, old)
            RULES[layer_type] = _as_rule(layer_type, shape)
        if _builtin_fn(fn):
            BUILTIN_NOTES[layer_type] = notes or ""
        CONVERTERS[layer_type] = fn
        if notes is not None:
            NOTES[layer_type] = notes
        elif override:
            NOTES.pop(layer_type, None)
        return fn

    return decorate


def _load_builtins_and_plugins() -> None:
    global _entry_points_loaded
    _ensure_builtins()
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    load_plugins()


def load_plugins() -> list[str]:
    """Load every ``ninport.layers`` entry point: a module (importing it registers its converters) or a
    function called with no arguments. Returns the entry points' names."""
    from importlib.metadata import entry_points

    _ensure_builtins()
    names = []
    for ep in entry_points(group="ninport.layers"):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
        except NinportError:
            raise
        except Exception as exc:
            raise NinportError(
                f"the ninport.layers plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        names.append(ep.name)
    return names


def converters() -> dict[str, Converter]:
    _load_builtins_and_plugins()
    return CONVERTERS


def preflight(net: Net) -> None:
    """Fail before building anything if any layer type has no converter; list every such layer."""
    from ninport.caffe.shapes import RULES

    known = converters()
    ruleless = sorted({layer.type for layer in net.layers if layer.type in known and layer.type not in RULES})
    if ruleless:
        layers = [f"{layer.name!r} ({net.where(layer)})" for layer in net.layers if layer.type in ruleless]
        raise NetError(
            f"layer type(s) {', '.join(ruleless)} have a converter but no shape rule "
            f"(give one with register_layer(..., shape=fn)): {'; '.join(layers)}"
        )
    from ninport.caffe.shapes import layer_known

    missing = [(layer.name, layer.type, net.where(layer)) for layer in net.layers
               if layer.type != "Input" and (layer.type not in known or layer.type not in RULES
                                             or not layer_known(layer))]
    if missing:
        raise UnsupportedLayerError(missing)


def build_layer(layer: Layer, net: Net, shapes: NetShapes, dynamic_hw: bool = False) -> nn.Module:
    ctx = LayerContext(
        layer=layer,
        bottom_shapes=[shapes.blobs[b] for b in layer.bottoms],
        top_shapes=[shapes.blobs[t] for t in layer.tops],
        shapes=shapes.layers[layer.name],
        where=net.where(layer),
        dynamic_hw=dynamic_hw,
    )
    return converters()[layer.type](ctx)
