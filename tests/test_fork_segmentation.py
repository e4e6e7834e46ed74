"""Segmentation forks: SegNet/ENet unpooling by the MAX pooling mask, YOLO's nearest Upsample, and the BN layer
of each dialect, against numpy restatements of the forks' C++ (OpenCV's importer has none of these)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ninport.caffe.load import read_net
from ninport.caffe.shapes import infer_shapes
from tests.layer_harness import check_net, write_net

RNG = np.random.default_rng(21)


def _x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def caffe_max_pool_with_mask(x: np.ndarray, k: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """BVLC pooling_layer.cpp Forward_cpu, MAX, no pad, ceil rounding: values and the argmax mask h * W + w."""
    n, c, h, w = x.shape
    oh, ow = math.ceil((h - k) / s) + 1, math.ceil((w - k) / s) + 1
    top = np.full((n, c, oh, ow), -np.finfo(np.float32).max, dtype=np.float32)
    mask = np.full((n, c, oh, ow), -1.0, dtype=np.float32)
    for i in range(oh):
        for j in range(ow):
            for hh in range(i * s, min(i * s + k, h)):
                for ww in range(j * s, min(j * s + k, w)):
                    better = x[:, :, hh, ww] > top[:, :, i, j]
                    top[:, :, i, j] = np.where(better, x[:, :, hh, ww], top[:, :, i, j])
                    mask[:, :, i, j] = np.where(better, hh * w + ww, mask[:, :, i, j])
    return top, mask


def segnet_unpool(x: np.ndarray, mask: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """alexgkendall/caffe-segnet upsample_layer.cpp Forward_cpu: top[mask[i]] = bottom[i] per plane."""
    n, c = x.shape[:2]
    top = np.zeros((n, c, oh * ow), dtype=np.float64)
    for a in range(n):
        for b in range(c):
            for i, index in enumerate(mask[a, b].ravel().astype(int)):
                top[a, b, index] = x[a, b].ravel()[i]
    return top.reshape(n, c, oh, ow)


def _net(shape, body: str) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'input: "data"\ninput_shape {{ {dims} }}\n' + body


@pytest.mark.parametrize("shape,upsample", [
    ((2, 3, 8, 6), "scale: 2"),
    ((1, 3, 7, 9), "scale: 2 pad_out_h: true pad_out_w: true"),
    ((1, 2, 7, 9), "upsample_h: 7 upsample_w: 9"),
])
def test_segnet_pool_mask_and_unpool(tmp_path, shape, upsample):
    body = ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            f'layer {{ name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up" '
            f'upsample_param {{ {upsample} }} }}\n')
    proto, _ = write_net(tmp_path, _net(shape, body))
    x = _x(*shape)
    pooled, mask = caffe_max_pool_with_mask(x, 2, 2)
    oh = shape[2] if "pad_out" in upsample or "upsample_h" in upsample else 2 * pooled.shape[2]
    ow = shape[3] if "pad_out" in upsample or "upsample_w" in upsample else 2 * pooled.shape[3]
    up = segnet_unpool(pooled, mask, oh, ow)
    check_net(tmp_path, proto, None, {"data": x}, {"pool": pooled, "mask": mask, "up": up})


def test_yolo_nearest_upsample(tmp_path):
    body = 'layer { name: "up" type: "Upsample" bottom: "data" top: "up" upsample_param { scale: 3 } }\n'
    proto, _ = write_net(tmp_path, _net((1, 2, 3, 4), body))
    x = _x(1, 2, 3, 4)
    check_net(tmp_path, proto, None, {"data": x}, {"up": x.repeat(3, axis=2).repeat(3, axis=3)})


def test_segnet_unpool_needs_a_mask_of_the_same_shape(tmp_path):
    body = ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            'layer { name: "up" type: "Upsample" bottom: "pool" bottom: "data" top: "up" }\n')
    with pytest.raises(Exception, match="mask"):
        infer_shapes(read_net(write_net(tmp_path, _net((1, 2, 4, 4), body))[0]))


SEGNET_BN = 'bn_param { scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.001 } }'


@pytest.mark.parametrize("mode", ["", "bn_mode: INFERENCE"])
def test_segnet_bn(tmp_path, mode):
    body = (f'layer {{ name: "bn" type: "BN" bottom: "data" top: "out" '
            f'{SEGNET_BN.replace("} }", "} " + mode + " }") if mode else SEGNET_BN} }}\n')
    scale, shift = _x(1, 3, 1, 1), _x(1, 3, 1, 1)
    proto, model = write_net(tmp_path, _net((2, 3, 4, 5), body), [("bn", "BN", [scale, shift])])
    x = _x(2, 3, 4, 5) * 3 + 1
    x64 = x.astype(np.float64)
    if mode:
        expected = x64 * scale + shift
    else:
        # bn_layer.cpp LEARN: E[x] and E[x²] over N, H, W; variance E[x²] - E[x]²; eps 1e-9 (at TEST too).
        mean = x64.mean(axis=(0, 2, 3), keepdims=True)
        var = (x64 ** 2).mean(axis=(0, 2, 3), keepdims=True) - mean ** 2
        expected = (x64 - mean) / np.sqrt(var + 1e-9) * scale + shift
    check_net(tmp_path, proto, model, {"data": x}, {"out": expected})


@pytest.mark.parametrize("eps", ["", "eps: 0.001"])
def test_pspnet_bn(tmp_path, eps):
    params = "param { lr_mult: 1 } " * 2 + "param { lr_mult: 0 } " * 2
    body = (f'layer {{ name: "bn" type: "BN" bottom: "data" top: "out" {params}'
            f'bn_param {{ slope_filler {{ type: "constant" value: 1 }} frozen: true momentum: 0.95 {eps} }} }}\n')
    slope, bias, mean = _x(1, 3, 1, 1), _x(1, 3, 1, 1), _x(1, 3, 1, 1)
    var = np.abs(_x(1, 3, 1, 1)) * 1e-3
    proto, model = write_net(tmp_path, _net((1, 3, 4, 5), body), [("bn", "BN", [slope, bias, mean, var])])
    x = _x(1, 3, 4, 5)
    e = 1e-3 if eps else 1e-5
    expected = (x.astype(np.float64) - mean) / np.sqrt(var.astype(np.float64) + np.float32(e)) * slope + bias
    check_net(tmp_path, proto, model, {"data": x}, {"out": expected})


def test_bn_dialect_by_param_count_when_no_field_says(tmp_path):
    four = 'param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 0 } param { lr_mult: 0 }'
    for params, blobs in (("", 2), (four, 4)):
        body = f'layer {{ name: "bn" type: "BN" bottom: "data" top: "out" {params} }}\n'
        net = read_net(write_net(tmp_path, _net((1, 3, 4, 5), body), name=f"n{blobs}")[0])
        assert len(infer_shapes(net).layers["bn"].params) == blobs


def test_seeded_weights_give_the_pspnet_bn_a_positive_variance(tmp_path):
    from ninport.caffe.load import load_net
    from ninport.caffe.seeded import write_seeded_caffemodel

    params = "param { lr_mult: 1 } " * 2 + "param { lr_mult: 0 } " * 2
    body = f'layer {{ name: "bn" type: "BN" bottom: "data" top: "out" {params}bn_param {{ frozen: true }} }}\n'
    proto, _ = write_net(tmp_path, _net((1, 8, 4, 5), body))
    model = tmp_path / "seeded.caffemodel"
    write_seeded_caffemodel(read_net(proto), model, seed=1)
    net, _ = load_net(proto, model)
    slope, _, _, variance = net.layer("bn").blobs
    assert variance.min() > 0 and slope.min() > 0
