"""Caffe's pooling quirks, each on a case small enough to check by hand, then at random against a numpy
restatement of pooling_layer.cpp (tests/caffe_formulas.py), OpenCV's Caffe importer, torch and onnxruntime."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from caffe_formulas import pool2d, pooled_size
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import ninport

TOL = 1e-5


def pooling_net(tmp_path, h: int, w: int, method: str, kernel: int, stride: int, pad: int, extra: str = "",
                channels: int = 1):
    proto = tmp_path / f"pool_{method}_{h}x{w}_{kernel}_{stride}_{pad}.prototxt"
    proto.write_text(
        f'name: "p"\ninput: "data"\ninput_dim: 1\ninput_dim: {channels}\ninput_dim: {h}\ninput_dim: {w}\n'
        f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
        f"  pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} {extra} }} }}\n"
    )
    return proto


def all_backends(proto, x: np.ndarray, tmp_path) -> dict[str, np.ndarray]:
    model = ninport.load(proto, input_shape=",".join(map(str, x.shape)))
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy()
    path = tmp_path / "pool.onnx"
    ninport.export_onnx(model, path)
    (ort_out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    return {"torch": torch_out, "onnxruntime": ort_out}


def test_ceil_pool_4x4_kernel3_stride2(tmp_path):
    # 4×4, kernel 3, stride 2: ceil((4-3)/2)+1 = 2 windows per axis; the second starts at 2 and is clipped
    # to rows/cols 2..3. MAX of rows 0-2/cols 0-2 of 0..15 is 10, of (0-2, 2-3) is 11, (2-3, 0-2) 14, (2-3,2-3) 15.
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    proto = pooling_net(tmp_path, 4, 4, "MAX", 3, 2, 0)
    for name, out in all_backends(proto, x, tmp_path).items():
        np.testing.assert_array_equal(out[0, 0], [[10, 11], [14, 15]], err_msg=name)


def test_floor_round_mode(tmp_path):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    proto = pooling_net(tmp_path, 4, 4, "MAX", 3, 2, 0, extra="round_mode: FLOOR")
    for name, out in all_backends(proto, x, tmp_path).items():
        np.testing.assert_array_equal(out[0, 0], [[10]], err_msg=name)


def test_clipped_window_average_divisor(tmp_path):
    # AVE, 4×4 ones, kernel 3, stride 2, no pad: the last window covers 2 cells per axis but Caffe divides by
    # the window clipped to the (unpadded) input: 2×2 = 4 cells for the corner, so every output is exactly 1.
    x = np.ones((1, 1, 4, 4), dtype=np.float32)
    proto = pooling_net(tmp_path, 4, 4, "AVE", 3, 2, 0)
    for name, out in all_backends(proto, x, tmp_path).items():
        np.testing.assert_allclose(out[0, 0], np.ones((2, 2)), rtol=0, atol=1e-6, err_msg=name)


def test_padded_average_divisor_at_edge(tmp_path):
    # AVE, 3×3 ones, kernel 3, stride 1, pad 1: the corner window holds 4 image cells and 5 padded ones;
    # Caffe divides by all 9 (padding counts): 4/9. Edge: 6/9. Centre: 9/9.
    x = np.ones((1, 1, 3, 3), dtype=np.float32)
    proto = pooling_net(tmp_path, 3, 3, "AVE", 3, 1, 1)
    expected = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]], dtype=np.float64) / 9
    for name, out in all_backends(proto, x, tmp_path).items():
        np.testing.assert_allclose(out[0, 0], expected, rtol=0, atol=1e-6, err_msg=name)


def test_last_window_in_padding_is_dropped(tmp_path):
    # H = 5, kernel 2, stride 2, pad 1: ceil((5+2-2)/2)+1 = 4, but window 4 would start at 3*2-1 = 5, in the
    # padding, so Caffe keeps 3.
    assert pooled_size(5, 2, 2, 1) == 3
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    proto = pooling_net(tmp_path, 5, 5, "MAX", 2, 2, 1)
    outs = all_backends(proto, x, tmp_path)
    for name, out in outs.items():
        assert out.shape == (1, 1, 3, 3), name
        np.testing.assert_array_equal(out[0, 0], [[0, 2, 4], [10, 12, 14], [20, 22, 24]], err_msg=name)


def test_global_pooling(tmp_path):
    x = np.random.default_rng(0).normal(size=(1, 3, 5, 7)).astype(np.float32)
    proto = tmp_path / "g.prototxt"
    proto.write_text(
        'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 5\ninput_dim: 7\n'
        'layer { name: "g" type: "Pooling" bottom: "data" top: "g" pooling_param { pool: AVE global_pooling: true } }\n'
        'layer { name: "m" type: "Pooling" bottom: "data" top: "m" pooling_param { pool: MAX global_pooling: true } }\n'
    )
    model = ninport.load(proto)
    with torch.no_grad():
        g, m = model(torch.from_numpy(x))
    np.testing.assert_allclose(g.numpy()[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(m.numpy()[..., 0, 0], x.max(axis=(2, 3)))


def _last_window_overlaps(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> bool:
    """Whether every window of pooling_layer.cpp's geometry touches the input. With a stride past the kernel,
    CEIL can add a window that starts past the input (Caffe then writes -FLT_MAX for MAX, -0 for AVE)."""
    return (pooled_size(size, kernel, stride, pad, ceil) - 1) * stride - pad < size


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(3, 12),
    w=st.integers(3, 12),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    method=st.sampled_from(["MAX", "AVE"]),
    round_mode=st.sampled_from(["CEIL", "FLOOR"]),
    seed=st.integers(0, 1000),
)
# always among the cases: rectangular, stride past the kernel, FLOOR and CEIL
@example(h=7, w=11, kernel=(2, 3), stride=(3, 4), pad=(1, 0), method="AVE", round_mode="FLOOR", seed=1)
@example(h=9, w=5, kernel=(3, 1), stride=(4, 2), pad=(0, 0), method="MAX", round_mode="CEIL", seed=2)
def test_random_pooling_against_caffe_formula_and_opencv(tmp_path_factory, h, w, kernel, stride, pad, method,
                                                        round_mode, seed):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    ceil = round_mode == "CEIL"
    # What Caffe refuses (pooling_layer.cpp, LayerSetUp: pad < kernel) or cannot size (a kernel past the padded
    # input), and windows wholly outside the input, are not drawn.
    assume(ph < kh and pw < kw and kh <= h + 2 * ph and kw <= w + 2 * pw)
    assume(_last_window_overlaps(h, kh, sh, ph, ceil) and _last_window_overlaps(w, kw, sw, pw, ceil))
    tmp_path = tmp_path_factory.mktemp("pool")
    x = np.random.default_rng(seed).normal(size=(2, 2, h, w)).astype(np.float32)
    expected = pool2d(x.astype(np.float64), method, (kh, kw), (sh, sw), (ph, pw), ceil=ceil)
    proto = tmp_path / "pool.prototxt"
    proto.write_text(
        f'name: "p"\ninput: "data"\ninput_dim: 2\ninput_dim: 2\ninput_dim: {h}\ninput_dim: {w}\n'
        f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
        f"  pooling_param {{ pool: {method} kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} "
        f"pad_h: {ph} pad_w: {pw}{' round_mode: FLOOR' if not ceil else ''} }} }}\n")
    scale = max(1.0, float(np.abs(expected).max()))
    for name, out in all_backends(proto, x, tmp_path).items():
        assert out.shape == expected.shape, name
        assert np.abs(out - expected).max() / scale <= TOL, name
    if ceil:  # OpenCV's Caffe schema has no round_mode: FLOOR is checked against the formula only
        cv = cv2.dnn.readNetFromCaffe(str(proto))
        cv.setInput(x)
        ref = cv.forward()
        assert ref.shape == expected.shape
        assert np.abs(ref - expected).max() / scale <= TOL


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_nin_sized_pooling_against_opencv(tmp_path, method):
    # NiN's pool0 geometry: 54 → 27 with kernel 3 stride 2 (a clipped last window).
    x = np.random.default_rng(3).normal(size=(2, 8, 54, 54)).astype(np.float32)
    proto = pooling_net(tmp_path, 54, 54, method, 3, 2, 0, channels=8)
    cv = cv2.dnn.readNetFromCaffe(str(proto))
    cv.setInput(x)
    ref = cv.forward()
    assert ref.shape == (2, 8, 27, 27)
    for name, out in all_backends(proto, x, tmp_path).items():
        assert np.abs(out - ref).max() / np.abs(ref).max() <= TOL, name
