"""Layers that route data (Slice, Reshape, Crop, Tile, Concat, Flatten, Softmax, Dropout, Silence, Parameter,
Split's shared memory) and ArgMax, Reduction, Embed: each on a tiny net, against OpenCV's Caffe importer where
it has the layer, else against numpy restatements of Caffe's loops written here (citing the source file);
then the exported ONNX in onnxruntime against the same reference."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from layer_harness import assert_close, check_net, onnx_outputs, opencv_layer_outputs, opencv_outputs, torch_blobs
from layer_harness import write_net as _write_net

import ninport
from ninport.caffe.aliasing import share_in_place_writes
from ninport.caffe.load import read_net
from ninport.caffe.shapes import infer_shapes
from ninport.errors import NinportError

RNG = np.random.default_rng(99)


def randn(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def header(*inputs: tuple[str, tuple[int, ...]]) -> str:
    return "".join(f'input: "{n}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in s)} }}\n' for n, s in inputs)


def net(tmp_path, shape, body, weights=None, name="net"):
    return _write_net(tmp_path, header(("data", shape)) + body, weights, name=name)


# ---------------------------------------------------------------------------------------------------------
# Slice


def test_slice_points_match_opencv(tmp_path):
    x = randn(2, 6, 4, 5)
    proto, _ = net(tmp_path, x.shape, 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" top: "c"\n'
                   "  slice_param { axis: 1 slice_point: 1 slice_point: 4 } }\n")
    a, b, c = opencv_layer_outputs(proto, None, {"data": x}, "s")
    assert [t.shape[1] for t in (a, b, c)] == [1, 3, 2]
    check_net(tmp_path, proto, None, {"data": x}, {"a": a, "b": b, "c": c})


def test_slice_legacy_slice_dim(tmp_path):
    # slice_layer.cpp reads slice_dim when it is set (OpenCV ignores it and cuts axis 1): numpy reference.
    x = randn(2, 3, 4, 6)
    proto, _ = net(tmp_path, x.shape, 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b"\n'
                   "  slice_param { slice_dim: 3 slice_point: 2 } }\n")
    check_net(tmp_path, proto, None, {"data": x}, {"a": x[..., :2], "b": x[..., 2:]})


def test_slice_without_points_splits_evenly(tmp_path):
    # slice_layer.cpp: no slice_point → the axis divided by the number of tops (negative axis counts from
    # the end; OpenCV asserts on it, so numpy is the reference).
    x = randn(2, 3, 4, 6)
    proto, _ = net(tmp_path, x.shape, 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" top: "c"\n'
                   "  slice_param { axis: -1 } }\n")
    a, b, c = np.split(x, 3, axis=3)
    check_net(tmp_path, proto, None, {"data": x}, {"a": a, "b": b, "c": c})


def test_slice_with_axis_and_slice_dim_is_rejected(tmp_path):
    proto, _ = net(tmp_path, (1, 4, 2, 2), 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b"\n'
                   "  slice_param { axis: 1 slice_dim: 1 } }\n")
    with pytest.raises(NinportError, match=r"net.prototxt:\d+: .*'s'.*axis or slice_dim, not both"):
        infer_shapes(read_net(proto))


# ---------------------------------------------------------------------------------------------------------
# Reshape, Flatten, Crop, Tile, Concat, Softmax, Dropout


@pytest.mark.parametrize("params, expected", [
    ("shape { dim: 0 dim: -1 dim: 10 }", (2, 12, 10)),
    ("axis: 1 num_axes: 2 shape { dim: 3 dim: -1 }", (2, 3, 8, 5)),
    ("shape { dim: -1 dim: 20 }", (12, 20)),
    ("axis: -1 shape { dim: 1 }", (2, 6, 4, 5, 1)),
    ("axis: 0 num_axes: 0 shape { dim: 1 }", (1, 2, 6, 4, 5)),
])
def test_reshape(tmp_path, params, expected):
    # reshape_layer.cpp: dims replace axes [axis, axis + num_axes); 0 copies, -1 is inferred.
    x = randn(2, 6, 4, 5)
    proto, _ = net(tmp_path, x.shape, f'layer {{ name: "r" type: "Reshape" bottom: "data" top: "r"\n'
                   f"  reshape_param {{ {params} }} }}\n")
    check_net(tmp_path, proto, None, {"data": x}, {"r": x.reshape(expected)})
    if expected[0] == 2 and len(expected) <= 4:
        cv = opencv_outputs(proto, None, {"data": x}, ["r"])["r"]
        np.testing.assert_array_equal(cv, x.reshape(expected))


@pytest.mark.parametrize("params, at_batch_3", [
    ("shape { dim: 0 dim: -1 dim: 10 }", (3, 12, 10)),  # the batch copied
    ("shape { dim: -1 dim: 20 }", (18, 20)),  # the batch folded into the inferred dim
    ("axis: 1 shape { dim: 120 }", (3, 120)),  # the batch kept before axis
])
def test_reshape_keeps_the_batch_dynamic_in_onnx(tmp_path, params, at_batch_3):
    proto, _ = net(tmp_path, (2, 6, 4, 5), f'layer {{ name: "r" type: "Reshape" bottom: "data" top: "r"\n'
                   f"  reshape_param {{ {params} }} }}\n")
    path = tmp_path / "r.onnx"
    ninport.export_onnx(ninport.load(proto), path)
    x = randn(3, 6, 4, 5)
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    np.testing.assert_array_equal(out, x.reshape(at_batch_3))


@pytest.mark.parametrize("params, shape", [("axis: 1 end_axis: 2", (2, 3, 4, 5)), ("axis: 2", (2, 3, 4, 5))])
def test_flatten_matches_opencv(tmp_path, params, shape):
    x = randn(*shape)
    proto, _ = net(tmp_path, shape, f'layer {{ name: "f" type: "Flatten" bottom: "data" top: "f" '
                   f"flatten_param {{ {params} }} }}\n")
    check_net(tmp_path, proto, None, {"data": x}, opencv_outputs(proto, None, {"data": x}, ["f"]))


@pytest.mark.parametrize("params, ref_shape", [
    ("axis: 2 offset: 1 offset: 2", (2, 6, 2, 3)),
    ("axis: 1 offset: 1", (2, 3, 2, 3)),
    ("", (2, 6, 3, 3)),  # axis 2 and offset 0 by default
])
def test_crop_matches_opencv(tmp_path, params, ref_shape):
    x, ref = randn(2, 6, 4, 5), randn(*ref_shape)
    text = header(("data", x.shape), ("ref", ref_shape)) + (
        f'layer {{ name: "c" type: "Crop" bottom: "data" bottom: "ref" top: "c" crop_param {{ {params} }} }}\n'
    )
    proto, _ = _write_net(tmp_path, text)
    inputs = {"data": x, "ref": ref}
    expected = opencv_outputs(proto, None, inputs, ["c"])
    assert expected["c"].shape == ref_shape
    check_net(tmp_path, proto, None, inputs, expected)


def test_crop_by_hand(tmp_path):
    # 4×4 of 0..15 cropped to 2×2 at offsets (1, 2): rows 1-2, columns 2-3 → [[6, 7], [10, 11]].
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    text = header(("data", (1, 1, 4, 4)), ("ref", (1, 1, 2, 2))) + (
        'layer { name: "c" type: "Crop" bottom: "data" bottom: "ref" top: "c" crop_param { offset: 1 offset: 2 } }\n'
    )
    proto, _ = _write_net(tmp_path, text)
    check_net(tmp_path, proto, None, {"data": x, "ref": np.zeros((1, 1, 2, 2), np.float32)},
              {"c": np.array([[[[6, 7], [10, 11]]]])})


def test_crop_with_too_many_offsets_is_rejected(tmp_path):
    text = header(("data", (1, 1, 4, 4)), ("ref", (1, 1, 2, 2))) + (
        'layer { name: "c" type: "Crop" bottom: "data" bottom: "ref" top: "c"\n'
        "  crop_param { axis: 2 offset: 1 offset: 1 offset: 1 } }\n"
    )
    with pytest.raises(NinportError, match="3 crop offsets for the 2 axes"):
        infer_shapes(read_net(_write_net(tmp_path, text)[0]))


def tile_reference(x: np.ndarray, axis: int, tiles: int) -> np.ndarray:
    """tile_layer.cpp, Forward_cpu: per outer index, the block from ``axis`` on copied ``tiles`` times."""
    outer = int(np.prod(x.shape[:axis]))
    inner = int(np.prod(x.shape[axis:]))
    flat = x.reshape(outer, inner)
    out = np.empty((outer, tiles * inner), dtype=x.dtype)
    for i in range(outer):
        for t in range(tiles):
            out[i, t * inner : (t + 1) * inner] = flat[i]
    shape = list(x.shape)
    shape[axis] *= tiles
    return out.reshape(shape)


@pytest.mark.parametrize("axis, tiles", [(1, 3), (-1, 2), (0, 2)])
def test_tile(tmp_path, axis, tiles):
    # OpenCV's Caffe importer cannot build Tile ("repeats ... missing"): numpy is the reference.
    x = randn(2, 3, 2, 4)
    proto, _ = net(tmp_path, x.shape, f'layer {{ name: "t" type: "Tile" bottom: "data" top: "t" '
                   f"tile_param {{ axis: {axis} tiles: {tiles} }} }}\n")
    check_net(tmp_path, proto, None, {"data": x}, {"t": tile_reference(x, axis % 4, tiles)})


def test_tile_by_hand(tmp_path):
    # [[1, 2]] tiled 2 times on axis 1 → [[1, 2, 1, 2]] (the whole block repeats, not each value).
    proto, _ = net(tmp_path, (1, 2), 'layer { name: "t" type: "Tile" bottom: "data" top: "t" '
                   "tile_param { axis: 1 tiles: 2 } }\n")
    check_net(tmp_path, proto, None, {"data": np.array([[1, 2]], np.float32)}, {"t": np.array([[1, 2, 1, 2]])})


@pytest.mark.parametrize("param", ["axis: 3", "concat_dim: 3"])
def test_concat_axis_and_legacy_concat_dim(tmp_path, param):
    # concat_layer.cpp reads concat_dim when it is set; OpenCV ignores it (and then fails on these shapes),
    # so the reference is numpy, with OpenCV checked on the axis form.
    a, b = randn(2, 3, 4, 4), randn(2, 3, 4, 2)
    text = header(("a", a.shape), ("b", b.shape)) + (
        f'layer {{ name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" concat_param {{ {param} }} }}\n'
    )
    proto, _ = _write_net(tmp_path, text, name=param.split(":")[0])
    inputs = {"a": a, "b": b}
    expected = np.concatenate([a, b], axis=3)
    if param.startswith("axis"):
        np.testing.assert_array_equal(opencv_outputs(proto, None, inputs, ["c"])["c"], expected)
    check_net(tmp_path, proto, None, inputs, {"c": expected})


@pytest.mark.parametrize("body", [
    'layer { name: "p" type: "Softmax" bottom: "data" top: "p" softmax_param { axis: 2 } }\n',
    'layer { name: "d" type: "Dropout" bottom: "data" top: "d" dropout_param { dropout_ratio: 0.3 } }\n'
    'layer { name: "p" type: "Softmax" bottom: "d" top: "p" }\n',
])
def test_softmax_and_dropout_match_opencv(tmp_path, body):
    x = randn(2, 3, 4, 5)
    proto, _ = net(tmp_path, x.shape, body)
    check_net(tmp_path, proto, None, {"data": x}, opencv_outputs(proto, None, {"data": x}, ["p"]))


# ---------------------------------------------------------------------------------------------------------
# Silence, Parameter


def test_silence_has_no_top_and_swallows_its_bottom(tmp_path):
    # OpenCV cannot build a net ending in Silence; the reference is that Silence produces nothing.
    x = randn(2, 4, 3, 3)
    proto, _ = net(tmp_path, x.shape, 'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" }\n'
                   'layer { name: "q" type: "Silence" bottom: "b" }\n')
    model = ninport.load(proto)
    # A blob only Silence reads stays an output (tests/test_leniency.py: colorization silences its result).
    assert model.output_names == ["a", "b"]
    blobs = check_net(tmp_path, proto, None, {"data": x}, {"a": x[:, :2]})
    assert set(blobs) == {"data", "a", "b"}


def test_parameter_layer_gives_its_blob(tmp_path):
    # parameter_layer.hpp: no bottom, one top sharing the learned blob.
    x, p = randn(2, 3, 2, 2), randn(2, 3, 2, 2)
    proto, model = net(tmp_path, x.shape, 'layer { name: "p" type: "Parameter" top: "p"\n'
                       "  parameter_param { shape { dim: 2 dim: 3 dim: 2 dim: 2 } } }\n"
                       'layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "p" top: "sum" }\n',
                       [("p", "Parameter", [p])])
    check_net(tmp_path, proto, model, {"data": x}, {"p": p, "sum": x + p})


def test_parameter_as_net_output(tmp_path):
    x, p = randn(2, 3), randn(4, 5)
    proto, model = net(tmp_path, x.shape, 'layer { name: "p" type: "Parameter" top: "p"\n'
                       "  parameter_param { shape { dim: 4 dim: 5 } } }\n"
                       'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n', [("p", "Parameter", [p])])
    check_net(tmp_path, proto, model, {"data": x}, {"p": p, "r": np.maximum(x, 0)})


# ---------------------------------------------------------------------------------------------------------
# ArgMax (OpenCV has no ArgMax layer)


def argmax_reference(x: np.ndarray, top_k: int, axis: int | None, out_max_val: bool) -> np.ndarray:
    """argmax_layer.cpp, Reshape and Forward_cpu: for each run of values along the axis (or each item
    flattened), sort (value, index) pairs with std::greater (equal values: the higher index first)."""
    if axis is None:
        dim, axis_dist = int(np.prod(x.shape[1:])), 1
        shape = [1] * max(x.ndim, 3)
        shape[0], shape[1], shape[2] = x.shape[0], 2 if out_max_val else 1, top_k
    else:
        dim, axis_dist = x.shape[axis], int(np.prod(x.shape[axis:])) // x.shape[axis]
        shape = list(x.shape)
        shape[axis] = top_k
    flat = x.reshape(-1)
    out = np.zeros(int(np.prod(shape)))
    for i in range(flat.size // dim):
        pairs = [(flat[(i // axis_dist * dim + j) * axis_dist + i % axis_dist], j) for j in range(dim)]
        pairs.sort(reverse=True)
        for j in range(top_k):
            if out_max_val and axis is None:
                out[2 * i * top_k + j] = pairs[j][1]
                out[2 * i * top_k + top_k + j] = pairs[j][0]
            else:
                value = pairs[j][0] if out_max_val else pairs[j][1]
                out[(i // axis_dist * top_k + j) * axis_dist + i % axis_dist] = value
    return out.reshape(shape)


def argmax_net(tmp_path, shape, params):
    return net(tmp_path, shape, f'layer {{ name: "a" type: "ArgMax" bottom: "data" top: "a" '
               f"argmax_param {{ {params} }} }}\n")[0]


@pytest.mark.parametrize("shape, top_k, axis, out_max_val", [
    ((2, 3, 4, 5), 1, None, False),
    ((2, 3, 4, 5), 3, None, True),
    ((3, 10), 2, None, False),  # 2-D bottom: the top still has 3 axes
    ((2, 5, 3, 2), 2, 1, False),
    ((2, 5, 3, 2), 3, -3, True),  # axis 1, values
    ((2, 3, 4, 5), 2, -1, False),
])
def test_argmax_matches_caffe_loop(tmp_path, shape, top_k, axis, out_max_val):
    x = randn(*shape)
    x.reshape(-1)[::7] = 0.5  # ties, which Caffe breaks towards the higher index
    params = f"top_k: {top_k} out_max_val: {str(out_max_val).lower()}" + ("" if axis is None else f" axis: {axis}")
    ref = argmax_reference(x, top_k, None if axis is None else axis % len(shape), out_max_val)
    check_net(tmp_path, argmax_net(tmp_path, shape, params), None, {"data": x}, {"a": ref})


def test_argmax_by_hand(tmp_path):
    # Values 3, 1, 3, 2 for one item: the max 3 appears at 0 and 2; Caffe's pair sort puts index 2 first.
    # top_k 2 with out_max_val: indices [2, 0], then values [3, 3], as a 1×2×2 top.
    x = np.array([[3, 1, 3, 2]], dtype=np.float32)
    proto = argmax_net(tmp_path, x.shape, "top_k: 2 out_max_val: true")
    check_net(tmp_path, proto, None, {"data": x}, {"a": np.array([[[2, 0], [3, 3]]])})


def test_argmax_top_k_larger_than_the_axis_is_rejected(tmp_path):
    with pytest.raises(NinportError, match="top_k 6 exceeds axis 1"):
        infer_shapes(read_net(argmax_net(tmp_path, (1, 5, 2), "top_k: 6 axis: 1")))


# ---------------------------------------------------------------------------------------------------------
# Reduction (OpenCV has no Reduction layer)


def reduction_reference(x: np.ndarray, op: str, axis: int, coeff: float) -> np.ndarray:
    """reduction_layer.cpp: every axis from ``axis`` on is reduced; MEAN is the sum times coeff / count."""
    rows = x.reshape(int(np.prod(x.shape[:axis])), -1).astype(np.float64)
    out = {"SUM": rows.sum(1), "ASUM": np.abs(rows).sum(1), "SUMSQ": (rows * rows).sum(1),
           "MEAN": rows.sum(1) / rows.shape[1]}[op] * coeff
    return out.reshape(x.shape[:axis])


@pytest.mark.parametrize("op, axis, coeff", [
    ("SUM", 1, 1.0), ("ASUM", 2, 0.5), ("SUMSQ", -1, 1.0), ("MEAN", 1, 2.0), ("MEAN", 0, 1.0), ("SUM", 0, -3.0),
])
def test_reduction_matches_caffe_loop(tmp_path, op, axis, coeff):
    x = randn(2, 3, 4, 5)
    proto, _ = net(tmp_path, x.shape, f'layer {{ name: "r" type: "Reduction" bottom: "data" top: "r" '
                   f"reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }} }}\n")
    check_net(tmp_path, proto, None, {"data": x}, {"r": reduction_reference(x, op, axis % 4, coeff)})


def test_reduction_by_hand(tmp_path):
    # Rows [1, -2, 3] and [0, 4, -4] over axis 1: SUM 2, 0; ASUM 6, 8; SUMSQ 14, 32; MEAN × 3 = SUM.
    x = np.array([[1, -2, 3], [0, 4, -4]], dtype=np.float32)
    for op, expected in [("SUM", [2, 0]), ("ASUM", [6, 8]), ("SUMSQ", [14, 32]), ("MEAN", [2, 0])]:
        coeff = 3.0 if op == "MEAN" else 1.0
        proto, _ = net(tmp_path, x.shape, f'layer {{ name: "r" type: "Reduction" bottom: "data" top: "r" '
                       f"reduction_param {{ operation: {op} axis: 1 coeff: {coeff} }} }}\n", name=op)
        model = ninport.load(proto)
        np.testing.assert_allclose(torch_blobs(model, {"data": x})["r"], expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Embed (OpenCV has no Embed layer)


def embed_reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """embed_layer.cpp, Forward_cpu: row static_cast<int>(x) of the K×N weight, plus the bias."""
    out = np.stack([weight[int(v)] for v in x.reshape(-1)]).reshape(*x.shape, weight.shape[1])
    return out + bias if bias is not None else out


@pytest.mark.parametrize("bias_term", [True, False])
def test_embed_matches_caffe_loop(tmp_path, bias_term):
    ids = RNG.integers(0, 10, size=(2, 7)).astype(np.float32)
    ids[0, 0], ids[0, 1] = 9, 0  # both ends of the table
    w, b = randn(10, 4), randn(4)
    proto, model = net(tmp_path, ids.shape, 'layer { name: "e" type: "Embed" bottom: "data" top: "e" '
                       f"embed_param {{ input_dim: 10 num_output: 4 bias_term: {str(bias_term).lower()} }} }}\n",
                       [("e", "Embed", [w, b] if bias_term else [w])])
    check_net(tmp_path, proto, model, {"data": ids}, {"e": embed_reference(ids, w, b if bias_term else None)})


def test_embed_by_hand_truncates_values(tmp_path):
    # Table rows 0, 10, 20 (N = 1): the values 2.0, 1.7 (cast to 1), 0.0 pick rows 2, 1, 0.
    w = np.array([[0], [10], [20]], dtype=np.float32)
    proto, model = net(tmp_path, (1, 3), 'layer { name: "e" type: "Embed" bottom: "data" top: "e" '
                       "embed_param { input_dim: 3 num_output: 1 bias_term: false } }\n", [("e", "Embed", [w])])
    x = np.array([[2.0, 1.7, 0.0]], dtype=np.float32)
    check_net(tmp_path, proto, model, {"data": x}, {"e": np.array([[[20], [10], [0]]])})


# ---------------------------------------------------------------------------------------------------------
# Split: the tops share memory, so in-place writes reach later readers (OpenCV copies instead, so the
# reference is Caffe's rule restated in numpy).

SPLIT_CHAIN = (
    'layer { name: "sp" type: "Split" bottom: "data" top: "t1" top: "t2" top: "t3" }\n'
    'layer { name: "early" type: "Power" bottom: "t3" top: "early" power_param { scale: 3 } }\n'
    'layer { name: "relu" type: "ReLU" bottom: "t1" top: "t1" }\n'
    'layer { name: "mid" type: "Power" bottom: "t2" top: "mid" power_param { scale: 2 } }\n'
    'layer { name: "shift" type: "Power" bottom: "t1" top: "t1" power_param { shift: 1 } }\n'
    'layer { name: "late" type: "Power" bottom: "t2" top: "late" power_param { scale: 1 } }\n'
    'layer { name: "input_late" type: "Power" bottom: "data" top: "input_late" power_param { scale: 1 } }\n'
)


def test_split_tops_see_in_place_writes_as_in_caffe(tmp_path):
    # split_layer.cpp: every top ShareData()s the bottom. "early" reads before any write (3x); "mid" after
    # the ReLU wrote into t1's memory (2·relu(x)); "late" and a reader of the input after the shift as well
    # (relu(x) + 1). OpenCV gives 3x, 2x, x, x: it copies Split's tops.
    x = randn(2, 3, 4, 4)
    proto, _ = net(tmp_path, x.shape, SPLIT_CHAIN)
    relu = np.maximum(x, 0)
    reference = {"early": 3 * x, "mid": 2 * relu, "late": relu + 1, "input_late": relu + 1, "t1": relu + 1}
    blobs = check_net(tmp_path, proto, None, {"data": x}, reference)
    # The last version of each blob keeps Caffe's name and holds what pycaffe's net.blobs shows at the end.
    assert_close(relu + 1, blobs["t2"], "t2")
    np.testing.assert_array_equal(blobs["t1@relu"], relu)


def test_split_top_left_as_output_ends_with_the_written_value(tmp_path):
    x = randn(1, 2, 3, 3)
    proto, _ = net(tmp_path, x.shape, 'layer { name: "sp" type: "Split" bottom: "data" top: "t1" top: "t2" }\n'
                   'layer { name: "relu" type: "ReLU" bottom: "t1" top: "t1" }\n')
    assert sorted(ninport.load(proto).output_names) == ["t1", "t2"]
    relu = np.maximum(x, 0)
    check_net(tmp_path, proto, None, {"data": x}, {"t1": relu, "t2": relu})


def test_flatten_view_written_in_place_reaches_the_other_split_top(tmp_path):
    # flatten_layer.cpp shares data too: a ReLU on the flattened view changes t2, read back in its 4-D shape.
    x = randn(2, 3, 2, 2)
    proto, _ = net(tmp_path, x.shape, 'layer { name: "sp" type: "Split" bottom: "data" top: "t1" top: "t2" }\n'
                   'layer { name: "fl" type: "Flatten" bottom: "t1" top: "f" }\n'
                   'layer { name: "relu" type: "ReLU" bottom: "f" top: "f" }\n'
                   'layer { name: "y" type: "Power" bottom: "t2" top: "y" power_param { scale: 2 } }\n'
                   'layer { name: "z" type: "Power" bottom: "f" top: "z" }\n')
    relu = np.maximum(x, 0)
    check_net(tmp_path, proto, None, {"data": x}, {"y": 2 * relu, "z": relu.reshape(2, -1)})


def test_split_read_before_the_write_is_unchanged(tmp_path):
    x = randn(1, 2, 3, 3)
    text = header(("data", x.shape)) + (
        'layer { name: "sp" type: "Split" bottom: "data" top: "t1" top: "t2" }\n'
        'layer { name: "y" type: "Power" bottom: "t2" top: "y" power_param { scale: 2 } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "t1" top: "t1" }\n'
    )
    proto, _ = _write_net(tmp_path, text)
    assert share_in_place_writes(read_net(proto)) == 0
    check_net(tmp_path, proto, None, {"data": x}, {"y": 2 * x, "t1": np.maximum(x, 0)})


def test_exported_split_chain_names_caffe_blobs(tmp_path):
    x = randn(2, 3, 4, 4)
    proto, _ = net(tmp_path, x.shape, SPLIT_CHAIN)
    outs = onnx_outputs(ninport.load(proto), tmp_path / "chain.onnx", {"data": x})
    assert sorted(outs) == ["early", "input_late", "late", "mid", "t1"]
