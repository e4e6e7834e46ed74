"""Caffe's shared blobs, reproduced on the normalized ``Net``.

In Caffe the tops of a Split share memory with its bottom (split_layer.cpp, ``ShareData``), and so do the tops of
Flatten, Reshape, a one-top Slice and a one-bottom Concat. A layer that then works in place on one of those blobs
changes what all of them hold, for every layer that reads them later and for the net's outputs. ninport keeps one
tensor per blob version, so this pass makes those later reads explicit: before the first layer that reads an alias
produced *before* such an in-place write, it inserts an identity layer (a one-top Split, or a Reshape back to the
alias's shape) that gives the written value under the alias's name, and the reader reads that version. An alias
that is a net output gets the same layer at the end of the net. As everywhere in the normalized net, the last
version of a Caffe blob keeps Caffe's name (the value pycaffe's ``net.blobs`` shows after a forward pass) and
earlier versions are ``blob@layer``; alias versions that nothing reads any more are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from ninport.caffe import caffe_pb2
from ninport.caffe.net import Layer, Net

Shape = tuple[int, ...]


def shares_memory(layer: Layer) -> bool:
    """Whether every top of ``layer`` is a view of its (single) bottom's memory in Caffe."""
    if layer.type in ("Split", "Flatten", "Reshape"):
        return len(layer.bottoms) == 1
    # slice_layer.cpp / concat_layer.cpp: a Slice with one top, or a Concat with one bottom, shares its
    # bottom's data instead of copying it.
    return len(layer.bottoms) == 1 and len(layer.tops) == 1 and layer.type in ("Slice", "Concat")


def in_place_pairs(layer: Layer) -> list[tuple[str, str]]:
    """(bottom version, top version) of every top Caffe computes in place (same name, same position)."""
    return [(layer.bottoms[i], layer.tops[i]) for i in range(min(len(layer.bottoms), len(layer.tops)))
            if layer.caffe_bottoms[i] == layer.caffe_tops[i]]


def _identity_layer(name: str, bottom: str, caffe_bottom: str, caffe_top: str, shape: Shape | None,
                    line: int | None) -> Layer:
    """A layer giving ``bottom``'s data as top ``name``: a one-top Split, or, when the alias has another
    shape, a Reshape to ``shape`` with the batch inferred (so a dynamic batch still works)."""
    param = caffe_pb2.LayerParameter(name=name, bottom=[bottom], top=[name])
    if shape is None:
        param.type = "Split"
    else:
        param.type = "Reshape"
        param.reshape_param.shape.dim.extend([-1, *shape[1:]] if shape else [])
    return Layer(name=name, type=param.type, bottoms=[bottom], tops=[name], param=param, line=line,
                 caffe_bottoms=[caffe_bottom], caffe_tops=[caffe_top])


@dataclass
class _Write:
    version: str  # the version an in-place layer wrote into the shared memory
    index: int  # position of that layer in the new layer list
    writer: str  # its name


