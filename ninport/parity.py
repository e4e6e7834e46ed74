"""The parity rule shared by ``convert``, ``verify`` and ``bench``: a float32 result is judged by its distance
from a float64 forward of the same torch module (the truth), against the float32 module's own distance from
that truth (the net's noise floor), and anything under a fixed relative floor (``rtol``) passes.

Distances are relative: the largest absolute difference over the largest magnitude of the truth, per blob.
A result passes when ``rel <= max(rtol, NOISE_FACTOR * floor)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RTOL = 1e-5
# How far past the float32 module's own error another float32 backend may land: its kernels sum in another
# order (Winograd, blocked GEMM, fused BatchNorm), which moves the rounding error by a small factor, not more.
NOISE_FACTOR = 10.0
# The float32 module's own distance from the float64 one above this is no rounding noise but a fault of a
# float32-only path.
NOISE_CEILING = 1e-3
_CHUNK = 1 << 20


def tolerance(floor: float, rtol: float = DEFAULT_RTOL) -> float:
    """The largest relative distance from the truth that passes, for a blob whose noise floor is ``floor``."""
    if not math.isfinite(floor):
        return rtol
    return max(rtol, NOISE_FACTOR * floor)


def compare(truth: np.ndarray, other: np.ndarray, cosine: bool = True) -> tuple[float, float, float]:
    """(max abs difference, that over max |truth|, cosine similarity) in float64, a chunk at a time, without a
    float64 copy of a big blob; arrays of the same size but another shape (a runtime that keeps trailing 1-dims,
    a Flatten view) compare flat, another size is inf. Without ``cosine`` the third figure is NaN."""
    ref_all = np.asarray(truth).reshape(-1)
    got_all = np.asarray(other).reshape(-1)
    if ref_all.size != got_all.size:
        return math.inf, math.inf, math.nan
    if ref_all.size == 0:
        return 0.0, 0.0, 1.0 if cosine else math.nan
    max_abs = scale = dot = ref_sq = got_sq = np.float64(0.0)
    for start in range(0, ref_all.size, _CHUNK):
        ref = ref_all[start : start + _CHUNK].astype(np.float64)
        got = got_all[start : start + _CHUNK].astype(np.float64)
        max_abs = np.maximum(max_abs, np.max(np.abs(ref - got)))  # np.maximum keeps a NaN
        scale = np.maximum(scale, np.max(np.abs(ref)))
        if cosine:
            dot += np.dot(ref, got)
            ref_sq += np.dot(ref, ref)
            got_sq += np.dot(got, got)
    max_abs, scale = float(max_abs), float(scale)
    rel = max_abs / scale if scale > 0 else max_abs
    if not cosine:
        return max_abs, rel, math.nan
    norms = math.sqrt(float(ref_sq)) * math.sqrt(float(got_sq))
    if norms == 0 or not math.isfinite(norms):
        return max_abs, rel, 1.0 if ref_sq == 0 and got_sq == 0 else (0.0 if norms == 0 else math.nan)
    return max_abs, rel, float(dot) / norms


def distance(truth: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(max abs difference, that over max |truth|): ``compare`` without the cosine."""
    return compare(truth, other, cosine=False)[:2]


@dataclass
class Judgement:
    """One float32 result against the truth: its distance, the net's floor there, and the verdict."""

    max_abs: float
    rel: float
    floor: float
    tolerance: float
    cosine: float = math.nan  # when asked for (``cosine=True``)

    @property
    def ok(self) -> bool:
        return self.rel <= self.tolerance  # False for NaN


def judge(truth: np.ndarray, floor: float, other: np.ndarray, rtol: float = DEFAULT_RTOL,
          cosine: bool = False) -> Judgement:
    """``other`` against ``truth`` (float64) where the float32 module is ``floor`` away."""
    max_abs, rel, cos = compare(truth, other, cosine)
    return Judgement(max_abs, rel, floor, tolerance(floor, rtol), cos)


def judge_floor(truth: np.ndarray, float32: np.ndarray, rtol: float = DEFAULT_RTOL,
                cosine: bool = False) -> Judgement:
    """The float32 module itself: its distance is the floor; it fails only past ``NOISE_CEILING`` (or when not
    finite), which no rounding explains."""
    max_abs, rel, cos = compare(truth, float32, cosine)
    return Judgement(max_abs, rel, rel, max(rtol, NOISE_CEILING), cos)


