"""Caffe's weight fillers (include/caffe/filler.hpp): how a layer's blobs are initialized before training.

Each filler reads the blob's Caffe shape, so fan-in and fan-out follow Caffe's own rule (``count / shape[0]``
and ``count / shape[1]``, integer division), also for InnerProduct blobs where that rule is not the usual one.
Values come from a numpy ``Generator``: the statistics match Caffe's, the exact numbers cannot (Caffe has its
own random engine).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ninport.caffe import caffe_pb2
from ninport.errors import NetError

FILLERS = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """Caffe's (fan_in, fan_out) of a blob: count / shape[0] and count / shape[1] (count for a 1-D blob)."""
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    fan_in = count // shape[0] if len(shape) else count
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_n(param: caffe_pb2.FillerParameter, shape: Sequence[int]) -> float:
    fan_in, fan_out = fans(shape)
    if param.variance_norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if param.variance_norm == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def fill(param: caffe_pb2.FillerParameter, shape: Sequence[int], rng: np.random.Generator,
         where: str = "filler") -> np.ndarray:
    """A float32 array of ``shape`` filled as Caffe's filler ``param`` would fill that blob."""
    shape = tuple(int(d) for d in shape)
    kind = param.type
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count == 0:
        raise NetError(f"{where}: cannot fill an empty blob of shape {list(shape)}")
    if param.sparse != -1 and kind != "gaussian":
        # filler.hpp: every filler but gaussian CHECKs that sparse is unset.
        raise NetError(f"{where}: sparse is only supported by the gaussian filler, not {kind!r}")
    if kind == "constant":
        values = np.full(shape, param.value, dtype=np.float64)
    elif kind == "uniform":
        values = rng.uniform(param.min, param.max, shape)
    elif kind == "gaussian":
        values = rng.normal(param.mean, param.std, shape)
        if param.sparse < -1:
            raise NetError(f"{where}: sparse must be -1 or more, got {param.sparse}")
        if param.sparse >= 0:
            # Each weight is kept with probability sparse / shape[0] (Caffe names shape[0] "num_outputs").
            keep = min(1.0, param.sparse / shape[0]) if shape else 1.0
            values = values * (rng.random(shape) < keep)
    elif kind == "positive_unitball":
        values = rng.uniform(0.0, 1.0, shape)
        rows = values.reshape(shape[0] if shape else 1, -1)
        values = (rows / rows.sum(axis=1, keepdims=True)).reshape(shape)
    elif kind == "xavier":
        limit = math.sqrt(3.0 / _variance_n(param, shape))
        values = rng.uniform(-limit, limit, shape)
    elif kind == "msra":
        values = rng.normal(0.0, math.sqrt(2.0 / _variance_n(param, shape)), shape)
    elif kind == "bilinear":
        values = bilinear(shape, where)
    else:
        raise NetError(f"{where}: unknown filler type {kind!r}; Caffe's are {', '.join(FILLERS)}")
    return np.ascontiguousarray(values, dtype=np.float32)


def bilinear(shape: Sequence[int], where: str = "filler") -> np.ndarray:
    """The bilinear upsampling kernel filler.hpp writes into every K×K slice of a 4-D blob."""
    if len(shape) != 4:
        raise NetError(f"{where}: the bilinear filler needs a 4-D blob, got {list(shape)}")
    if shape[2] != shape[3]:
        raise NetError(f"{where}: the bilinear filler needs a square kernel, got {shape[2]}×{shape[3]}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (k - 1) / (2.0 * f)
    ramp = 1.0 - np.abs(np.arange(k) / f - c)
    return np.broadcast_to(np.outer(ramp, ramp), shape).astype(np.float32)


def _constant(value: float) -> caffe_pb2.FillerParameter:
    return caffe_pb2.FillerParameter(type="constant", value=value)


def layer_fillers(layer_type: str, param: caffe_pb2.LayerParameter, count: int) -> list[caffe_pb2.FillerParameter]:
    """The filler of each of a layer's ``count`` blobs, with each layer's own defaults.

    A missing ``weight_filler`` is Caffe's default FillerParameter (constant 0); Scale defaults to constant 1
    (scale_layer.cpp) and PReLU to constant 0.25 (prelu_layer.cpp) when no filler is given.
    """
    if layer_type in ("Convolution", "Deconvolution"):
        p = param.convolution_param
        out = [p.weight_filler, p.bias_filler]
    elif layer_type == "InnerProduct":
        p = param.inner_product_param
        out = [p.weight_filler, p.bias_filler]
    elif layer_type == "Embed":
        p = param.embed_param
        out = [p.weight_filler, p.bias_filler]
    elif layer_type == "Scale":
        p = param.scale_param
        scale = p.filler if p.HasField("filler") else _constant(1.0)
        # With two bottoms the factor is the second bottom; the only learned blob is then the bias.
        out = [p.bias_filler] if len(param.bottom) > 1 else [scale, p.bias_filler]
    elif layer_type == "Bias":
        out = [param.bias_param.filler]
    elif layer_type == "PReLU":
        p = param.prelu_param
        out = [p.filler if p.HasField("filler") else _constant(0.25)]
    else:
        raise NetError(f"layer {param.name!r} ({layer_type}): ninport has no filler rule for its blobs")
    return list(out[:count])
