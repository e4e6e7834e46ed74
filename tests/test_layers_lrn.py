"""LRN across and within channels against a numpy restatement of Caffe's lrn_layer.cpp (tests/caffe_formulas.py
for ACROSS_CHANNELS; WITHIN_CHANNEL below), with k other than 1 and alpha large enough that the denominator
matters, in the torch module and the exported ONNX in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from caffe_formulas import lrn_across, pool2d
from layer_harness import check_net, rel_err, write_net

SHAPE = (2, 7, 6, 9)


def lrn_within(x: np.ndarray, size: int, alpha: float, beta: float) -> np.ndarray:
    """lrn_layer.cpp, WITHIN_CHANNEL: Caffe builds it from layers (LayerSetUp): x² through an AVE Pooling of
    kernel ``size``, pad (size - 1) / 2, stride 1 (pooling_layer.cpp's divisor: padding counted, overhang past
    the padding not), then a Power layer with power -beta, scale alpha and shift 1 (``k`` is not used), then an
    elementwise product with x."""
    pad = (size - 1) // 2
    mean_sq = pool2d(x.astype(np.float64) ** 2, "AVE", (size, size), (1, 1), (pad, pad))
    return x * (1.0 + alpha * mean_sq) ** (-beta)


def lrn_net(tmp_path, region: str, size: int, alpha: float, beta: float, k: float):
    text = ('name: "lrn"\ninput: "data"\n' + "".join(f"input_dim: {d}\n" for d in SHAPE)
            + 'layer { name: "norm" type: "LRN" bottom: "data" top: "norm"\n'
            f"  lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} norm_region: {region} }} }}\n")
    proto, _ = write_net(tmp_path, text, name=f"lrn_{region}_{size}_{k}")
    return proto


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return (2.0 * np.random.default_rng(12).standard_normal(SHAPE)).astype(np.float32)


@pytest.mark.parametrize(("size", "alpha", "beta", "k"), [(5, 1.5, 0.75, 2.0), (3, 0.5, 0.6, 1.0), (5, 1e-4, 0.75, 1.0),
                                                          (7, 2.0, 1.3, 0.5)])
def test_lrn_across_channels(tmp_path, x, size, alpha, beta, k):
    proto = lrn_net(tmp_path, "ACROSS_CHANNELS", size, alpha, beta, k)
    expected = lrn_across(x, size, alpha, beta, k)
    check_net(tmp_path, proto, None, {"data": x}, {"norm": expected})
    # the check can fail: the same net with k = 1 in the formula is far off when k is not 1
    if k != 1.0:
        assert rel_err(lrn_across(x, size, alpha, beta, 1.0), expected) > 1e-2


@pytest.mark.parametrize(("size", "alpha", "beta", "k"), [(3, 1.5, 0.75, 2.0), (5, 0.8, 0.6, 1.0)])
def test_lrn_within_channel(tmp_path, x, size, alpha, beta, k):
    proto = lrn_net(tmp_path, "WITHIN_CHANNEL", size, alpha, beta, k)
    expected = lrn_within(x, size, alpha, beta)
    check_net(tmp_path, proto, None, {"data": x}, {"norm": expected})
    # the edge divisor matters: dividing by the in-input part of each window instead is far off
    pad = (size - 1) // 2
    sq = x.astype(np.float64) ** 2
    summed = pool2d(sq, "AVE", (size, size), (1, 1), (pad, pad)) * size * size
    count = pool2d(np.ones_like(sq), "AVE", (size, size), (1, 1), (pad, pad)) * size * size
    assert rel_err(x * (1 + alpha * summed / count) ** (-beta), expected) > 1e-3
