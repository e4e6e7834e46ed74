"""``CaffeNet``: a Caffe net as one ``nn.Module``, each Caffe layer a submodule under its Caffe name.

``forward`` returns the net's outputs (blobs no layer consumes); ``forward_blobs`` returns every blob version,
keyed by the normalized blob names of the ``Net`` (Caffe's name for the last value of each blob).
"""

from __future__ import annotations

import json

import torch
from torch import nn

from ninport.caffe.net import Net
from ninport.caffe.shapes import NetShapes
from ninport.torch.registry import build_layer, preflight


def module_key(layer_name: str) -> str:
    """The torch module name of a Caffe layer: its own name, with each '.' (which Caffe allows and torch reads as
    a path separator) written as the one-dot leader '\u2024'."""
    return layer_name.replace(".", "\u2024")

class CaffeNet(nn.Module):
    def __init__(self, net: Net, shapes: NetShapes, dynamic_hw: bool = False):
        super().__init__()
        preflight(net)
        # Whether the module takes any input height and width (see ``ninport.caffe.dynamic``).
        self.dynamic_hw = dynamic_hw
        self.net_name = net.name
        self.input_names = list(net.inputs)
        self.input_shapes = {k: tuple(v) for k, v in net.inputs.items()}
        # Inputs whose first axis is not the batch: example inputs and a dynamic export keep their shape.
        self.batchless_inputs = batchless_inputs(net, shapes)
        self.output_names = list(net.outputs)
        self.blob_shapes = dict(shapes.blobs)
        self.caffe_blob_names = {top: ctop for layer in net.layers for top, ctop in zip(layer.tops, layer.caffe_tops)}
        self.prototxt = net.to_prototxt()
        self.preprocess = dict(net.preprocess)
        self.source = net.source
        self.weights_source = net.weights_source
        # (layer name, bottoms, tops) in execution order; Input layers only name the forward arguments.
        self.plan: list[tuple[str, list[str], list[str]]] = []
        self.layer_types: dict[str, str] = {}
        for layer in net.layers:
            self.layer_types[layer.name] = layer.type
            if layer.type == "Input":
                continue
            self.add_module(module_key(layer.name), build_layer(layer, net, shapes, dynamic_hw=dynamic_hw))
            self.plan.append((layer.name, list(layer.bottoms), list(layer.tops)))

    def layer_module(self, name: str) -> torch.nn.Module:
        """The module of Caffe layer ``name`` (``get_submodule`` works too, with a '.' written as '\u2024')."""
        return self._modules[module_key(name)]

    def forward_blobs(self, *inputs: torch.Tensor, **named: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the net and return every blob version by name (inputs included)."""
        return self._run(self._bind_inputs(inputs, named), drop=False)

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor):
        # As forward_blobs, but each blob is let go after its last reader: a big net's activations are not all
        # held at once.
        blobs = self._run(self._bind_inputs(inputs, named), drop=True)
        outs = tuple(blobs[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    def _run(self, blobs: dict[str, torch.Tensor], drop: bool, call=None) -> dict[str, torch.Tensor]:
        """The plan over ``blobs`` (the bound inputs). ``drop``: let each blob go after its last reader (outputs
        stay). ``call(layer_module, bottoms)`` runs one layer instead of the module itself (the float64 truth of
        ``ninport.parity`` runs a float64 copy of it)."""
        last_read = getattr(self, "_last_read", None)
        if last_read is None:
            last_read = self._last_read = {b: i for i, (_, bottoms, _) in enumerate(self.plan) for b in bottoms}
        keep = set(self.output_names)
        for step, (name, bottoms, tops) in enumerate(self.plan):
            layer, args = self._modules[module_key(name)], [blobs[b] for b in bottoms]
            out = layer(*args) if call is None else call(layer, args)
            if len(tops) == 1:
                blobs[tops[0]] = out
            else:
                for top, value in zip(tops, out):
                    blobs[top] = value
            if drop:
                for b in bottoms:
                    if last_read.get(b) == step and b not in keep:
                        blobs.pop(b, None)
        return blobs

    def _bind_inputs(self, inputs, named) -> dict[str, torch.Tensor]:
        if len(inputs) + len(named) != len(self.input_names):
            raise TypeError(f"the net takes inputs {self.input_names}, got {len(inputs) + len(named)} tensors")
        blobs = dict(zip(self.input_names, inputs))
        for name, value in named.items():
            if name not in self.input_names:
                raise TypeError(f"the net has no input {name!r}; its inputs are {self.input_names}")
            blobs[name] = value
        return blobs

    def example_inputs(self, batch: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Seeded random inputs of the net's input shapes (batch replaced when given)."""
        gen = torch.Generator().manual_seed(seed)
        out = []
        for name in self.input_names:
            shape = list(self.input_shapes[name])
            if batch is not None and shape and name not in self.batchless_inputs:
                shape[0] = batch
            out.append(torch.randn(*shape, generator=gen))
        return tuple(out)

    def metadata(self) -> dict[str, str]:
        return {"net_name": self.net_name, "preprocess": json.dumps(self.preprocess, sort_keys=True)}

    def extra_repr(self) -> str:
        return f"name={self.net_name!r}, inputs={self.input_names}, outputs={self.output_names}"


def batchless_inputs(net: Net, shapes: NetShapes) -> list[str]:
    """Net inputs whose first axis is no batch axis: the second bottom of a Scale or Bias with ``axis`` past 0
    lines up with the first bottom's axes from ``axis`` on (scale_layer.cpp, bias_layer.cpp), so its dim 0 is
    one of the data's inner axes, whatever the batch."""
    out = []
    for layer in net.layers:
        if layer.type not in ("Scale", "Bias") or len(layer.bottoms) < 2 or layer.bottoms[1] not in net.inputs:
            continue
        p = layer.param.scale_param if layer.type == "Scale" else layer.param.bias_param
        axis = p.axis + (len(shapes.blobs[layer.bottoms[0]]) if p.axis < 0 else 0)
        if axis > 0 and layer.bottoms[1] not in out:
            out.append(layer.bottoms[1])
    return out
