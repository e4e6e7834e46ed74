"""Caffe's shape arithmetic, one hand-checkable case per rule.

Every expected number is worked out in a comment from the formula in the BVLC Caffe source file named there
(src/caffe/layers/*.cpp), not taken from ninport's output.
"""

from __future__ import annotations

import pytest

from ninport.caffe import caffe_pb2
from ninport.caffe.prototxt import parse_text, scan_layer_blocks
from ninport.caffe.shapes import NetShapes, infer_shapes
from ninport.caffe.upgrade import normalize
from ninport.errors import NetError, ShapeError, UnsupportedLayerError
from ninport.inspect import spatial_trace


def shapes_of(text: str, inputs: dict[str, tuple[int, ...]]) -> NetShapes:
    """Shapes of a V2 net given as layer text, with Input layers for ``inputs`` in front."""
    head = ""
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        head += f'layer {{ name: "in_{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'
    message = parse_text(head + text, caffe_pb2.NetParameter())
    return infer_shapes(normalize(message, scan_layer_blocks(head + text), source="test.prototxt"))


def one_layer(layer_type: str, param: str, *bottoms: tuple[int, ...], tops: int = 1) -> NetShapes:
    names = [f"b{i}" for i in range(len(bottoms))]
    text = f'layer {{ name: "L" type: "{layer_type}" '
    text += " ".join(f'bottom: "{b}"' for b in names) + " "
    text += " ".join(f'top: "t{i}"' for i in range(tops)) + f" {param} }}\n"
    return shapes_of(text, dict(zip(names, bottoms)))


def top(shapes: NetShapes, i: int = 0) -> tuple[int, ...]:
    return shapes.blobs[f"t{i}"]


# ---------------------------------------------------------------------------------------------------------
# Pooling: pooling_layer.cpp, Reshape():
#   pooled = static_cast<int>(ceil(float(H + 2*pad - k) / stride)) + 1     (round_mode CEIL, the default)
#   pooled = static_cast<int>(floor(float(H + 2*pad - k) / stride)) + 1    (round_mode FLOOR)
#   if (pad) { if ((pooled - 1) * stride >= H + pad) --pooled; }


def test_pool_4x4_k3_s2_ceil_gives_2x2():
    # ceil((4 - 3) / 2) + 1 = ceil(0.5) + 1 = 2
    assert top(one_layer("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }", (1, 1, 4, 4))) == (
        1, 1, 2, 2,
    )


def test_pool_4x4_k3_s2_floor_gives_1x1():
    # floor((4 - 3) / 2) + 1 = 0 + 1 = 1
    param = "pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR }"
    assert top(one_layer("Pooling", param, (1, 1, 4, 4))) == (1, 1, 1, 1)


def test_pool_with_pad_drops_the_window_that_starts_in_the_padding():
    # H = 5, k = 2, s = 2, pad = 1: ceil((5 + 2 - 2) / 2) + 1 = ceil(2.5) + 1 = 4;
    # (4 - 1) * 2 = 6 >= 5 + 1 = 6, so the last window would start in the bottom padding: 3.
    param = "pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }"
    assert top(one_layer("Pooling", param, (1, 1, 5, 5))) == (1, 1, 3, 3)


def test_pool_with_pad_keeps_a_last_window_that_starts_inside():
    # H = 6, k = 3, s = 2, pad = 1: ceil((6 + 2 - 3) / 2) + 1 = ceil(2.5) + 1 = 4; (4 - 1) * 2 = 6 < 7: keep 4.
    param = "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"
    assert top(one_layer("Pooling", param, (1, 1, 6, 6))) == (1, 1, 4, 4)


def test_pool_without_pad_never_drops_a_window():
    # H = 6, k = 1, s = 2, pad = 0: ceil((6 - 1) / 2) + 1 = 3 + 1 = 4. The last window starts at 6, outside
    # the image, but Caffe only clips when there is padding, so the top has 4 rows.
    param = "pooling_param { pool: MAX kernel_size: 1 stride: 2 }"
    assert top(one_layer("Pooling", param, (1, 1, 6, 6))) == (1, 1, 4, 4)