def share_in_place_writes(net: Net, shapes: Callable[[], dict[str, Shape]] | None = None) -> int:
    """Make ``net`` read shared blobs as Caffe does (see the module docstring); returns the number of identity
    layers added (0: the net is unchanged).

    ``shapes`` gives the shape of every blob version of the net as it was read; it is called only when an
    alias has to be reshaped back from a Flatten/Reshape view (default: Caffe's shape rules).
    """
    if not any(shares_memory(layer) for layer in net.layers) or not any(in_place_pairs(x) for x in net.layers):
        return 0
    caffe_of: dict[str, str] = {name: name for name in net.inputs}
    for layer in net.layers:
        caffe_of.update(zip(layer.tops, layer.caffe_tops))
    outputs_before = set(net.outputs)
    consumed_before = {b for layer in net.layers for b in layer.bottoms}
    readers: dict[str, int] = {}
    for layer in net.layers:
        for b in set(layer.bottoms):
            readers[b] = readers.get(b, 0) + 1

    shape_cache: dict[str, Shape] = {}
    # The loop below rewires bottoms as it goes; shapes are inferred on the net as it was read.
    as_read = dataclasses.replace(net, layers=[dataclasses.replace(x, bottoms=list(x.bottoms)) for x in net.layers])

    def shape_of(version: str) -> Shape:
        if not shape_cache:
            if shapes is not None:
                shape_cache.update(shapes())
            else:
                from ninport.caffe.shapes import infer_shapes

                shape_cache.update(infer_shapes(as_read).blobs)
        return shape_cache[version]

    root: dict[str, str] = {}  # version -> the version owning its memory
    view: dict[str, int] = {}  # version -> id of its shape view (equal ids: same shape for sure)
    produced: dict[str, int] = {name: -1 for name in net.inputs}
    written: dict[str, _Write] = {}  # memory root -> its last in-place write
    made: dict[tuple[str, int], str] = {}  # (alias, write position) -> the identity version giving it
    added: list[Layer] = []
    out: list[Layer] = []

    def current(version: str, line: int | None) -> str:
        """The version to read for ``version``: itself, or an identity version of the last write after it."""
        r = root.get(version, version)
        w = written.get(r)
        if w is None or w.version == version or produced.get(version, -1) > w.index:
            return version
        key = (version, w.index)
        if key not in made:
            caffe = caffe_of[version]
            same = view.get(w.version, w.version) == view.get(version, version)
            shape = None if same or shape_of(w.version) == shape_of(version) else shape_of(version)
            identity = _identity_layer(f"{caffe}@{w.writer}", w.version, caffe_of[w.version], caffe, shape, line)
            top = identity.tops[0]
            caffe_of[top] = caffe
            root[top], view[top], produced[top] = r, view.get(version, version), len(out)
            out.append(identity)
            added.append(identity)
            made[key] = top
        return made[key]

    for layer in net.layers:
        layer.bottoms = [current(b, layer.line) for b in layer.bottoms]
        if shares_memory(layer):
            for top in layer.tops:
                root[top] = root.get(layer.bottoms[0], layer.bottoms[0])
                view[top] = view.get(layer.bottoms[0], layer.bottoms[0]) if layer.type == "Split" else id(layer)
        for bottom, top in in_place_pairs(layer):
            root[top] = root.get(bottom, bottom)
            view[top] = view.get(bottom, bottom)
            # Caffe only accepts an in-place layer as the sole reader of the blob it overwrites (net.cpp,
            # AppendTop: "produced by multiple sources" otherwise); other nets keep separate versions.
            if readers.get(bottom, 0) == 1:
                written[root[top]] = _Write(top, len(out), layer.name)
        for top in layer.tops:
            produced[top] = len(out)
        out.append(layer)
    # A shared blob that is a net output ends holding the last write, as Caffe's blob does.
    outputs_in_order = sorted(outputs_before, key=lambda v: produced.get(v, -1))
    for version in outputs_in_order:
        current(version, None)
    if not added:
        return 0
    # An output the identity layers now read would stop being an output: give it again, at the end.
    read = {b for layer in out for b in layer.bottoms}
    for version in outputs_in_order:
        if version in read:
            caffe = caffe_of[version]
            again = _identity_layer(f"{caffe}@output", version, caffe, caffe, None, None)
            caffe_of[again.tops[0]] = caffe
            out.append(again)
            added.append(again)

    # Alias versions the rewiring left unread are dropped (a Split loses that top; a one-top view, the layer),
    # so they do not turn into net outputs.
    while True:
        read = {b for layer in out for b in layer.bottoms}
        made_aliases = {k[0] for k in made}  # a set: the test below stays linear in the number of tops
        dead = {top for layer in out if shares_memory(layer) for top in layer.tops
                if top not in read and (top in consumed_before or top in made_aliases)}
        if not dead:
            break
        kept: list[Layer] = []
        for layer in out:
            if shares_memory(layer) and any(t in dead for t in layer.tops):
                keep = [i for i, t in enumerate(layer.tops) if t not in dead]
                if not keep:
                    continue
                layer.tops = [layer.tops[i] for i in keep]
                layer.caffe_tops = [layer.caffe_tops[i] for i in keep]
            kept.append(layer)
        consumed_before -= dead
        made = {k: v for k, v in made.items() if k[0] not in dead}
        out = kept

    # The last version of each Caffe blob carries its Caffe name; earlier ones are blob@layer.
    last: dict[str, tuple[str, Layer]] = {}
    for layer in out:
        for top, caffe in zip(layer.tops, layer.caffe_tops):
            last[caffe] = (top, layer)
    rename: dict[str, str] = {}
    for layer in out:
        for top, caffe in zip(layer.tops, layer.caffe_tops):
            if caffe in net.inputs:
                continue
            final = last[caffe][0] == top
            if final and top != caffe:
                rename[top] = caffe
            elif not final and top == caffe:
                rename[top] = f"{caffe}@{layer.name}"
    for layer in out:
        layer.bottoms = [rename.get(b, b) for b in layer.bottoms]
        layer.tops = [rename.get(t, t) for t in layer.tops]
        del layer.param.bottom[:]
        layer.param.bottom.extend(layer.bottoms)
        del layer.param.top[:]
        layer.param.top.extend(layer.tops)
    net.layers = out
    return len(added)
