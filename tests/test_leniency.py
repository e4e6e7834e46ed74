"""Where Caffe is lenient, ninport is too: repeated layer names, a blob only Silence reads, inputs only a loss
reads, Python data layers, and the R-CNN fork's Dropout ``scale_train``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import ninport
from ninport.caffe.load import load_net, read_net
from ninport.errors import NetError, WeightsError
from tests.layer_harness import assert_close, opencv_outputs, write_net

HEAD = 'input: "data"\ninput_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\n'
CONV = ('layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" '
        'convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 }} }}\n')


def _conv_weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 2, 3, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32)]


def _conv_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A float64 3x3, pad 1 convolution written out in numpy (Caffe's conv_layer: cross-correlation)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    n, _, h, wd = x.shape
    out = np.zeros((n, w.shape[0], h - 2, wd - 2))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", x[:, :, i : i + h - 2, j : j + wd - 2], w[:, :, i, j])
    return out + b.reshape(1, -1, 1, 1)


def test_repeated_layer_names_are_kept_and_weights_go_to_the_first(tmp_path):
    # HED and SSDLite repeat names; Caffe's Net::Init never checks, CopyTrainedLayersFrom fills the first.
    text = (HEAD + CONV.format(name="c", bottom="data", top="a")
            + 'layer { name: "r" type: "ReLU" bottom: "a" top: "a" }\n'
            + 'layer { name: "r" type: "ReLU" bottom: "a" top: "b" relu_param { negative_slope: 0.5 } }\n')
    w, b = _conv_weights(1)
    proto, model = write_net(tmp_path, text, [("c", "Convolution", [w, b])])
    net, _ = load_net(proto, model)
    assert [(x.name, x.caffe_name) for x in net.layers[1:]] == [("c", "c"), ("r", "r"), ("r#2", "r")]
    module = ninport.load(proto, model)
    x = np.random.default_rng(2).standard_normal((1, 2, 5, 5)).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    expected = np.maximum(_conv_reference(x, w, b), 0)  # the second ReLU sees no negatives
    assert_close(expected, got, "after repeated names")
    assert module.get_submodule("r#2") is not module.get_submodule("r")


def test_a_repeated_name_that_needs_weights_is_refused_with_caffes_reason(tmp_path):
    text = HEAD + CONV.format(name="c", bottom="data", top="a") + CONV.format(name="c", bottom="a", top="b")
    proto, model = write_net(tmp_path, text, [("c", "Convolution", _conv_weights(3))])
    with pytest.raises(WeightsError, match=r"'c#2'.*first layer of a name"):
        load_net(proto, model)


def test_a_trailing_silence_keeps_the_output(tmp_path):
    # colorization's deploy file ends with a Silence on its last blob.
    body = CONV.format(name="c", bottom="data", top="out")
    proto, model = write_net(tmp_path, HEAD + body + 'layer { name: "s" type: "Silence" bottom: "out" }\n',
                             [("c", "Convolution", _conv_weights(4))])
    plain, _ = write_net(tmp_path, HEAD + body, name="plain")
    assert read_net(proto).outputs == ["out"]
    module = ninport.load(proto, model)
    path = tmp_path / "silence.onnx"
    ninport.export_onnx(module, path)
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["out"]
    import onnxruntime as ort

    x = np.random.default_rng(5).standard_normal((1, 2, 5, 5)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    assert_close(opencv_outputs(plain, model, {"data": x}, ["out"])["out"], got, "onnxruntime after Silence")


def test_an_input_only_a_loss_reads_is_dropped(tmp_path):
    # SRCNN's train file: net-level inputs data and label, the label read only by EuclideanLoss.
    text = ('input: "data"\ninput_dim: 1\ninput_dim: 2\ninput_dim: 5\ninput_dim: 5\n'
            'input: "label"\ninput_dim: 1\ninput_dim: 2\ninput_dim: 5\ninput_dim: 5\n'
            + CONV.format(name="c", bottom="data", top="out")
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "label" top: "loss" }\n')
    proto, model = write_net(tmp_path, text, [("c", "Convolution", _conv_weights(6))])
    net, _ = load_net(proto, model)
    assert list(net.inputs) == ["data"] and net.outputs == ["out"]
    from ninport.convert import convert

    result = convert(proto, model, tmp_path / "srcnn.onnx")
    assert list(result.inputs) == ["data"]
    graph = onnx.load(str(tmp_path / "srcnn.onnx")).graph
    assert [i.name for i in graph.input] == ["data"]


def test_an_input_a_kept_layer_reads_stays(tmp_path):
    text = ('input: "data"\ninput_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\n'
            'input: "other"\ninput_shape { dim: 1 dim: 2 dim: 5 dim: 5 }\n'
            'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "other" top: "out" }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "other" top: "loss" }\n')
    net = read_net(write_net(tmp_path, text)[0])
    assert list(net.inputs) == ["data", "other"]


FCN_VAL = '''name: "fcn"
layer {
  name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "voc_layers" layer: "VOCSegDataLayer"
    param_str: "{'voc_dir': '../data/pascal', 'seed': 1337, 'split': 'seg11valid',"
               " 'mean': (104.00699, 116.66877, 122.67892)}" }
}
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 } }
'''


def test_a_python_data_layer_becomes_the_input(tmp_path):
    proto, _ = write_net(tmp_path, FCN_VAL)
    with pytest.raises(NetError, match=r"Python layer 'data'.*--input-shape"):
        read_net(proto)
    net = read_net(proto, input_shape="1,3,8,10")
    assert net.inputs == {"data": (1, 3, 8, 10)} and net.outputs == ["score"]
    assert net.preprocess["mean_value"] == [104.00699, 116.66877, 122.67892]


def test_a_python_data_layer_that_states_its_size(tmp_path):
    text = FCN_VAL.replace("'seed': 1337,", "'batch_size': 2, 'im_shape': [6, 7],")
    net = read_net(write_net(tmp_path, text)[0])
    assert net.inputs == {"data": (2, 3, 6, 7)}


def test_a_param_str_is_never_run(tmp_path):
    text = FCN_VAL.replace("'seed': 1337,", "'im_shape': __import__('os').system('false'),")
    proto, _ = write_net(tmp_path, text)
    with pytest.raises(NetError, match="--input-shape"):
        read_net(proto)


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_dropout_scale_train_false_scales_at_test_time(tmp_path, ratio):
    # rbgirshick/caffe-fast-rcnn dropout_layer.cpp: at TEST, top = bottom * (1 / scale_), scale_ = 1 / (1 - ratio)
    # in float32; with the default scale_train: true it is the identity.
    body = ('layer { name: "d" type: "Dropout" bottom: "data" top: "out" '
            f'dropout_param {{ dropout_ratio: {ratio} scale_train: false }} }}\n')
    proto, _ = write_net(tmp_path, HEAD + body)
    x = np.random.default_rng(7).standard_normal((1, 2, 5, 5)).astype(np.float32)
    scale = np.float32(1) / (np.float32(1) - np.float32(ratio))
    expected = x * (np.float32(1) / scale)
    assert not np.allclose(expected, x)
    from tests.layer_harness import check_net

    check_net(tmp_path, proto, None, {"data": x}, {"out": expected})
    plain, _ = write_net(tmp_path, HEAD + body.replace("scale_train: false", "scale_train: true"), name="plain")
    check_net(tmp_path, plain, None, {"data": x}, {"out": x})