def float64_module(module):
    """A float64 copy of a ``CaffeNet`` (the original is left as it is)."""
    return copy.deepcopy(module).double().eval()


# Above this many bytes of weights, the truth is computed layer by layer (see ``_layer64``).
LEAN_BYTES = 64 << 20
# Weight bytes (in float64) a linear layer's rows are taken by at a time in the lean forward.
_LINEAR_CHUNK_BYTES = 32 << 20


def parameter_bytes(module) -> int:
    """The bytes of a torch module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _linear64(layer, x):
    """A float64 InnerProduct whose weight rows are made float64 a slice at a time (a VGG fc6 in float64 would
    be 0.8 GB on its own)."""
    import torch

    if x.dim() != layer.axis + 1:
        x = x.flatten(layer.axis)
    weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    out = torch.empty((*x.shape[:-1], weight.shape[0]), dtype=torch.float64)
    rows = max(1, _LINEAR_CHUNK_BYTES // (8 * max(1, weight.shape[1])))
    for start in range(0, weight.shape[0], rows):
        part = torch.nn.functional.linear(x, weight[start:start + rows].double(),
                                          None if bias is None else bias[start:start + rows].double())
        out[..., start:start + rows] = part
    return out


# im2col bytes (float64) a convolution's input channels are taken by at a time in the lean forward.
_CONV_CHUNK_BYTES = 16 << 20


def _conv2d64(layer, *xs):
    """A float64 2-D convolution (groups 1) summed over slices of its input channels: torch's float64
    convolution unfolds the whole input (im2col), 0.2 GB for one 224×224 image of a VGG's 64 channels."""
    import torch

    weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    kernel = weight.shape[2] * weight.shape[3]
    outs = []
    for x in xs:
        padded = (x.shape[2] + 2 * layer.padding[0]) * (x.shape[3] + 2 * layer.padding[1])
        per_channel = 8 * kernel * x.shape[0] * padded
        step = max(1, _CONV_CHUNK_BYTES // max(1, per_channel))
        out = None
        for start in range(0, weight.shape[1], step):
            part = torch.nn.functional.conv2d(x[:, start:start + step], weight[:, start:start + step].double(),
                                              None, layer.stride, layer.padding, layer.dilation)
            out = part if out is None else out.add_(part)
        if bias is not None:
            out.add_(bias.double().view(1, -1, 1, 1))
        outs.append(out)
    return outs[0] if len(outs) == 1 else tuple(outs)


def _layer64(layer, args):
    """One layer of the lean float64 forward: a float64 copy of it, made for this call only; a big InnerProduct
    or a plain 2-D convolution computed in float64 by slices instead of copied whole."""
    from ninport.torch.layers.convolution import Conv2d
    from ninport.torch.layers.inner_product import InnerProduct

    if isinstance(layer, InnerProduct) and parameter_bytes(layer) > _LINEAR_CHUNK_BYTES // 2:
        return _linear64(layer, *args)
    if type(layer) is Conv2d and layer.groups == 1 and layer.padding_mode == "zeros" \
            and not isinstance(layer.padding, str):
        return _conv2d64(layer, *args)
    return copy.deepcopy(layer).double().eval()(*args)


def forward_truth(module, inputs: Sequence, blobs: bool = False, module64=None) -> dict[str, np.ndarray]:
    """The float64 forward on the same (float32) inputs: every blob version when ``blobs``, else the outputs,
    keyed by blob name. Without ``module64``, a net with more than ``LEAN_BYTES`` of weights is run a layer at
    a time in float64 (``_layer64``); a smaller one through a float64 copy of the whole module."""
    import torch

    tensors = [torch.as_tensor(np.asarray(x)).double() for x in inputs]
    if module64 is None and parameter_bytes(module) > LEAN_BYTES:
        with torch.no_grad():  # one layer's float64 copy at a time, the float32 module left as it is
            every = module._run(module._bind_inputs(tensors, {}), drop=not blobs, call=_layer64)
        if blobs:
            return {k: v.numpy() for k, v in every.items()}
        return {name: every[name].numpy() for name in module.output_names}
    module64 = module64 if module64 is not None else float64_module(module)
    with torch.no_grad():
        if blobs:
            return {k: v.numpy() for k, v in module64.forward_blobs(*tensors).items()}
        out = module64(*tensors)
    out = out if isinstance(out, tuple) else (out,)
    return {name: t.numpy() for name, t in zip(module.output_names, out)}

