"""Convolution over one and three spatial axes (Caffe's N-D convolution: conv_layer.cpp with im2col_nd, one
kernel_size/stride/pad/dilation per spatial axis or one for all) against a numpy restatement, in the torch
module and the exported ONNX in onnxruntime."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from layer_harness import check_net, write_net

from ninport.caffe.seeded import seeded_blobs


def conv_nd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride, pad, dilation, group: int) -> np.ndarray:
    """Caffe's forward of a convolution over any number of spatial axes, in float64: output size per axis
    (size + 2 pad - (dilation (kernel - 1) + 1)) / stride + 1 (conv_layer.cpp, compute_output_shape), each
    output the sum over the group's input channels and the kernel's offsets of the zero-padded input."""
    n, c = x.shape[:2]
    out_c, c_per_group = w.shape[:2]
    kernel = w.shape[2:]
    spatial = x.shape[2:]
    out_size = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1
                for s, k, st, p, d in zip(spatial, kernel, stride, pad, dilation)]
    padded = np.zeros((n, c, *[s + 2 * p for s, p in zip(spatial, pad)]))
    padded[(slice(None), slice(None), *[slice(p, p + s) for s, p in zip(spatial, pad)])] = x
    out = np.zeros((n, out_c, *out_size))
    per_group_out = out_c // group
    for g in range(group):
        xs = padded[:, g * c_per_group : (g + 1) * c_per_group]
        ws = w[g * per_group_out : (g + 1) * per_group_out]
        for offset in itertools.product(*[range(k) for k in kernel]):
            window = xs[(slice(None), slice(None), *[slice(o * d, o * d + (m - 1) * st + 1, st)
                                                      for o, d, m, st in zip(offset, dilation, out_size, stride)])]
            out[:, g * per_group_out : (g + 1) * per_group_out] += np.einsum(
                "nc...,oc->no...", window, ws[(slice(None), slice(None), *offset)])
    if b is not None:
        out += b.reshape(1, -1, *[1] * len(spatial))
    return out


def _repeated(field: str, values) -> str:
    return " ".join(f"{field}: {v}" for v in values)


CASES = [
    # (input shape, num_output, kernel, stride, pad, dilation, group, bias)
    ((2, 3, 17), 4, (3,), (1,), (1,), (1,), 1, True),
    ((1, 4, 20), 6, (5,), (2,), (0,), (2,), 2, False),
    ((2, 2, 5, 6, 7), 3, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True),
    ((1, 4, 6, 7, 8), 4, (2, 3, 1), (2, 1, 3), (0, 1, 0), (1, 2, 1), 2, True),
]


@pytest.mark.parametrize("case", CASES, ids=["1d", "1d-strided-dilated-grouped", "3d", "3d-anisotropic"])
def test_convolution_nd(tmp_path, case):
    shape, num_output, kernel, stride, pad, dilation, group, bias = case
    rng = np.random.default_rng(len(shape) * 10 + group)
    weight_shape = (num_output, shape[1] // group, *kernel)
    blobs = seeded_blobs("Convolution", [weight_shape] + ([(num_output,)] if bias else []), rng)
    text = (f'name: "conv_nd"\ninput: "data"\ninput_shape {{ {_repeated("dim", shape)} }}\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
            f"  convolution_param {{ num_output: {num_output} {_repeated('kernel_size', kernel)} "
            f"{_repeated('stride', stride)} {_repeated('pad', pad)} {_repeated('dilation', dilation)} "
            f"group: {group} bias_term: {str(bias).lower()} }} }}\n")
    proto, model = write_net(tmp_path, text, [("conv", "Convolution", blobs)], name=f"conv{len(shape) - 2}d")
    x = rng.standard_normal(shape).astype(np.float32)
    expected = conv_nd(x.astype(np.float64), blobs[0].astype(np.float64),
                       blobs[1].astype(np.float64) if bias else None, stride, pad, dilation, group)
    assert expected.ndim == len(shape) and expected.size > 0
    blobs_out = check_net(tmp_path, proto, model, {"data": x}, {"conv": expected})
    assert blobs_out["conv"].shape == expected.shape
