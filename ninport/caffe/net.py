"""The normalized network every later stage sees: layers in execution order, V2 types, typed parameters.

A ``Net`` never shows V0/V1 enums or legacy blob dims. Phase rules are already applied, and in-place layers
are renamed so that every blob version has exactly one writer: the last writer of a Caffe blob keeps the Caffe
name (the value pycaffe's ``net.blobs`` holds after a forward pass), earlier versions are ``blob@layer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from google.protobuf import text_format

from ninport.caffe import caffe_pb2


@dataclass
class Layer:
    """One Caffe layer: name, V2 type, blob names in and out, its typed parameters and its weights."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: caffe_pb2.LayerParameter
    blobs: list[np.ndarray] = field(default_factory=list)
    line: int | None = None  # where the layer block starts in the prototxt, when known
    # The name the prototxt gives; differs from ``name`` only for a repeated name (Caffe never checks that
    # names are unique; ninport gives the second ``conv#2`` and so on, so modules and shapes stay addressable).
    caffe_name: str = ""

    # Caffe's own names for the blobs above; they differ from bottoms/tops only for in-place versions.
    caffe_bottoms: list[str] = field(default_factory=list)
    caffe_tops: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.caffe_name:
            self.caffe_name = self.name
        if not self.caffe_bottoms:
            self.caffe_bottoms = list(self.bottoms)
        if not self.caffe_tops:
            self.caffe_tops = list(self.tops)


@dataclass
class Net:
    """A Caffe net in normalized form, plus where it came from and what its data layer declared."""

    name: str
    layers: list[Layer]
    inputs: dict[str, tuple[int, ...]]
    source: str = "<net>"
    weights_source: str | None = None
    phase: str = "TEST"
    # The preprocessing the data layer declared (crop_size, mean_file, mean_value, scale, mirror), if any.
    preprocess: dict = field(default_factory=dict)
    # Fields of a fork's schema (--caffe-proto) that ninport had to interpret, for reports and plugins.
    fork_fields: list = field(default_factory=list)
    # The Caffe fork dialect(s) the file was written in (ninport.caffe.dialects.DialectReport), when read.
    dialects: object | None = None

    def where(self, layer: Layer) -> str:
        return f"{self.source}:{layer.line}" if layer.line else self.source

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def outputs(self) -> list[str]:
        """Blobs no layer consumes, in the order they are produced: the net's outputs.

        A blob only Silence reads is still an output: Silence just quiets Caffe's log of unread tops, and a
        net that silences its last blob (colorization) still means it as its result.
        """
        consumed = {b for layer in self.layers if layer.type != "Silence" for b in layer.bottoms}
        outs: dict[str, None] = {}  # an ordered set: linear in the number of tops
        for layer in self.layers:
            for t in layer.tops:
                if t not in consumed:
                    outs.setdefault(t)
        return list(outs)

    def caffe_name(self, blob: str) -> str:
        """Caffe's name of a blob version (``conv1@conv1`` is Caffe's ``conv1`` before its in-place ReLU)."""
        names: dict[str, str] = {}
        for layer in self.layers:
            for top, caffe_top in zip(layer.tops, layer.caffe_tops):
                names.setdefault(top, caffe_top)
        return names.get(blob, blob)

    def producers(self) -> dict[str, Layer]:
        return {top: layer for layer in self.layers for top in layer.tops}

    def to_prototxt(self) -> str:
        """The normalized net as V2 prototxt text; reading it back gives the same net (without weights)."""
        message = caffe_pb2.NetParameter()
        message.name = self.name
        for layer in self.layers:
            message.layer.append(layer.param)
        return text_format.MessageToString(message)

    def param_count(self) -> int:
        return int(sum(b.size for layer in self.layers for b in layer.blobs))