def test_pool_rectangular_kernel_stride_pad():
    # H = 7, kernel_h 3, stride_h 2, pad_h 1: ceil((7 + 2 - 3) / 2) + 1 = 4; (4-1)*2 = 6 < 8: 4
    # W = 9, kernel_w 2, stride_w 3, pad_w 0: ceil((9 - 2) / 3) + 1 = ceil(2.33) + 1 = 4; (4-1)*3 = 9 >= 9 + 0: 3
    # (the pad check applies to both axes once any pad is set)
    param = "pooling_param { pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0 }"
    assert top(one_layer("Pooling", param, (2, 3, 7, 9))) == (2, 3, 4, 3)


def test_global_pooling():
    # pooling_layer.cpp: global_pooling sets the kernel to the bottom's H x W: one value per channel
    param = "pooling_param { pool: AVE global_pooling: true }"
    assert top(one_layer("Pooling", param, (2, 7, 5, 3))) == (2, 7, 1, 1)


def test_pool_pad_must_be_smaller_than_kernel():
    # pooling_layer.cpp LayerSetUp: CHECK_LT(pad_h_, kernel_h_)
    with pytest.raises(ShapeError, match="'L'"):
        one_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 pad: 2 }", (1, 1, 5, 5))


def test_pool_without_kernel_is_an_error_naming_the_layer():
    with pytest.raises(ShapeError, match=r"test.prototxt:2: .*'L'.*kernel"):
        one_layer("Pooling", "pooling_param { pool: MAX }", (1, 1, 5, 5))


# ---------------------------------------------------------------------------------------------------------
# Convolution: conv_layer.cpp compute_output_shape():
#   kernel_extent = dilation * (kernel - 1) + 1
#   output = (input + 2 * pad - kernel_extent) / stride + 1          (integer division)
# Weights (base_conv_layer.cpp): num_output x (channels / group) x kernel...; bias: num_output.


def test_convolution_dilation_group_pad_h_pad_w_stride():
    # C = 4, group 2, num_output 6, kernel 3, dilation 2 (extent 5), stride 2, pad_h 1, pad_w 0
    # H: (9 + 2 - 5) / 2 + 1 = 4;  W: (11 + 0 - 5) / 2 + 1 = 4
    param = "convolution_param { num_output: 6 kernel_size: 3 dilation: 2 group: 2 stride: 2 pad_h: 1 pad_w: 0 }"
    s = one_layer("Convolution", param, (1, 4, 9, 11))
    assert top(s) == (1, 6, 4, 4)
    assert s.layers["L"].params == [(6, 2, 3, 3), (6,)]
    # MACs: every top value sums (C / group) * k * k products: 6*4*4 * 2*3*3 = 96 * 18
    assert s.layers["L"].macs == 1728


def test_convolution_kernel_h_w_and_repeated_stride_without_bias():
    # kernel 3x1, stride [2, 1], pad [1, 0]: H: (8 + 2 - 3) / 2 + 1 = 4 (7 / 2 = 3); W: (5 - 1) / 1 + 1 = 5
    param = (
        "convolution_param { num_output: 2 kernel_h: 3 kernel_w: 1 stride: 2 stride: 1 pad: 1 pad: 0 "
        "bias_term: false }"
    )
    s = one_layer("Convolution", param, (3, 1, 8, 5))
    assert top(s) == (3, 2, 4, 5)
    assert s.layers["L"].params == [(2, 1, 3, 1)]


def test_convolution_group_must_divide_channels():
    # base_conv_layer.cpp: CHECK_EQ(channels_ % group_, 0)
    with pytest.raises(ShapeError, match="group"):
        one_layer("Convolution", "convolution_param { num_output: 4 kernel_size: 1 group: 2 }", (1, 3, 4, 4))


def test_convolution_too_small_input():
    # (2 - 3) / 1 + 1 <= 0
    with pytest.raises(ShapeError, match="too small"):
        one_layer("Convolution", "convolution_param { num_output: 4 kernel_size: 3 }", (1, 1, 2, 2))


def test_deconvolution():
    # deconv_layer.cpp compute_output_shape(): stride * (input - 1) + kernel_extent - 2 * pad
    # 2 * (5 - 1) + 4 - 2 * 1 = 10; weights are channels x (num_output / group) x k x k (reverse dimensions)
    param = "convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 }"
    s = one_layer("Deconvolution", param, (1, 4, 5, 5))
    assert top(s) == (1, 6, 10, 10)
    assert s.layers["L"].params == [(4, 3, 4, 4), (6,)]


def test_deconvolution_with_dilation():
    # extent = 2 * (3 - 1) + 1 = 5; 1 * (4 - 1) + 5 - 0 = 8
    param = "convolution_param { num_output: 1 kernel_size: 3 dilation: 2 }"
    assert top(one_layer("Deconvolution", param, (1, 2, 4, 4))) == (1, 1, 8, 8)


