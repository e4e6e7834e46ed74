"""Convolution, Deconvolution, InnerProduct and STOCHASTIC pooling: each on a tiny net, against OpenCV's Caffe
importer where it gets the layer right, else against numpy restatements of Caffe's loops written here; then
the exported ONNX in onnxruntime against the same reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from layer_harness import check_net, opencv_outputs, write_net

from ninport.caffe.load import read_net
from ninport.caffe.shapes import infer_shapes
from ninport.errors import NinportError


def header(*inputs: tuple[str, tuple[int, ...]]) -> str:
    return "".join(f'input: "{n}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n' for n, s in inputs)


def deconv_reference(x, weight, bias, stride, pad, dilation, group):
    """deconv_layer.cpp: Forward_cpu is the convolution's backward_cpu_gemm (col = Wᵀ·x, then col2im): every
    input pixel adds its value times the kernel into the output at stride·i - pad + dilation·k."""
    n, cin, h, w = x.shape
    _, cout_g, kh, kw = weight.shape
    cin_g = cin // group
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph
    ow = sw * (w - 1) + dw * (kw - 1) + 1 - 2 * pw
    out = np.zeros((n, cout_g * group, oh, ow))
    for g in range(group):
        for ci in range(g * cin_g, (g + 1) * cin_g):
            for co in range(cout_g):
                for ki in range(kh):
                    for kj in range(kw):
                        for i in range(h):
                            y = i * sh - ph + ki * dh
                            if not 0 <= y < oh:
                                continue
                            for j in range(w):
                                xx = j * sw - pw + kj * dw
                                if 0 <= xx < ow:
                                    out[:, g * cout_g + co, y, xx] += x[:, ci, i, j] * weight[ci, co, ki, kj]
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def stochastic_pool_reference(x, kernel, stride, out_hw):
    """pooling_layer.cu, StoPoolForwardTest: windows start at stride·o (no padding), clipped to the input;
    each gives Σx² / Σx when Σx > 0, else 0."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, *out_hw))
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            hs, ws = i * stride[0], j * stride[1]
            win = x[:, :, hs : min(hs + kernel[0], h), ws : min(ws + kernel[1], w)].astype(np.float64)
            total = win.sum(axis=(2, 3))
            squares = (win * win).sum(axis=(2, 3))
            out[:, :, i, j] = np.where(total > 0, squares / np.where(total > 0, total, 1), 0)
    return out


RNG = np.random.default_rng(1234)


def randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Convolution


@pytest.mark.parametrize("params, shape", [
    ("num_output: 6 kernel_size: 3 group: 2 pad: 1 stride: 2", (2, 4, 7, 8)),
    ("num_output: 4 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1 dilation: 2", (2, 3, 9, 7)),
    ("num_output: 4 kernel_size: 3 group: 4 bias_term: false", (1, 4, 6, 6)),  # depthwise, no bias
])
def test_convolution_matches_opencv(tmp_path, params, shape):
    text = header(("data", shape)) + (
        f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param {{ {params} }} }}\n'
    )
    net = read_net(write_net(tmp_path, text, name="probe")[0])
    blobs = [randn(*s) for s in infer_shapes(net).layers["conv"].params]
    proto, model = write_net(tmp_path, text, [("conv", "Convolution", blobs)])
    x = randn(*shape)
    ref = opencv_outputs(proto, model, {"data": x}, ["conv"])
    check_net(tmp_path, proto, model, {"data": x}, ref)


def test_convolution_with_two_bottoms_shares_its_filters(tmp_path):
    # conv_layer.cpp runs every bottom through the same weights, one top each. The reference is OpenCV on a
    # net with two single-bottom convolutions holding the same weights.
    w, b = randn(5, 3, 3, 3), randn(5)
    conv = 'convolution_param { num_output: 5 kernel_size: 3 pad: 1 }'
    shared = header(("a", (2, 3, 6, 6)), ("b", (2, 3, 6, 6))) + (
        f'layer {{ name: "conv" type: "Convolution" bottom: "a" bottom: "b" top: "ca" top: "cb" {conv} }}\n'
    )
    twin = header(("a", (2, 3, 6, 6)), ("b", (2, 3, 6, 6))) + (
        f'layer {{ name: "ca" type: "Convolution" bottom: "a" top: "ca" {conv} }}\n'
        f'layer {{ name: "cb" type: "Convolution" bottom: "b" top: "cb" {conv} }}\n'
    )
    inputs = {"a": randn(2, 3, 6, 6), "b": randn(2, 3, 6, 6)}
    proto2, model2 = write_net(tmp_path, twin, [("ca", "Convolution", [w, b]), ("cb", "Convolution", [w, b])],
                               name="twin")
    ref = opencv_outputs(proto2, model2, inputs, ["ca", "cb"])
    proto, model = write_net(tmp_path, shared, [("conv", "Convolution", [w, b])])
    check_net(tmp_path, proto, model, inputs, ref)


