"""Element-wise Caffe layers (activations, PReLU, Eltwise, Scale, Bias): torch, the exported ONNX in
onnxruntime, and OpenCV's Caffe importer where it implements the layer correctly, each against a numpy
restatement of the layer's Caffe formula (the Forward_cpu of the source file named beside it)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_layers_harness import LayerNet, assert_close, check_backends, input_header, layer_text

import ninport
from ninport.errors import NinportError

SHAPE = (2, 3, 4, 5)


def normal(shape=SHAPE, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


# ---- activations --------------------------------------------------------------------------------------------
# Each reference takes the float64 bottom and returns the top as Caffe's Forward_cpu computes it.


def bnll_ref(x):  # bnll_layer.cpp: x > 0 ? x + log(1 + exp(-x)) : log(1 + exp(x))
    return np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))), np.log1p(np.exp(np.minimum(x, 0))))


def power_ref(power, scale, shift):  # power_layer.cpp: constant when power * scale == 0, else (shift + scale x)^p
    def ref(x):
        if power * scale == 0:
            return np.full_like(x, 1.0 if power == 0 else shift**power)
        return (shift + scale * x) ** power

    return ref


def exp_ref(base, scale, shift):  # exp_layer.cpp: base^(shift + scale * x), base -1 meaning e
    b = np.e if base == -1 else base
    return lambda x: b ** (shift + scale * x)


def log_ref(base, scale, shift):  # log_layer.cpp: log_base(shift + scale * x), base -1 meaning e
    b = np.e if base == -1 else base
    return lambda x: np.log(shift + scale * x) / np.log(b)


# (type, layer parameters, reference, OpenCV implements it correctly, bottom made non-negative by an AbsVal)
ACTIVATIONS: dict[str, tuple[str, str, Callable, bool, bool]] = {
    "relu_slope": ("ReLU", "relu_param { negative_slope: 0.1 }",  # relu_layer.cpp
                   lambda x: np.maximum(x, 0) + 0.1 * np.minimum(x, 0), True, False),
    "elu": ("ELU", "", lambda x: np.maximum(x, 0) + (np.exp(np.minimum(x, 0)) - 1), True, False),  # elu_layer.cpp
    "elu_alpha": ("ELU", "elu_param { alpha: 0.5 }",
                  lambda x: np.maximum(x, 0) + 0.5 * (np.exp(np.minimum(x, 0)) - 1), True, False),
    "sigmoid": ("Sigmoid", "", lambda x: 0.5 * np.tanh(0.5 * x) + 0.5, True, False),  # sigmoid_layer.cpp
    "tanh": ("TanH", "", np.tanh, True, False),  # tanh_layer.cpp
    "absval": ("AbsVal", "", np.abs, True, False),  # absval_layer.cpp
    "bnll": ("BNLL", "", bnll_ref, True, False),
    "power": ("Power", "power_param { power: 2 scale: 0.5 shift: 3 }", power_ref(2, 0.5, 3), True, False),
    "power_cube": ("Power", "power_param { power: 3 }", power_ref(3, 1, 0), True, False),
    "power_sqrt": ("Power", "power_param { power: 0.5 shift: 0.25 }", power_ref(0.5, 1, 0.25), True, True),
    "power_reciprocal": ("Power", "power_param { power: -1 scale: 2 shift: 1 }", power_ref(-1, 2, 1), True, True),
    "power_zero": ("Power", "power_param { power: 0 scale: 2 shift: 3 }", power_ref(0, 2, 3), True, False),
    "power_scale_zero": ("Power", "power_param { power: 2 scale: 0 shift: 3 }", power_ref(2, 0, 3), True, False),
    "exp": ("Exp", "", exp_ref(-1, 1, 0), True, False),
    "exp_base2": ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", exp_ref(2, 0.5, 1), True, False),
    "exp_base10": ("Exp", "exp_param { base: 10 shift: -1 }", exp_ref(10, 1, -1), True, False),
    "log": ("Log", "", log_ref(-1, 1, 0), True, True),
    # OpenCV ignores Log's base, scale and shift (it computes ln x).
    "log_base10": ("Log", "log_param { base: 10 scale: 2 shift: 0.5 }", log_ref(10, 2, 0.5), False, True),
    "log_base2_shift": ("Log", "log_param { base: 2 shift: 6 }", log_ref(2, 1, 6), False, False),
    # OpenCV has no Threshold and no Clip layer.
    "threshold": ("Threshold", "", lambda x: (x > 0).astype(np.float64), False, False),  # threshold_layer.cpp
    "threshold_02": ("Threshold", "threshold_param { threshold: 0.2 }",
                     lambda x: (x > np.float32(0.2)).astype(np.float64), False, False),
    "clip": ("Clip", "clip_param { min: -0.5 max: 0.75 }",  # clip_layer.cpp
             lambda x: np.maximum(-0.5, np.minimum(x, 0.75)), False, False),
    # Caffe takes max(min, min(x, max)): with min above max every value becomes min (torch.clamp gives max).
    "clip_min_above_max": ("Clip", "clip_param { min: 0.5 max: -0.5 }",
                           lambda x: np.maximum(0.5, np.minimum(x, -0.5)), False, False),
    "swish": ("Swish", "", lambda x: x / (1 + np.exp(-x)), True, False),  # swish_layer.cpp
    # OpenCV ignores Swish's beta.
    "swish_beta": ("Swish", "swish_param { beta: 1.5 }", lambda x: x / (1 + np.exp(-1.5 * x)), False, False),
}


@pytest.mark.parametrize("case", list(ACTIVATIONS))
def test_activation(tmp_path: Path, case: str):
    type_, param, ref, opencv_ok, positive = ACTIVATIONS[case]
    text = input_header(data=SHAPE)
    bottom = "data"
    if positive:  # layers defined only for x >= 0 (or > 0) get |x|, so random inputs stay in their domain
        text += layer_text("abs", "AbsVal", ["data"], ["abs"])
        bottom = "abs"
    text += layer_text("act", type_, [bottom], ["act"], param)
    x = normal(scale=2.0)
    x_ref = np.abs(x.astype(np.float64)) if positive else x.astype(np.float64)
    expected = ref(x_ref)
    assert np.isfinite(expected).all()
    net = LayerNet(tmp_path, text)
    check_backends(net, {"data": x}, [expected], opencv=opencv_ok)


def test_bnll_is_stable_for_large_inputs(tmp_path: Path):
    # log(1 + exp(100)) overflows float32 if computed directly; Caffe's form gives 100 + log(1 + e^-100) = 100.
    x = np.array([[-100.0, -1.0, 0.0, 1.0, 100.0]], dtype=np.float32)
    net = LayerNet(tmp_path, input_header(data=(1, 5)) + layer_text("b", "BNLL", ["data"], ["b"]))
    expected = bnll_ref(x.astype(np.float64))
    np.testing.assert_allclose(expected[0, [2, 4]], [np.log(2), 100.0])
    check_backends(net, {"data": x}, [expected])
    check_backends(net, {"data": normal((2, 5), scale=60)}, [bnll_ref(normal((2, 5), scale=60).astype(np.float64))])


def test_threshold_is_strictly_greater(tmp_path: Path):
    # threshold_layer.cpp: top = bottom > threshold ? 1 : 0, so a value equal to the threshold gives 0.
    x = np.array([[-1.0, 0.2, 0.2000001, 1.0]], dtype=np.float32)
    net = LayerNet(tmp_path, input_header(data=(1, 4))
                   + layer_text("t", "Threshold", ["data"], ["t"], "threshold_param { threshold: 0.2 }"))
    check_backends(net, {"data": x}, [np.array([[0.0, 0.0, 1.0, 1.0]])])


def test_power_with_zero_scale_ignores_the_input(tmp_path: Path):
    # power_layer.cpp: power * scale == 0 fills the top with shift^power (or 1 when power is 0), inf included.
    x = np.array([[np.inf, -np.inf, 0.0, 5.0]], dtype=np.float32)
    net = LayerNet(tmp_path, input_header(data=(1, 4))
                   + layer_text("p", "Power", ["data"], ["p"], "power_param { power: 2 scale: 0 shift: 3 }"))
    np.testing.assert_array_equal(net.torch({"data": x})[0], [[9.0, 9.0, 9.0, 9.0]])


# ---- PReLU ----------------------------------------------------------------------------------------------------


def prelu_ref(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    # prelu_layer.cpp: max(x, 0) + slope[c] * min(x, 0), c the axis-1 index (0 when channel_shared).
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    s = np.broadcast_to(slope.reshape(-1), (c,)).reshape(1, c, 1)
    return (np.maximum(flat, 0) + s * np.minimum(flat, 0)).reshape(x.shape)


@pytest.mark.parametrize("shape", [SHAPE, (4, 6)], ids=["4d", "2d"])
def test_prelu_per_channel(tmp_path: Path, shape):
    net = LayerNet(tmp_path, input_header(data=shape) + layer_text("prelu", "PReLU", ["data"], ["prelu"]), seed=3)
    slopes = net.module.get_submodule("prelu").weight
    assert isinstance(slopes, torch.nn.Parameter) and slopes.requires_grad
    assert list(net.module.state_dict()) == ["prelu.weight"] and tuple(slopes.shape) == (shape[1],)
    x = normal(shape)
    # The caffemodel's slopes, read back independently of ninport's module.
    stored = ninport.caffe.load_net(net.prototxt, net.caffemodel)[0].layers[-1].blobs[0]
    check_backends(net, {"data": x}, [prelu_ref(x.astype(np.float64), stored)], opencv=True)


def test_prelu_channel_shared_by_hand(tmp_path: Path):
    # One slope, 0.25, for both channels: -2 → -0.5, -1 → -0.25, 0 → 0, positives unchanged.
    text = (input_header(data=(1, 2, 1, 3))
            + layer_text("prelu", "PReLU", ["data"], ["prelu"], "prelu_param { channel_shared: true }"))
    # The slope is a 0-axis blob, as Caffe's prelu_layer.cpp makes it.
    net = LayerNet(tmp_path, text, blobs=[("prelu", "PReLU", [np.array(0.25)])])
    assert tuple(net.module.state_dict()["prelu.weight"].shape) == (1,)
    x = np.array([[[[-2.0, -1.0, 0.0]], [[1.0, 2.0, -4.0]]]], dtype=np.float32)
    expected = np.array([[[[-0.5, -0.25, 0.0]], [[1.0, 2.0, -1.0]]]])
    # OpenCV's importer cannot allocate a 0-axis blob; the numbers by hand (and tests/test_real_caffe.py) judge it.
    check_backends(net, {"data": x}, [expected], opencv=False)


# ---- Eltwise --------------------------------------------------------------------------------------------------


def eltwise_ref(op: str, xs: list[np.ndarray], coeffs: list[float] | None) -> np.ndarray:
    # eltwise_layer.cpp: PROD multiplies in order; SUM zeroes the top and adds coeff_i * bottom_i; MAX keeps
    # the larger value, bottom by bottom.
    if op == "PROD":
        out = xs[0] * xs[1]
        for x in xs[2:]:
            out = out * x
        return out
    if op == "SUM":
        out = np.zeros_like(xs[0])
        for x, c in zip(xs, coeffs or [1.0] * len(xs)):
            out = out + c * x
        return out
    out = np.where(xs[0] > xs[1], xs[0], xs[1])
    for x in xs[2:]:
        out = np.where(x > out, x, out)
    return out


@pytest.mark.parametrize(
    ("op", "count", "coeffs"),
    [("PROD", 2, None), ("PROD", 3, None), ("SUM", 2, None), ("SUM", 3, None), ("SUM", 2, [1.0, -1.0]),
     ("SUM", 3, [0.5, 2.0, -3.0]), ("MAX", 2, None), ("MAX", 3, None)],
)
def test_eltwise(tmp_path: Path, op: str, count: int, coeffs):
    names = "abc"[:count]
    param = f"eltwise_param {{ operation: {op} {' '.join(f'coeff: {c}' for c in coeffs or [])} }}"
    text = input_header(**{n: SHAPE for n in names}) + layer_text("elt", "Eltwise", list(names), ["elt"], param)
    inputs = {n: normal(seed=i) for i, n in enumerate(names)}
    expected = eltwise_ref(op, [inputs[n].astype(np.float64) for n in names], coeffs)
    check_backends(LayerNet(tmp_path, text), inputs, [expected], opencv=True)


def test_eltwise_sum_with_coeff_one_minus_one_by_hand(tmp_path: Path):
    # coeff [1, -1] makes SUM a difference: [1, 2, 3] - [0.5, 2, 5] = [0.5, 0, -2].
    param = "eltwise_param { operation: SUM coeff: 1 coeff: -1 }"
    text = input_header(a=(1, 3), b=(1, 3)) + layer_text("diff", "Eltwise", ["a", "b"], ["diff"], param)
    inputs = {"a": np.array([[1.0, 2.0, 3.0]], np.float32), "b": np.array([[0.5, 2.0, 5.0]], np.float32)}
    check_backends(LayerNet(tmp_path, text), inputs, [np.array([[0.5, 0.0, -2.0]])], opencv=True)


@pytest.mark.parametrize(
    ("bottoms", "param", "message"),
    [(["a", "b"], "eltwise_param { operation: PROD coeff: 1 coeff: 2 }", "PROD takes no coeff"),
     (["a"], "eltwise_param { operation: SUM }", "at least 2 bottoms"),
     (["a", "b"], "eltwise_param { coeff: 1 }", "1 coeff values for 2 bottoms")],
)
def test_eltwise_rejects_what_caffe_rejects(tmp_path: Path, bottoms, param, message):
    path = tmp_path / "bad.prototxt"
    path.write_text(input_header(a=(1, 3), b=(1, 3)) + layer_text("bad", "Eltwise", bottoms, ["bad"], param))
    with pytest.raises(NinportError, match=message) as info:
        ninport.load(path)
    assert "'bad'" in str(info.value) and "\n" not in str(info.value)


# ---- Scale and Bias -------------------------------------------------------------------------------------------


def broadcast_ref(x: np.ndarray, factor: np.ndarray, axis: int, op: str) -> np.ndarray:
    """scale_layer.cpp / bias_layer.cpp: view the bottom as outer × factor count × inner, where outer is the
    product of the axes before ``axis`` and inner that of the axes after the factor's, and apply the factor
    along the middle axis. A factor with no axes is a scalar (Caffe then uses axis 0)."""
    axis = 0 if factor.ndim == 0 else axis % x.ndim
    outer = int(np.prod(x.shape[:axis]))
    inner = int(np.prod(x.shape[axis + factor.ndim :]))
    view = x.reshape(outer, factor.size, inner)
    f = factor.reshape(1, factor.size, 1)
    return (view * f if op == "scale" else view + f).reshape(x.shape)


def stored_blobs(net: LayerNet, name: str, shape: tuple[int, ...] | None = None) -> list[np.ndarray]:
    """A layer's blobs as the caffemodel holds them, reshaped to the shape Caffe gives them when given."""
    layers = ninport.caffe.load_net(net.prototxt, net.caffemodel)[0].layers
    blobs = next(layer for layer in layers if layer.name == name).blobs
    return [b.astype(np.float64).reshape(b.shape if shape is None else shape) for b in blobs]


