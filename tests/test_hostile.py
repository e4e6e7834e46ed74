"""Hostile and broken inputs: each is refused in one line naming what and where, before anything is allocated;
what Caffe accepts is accepted. Also the bounded readers, the quiet broken pipe and linear time in net size."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ninport.caffe import caffe_pb2
from ninport.caffe.caffemodel import array_to_blob
from ninport.caffe.load import load_net, read_net
from ninport.caffe.prototxt import MAX_PROTOTXT_BYTES
from ninport.errors import NetError, NinportError, ParseError, ShapeError, WeightsError

HEADER = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'


def _net(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "net.prototxt"
    path.write_text(header + body)
    return path


def _conv(param: str, name: str = "conv") -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "data" top: "{name}" '
            f'convolution_param {{ {param} }} }}\n')


REFUSED = [
    # (layer text, regex of the one line). Caffe's own check is named beside each.
    (_conv("num_output: 4 kernel_size: 3 stride: 0"), "stride must be positive"),  # base_conv_layer.cpp
    (_conv("num_output: 4 kernel_size: 3 stride_w: 2"), "stride_h and stride_w"),  # Caffe divides by 0
    (_conv("num_output: 0 kernel_size: 3"), "num_output must be positive"),  # CHECK_GT(num_output_, 0)
    (_conv("num_output: 2 kernel_size: 3 group: 0"), "group must be positive"),
    (_conv("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3"), "kernel_size or kernel_h"),
    (_conv("num_output: 2 kernel_size: 3 dilation: 0"), "dilation 0 is out of range"),
    (_conv("num_output: 2 kernel_size: 3 pad: 1000000"), "more than a Caffe blob can"),  # Blob::Reshape
    (_conv("num_output: 2 kernel_size: 100"), "too small for kernel"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
     'pooling_param { pool: MAX kernel_size: 2 stride: 2147483648 } }\n', "stride 2147483648 is out of range"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_h: 2 } }\n',
     "both kernel_h and kernel_w"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
     'pooling_param { pool: MAX global_pooling: true kernel_size: 2 } }\n', "global pooling takes no kernel"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "m" '
     'pooling_param { pool: AVE kernel_size: 2 } }\n', "has 2 tops; Caffe's Pooling takes exactly 1"),
    ('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { local_size: 4294967295 } }\n',
     "local_size 4294967295 is out of range"),
    ('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { local_size: 4 } }\n', "must be odd"),
    ('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { local_size: 2147483647 } }\n',
     "channel-padded buffer"),
    ('layer { name: "f" type: "Flatten" bottom: "data" top: "f" }\n'
     'layer { name: "n" type: "LRN" bottom: "f" top: "n" }\n', "needs a 4-D bottom"),
    ('layer { name: "d" type: "Dropout" bottom: "data" top: "d" dropout_param { dropout_ratio: 2 } }\n',
     r"dropout_ratio must be in \[0, 1\), got 2"),
    ('layer { name: "d" type: "Dropout" bottom: "data" top: "d" dropout_param { dropout_ratio: nan } }\n',
     "dropout_ratio must be in"),
    ('layer { name: "d" type: "Dropout" bottom: "data" top: "d" dropout_param { dropout_ratio: inf } }\n',
     "dropout_ratio must be in"),
    ('layer { name: "d" type: "Dropout" bottom: "data" top: "d" dropout_param { dropout_ratio: 1 } }\n',
     "dropout_ratio must be in"),
    ('layer { name: "f" type: "Flatten" bottom: "data" top: "f" flatten_param { axis: 3 end_axis: 1 } }\n',
     "end_axis 1 comes before axis 3"),
    ('layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { top_k: 9 axis: 2 } }\n',
     "top_k 9 exceeds axis 2"),
    ('layer { name: "s" type: "Slice" bottom: "data" top: "s1" top: "s2" slice_param { axis: 4 } }\n',
     "axis 4 is out of range"),
    ('layer { name: "c" type: "Concat" bottom: "data" bottom: "data" top: "c" concat_param { axis: -5 } }\n',
     "axis -5 is out of range"),
    ('layer { name: "r" type: "ReLU" bottom: "data" bottom: "data" top: "r" }\n', "has 2 bottoms; Caffe's ReLU"),
    ('layer { name: "r" type: "ReLU" bottom: "data" top: "r" top: "r2" }\n', "has 2 tops"),
    ('layer { name: "e" type: "Eltwise" bottom: "data" top: "e" }\n', "takes at least 2 bottoms"),
    ('layer { name: "x" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n',
     "produced by multiple sources"),
    ('layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\nlayer { name: "t" type: "TanH" bottom: "data" '
     'top: "r" }\n', "'r' of layer 't' is produced by multiple sources"),
    ('layer { name: "s" type: "Split" bottom: "data" top: "data" }\n', "does not allow in-place"),
    ('layer { name: "f" type: "Flatten" bottom: "data" top: "data" }\n', "does not allow in-place"),
    ('layer { name: "x" type: "Input" top: "x" input_param { shape { } } }\n', "empty shape"),
    ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: -3 } } }\n',
     "every size must be positive"),
    ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 0 } } }\n',
     "every size must be positive"),
    ('layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: -1 } } }\n',
     "every size must be positive"),
    ('layer { name: "r" type: "Reshape" bottom: "data" top: "r" '
     'reshape_param { shape { dim: 0 dim: -1 dim: -9223372036854775808 } } }\n', "one -1"),
    ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 0 } }\n',
     "every size must be positive"),
    ('layer { name: "t" type: "Tile" bottom: "data" top: "t" tile_param { axis: 3 tiles: 2147483647 } }\n',
     "more than a Caffe blob can"),
    ('layer { name: "e" type: "Exp" bottom: "data" top: "e" exp_param { base: -3 } }\n', "base -3 must be"),
]


@pytest.mark.parametrize(("body", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_refused_in_one_line_naming_file_line_and_layer(tmp_path, body, message):
    path = _net(tmp_path, body)
    tracemalloc.start()
    try:
        with pytest.raises(NinportError, match=message) as info:
            load_net(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    line = str(info.value)
    assert "\n" not in line and len(line) < 700
    assert line.startswith(f"{path}:"), line  # the file and the line of the layer block
    assert peak < 50 << 20, f"{peak:,} bytes allocated to refuse a bad layer"


ACCEPTED = [
    # What Caffe accepts is accepted: an in-place ReLU; Flatten's end_axis one before axis (Blob::count allows
    # count(i, i) = 1, flatten_layer.cpp); an Input nobody reads is a net output (net.cpp keeps unread blobs).
    ('layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n', ["data@r"], (1, 3, 8, 8)),
    ('layer { name: "f" type: "Flatten" bottom: "data" top: "f" flatten_param { axis: 2 end_axis: 1 } }\n',
     ["f"], (1, 3, 1, 8, 8)),
    ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }\n'
     'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n', ["x", "r"], (1, 3, 8, 8)),
]


@pytest.mark.parametrize(("body", "outputs", "last_shape"), ACCEPTED)
def test_accepted_as_caffe_accepts(tmp_path, body, outputs, last_shape):
    net, shapes = load_net(_net(tmp_path, body))
    assert net.outputs == outputs
    assert shapes.blobs[outputs[-1]] == last_shape


# ---------------------------------------------------------------------------------------------------------
# Weights: Caffe's Blob::ShapeEquals (caffe/src/caffe/blob.cpp) decides, and nothing is allocated first.

IP_NET = ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }\n'
          'layer { name: "s" type: "Scale" bottom: "ip" top: "s" scale_param { num_axes: 0 } }\n')


def _weights(tmp_path: Path, edit) -> Path:
    model = caffe_pb2.NetParameter()
    ip = model.layer.add(name="ip", type="InnerProduct")
    ip.blobs.append(array_to_blob(np.ones((2, 192), np.float32)))
    ip.blobs.append(array_to_blob(np.ones(2, np.float32)))
    scale = model.layer.add(name="s", type="Scale")
    scalar = scale.blobs.add()  # Caffe's ToProto writes no shape message for a 0-axis blob
    scalar.data.append(0.5)
    edit(model)
    path = tmp_path / "w.caffemodel"
    path.write_bytes(model.SerializeToString())
    return path


def _set(blob, dims=None, legacy=None, values=None):
    if dims is not None:
        del blob.shape.dim[:]
        blob.shape.dim.extend(dims)
    if legacy is not None:
        blob.num, blob.channels, blob.height, blob.width = legacy
    if values is not None:
        del blob.data[:]
        blob.data.extend(values)


BAD_WEIGHTS = [
    (lambda m: _set(m.layer[0].blobs[0], dims=[2**31, 2**31, 4]), "needs shape \\[2, 192\\]"),
    (lambda m: _set(m.layer[0].blobs[0], dims=[-2, -192]), "needs shape"),
    (lambda m: _set(m.layer[0].blobs[0], dims=[2, 192], values=[1.0] * 383), "holds 383 values"),
    # legacy dims win over shape when any is set, and must match the net's shape padded to 4 axes
    (lambda m: _set(m.layer[0].blobs[0], legacy=(1, 2, 1, 192)), "legacy num/channels/height/width"),
    (lambda m: m.layer[0].blobs[1].ClearField("shape"), "no shape"),  # a 1-D blob is not a 0-axis one
    (lambda m: _set(m.layer[1].blobs[0], dims=[1]), "needs shape \\[\\]"),
    (lambda m: m.layer[0].blobs.add(), "needs 2 blob"),
]


@pytest.mark.parametrize(("edit", "message"), BAD_WEIGHTS)
def test_weights_caffe_refuses_are_refused(tmp_path, edit, message):
    proto = _net(tmp_path, IP_NET)
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match=message) as info:
            load_net(proto, _weights(tmp_path, edit))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value) and "'ip'" in str(info.value) or "'s'" in str(info.value)
    assert peak < 50 << 20


def test_weights_caffe_accepts_load(tmp_path):
    def legacy(m):  # V1-style dims: (1, 1, 2, 192) is the net's (2, 192) padded in front
        blob = m.layer[0].blobs[0]
        blob.ClearField("shape")
        _set(blob, legacy=(1, 1, 2, 192))
        blob.double_data.extend([0.25] * 384)  # double_data wins over data (Blob::FromProto)

    net, _ = load_net(_net(tmp_path, IP_NET), _weights(tmp_path, legacy))
    weight, bias = net.layer("ip").blobs
    assert weight.shape == (2, 192) and np.all(weight == 0.25) and bias.shape == (2,)
    assert net.layer("s").blobs[0].shape == () and float(net.layer("s").blobs[0]) == 0.5


# ---------------------------------------------------------------------------------------------------------
# Readers: only regular files, bounded, and error lines of a sane length.


def test_named_pipe_and_devices_are_refused_unread(tmp_path):
    fifo = tmp_path / "pipe.prototxt"
    os.mkfifo(fifo)
    with pytest.raises(ParseError, match="not a regular file"):
        read_net(fifo)  # would block forever if it were opened
    proto = _net(tmp_path, "")
    for path in (fifo, "/dev/zero"):
        with pytest.raises(ParseError, match="not a regular file"):
            load_net(proto, path)
    with pytest.raises(ParseError, match="not a regular file"):
        read_net("/dev/zero")
    with pytest.raises(ParseError, match="is a directory"):
        read_net(tmp_path)


def test_oversized_prototxt_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.prototxt"
    with open(path, "wb") as f:
        f.truncate(MAX_PROTOTXT_BYTES + 1)  # sparse: no disk, and never read
    with pytest.raises(ParseError, match="too large for a prototxt"):
        read_net(path)


def test_a_50_mb_layer_name_is_refused_in_bounded_memory(tmp_path):
    name = "n" * 50_000_000
    path = _net(tmp_path, f'layer {{ name: "{name}" type: "ReLU" bottom: "data" top: "r" }}\n')
    del name
    tracemalloc.start()
    try:
        with pytest.raises(ParseError, match=r"net.prototxt:2: a line of 50,000,0\d\d characters") as info:
            load_net(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(str(info.value)) < 300
    assert peak < 200 << 20, f"{peak:,} bytes to refuse a 50 MB name"


def test_a_long_layer_name_is_cut_in_the_error_line(tmp_path):
    name = "n" * 200_000
    path = _net(tmp_path, f'layer {{ name: "{name}" type: "ReLU" bottom: "data" bottom: "data" top: "r" }}\n')
    with pytest.raises(NetError) as info:
        load_net(path)
    assert len(str(info.value)) < 700 and "nnnn" in str(info.value) and "has 2 bottoms" in str(info.value)


def test_error_line_quoting_source_text_is_cut(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(HEADER + 'layer { name: "' + "x" * 900_000 + " }\n")
    with pytest.raises(ParseError) as info:
        read_net(path)
    assert len(str(info.value)) < 700 and str(info.value).startswith(str(path))


def test_inspect_into_a_closed_pipe_ends_quietly(tmp_path):
    body = "".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "data" top: "r{i}" }}\n' for i in range(3000))
    path = _net(tmp_path, body)
    proc = subprocess.Popen([sys.executable, "-m", "ninport.cli", "inspect", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == "", err


# ---------------------------------------------------------------------------------------------------------
# Linear time in the number of layers and blobs (no timing: sizes where a quadratic path would not finish).


def test_a_split_with_100000_tops(tmp_path):
    tops = "\n".join(f'top: "t{i}"' for i in range(100_000))
    net, shapes = load_net(_net(tmp_path, f'layer {{ name: "s" type: "Split" bottom: "data" {tops} }}\n'))
    assert len(net.outputs) == 100_000 and net.outputs[-1] == "t99999"  # quadratic before: ~90 s
    assert shapes.blobs["t5"] == (1, 3, 8, 8)


def test_twenty_thousand_layers_with_in_place_writes_on_split_tops(tmp_path):
    lines, prev = [], "data"
    for i in range(10_000):
        lines.append(f'layer {{ name: "s{i}" type: "Split" bottom: "{prev}" top: "a{i}" top: "b{i}" }}\n')
        lines.append(f'layer {{ name: "r{i}" type: "ReLU" bottom: "a{i}" top: "a{i}" }}\n')
        prev = f"a{i}"
    net, shapes = load_net(_net(tmp_path, "".join(lines)))
    assert len(net.outputs) == 10_001 and "a9999" in net.outputs
    assert math.prod(shapes.blobs["b9999"]) == 192


def test_bad_input_through_the_cli_is_one_line_and_status_1(tmp_path):
    path = _net(tmp_path, _conv("num_output: 4 kernel_size: 3 stride: 0"))
    proc = subprocess.run([sys.executable, "-m", "ninport.cli", "inspect", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "stride must be positive" in proc.stderr


def test_shape_error_classes_are_ninport_errors():
    assert issubclass(ShapeError, NinportError) and issubclass(WeightsError, NinportError)