# ---------------------------------------------------------------------------------------------------------
# Deconvolution


@pytest.mark.parametrize("params, shape", [
    ("num_output: 8 kernel_size: 4 stride: 2 pad: 1 group: 2", (2, 4, 5, 6)),
    ("num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0 bias_term: false", (1, 2, 4, 5)),
    ("num_output: 4 kernel_size: 3 group: 4", (2, 4, 5, 5)),  # depthwise
])
def test_deconvolution_matches_opencv(tmp_path, params, shape):
    text = header(("data", shape)) + (
        f'layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up" convolution_param {{ {params} }} }}\n'
    )
    net = read_net(write_net(tmp_path, text, name="probe")[0])
    expected = infer_shapes(net).layers["up"].params
    assert expected[0][0] == shape[1]  # Caffe's deconvolution weight: C_in × C_out/group × kh × kw
    blobs = [randn(*s) for s in expected]
    proto, model = write_net(tmp_path, text, [("up", "Deconvolution", blobs)])
    x = randn(*shape)
    ref = opencv_outputs(proto, model, {"data": x}, ["up"])
    check_net(tmp_path, proto, model, {"data": x}, ref)


@pytest.mark.parametrize("group, dilation, stride, pad, bias", [(1, 2, 2, 1, True), (2, 3, 1, 2, False)])
def test_dilated_deconvolution_matches_caffe_loops(tmp_path, group, dilation, stride, pad, bias):
    # OpenCV sizes a dilated deconvolution without the dilation; the reference is deconv_layer.cpp's loop.
    cin, cout, k = 4, 6, 3
    text = header(("data", (2, cin, 4, 5))) + (
        f'layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up" convolution_param {{ num_output: {cout} '
        f"kernel_size: {k} group: {group} dilation: {dilation} stride: {stride} pad: {pad} "
        f"bias_term: {str(bias).lower()} }} }}\n"
    )
    w = randn(cin, cout // group, k, k)
    b = randn(cout) if bias else None
    proto, model = write_net(tmp_path, text, [("up", "Deconvolution", [w] + ([b] if bias else []))])
    x = randn(2, cin, 4, 5)
    ref = deconv_reference(x, w, b, (stride,) * 2, (pad,) * 2, (dilation,) * 2, group)
    extent = dilation * (k - 1) + 1
    assert ref.shape[2:] == (stride * 3 + extent - 2 * pad, stride * 4 + extent - 2 * pad)
    check_net(tmp_path, proto, model, {"data": x}, {"up": ref})


def test_deconvolution_by_hand(tmp_path):
    # One input channel [[1, 2]], a 2×2 kernel of ones, stride 2: each input pixel paints its own 2×2 block.
    text = header(("data", (1, 1, 1, 2))) + (
        'layer { name: "up" type: "Deconvolution" bottom: "data" top: "up" '
        "convolution_param { num_output: 1 kernel_size: 2 stride: 2 bias_term: false } }\n"
    )
    proto, model = write_net(tmp_path, text, [("up", "Deconvolution", [np.ones((1, 1, 2, 2), np.float32)])])
    expected = np.array([[[[1, 1, 2, 2], [1, 1, 2, 2]]]], dtype=np.float64)
    check_net(tmp_path, proto, model, {"data": np.array([[[[1, 2]]]], np.float32)}, {"up": expected})


# ---------------------------------------------------------------------------------------------------------
# InnerProduct


@pytest.mark.parametrize("axis, transpose", [(1, False), (2, False), (-2, False), (2, True), (1, True)])
def test_inner_product_axis_and_transpose(tmp_path, axis, transpose):
    # inner_product_layer.cpp: flatten from axis, top = x · Wᵀ + b with W N×K, or x · W with W K×N when
    # transpose. (OpenCV ignores transpose, so the reference is that formula.)
    shape = (2, 3, 4, 5)
    k = math.prod(shape[axis % 4 :])
    w = randn(7, k)
    b = randn(7)
    text = header(("data", shape)) + (
        f'layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        f"inner_product_param {{ num_output: 7 axis: {axis} transpose: {str(transpose).lower()} }} }}\n"
    )
    proto, model = write_net(tmp_path, text, [("ip", "InnerProduct", [w.T.copy() if transpose else w, b])])
    x = randn(*shape)
    lead = shape[: axis % 4]
    ref = x.reshape(*lead, k).astype(np.float64) @ w.T.astype(np.float64) + b
    check_net(tmp_path, proto, model, {"data": x}, {"ip": ref})
    if not transpose:
        cv = opencv_outputs(proto, model, {"data": x}, ["ip"])["ip"]
        np.testing.assert_allclose(cv, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_inner_product_without_bias_on_4d_input(tmp_path):
    w = randn(6, 3 * 4 * 4)
    text = header(("data", (3, 3, 4, 4))) + (
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        "inner_product_param { num_output: 6 bias_term: false } }\n"
    )
    proto, model = write_net(tmp_path, text, [("ip", "InnerProduct", [w])])
    x = randn(3, 3, 4, 4)
    check_net(tmp_path, proto, model, {"data": x}, opencv_outputs(proto, model, {"data": x}, ["ip"]))


# ---------------------------------------------------------------------------------------------------------
# STOCHASTIC pooling (test phase)


def pool_text(shape, params):
    return header(("data", shape)) + (
        f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
        f"  pooling_param {{ pool: STOCHASTIC {params} }} }}\n"
    )


def test_stochastic_pooling_by_hand(tmp_path):
    # 3×3 input, kernel 2, stride 2: ceil((3-2)/2)+1 = 2 windows per axis, the last ones clipped.
    # Window (0,0) holds 1,2,3,0: (1+4+9)/(1+2+3) = 14/6. Window (0,1) holds 2,0 (clipped): 4/2 = 2.
    # Window (1,0) holds 0,0: the sum is 0, so the output is 0. Window (1,1) holds 5: 25/5 = 5.
    x = np.array([[[[1, 2, 2], [3, 0, 0], [0, 0, 5]]]], dtype=np.float32)
    proto, _ = write_net(tmp_path, pool_text(x.shape, "kernel_size: 2 stride: 2"))
    check_net(tmp_path, proto, None, {"data": x}, {"pool": np.array([[[[14 / 6, 2], [0, 5]]]])})


def test_stochastic_pooling_negative_sum_gives_zero(tmp_path):
    # Caffe's test returns Σx²/Σx only when Σx > 0 (inputs are meant to be non-negative, after a ReLU).
    x = np.array([[[[-1, -2], [1, 0]]]], dtype=np.float32)
    proto, _ = write_net(tmp_path, pool_text(x.shape, "kernel_size: 2 stride: 2"))
    check_net(tmp_path, proto, None, {"data": x}, {"pool": np.zeros((1, 1, 1, 1))})


@pytest.mark.parametrize("params, shape, kernel, stride", [
    ("kernel_size: 3 stride: 2", (2, 3, 9, 8), (3, 3), (2, 2)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2", (1, 2, 6, 7), (3, 2), (1, 2)),
    ("global_pooling: true", (2, 4, 5, 6), (5, 6), (1, 1)),
])
def test_stochastic_pooling_matches_caffe_loops(tmp_path, params, shape, kernel, stride):
    x = np.maximum(randn(*shape), 0)  # as after a ReLU; some windows are all zero
    x[0, 0, :3, :3] = 0
    net = read_net(write_net(tmp_path, pool_text(shape, params), name="probe")[0])
    out_hw = infer_shapes(net).blobs["pool"][2:]
    proto, _ = write_net(tmp_path, pool_text(shape, params))
    check_net(tmp_path, proto, None, {"data": x}, {"pool": stochastic_pool_reference(x, kernel, stride, out_hw)})


def test_stochastic_pooling_with_padding_is_rejected(tmp_path):
    # pooling_layer.cpp, LayerSetUp: "Padding implemented only for average and max pooling."
    proto, _ = write_net(tmp_path, pool_text((1, 1, 4, 4), "kernel_size: 2 stride: 2 pad: 1"))
    with pytest.raises(NinportError, match="STOCHASTIC pooling takes no padding"):
        infer_shapes(read_net(proto))
