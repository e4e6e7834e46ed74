"""R-CNN region pooling: ROIPooling and PSROIPooling against OpenCV's importer (which implements both) and,
for ROIPooling, against a line-by-line restatement of roi_pooling_layer.cpp; in torch and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from tests.layer_harness import check_net, opencv_outputs, write_net

RNG = np.random.default_rng(31)


def _rois(n: int, width: int, height: int, scale: float) -> np.ndarray:
    """ROIs in image coordinates (the map times 1 / scale), some past the edges and one degenerate, half-pixel
    ends included so that the rounding matters."""
    rows = []
    for i in range(n):
        x1, y1 = RNG.uniform(-4, width / scale), RNG.uniform(-4, height / scale)
        x2, y2 = x1 + RNG.uniform(0, width / scale), y1 + RNG.uniform(0, height / scale)
        rows.append([i % 2, x1, y1, x2, y2])
    rows.append([1, 8.5, 4.5, 8.5, 4.5])  # a point: forced to one cell
    rows.append([0, 2.5 / scale, 1.5 / scale, 6.5 / scale, 3.5 / scale])
    return np.array(rows, dtype=np.float32)


def _net(feature: tuple[int, ...], rois: int, layer: str) -> str:
    dims = " ".join(f"dim: {d}" for d in feature)
    return (f'input: "data"\ninput_shape {{ {dims} }}\n'
            + f'input: "rois"\ninput_shape {{ dim: {rois} dim: 5 }}\n' + layer)


def caffe_roi_pool(x, rois, ph_n, pw_n, scale):
    """roi_pooling_layer.cpp Forward_cpu in numpy (float32 bin arithmetic; C rounding of the scaled ends)."""
    f = np.float32
    out = np.zeros((len(rois), x.shape[1], ph_n, pw_n), dtype=np.float64)
    h, w = x.shape[2:]
    for n, (b, *c) in enumerate(rois):
        x1, y1, x2, y2 = (int(np.sign(v) * np.floor(abs(float(v)) + 0.5)) for v in f(c) * f(scale))
        bh, bw = f(max(y2 - y1 + 1, 1)) / f(ph_n), f(max(x2 - x1 + 1, 1)) / f(pw_n)
        for i in range(ph_n):
            for j in range(pw_n):
                hs = min(max(int(np.floor(f(i) * bh)) + y1, 0), h)
                he = min(max(int(np.ceil(f(i + 1) * bh)) + y1, 0), h)
                ws = min(max(int(np.floor(f(j) * bw)) + x1, 0), w)
                we = min(max(int(np.ceil(f(j + 1) * bw)) + x1, 0), w)
                if he > hs and we > ws:
                    out[n, :, i, j] = x[int(b), :, hs:he, ws:we].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("scale", [0.0625, 0.5])
def test_roi_pooling(tmp_path, scale):
    x = RNG.standard_normal((2, 3, 9, 11)).astype(np.float32)  # negative values: a bin's max may be < 0
    rois = _rois(6, 11, 9, scale)
    layer = ('layer { name: "out" type: "ROIPooling" bottom: "data" bottom: "rois" top: "out" '
             f'roi_pooling_param {{ pooled_h: 3 pooled_w: 2 spatial_scale: {scale} }} }}\n')
    proto, _ = write_net(tmp_path, _net(x.shape, len(rois), layer))
    expected = caffe_roi_pool(x, rois, 3, 2, scale)
    ref = opencv_outputs(proto, None, {"data": x, "rois": rois}, ["out"])["out"]
    np.testing.assert_allclose(ref, expected, rtol=0, atol=1e-6)
    check_net(tmp_path, proto, None, {"data": x, "rois": rois}, {"out": expected})


@pytest.mark.parametrize("scale", [0.0625, 1.0])
def test_psroi_pooling_against_opencv(tmp_path, scale):
    group, dim = 3, 2
    x = RNG.standard_normal((2, dim * group * group, 8, 10)).astype(np.float32)
    rois = _rois(5, 10, 8, scale)
    layer = ('layer { name: "out" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "out" '
             f'psroi_pooling_param {{ spatial_scale: {scale} output_dim: {dim} group_size: {group} }} }}\n')
    proto, _ = write_net(tmp_path, _net(x.shape, len(rois), layer))
    ref = opencv_outputs(proto, None, {"data": x, "rois": rois}, ["out"])
    assert np.any(ref["out"] != 0) and np.any(ref["out"] == 0)  # ROIs inside and past the map
    check_net(tmp_path, proto, None, {"data": x, "rois": rois}, ref)
