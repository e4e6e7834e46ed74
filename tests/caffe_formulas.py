"""Caffe's layer formulas restated in plain numpy, loop for loop, as independent references for the tests.

Each function follows the Forward_cpu of the Caffe source file it names (BVLC Caffe master); they share no
code with ninport.
"""

from __future__ import annotations

import math

import numpy as np


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool = True) -> int:
    """pooling_layer.cpp, Reshape: round up (CEIL) or down, then drop a last window starting in the padding."""
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool2d(x: np.ndarray, method: str, kernel, stride, pad, ceil: bool = True) -> np.ndarray:
    """pooling_layer.cpp, Forward_cpu, MAX and AVE, on an N×C×H×W array."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    oh, ow = pooled_size(h, kh, sh, ph, ceil), pooled_size(w, kw, sw, pw, ceil)
    out = np.zeros((n, c, oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            hstart, wstart = i * sh - ph, j * sw - pw
            if method == "MAX":
                hend, wend = min(hstart + kh, h), min(wstart + kw, w)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                out[:, :, i, j] = x[:, :, hstart:hend, wstart:wend].max(axis=(2, 3))
            else:
                hend, wend = min(hstart + kh, h + ph), min(wstart + kw, w + pw)
                pool_size = (hend - hstart) * (wend - wstart)  # padding counts, overhang does not
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, h), min(wend, w)
                out[:, :, i, j] = x[:, :, hstart:hend, wstart:wend].sum(axis=(2, 3)) / pool_size
    return out


def lrn_across(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    """lrn_layer.cpp, CrossChannelForward_cpu: scale = k + alpha / size * sum of x² over size channels."""
    n, c, h, w = x.shape
    half = (size - 1) // 2
    sq = x.astype(np.float64) ** 2
    out = np.empty_like(sq)
    for ch in range(c):
        lo, hi = max(0, ch - half), min(c, ch + size - half)
        scale = k + alpha / size * sq[:, lo:hi].sum(axis=1)
        out[:, ch] = x[:, ch] * scale ** (-beta)
    return out