# ---------------------------------------------------------------------------------------------------------
# InnerProduct: inner_product_layer.cpp: K = bottom.count(axis); top = bottom.shape[:axis] + [num_output];
# weight N x K (K x N with transpose).


@pytest.mark.parametrize(
    ("param", "expected_top", "expected_weight"),
    [
        ("num_output: 7", (2, 7), (7, 60)),  # axis 1: K = 3*4*5
        ("num_output: 7 axis: 2", (2, 3, 7), (7, 20)),  # K = 4*5
        ("num_output: 7 axis: -1", (2, 3, 4, 7), (7, 5)),
        ("num_output: 7 transpose: true", (2, 7), (60, 7)),
    ],
)
def test_inner_product_axis(param, expected_top, expected_weight):
    s = one_layer("InnerProduct", f"inner_product_param {{ {param} }}", (2, 3, 4, 5))
    assert top(s) == expected_top
    assert s.layers["L"].params == [expected_weight, (7,)]


# ---------------------------------------------------------------------------------------------------------
# Joining and splitting


def test_concat_axis():
    # concat_layer.cpp: sizes add up along the axis, all other axes equal
    s = one_layer("Concat", "concat_param { axis: 1 }", (1, 2, 4, 4), (1, 3, 4, 4), (1, 1, 4, 4))
    assert top(s) == (1, 6, 4, 4)
    assert top(one_layer("Concat", "", (1, 2, 4, 4), (1, 3, 4, 4))) == (1, 5, 4, 4)  # axis defaults to 1
    assert top(one_layer("Concat", "concat_param { axis: -1 }", (1, 2, 3), (1, 2, 5))) == (1, 2, 8)


def test_concat_legacy_concat_dim():
    assert top(one_layer("Concat", "concat_param { concat_dim: 2 }", (1, 2, 4, 4), (1, 2, 3, 4))) == (1, 2, 7, 4)
    assert top(one_layer("Concat", "concat_param { concat_dim: 0 }", (1, 2), (3, 2))) == (4, 2)


def test_concat_v1_text_with_concat_dim():
    text = (
        'layers { name: "L" type: CONCAT bottom: "b0" bottom: "b1" top: "t0" concat_param { concat_dim: 3 } }\n'
    )
    s = shapes_of(text, {"b0": (1, 2, 3, 4), "b1": (1, 2, 3, 6)})
    assert s.blobs["t0"] == (1, 2, 3, 10)


def test_concat_mismatch_outside_the_axis():
    with pytest.raises(ShapeError, match="'L'"):
        one_layer("Concat", "concat_param { axis: 1 }", (1, 2, 4, 4), (1, 3, 5, 4))


def test_slice_points_and_equal_split():
    # slice_layer.cpp: slice_point 1, 4 on an axis of 6 gives 1, 3, 2
    s = one_layer("Slice", "slice_param { axis: 1 slice_point: 1 slice_point: 4 }", (2, 6, 3, 3), tops=3)
    assert [top(s, i) for i in range(3)] == [(2, 1, 3, 3), (2, 3, 3, 3), (2, 2, 3, 3)]
    # no slice points: equal parts; legacy slice_dim
    s = one_layer("Slice", "slice_param { slice_dim: 2 }", (2, 6, 9, 3), tops=3)
    assert [top(s, i) for i in range(3)] == [(2, 6, 3, 3)] * 3
    with pytest.raises(ShapeError, match="split"):
        one_layer("Slice", "slice_param { axis: 1 }", (2, 5), tops=2)


def test_eltwise():
    assert top(one_layer("Eltwise", "eltwise_param { operation: SUM }", (1, 3, 4, 4), (1, 3, 4, 4))) == (1, 3, 4, 4)
    with pytest.raises(ShapeError, match="Eltwise"):
        one_layer("Eltwise", "", (1, 3, 4, 4), (1, 3, 4, 5))
    with pytest.raises(ShapeError, match="coeff"):
        one_layer("Eltwise", "eltwise_param { coeff: 1 }", (1, 3), (1, 3))


