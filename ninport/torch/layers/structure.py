"""Layers that move or route data: Concat, Slice, Split, Flatten, Reshape, Crop, Tile, Softmax, Dropout,
Silence, Parameter (Caffe's concat_layer.cpp, slice_layer.cpp, ... of the same names)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ninport.caffe.shapes import slice_axis
from ninport.torch.registry import LayerContext, register_layer


class Concat(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


@register_layer("Concat", notes="axis, legacy concat_dim")
def concat(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") and not p.HasField("axis") else p.axis
    return Concat(axis % len(ctx.bottom_shapes[0]))


class Split(nn.Module):
    """Caffe's Split hands the same data to every top.

    In Caffe the tops *share memory* with the bottom (split_layer.cpp, ``ShareData``), so a layer that later
    works in place on one top changes what the other tops hold for every layer that reads them afterwards.
    ninport keeps one tensor per blob version and reproduces that sharing when it reads the net: a layer
    that reads a Split top (or the Split's bottom, or another alias from Flatten/Reshape/one-top Slice) after
    an in-place layer has modified an alias reads the modified version (see ``ninport.caffe.aliasing``).
    """

    def __init__(self, count: int):
        super().__init__()
        self.count = count

    def forward(self, x: torch.Tensor):
        return x if self.count == 1 else tuple(x for _ in range(self.count))


@register_layer("Split", notes="tops share memory with the bottom as in Caffe: in-place writes reach later readers")
def split(ctx: LayerContext) -> nn.Module:
    return Split(len(ctx.layer.tops))


class Flatten(nn.Module):
    def __init__(self, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(self.start, self.end)


@register_layer("Flatten", notes="axis, end_axis")
def flatten(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.flatten_param
    ndim = len(ctx.bottom_shapes[0])
    return Flatten(p.axis % ndim, p.end_axis % ndim)


@register_layer("Softmax", notes="axis")
def softmax(ctx: LayerContext) -> nn.Module:
    return nn.Softmax(dim=ctx.layer.param.softmax_param.axis % len(ctx.bottom_shapes[0]))


class TestTimeDropout(nn.Module):
    """Dropout of the R-CNN fork with ``scale_train: false``: training keeps units unscaled, so inference
    multiplies by 1 - ratio instead (rbgirshick/caffe-fast-rcnn, src/caffe/layers/dropout_layer.cpp, the
    TEST branch of Forward_cpu: scale by 1 / scale_ with scale_ = 1 / (1 - ratio), both in float32)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def _scale_train(p) -> bool:
    """The fork field ``scale_train`` (default true), when the schema knows it."""
    return not ("scale_train" in p.DESCRIPTOR.fields_by_name and p.HasField("scale_train") and not p.scale_train)


@register_layer("Dropout", notes="identity at inference; scale_train: false (R-CNN fork) scales by 1 - ratio")
def dropout(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.dropout_param
    if not _scale_train(p):
        scale = np.float32(1.0) / (np.float32(1.0) - np.float32(p.dropout_ratio))
        return TestTimeDropout(float(np.float32(1.0) / np.float32(scale)))
    # Training scales kept units by 1 / (1 - ratio), as PyTorch does; at inference it is the identity.
    return nn.Dropout(p.dropout_ratio)


class Slice(nn.Module):
    def __init__(self, axis: int, sizes: list[int]):
        super().__init__()
        self.axis, self.sizes = axis, list(sizes)

    def forward(self, x: torch.Tensor):
        if len(self.sizes) == 1:
            return x
        return tuple(torch.split(x, self.sizes, dim=self.axis))


@register_layer("Slice", notes="slice_point, axis, legacy slice_dim")
def slice_layer(ctx: LayerContext) -> nn.Module:
    axis = slice_axis(ctx.layer, ctx.bottom_shapes[0])
    if ctx.dynamic_hw and axis >= 2:
        raise ctx.unsupported(f"a Slice of axis {axis} (its sizes are fixed) with --dynamic-hw")
    return Slice(axis, [s[axis] for s in ctx.top_shapes])


class Reshape(nn.Module):
    """``x.reshape(spec)``, where ``None`` in ``spec`` stands for the bottom's batch size at run time, so the
    batch stays dynamic wherever Caffe's dims copy it (a 0 on axis 0, or axes before ``axis``) or infer it."""

    def __init__(self, spec: list[int | None], axes: list[int] | None = None):
        super().__init__()
        self.spec = list(spec)
        # The bottom axis each ``None`` copies: the batch axis, or with --dynamic-hw any copied axis.
        self.axes = list(axes) if axes is not None else [0] * len(self.spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape([x.shape[a] if d is None else d for d, a in zip(self.spec, self.axes)])


@register_layer(
    "Reshape",
    notes="0 and -1 dims, axis, num_axes; the batch stays dynamic where the dims copy or infer it",
)
def reshape(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.reshape_param
    shape = ctx.bottom_shapes[0]
    ndim = len(shape)
    # reshape_layer.cpp: dims replace axes [start, end); 0 copies the bottom's axis, -1 is inferred.
    start = p.axis if p.axis >= 0 else p.axis + ndim + 1
    end = ndim if p.num_axes == -1 else start + p.num_axes

    def kept(axis: int) -> int | None:
        # With --dynamic-hw every copied axis is read at run time, as Caffe's Reshape reads it at each size.
        return None if axis == 0 or ctx.dynamic_hw else shape[axis]

    spec: list[int | None] = [kept(i) for i in range(start)]
    axes = list(range(start))
    for i, d in enumerate(p.shape.dim):
        spec.append(kept(start + i) if d == 0 else int(d))
        axes.append(start + i)
    spec += [kept(i) for i in range(end, ndim)]
    axes += list(range(end, ndim))
    return Reshape(spec, axes)


class Crop(nn.Module):
    """Crop the first bottom to the second's size from ``axis`` on, starting at ``offsets``."""

    def __init__(self, axis: int, offsets: list[int]):
        super().__init__()
        self.axis, self.offsets = axis, list(offsets)

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        # The sizes come from the second bottom at run time, as crop_layer.cpp's Reshape reads them (and so
        # the exported graph keeps that input).
        index: list[slice] = [slice(None)] * self.axis
        for i, offset in enumerate(self.offsets):
            index.append(slice(offset, offset + reference.shape[self.axis + i]))
        return x[tuple(index)]


@register_layer("Crop", notes="axis, offset (one, or one per axis); the second bottom gives the size")
def crop(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.crop_param
    shape = ctx.bottom_shapes[0]
    axis = p.axis % len(shape)
    offsets = []
    for i in range(axis, len(shape)):
        # crop_layer.cpp: one offset serves every cropped axis; several give one per axis.
        offsets.append(p.offset[0] if len(p.offset) == 1 else p.offset[i - axis] if p.offset else 0)
    return Crop(axis, offsets)


class Tile(nn.Module):
    def __init__(self, repeats: list[int]):
        super().__init__()
        self.repeats = list(repeats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # tile_layer.cpp copies the block from ``axis`` on ``tiles`` times per outer index: torch's repeat.
        return x.repeat(self.repeats)


@register_layer("Tile", notes="axis, tiles")
def tile(ctx: LayerContext) -> nn.Module:
    p = ctx.layer.param.tile_param
    shape = ctx.bottom_shapes[0]
    axis = p.axis % len(shape)
    return Tile([p.tiles if i == axis else 1 for i in range(len(shape))])


class Silence(nn.Module):
    """Consumes its bottoms and produces nothing (Caffe uses it to quiet unused tops)."""

    def forward(self, *xs: torch.Tensor) -> tuple:
        return ()


@register_layer("Silence", notes="no tops")
def silence(ctx: LayerContext) -> nn.Module:
    return Silence()


class Parameter(nn.Module):
    """A learned blob as the layer's only top (parameter_layer.hpp); no bottoms."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(value)

    def forward(self) -> torch.Tensor:
        # A copy, so that no caller can change the parameter through the top (and no_grad gives a plain tensor).
        return self.weight.clone()


@register_layer("Parameter", notes="a learned blob as the top; fixed shape")
def parameter(ctx: LayerContext) -> nn.Module:
    return Parameter(ctx.weight(0))
