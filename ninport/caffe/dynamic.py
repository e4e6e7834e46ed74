"""Whether a net takes any input height and width (``convert --dynamic-hw``), and the net at another size.

Caffe reshapes every layer when the input size changes (``Net::Reshape``). A layer pins the size when its
weights depend on it (InnerProduct after the spatial axes, a Scale over H×W), when its shape rule fails at
other sizes (Reshape with fixed dims), or when its converter folds the size into a constant (PriorBox).
The check runs Caffe's shape rules at the declared size and at larger probe sizes and compares.
"""

from __future__ import annotations

from dataclasses import replace

from ninport.caffe import caffe_pb2
from ninport.caffe.net import Layer, Net
from ninport.caffe.shapes import NetShapes, infer_shapes
from ninport.errors import NetError, NinportError

# Types whose converter folds the spatial size into constants: they pin the size whatever the shapes say.
PINNING_TYPES = {
    "PriorBox": "its boxes are folded to a constant for the declared size",
}
# Probe sizes, as (dH, dW) added to each 4-D input's declared size: multiples of 32 keep the downsampling of
# common nets (strides 2..32) in step, two different ones tell H and W apart.
PROBES = ((32, 64), (64, 32))


def spatial_inputs(net: Net) -> list[str]:
    """The net inputs with H and W (4-D): the ones ``--dynamic-hw`` makes symbolic."""
    return [name for name, shape in net.inputs.items() if len(shape) == 4]


def net_at_size(net: Net, sizes: dict[str, tuple[int, ...]]) -> Net:
    """The same net (same layer objects' weights) with some inputs at other shapes."""
    layers = []
    for layer in net.layers:
        if layer.type == "Input" and any(t in sizes for t in layer.tops):
            param = caffe_pb2.LayerParameter()
            param.CopyFrom(layer.param)
            del param.input_param.shape[:]
            for top in layer.tops:
                param.input_param.shape.add().dim.extend(sizes.get(top, net.inputs[top]))
            layer = replace(layer, param=param)
        layers.append(layer)
    inputs = {name: tuple(sizes.get(name, shape)) for name, shape in net.inputs.items()}
    return replace(net, layers=layers, inputs=inputs)


def probe_shapes(net: Net, delta: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    dh, dw = delta
    return {name: (*net.inputs[name][:2], net.inputs[name][2] + dh, net.inputs[name][3] + dw)
            for name in spatial_inputs(net)}


def check_dynamic_hw(net: Net, shapes: NetShapes | None = None) -> list[dict[str, tuple[int, ...]]]:
    """Raise a NetError naming the first layer that pins the input size; return the probe input shapes.

    ``shapes`` are the net's shapes at its declared size (computed when not given).
    """
    if not spatial_inputs(net):
        raise NetError(f"{net.source}: --dynamic-hw needs a 4-D (N,C,H,W) input; the inputs are "
                       f"{ {k: list(v) for k, v in net.inputs.items()} }")
    for layer in net.layers:
        if layer.type in PINNING_TYPES:
            raise _pinned(net, layer, PINNING_TYPES[layer.type])
    shapes = shapes or infer_shapes(net)
    probes = []
    for delta in PROBES:
        sizes = probe_shapes(net, delta)
        other = net_at_size(net, sizes)
        where = "×".join(str(d) for d in next(iter(sizes.values()))[2:])
        # Rule by rule, so that the first layer that fails or changes is the one named.
        got = _shapes_until_difference(other, shapes)
        if got is not None:
            layer, why = got
            raise _pinned(net, layer, f"{why} (tried an input of {where})")
        probes.append(sizes)
    return probes


def _shapes_until_difference(net: Net, declared: NetShapes) -> tuple[Layer, str] | None:
    from ninport.caffe.shapes import RULES

    blobs: dict[str, tuple[int, ...]] = {}
    for layer in net.layers:
        try:
            out = RULES[layer.type](layer, [blobs[b] for b in layer.bottoms])
        except (NinportError, ValueError, IndexError) as exc:
            return layer, f"Caffe's shape rule fails at another size: {exc}"
        params = [tuple(int(d) for d in p) for p in out.params]
        if params != [tuple(p) for p in declared.layers[layer.name].params]:
            return layer, f"its weights {[list(p) for p in declared.layers[layer.name].params]} depend on the size"
        for top, shape in zip(layer.tops, out.tops):
            blobs[top] = tuple(int(d) for d in shape)
    return None


def _pinned(net: Net, layer: Layer, why: str) -> NetError:
    return NetError(f"{net.where(layer)}: layer {layer.name!r} ({layer.type}) pins the input size, so "
                    f"--dynamic-hw cannot apply: {why}")