# ---------------------------------------------------------------------------------------------------------
# Reshaping


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("", (2, 60)),  # flatten_layer.cpp: axis 1 .. end_axis -1 by default
        ("flatten_param { axis: 2 }", (2, 3, 20)),
        ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
        ("flatten_param { axis: 0 end_axis: -2 }", (24, 5)),
    ],
)
def test_flatten(param, expected):
    assert top(one_layer("Flatten", param, (2, 3, 4, 5))) == expected


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        # reshape_layer.cpp: 0 copies the bottom's axis at the same position, -1 is inferred from the count
        ("shape { dim: 0 dim: -1 }", (2, 60)),
        ("shape { dim: 0 dim: 0 dim: -1 dim: 2 }", (2, 3, 10, 2)),
        ("shape { dim: 6 dim: 20 }", (6, 20)),
        # axis/num_axes choose the part of the bottom shape being replaced (caffe.proto ReshapeParameter)
        ("shape { dim: -1 } axis: 1 num_axes: 2", (2, 12, 5)),
        ("shape { dim: 0 dim: 2 dim: -1 } axis: 1", (2, 3, 2, 10)),
        # axis -1 begins after the last axis and replaces nothing: a new trailing axis of 1
        ("shape { dim: 1 } axis: -1", (2, 3, 4, 5, 1)),
    ],
)
def test_reshape(param, expected):
    assert top(one_layer("Reshape", f"reshape_param {{ {param} }}", (2, 3, 4, 5))) == expected


@pytest.mark.parametrize(
    "param",
    ["shape { dim: 7 dim: -1 }", "shape { dim: -1 dim: -1 }", "shape { dim: 2 dim: 3 }"],
)
def test_reshape_errors(param):
    with pytest.raises(ShapeError, match="'L'"):
        one_layer("Reshape", f"reshape_param {{ {param} }}", (2, 3, 4, 5))


def test_crop():
    # crop_layer.cpp: from axis on, take the reference bottom's size; offsets one for all or one per axis
    assert top(one_layer("Crop", "crop_param { axis: 2 offset: 1 offset: 2 }", (1, 3, 10, 10), (1, 3, 6, 7))) == (
        1, 3, 6, 7,
    )
    # default axis 2: N and C stay those of the first bottom
    assert top(one_layer("Crop", "", (1, 3, 10, 10), (5, 1, 6, 7))) == (1, 3, 6, 7)
    assert top(one_layer("Crop", "crop_param { axis: 1 offset: 0 }", (1, 3, 10, 10), (5, 2, 6, 7))) == (1, 2, 6, 7)
    with pytest.raises(ShapeError, match="offset"):
        one_layer("Crop", "crop_param { offset: 5 }", (1, 3, 10, 10), (1, 3, 6, 6))


def test_argmax():
    # argmax_layer.cpp Reshape(): without axis the top has max(num_axes, 3) axes, all 1 except
    # shape[0] = N, shape[2] = top_k, and shape[1] = 2 with out_max_val
    assert top(one_layer("ArgMax", "argmax_param { top_k: 3 }", (2, 10))) == (2, 1, 3)
    assert top(one_layer("ArgMax", "argmax_param { top_k: 3 }", (2, 10, 4, 4))) == (2, 1, 3, 1)
    assert top(one_layer("ArgMax", "argmax_param { out_max_val: true }", (2, 10, 4, 4))) == (2, 2, 1, 1)
    assert top(one_layer("ArgMax", "argmax_param { axis: 1 top_k: 2 }", (2, 10, 4, 4))) == (2, 2, 4, 4)


def test_same_shape_layers_and_split():
    assert top(one_layer("ReLU", "", (2, 3, 4, 5))) == (2, 3, 4, 5)
    assert top(one_layer("LRN", "lrn_param { local_size: 5 }", (2, 3, 4, 5))) == (2, 3, 4, 5)
    s = one_layer("Split", "", (2, 3), tops=3)
    assert [top(s, i) for i in range(3)] == [(2, 3)] * 3


def test_batchnorm_and_scale_parameters():
    # batch_norm_layer.cpp: mean (C), variance (C), moving-average factor (1)
    assert one_layer("BatchNorm", "", (2, 3, 4, 5)).layers["L"].params == [(3,), (3,), (1,)]
    # scale_layer.cpp: axis 1, num_axes 1 by default; bias_term adds a second blob of the same shape
    assert one_layer("Scale", "scale_param { bias_term: true }", (2, 3, 4, 5)).layers["L"].params == [(3,), (3,)]
    assert one_layer("Scale", "scale_param { axis: 1 num_axes: 2 }", (2, 3, 4, 5)).layers["L"].params == [(3, 4)]
    assert one_layer("Scale", "scale_param { axis: 2 num_axes: -1 }", (2, 3, 4, 5)).layers["L"].params == [(4, 5)]


