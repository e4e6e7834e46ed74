"""Fork layers without fork fields: ReLU6, ConvolutionDepthwise, DepthwiseConvolution, Axpy; torch and
onnxruntime against OpenCV's importer and against numpy restatements of the forks' code."""

from __future__ import annotations

import numpy as np
import pytest

from ninport.caffe.load import read_net
from ninport.caffe.shapes import infer_shapes
from ninport.errors import ShapeError
from ninport.torch.support import support_table
from tests.layer_harness import check_net, opencv_outputs, write_net

RNG = np.random.default_rng(11)


def _x(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 4).astype(np.float32)


def _depthwise_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """conv_dw_layer.cpp's Forward_cpu in float64: per channel, the window sum over cells inside the image."""
    n, c, h, wd = x.shape
    k = w.shape[-1]
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            for kh in range(k):
                for kw in range(k):
                    hi, wi = -pad + i * stride + kh, -pad + j * stride + kw
                    if 0 <= hi < h and 0 <= wi < wd:
                        out[:, :, i, j] += w[:, 0, kh, kw].astype(np.float64) * x[:, :, hi, wi]
    return out + b.reshape(1, -1, 1, 1)


def test_relu6_against_opencv(tmp_path):
    text = ('input: "data"\ninput_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
            'layer { name: "out" type: "ReLU6" bottom: "data" top: "out" }\n')
    proto, _ = write_net(tmp_path, text)
    x = _x(2, 3, 4, 5)
    ref = opencv_outputs(proto, None, {"data": x}, ["out"])
    assert ref["out"].max() == 6 and ref["out"].min() == 0  # the input reaches past both clips
    check_net(tmp_path, proto, None, {"data": x}, ref)


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 0), (2, 1)])
def test_convolution_depthwise_ignores_num_output(tmp_path, stride, pad):
    text = ('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 7 dim: 6 }\n'
            'layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "out" '
            f'convolution_param {{ num_output: 9 kernel_size: 3 stride: {stride} pad: {pad} }} }}\n')
    w, b = _x(3, 1, 3, 3), _x(3)
    proto, model = write_net(tmp_path, text, [("dw", "ConvolutionDepthwise", [w, b])])
    x = _x(1, 3, 7, 6)
    check_net(tmp_path, proto, model, {"data": x}, {"out": _depthwise_reference(x, w, b, stride, pad)})


def test_convolution_depthwise_against_opencv(tmp_path):
    text = ('input: "data"\ninput_shape { dim: 1 dim: 4 dim: 6 dim: 6 }\n'
            'layer { name: "out" type: "ConvolutionDepthwise" bottom: "data" top: "out" '
            'convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 } }\n')
    w, b = _x(4, 1, 3, 3), _x(4)
    proto, model = write_net(tmp_path, text, [("out", "ConvolutionDepthwise", [w, b])])
    x = _x(1, 4, 6, 6)
    check_net(tmp_path, proto, model, {"data": x}, opencv_outputs(proto, model, {"data": x}, ["out"]))


def test_depthwise_convolution_is_a_grouped_convolution(tmp_path):
    text = ('input: "data"\ninput_shape { dim: 1 dim: 4 dim: 6 dim: 6 }\n'
            'layer { name: "out" type: "DepthwiseConvolution" bottom: "data" top: "out" '
            'convolution_param { num_output: 4 group: 4 kernel_size: 3 pad: 1 stride: 2 } }\n')
    w, b = _x(4, 1, 3, 3), _x(4)
    proto, model = write_net(tmp_path, text, [("out", "DepthwiseConvolution", [w, b])])
    x = _x(1, 4, 6, 6)
    # OpenCV's importer has no DepthwiseConvolution: the numpy restatement is the reference.
    check_net(tmp_path, proto, model, {"data": x}, {"out": _depthwise_reference(x, w, b, 2, 1)})


AXPY = '''input: "data"
input_shape { dim: 2 dim: 4 dim: 5 dim: 3 }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "gate" type: "Sigmoid" bottom: "pool" top: "gate" }
layer { name: "neg" type: "Power" bottom: "data" top: "neg" power_param { scale: -0.5 } }
layer { name: "out" type: "Axpy" bottom: "gate" bottom: "data" bottom: "neg" top: "out" }
'''


def test_axpy_against_numpy(tmp_path):
    # OpenCV's Axpy fails on this net (a shape error in its importer): numpy of axpy_layer.cpp is the reference.
    proto, _ = write_net(tmp_path, AXPY)
    x = _x(2, 4, 5, 3)
    gate = 1 / (1 + np.exp(-x.astype(np.float64).mean(axis=(2, 3), keepdims=True)))
    expected = gate * x - 0.5 * x
    check_net(tmp_path, proto, None, {"data": x}, {"out": expected})


def test_axpy_scale_must_be_per_channel(tmp_path):
    text = AXPY.replace('bottom: "gate" bottom: "data"', 'bottom: "data" bottom: "data"')
    with pytest.raises(ShapeError, match="Axpy scale"):
        infer_shapes(read_net(write_net(tmp_path, text)[0]))


def test_fork_layers_are_listed_with_their_fork():
    rows = {row.type: row for row in support_table(include_plugins=False)}
    for layer_type, fork in [("ReLU6", "MobileNet"), ("ConvolutionDepthwise", "conv_dw_layer.cpp"),
                             ("DepthwiseConvolution", "yonghenglh6"), ("Axpy", "SENet"),
                             ("ShuffleChannel", "farmingyard/ShuffleNet")]:
        assert fork in rows[layer_type].notes, (layer_type, rows[layer_type])


@pytest.mark.parametrize("group", [2, 3])
def test_shuffle_channel_against_opencv(tmp_path, group):
    text = ('input: "data"\ninput_shape { dim: 2 dim: 6 dim: 3 dim: 4 }\n'
            f'layer {{ name: "out" type: "ShuffleChannel" bottom: "data" top: "out" '
            f'shuffle_channel_param {{ group: {group} }} }}\n')
    proto, _ = write_net(tmp_path, text)
    x = _x(2, 6, 3, 4)
    ref = opencv_outputs(proto, None, {"data": x}, ["out"])
    # shuffle_channel_layer.cpp: channel i * (C / g) + j moves to j * g + i.
    moved = np.empty_like(x)
    for i in range(group):
        for j in range(6 // group):
            moved[:, j * group + i] = x[:, i * (6 // group) + j]
    np.testing.assert_array_equal(ref["out"], moved)
    check_net(tmp_path, proto, None, {"data": x}, ref)