def param_field(param: str, name: str, default: int) -> int:
    match = re.search(rf"\b{name}: (-?\d+)", param)
    return int(match.group(1)) if match else default


def factor_shape_of(param: str, shape=SHAPE) -> tuple[int, ...]:
    """The learned factor's shape: the bottom's axes from axis, num_axes of them (-1: to the end)."""
    axis, num_axes = param_field(param, "axis", 1) % len(shape), param_field(param, "num_axes", 1)
    return tuple(shape[axis:] if num_axes == -1 else shape[axis : axis + num_axes])


# (scale_param, OpenCV implements it): axis, num_axes, bias_term; OpenCV rejects axis -1 and num_axes 0.
SCALE_ONE_BOTTOM = [
    ("", True), ("bias_term: true", True), ("axis: 1 num_axes: 2", True),
    ("axis: 2 num_axes: -1 bias_term: true", True),
    ("axis: -1 bias_term: true", False), ("num_axes: 0", False), ("num_axes: 0 bias_term: true", False),
    ("axis: 0 num_axes: -1", True),
]


@pytest.mark.parametrize(("param", "opencv_ok"), SCALE_ONE_BOTTOM, ids=[p or "default" for p, _ in SCALE_ONE_BOTTOM])
def test_scale_learned(tmp_path: Path, param: str, opencv_ok: bool):
    text = input_header(data=SHAPE) + layer_text("scale", "Scale", ["data"], ["scale"], f"scale_param {{ {param} }}")
    net = LayerNet(tmp_path, text, seed=5)
    module = net.module.get_submodule("scale")
    blobs = stored_blobs(net, "scale", factor_shape_of(param))
    expected_keys = ["scale.weight"] + (["scale.bias"] if "bias_term: true" in param else [])
    assert list(net.module.state_dict()) == expected_keys
    assert all(isinstance(p, torch.nn.Parameter) for p in module.parameters())
    axis = param_field(param, "axis", 1)
    x = normal()
    expected = broadcast_ref(x.astype(np.float64), blobs[0], axis, "scale")
    if len(blobs) > 1:
        expected = broadcast_ref(expected, blobs[1], axis, "bias")
    # A factor that spans the batch axis (axis 0) fixes the batch size, so that net exports with a static batch.
    check_backends(net, {"data": x}, [expected], opencv=opencv_ok, dynamic_batch="axis: 0" not in param)