# ---------------------------------------------------------------------------------------------------------
# Whole nets


def test_unknown_types_are_listed_together():
    text = (
        'layer { name: "a" type: "Foo" bottom: "x" top: "a" }\n'
        'layer { name: "r" type: "ReLU" bottom: "a" top: "r" }\n'
        'layer { name: "b" type: "Bar" bottom: "r" top: "b" }\n'
        'layer { name: "c" type: "Foo" bottom: "b" top: "c" }\n'
    )
    with pytest.raises(UnsupportedLayerError) as info:
        shapes_of(text, {"x": (1, 2)})
    message = str(info.value)
    for name, typ, line in (("a", "Foo", 2), ("b", "Bar", 4), ("c", "Foo", 5)):
        assert f"'{name}' ({typ}, test.prototxt:{line})" in message
    assert "'r'" not in message
    assert [name for name, _, _ in info.value.layers] == ["a", "b", "c"]


def test_wrong_top_count_is_an_error():
    with pytest.raises(NetError, match="tops"):
        one_layer("Concat", "", (1, 2), (1, 2), tops=2)


NIN = [
    # (layer, in channels, out channels, kernel) of the gist's convolutions
    ("conv1", 3, 96, 11), ("cccp1", 96, 96, 1), ("cccp2", 96, 96, 1),
    ("conv2", 96, 256, 5), ("cccp3", 256, 256, 1), ("cccp4", 256, 256, 1),
    ("conv3", 256, 384, 3), ("cccp5", 384, 384, 1), ("cccp6", 384, 384, 1),
    ("conv4-1024", 384, 1024, 3), ("cccp7-1024", 1024, 1024, 1), ("cccp8-1024", 1024, 1000, 1),
]


def test_nin_parameter_count_by_hand(nin_prototxt):
    from ninport.caffe.load import read_net

    expected = sum(out * cin * k * k + out for _, cin, out, k in NIN)
    assert expected == 7_595_176
    shapes = infer_shapes(read_net(nin_prototxt))
    assert shapes.params() == expected
    for name, cin, out, k in NIN:
        assert shapes.layers[name].params == [(out, cin, k, k), (out,)]


@pytest.mark.parametrize(
    ("input_shape", "trace"),
    [
        # conv1: (224 - 11) / 4 + 1 = 54; pool0: ceil((54 - 3) / 2) + 1 = 27; conv2 (pad 2, k 5) keeps 27;
        # pool2: ceil((27 - 3) / 2) + 1 = 13; conv3 keeps 13; pool3: ceil((13 - 3) / 2) + 1 = 6;
        # conv4 keeps 6; pool4 (k 6, s 1): ceil(0 / 1) + 1 = 1
        (None, [224, 54, 27, 13, 6, 1]),
        # conv1: (227 - 11) / 4 + 1 = 55; pool0: ceil(52 / 2) + 1 = 27; then as above
        ("1,3,227,227", [227, 55, 27, 13, 6, 1]),
    ],
)
def test_nin_spatial_trace(nin_prototxt, input_shape, trace):
    from ninport.caffe.load import read_net

    net = read_net(nin_prototxt, input_shape=input_shape)
    shapes = infer_shapes(net)
    got = spatial_trace(net, shapes)
    assert [size for _, size in got] == trace
    assert [net.caffe_name(name) if name != "data" else name for name, _ in got] == [
        "data", "conv1", "pool0", "pool2", "pool3", "pool4",
    ]
    assert shapes.blobs["pool4"] == ((89 if input_shape is None else 1), 1000, 1, 1)


def test_nin_macs_by_hand(nin_prototxt):
    from ninport.caffe.load import read_net

    net = read_net(nin_prototxt, input_shape="1,3,224,224")
    shapes = infer_shapes(net)
    sizes = [54, 54, 54, 27, 27, 27, 13, 13, 13, 6, 6, 6]
    # each output value of a convolution is in * k * k multiply-adds
    expected = {name: out * size * size * cin * k * k for (name, cin, out, k), size in zip(NIN, sizes)}
    assert expected["conv1"] == 96 * 54 * 54 * 3 * 11 * 11
    for name, macs in expected.items():
        assert shapes.layers[name].macs == macs
    assert shapes.macs() == sum(expected.values())