def test_scale_by_second_bottom_squeeze_excitation(tmp_path: Path):
    # The SENet pattern: per-sample, per-channel factors computed in the net (pooled, flattened to N×C) scale
    # the feature map with axis 0; the batch stays dynamic because the factor comes from the data.
    text = (input_header(data=SHAPE)
            + layer_text("pool", "Pooling", ["data"], ["pool"], "pooling_param { pool: AVE global_pooling: true }")
            + layer_text("gate", "Sigmoid", ["pool"], ["gate"])
            + layer_text("flat", "Flatten", ["gate"], ["flat"])
            + layer_text("scale", "Scale", ["data", "flat"], ["scale"], "scale_param { axis: 0 }"))
    net = LayerNet(tmp_path, text)
    assert list(net.module.state_dict()) == []
    x = normal()
    gate = 1 / (1 + np.exp(-x.astype(np.float64).mean(axis=(2, 3))))
    check_backends(net, {"data": x}, [broadcast_ref(x.astype(np.float64), gate, 0, "scale")], opencv=True)


@pytest.mark.parametrize("bias_term", [False, True])
@pytest.mark.parametrize(("axis", "factor_shape"), [(1, (3,)), (1, (3, 4)), (0, (2, 3))])
def test_scale_by_second_bottom(tmp_path: Path, axis: int, factor_shape, bias_term: bool):
    text = (input_header(data=SHAPE, s=factor_shape)
            + layer_text("scale", "Scale", ["data", "s"], ["scale"],
                         f"scale_param {{ axis: {axis} bias_term: {str(bias_term).lower()} }}"))
    net = LayerNet(tmp_path, text, seed=2)
    assert list(net.module.state_dict()) == (["scale.bias"] if bias_term else [])
    inputs = {"data": normal(), "s": normal(factor_shape, seed=1)}
    expected = broadcast_ref(inputs["data"].astype(np.float64), inputs["s"].astype(np.float64), axis, "scale")
    if bias_term:  # the bias blob has bottom[1]'s shape (scale_layer.cpp, LayerSetUp)
        (bias,) = stored_blobs(net, "scale")
        assert bias.shape == factor_shape
        expected = broadcast_ref(expected, bias, axis, "bias")
    # OpenCV 4.x gets the two-bottom Scale with bias_term wrong (errors of several units on this data), so
    # that form is checked against the numpy restatement only.
    backends = {"torch": net.torch(inputs)}
    if not bias_term:
        backends["opencv"] = net.opencv(inputs)
    # With axis past 0, "s" has no batch axis: the dynamic-batch export keeps its declared shape.
    assert net.module.batchless_inputs == ([] if axis == 0 else ["s"])
    backends["onnxruntime"] = net.onnxruntime(inputs)
    for name, (out,) in backends.items():
        assert_close(out, expected, name)


BIAS_ONE_BOTTOM = ["", "axis: 1 num_axes: 2", "axis: 2 num_axes: -1", "axis: -1", "num_axes: 0"]


@pytest.mark.parametrize("param", BIAS_ONE_BOTTOM, ids=[p or "default" for p in BIAS_ONE_BOTTOM])
def test_bias_learned(tmp_path: Path, param: str):
    # OpenCV has no Bias layer: numpy restatement of bias_layer.cpp only.
    text = input_header(data=SHAPE) + layer_text("bias", "Bias", ["data"], ["bias"], f"bias_param {{ {param} }}")
    net = LayerNet(tmp_path, text, seed=6)
    assert list(net.module.state_dict()) == ["bias.bias"]
    assert net.module.get_submodule("bias").bias.requires_grad
    (blob,) = stored_blobs(net, "bias", factor_shape_of(param))
    axis = param_field(param, "axis", 1)
    x = normal()
    check_backends(net, {"data": x}, [broadcast_ref(x.astype(np.float64), blob, axis, "bias")])


@pytest.mark.parametrize(("axis", "factor_shape"), [(0, (2, 3)), (0, SHAPE)])
def test_bias_by_second_bottom(tmp_path: Path, axis: int, factor_shape):
    text = (input_header(data=SHAPE, b=factor_shape)
            + layer_text("bias", "Bias", ["data", "b"], ["bias"], f"bias_param {{ axis: {axis} }}"))
    net = LayerNet(tmp_path, text)
    inputs = {"data": normal(), "b": normal(factor_shape, seed=1)}
    expected = broadcast_ref(inputs["data"].astype(np.float64), inputs["b"].astype(np.float64), axis, "bias")
    check_backends(net, inputs, [expected])


def test_bias_second_bottom_must_match(tmp_path: Path):
    path = tmp_path / "bad.prototxt"
    path.write_text(input_header(data=SHAPE, b=(3, 5))
                    + layer_text("bias", "Bias", ["data", "b"], ["bias"], "bias_param { axis: 1 }"))
    with pytest.raises(NinportError, match=r"'bias'.*\[3, 5\] does not match"):
        ninport.load(path)


@pytest.mark.parametrize(
    ("type_", "param", "message"),
    [("Log", "log_param { base: 1 }", "base 1"),  # log_layer.cpp checks 1 / ln(base) is finite
     ("Exp", "exp_param { base: -2 }", "base -2"),  # exp_layer.cpp: base > 0, or -1 for e
     ("Clip", "clip_param { min: 1 }", "min and max")],
)
def test_activation_parameters_caffe_rejects(tmp_path: Path, type_: str, param: str, message: str):
    path = tmp_path / "bad.prototxt"
    path.write_text(input_header(data=(1, 3)) + layer_text("bad", type_, ["data"], ["bad"], param))
    with pytest.raises(NinportError, match=message) as info:
        ninport.load(path)
    assert "'bad'" in str(info.value) and "\n" not in str(info.value)
